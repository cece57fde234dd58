//! The structure and tag syntax of a message's ARC sets (RFC 8617 §4, with RFC 6376 §3.2's
//! tag-list grammar), checked before mail-auth validates the signatures: mail-auth accepts
//! some malformed sets that the ARC validation suite says must fail (duplicate or
//! misspelt tags, empty tag specs, `a=rsa-sha1`, a missing `a=`, an AMS signing ARC-Seal,
//! a set missing its AMS). A set found broken here makes the chain `fail`.

use sluice_core::envelope::header_end;
use std::collections::{BTreeMap, HashSet};

/// The unfolded header fields of a message's header block.
fn header_fields(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(&raw[..header_end(raw)]);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    fields
}

/// A tag list's tags by name; none when it breaks the grammar: an empty tag spec (other
/// than after the last `;`), a name not `ALPHA *(ALPHA / DIGIT / "_")`, no `=`, or a name
/// given twice. Names are case-sensitive.
fn tags(value: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let specs: Vec<&str> = value.split(';').collect();
    for (i, spec) in specs.iter().enumerate() {
        let spec = spec.trim();
        if spec.is_empty() {
            if i + 1 == specs.len() {
                continue;
            }
            return None;
        }
        let (name, v) = spec.split_once('=')?;
        let name = name.trim();
        let mut chars = name.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return None;
        }
        if out.insert(name.to_string(), v.trim().to_string()).is_some() {
            return None;
        }
    }
    Some(out)
}

/// Why the message's ARC sets are malformed; none when it has no ARC header fields or
/// they are well formed (their signatures are mail-auth's to check).
pub fn problem(raw: &[u8]) -> Option<String> {
    // Most mail has no ARC set: no need to unfold its header.
    let head = &raw[..header_end(raw)];
    if !head.windows(4).any(|w| w.eq_ignore_ascii_case(b"arc-")) {
        return None;
    }
    let fields = header_fields(raw);
    let mut seals: BTreeMap<u32, usize> = BTreeMap::new();
    let mut signatures: BTreeMap<u32, usize> = BTreeMap::new();
    let mut results: BTreeMap<u32, usize> = BTreeMap::new();
    let mut any = false;
    for (name, value) in &fields {
        let (kind, required): (&str, &[&str]) = match name.as_str() {
            "arc-seal" => ("ARC-Seal", &["a", "b", "cv", "d", "i", "s"]),
            "arc-message-signature" => (
                "ARC-Message-Signature",
                &["a", "b", "bh", "d", "h", "i", "s"],
            ),
            "arc-authentication-results" => {
                any = true;
                let i = value
                    .split(';')
                    .next()
                    .and_then(|t| t.trim().strip_prefix("i="))
                    .and_then(|n| n.trim().parse::<u32>().ok());
                match i {
                    Some(i) => *results.entry(i).or_default() += 1,
                    None => return Some("ARC-Authentication-Results without i=".into()),
                }
                continue;
            }
            _ => continue,
        };
        any = true;
        let Some(t) = tags(value) else {
            return Some(format!("{kind}: malformed tag list"));
        };
        if let Some(missing) = required.iter().find(|r| !t.contains_key(**r)) {
            return Some(format!("{kind}: no {missing}= tag"));
        }
        if t["a"] != "rsa-sha256" {
            return Some(format!("{kind}: a={} (ARC signs with rsa-sha256)", t["a"]));
        }
        let Ok(i) = t["i"].parse::<u32>() else {
            return Some(format!("{kind}: i={} is not an instance number", t["i"]));
        };
        if kind == "ARC-Message-Signature"
            && t["h"]
                .split(':')
                .any(|h| h.trim().eq_ignore_ascii_case("arc-seal"))
        {
            return Some("ARC-Message-Signature signs ARC-Seal".into());
        }
        let map = if kind == "ARC-Seal" {
            &mut seals
        } else {
            &mut signatures
        };
        *map.entry(i).or_default() += 1;
    }
    if !any {
        return None;
    }
    let instances: HashSet<u32> = seals
        .keys()
        .chain(signatures.keys())
        .chain(results.keys())
        .copied()
        .collect();
    let n = instances.len() as u32;
    for i in 1..=n {
        for (what, map) in [
            ("ARC-Seal", &seals),
            ("ARC-Message-Signature", &signatures),
            ("ARC-Authentication-Results", &results),
        ] {
            match map.get(&i) {
                Some(1) => {}
                Some(_) => return Some(format!("ARC set {i} has several {what} fields")),
                None => return Some(format!("ARC set {i} has no {what}")),
            }
        }
    }
    if instances.iter().any(|i| *i == 0 || *i > n) {
        return Some("ARC instance numbers are not 1 to N".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = "ARC-Seal: a=rsa-sha256; b=abc; cv=none; d=example.org; i=1; s=dummy; t=1\r\n\
        ARC-Message-Signature: a=rsa-sha256; b=abc; bh=def; c=relaxed/relaxed; d=example.org;\r\n\
        \th=from:to:date; i=1; s=dummy; t=1\r\n\
        ARC-Authentication-Results: i=1; example.org; spf=pass\r\n";

    fn message(headers: &str) -> Vec<u8> {
        format!("{headers}From: a@example.org\r\n\r\nbody\r\n").into_bytes()
    }

    #[test]
    fn well_formed_sets_and_no_sets_pass() {
        assert_eq!(problem(&message(SET)), None);
        assert_eq!(problem(&message("Subject: no ARC\r\n")), None);
    }

    #[test]
    fn malformed_sets_are_named() {
        let cases = [
            (
                "s=dummy; t=1\r\nARC-Message",
                "s=dummy; s=dummy; t=1\r\nARC-Message",
                "malformed",
            ),
            (
                "s=dummy; t=1\r\nARC-Message",
                "S=dummy; t=1\r\nARC-Message",
                "no s=",
            ),
            (
                "s=dummy; t=1\r\nARC-Message",
                "s=dummy;; t=1\r\nARC-Message",
                "malformed",
            ),
            (
                "s=dummy; t=1\r\nARC-Message",
                "s=dummy; _=; t=1\r\nARC-Message",
                "malformed",
            ),
            ("ARC-Seal: a=rsa-sha256", "ARC-Seal: a=rsa-sha1", "rsa-sha1"),
            ("ARC-Seal: a=rsa-sha256; ", "ARC-Seal: ", "no a="),
            ("h=from:to:date", "h=from:arc-seal:date", "signs ARC-Seal"),
        ];
        for (from, to, want) in cases {
            let broken = SET.replacen(from, to, 1);
            assert_ne!(broken, SET, "{from}");
            let p = problem(&message(&broken)).unwrap_or_default();
            assert!(p.contains(want), "{to}: {p}");
        }
        let no_ams: String = SET
            .split("\r\n")
            .filter(|l| !l.starts_with("ARC-Message") && !l.starts_with('\t'))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert!(
            problem(&message(&no_ams))
                .unwrap_or_default()
                .contains("no ARC-Message-Signature")
        );
    }
}
