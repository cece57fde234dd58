//! Configuration problems, each with the file, line and key it is about.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based line; 0 when the key is absent from the file (a missing required key).
    pub line: usize,
    /// Dotted key path such as `listener[0].bind`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.key, self.message
            )
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Everything wrong with a configuration, reported at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let mut out = format!("{} problem(s) in the configuration", problems.len());
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Finds the 1-based line of a dotted key path (`a.b[2].c`) in TOML source.
pub fn locate(source: &str, key: &str) -> usize {
    let Ok(doc) = source.parse::<toml_edit::Document<String>>() else {
        return 0;
    };
    let mut item: &toml_edit::Item = doc.as_item();
    let mut span = None;
    for seg in key.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some(next) = item.get(name) else { break };
        item = next;
        if let Some(s) = item.span() {
            span = Some(s);
        }
        if let Some(i) = index {
            let Some(next) = item.get(i) else { break };
            item = next;
            if let Some(s) = item.span() {
                span = Some(s);
            }
        }
    }
    span.map(|s| line_of(source, s.start)).unwrap_or(0)
}

/// 1-based line of a byte offset.
pub fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}
