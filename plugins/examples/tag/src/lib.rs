//! Adds a header to every message, and scores messages whose subject contains one of the
//! configured words.
//!
//! ```toml
//! [pipeline.step.config]
//! header = "X-Processed-By"
//! value = "sluice"
//! words = { "free money" = 6.0, "winner" = 3.0 }
//! ```

use serde::Deserialize;
use sluice_plugin_sdk::{Filter, Message, Outcome, Stage, export_filter};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header: String,
    value: String,
    #[serde(default)]
    words: BTreeMap<String, f64>,
}

struct Tag;

/// A call may run in a fresh instance, which has seen no `configure`: the config is read
/// from the host each time.
fn config() -> Config {
    serde_json::from_str(&sluice_plugin_sdk::config_json()).expect("checked by configure")
}

impl Filter for Tag {
    const STAGES: &'static [Stage] = &[Stage::Data];

    fn configure(c: &str) -> Result<(), String> {
        let parsed: Config = serde_json::from_str(c).map_err(|e| e.to_string())?;
        if parsed.header.is_empty() || parsed.header.contains([':', ' ']) {
            return Err(format!(
                "`header` must be a header name, not `{}`",
                parsed.header
            ));
        }
        Ok(())
    }

    fn on_data(message: &Message) -> Outcome {
        let config = config();
        let subject = message.header("Subject").join(" ").to_lowercase();
        let mut out = Outcome::cont().add_header(&config.header, &config.value);
        for (word, score) in &config.words {
            if subject.contains(&word.to_lowercase()) {
                let name = format!("SUBJECT_{}", word.replace(' ', "_").to_uppercase());
                out = out.symbol(&name, *score);
            }
        }
        out
    }
}

export_filter!(Tag, reusable);
