//! The real bounces and complaints of `../shared/corpora/bounces` (Sisimai's set-of-emails):
//! for every labelled recipient, is it found and is hard/soft right? Truth: `labels.json`
//! for hard/soft (`hardbounce`), `sisimai4-recipients.jsonl` for the address (the labels do
//! not carry it). Prints the confusion table (`--nocapture`) and holds the targets: ≥ 95% of
//! the labelled recipients of RFC 3464 reports, ≥ 85% of all.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/bounces")
}

struct Case {
    file: String,
    recipient: String,
    hard: bool,
    reason: String,
}

fn cases() -> Vec<Case> {
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus().join("labels.json")).unwrap()).unwrap();
    let mut recipients: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(corpus().join("sisimai4-recipients.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        recipients
            .entry(v["file"].as_str().unwrap().to_string())
            .or_default()
            .push(
                v["recipient"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            );
    }
    let mut out = Vec::new();
    for (file, entries) in labels["samples"].as_object().unwrap() {
        // The labels' `index` repeats in some files: their order is the recipients' order.
        for (position, e) in entries.as_array().unwrap().iter().enumerate() {
            let Some(recipient) = recipients
                .get(file)
                .and_then(|r| r.get(position))
                .filter(|r| !r.is_empty())
                .cloned()
            else {
                continue;
            };
            out.push(Case {
                file: file.clone(),
                recipient,
                hard: e["hardbounce"].as_bool().unwrap(),
                reason: e["reason"].as_str().unwrap().to_string(),
            });
        }
    }
    out
}

#[test]
fn recipients_and_hard_soft_of_real_bounces() {
    let dir = corpus().join("messages");
    let mut parsed = BTreeMap::new();
    let (mut dsn_total, mut dsn_ok, mut total, mut ok) = (0, 0, 0, 0);
    // (label hard, our hard or "missed") -> count
    let mut confusion: BTreeMap<(bool, &str), usize> = BTreeMap::new();
    let mut by_reason: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut misses = Vec::new();
    for case in cases() {
        let raw = std::fs::read(dir.join(&case.file)).unwrap();
        let is_dsn = String::from_utf8_lossy(&raw)
            .to_ascii_lowercase()
            .contains("message/delivery-status");
        let report = parsed
            .entry(case.file.clone())
            .or_insert_with(|| sluice_bounce::parse(&raw))
            .clone();
        let found = report
            .as_ref()
            .and_then(|r| r.failures.iter().find(|f| f.recipient == case.recipient));
        let got = match found {
            None => "missed",
            Some(f) if f.hard => "hard",
            Some(_) => "soft",
        };
        *confusion.entry((case.hard, got)).or_default() += 1;
        let right = found.is_some_and(|f| f.hard == case.hard);
        total += 1;
        ok += usize::from(right);
        if is_dsn {
            dsn_total += 1;
            dsn_ok += usize::from(right);
        }
        let r = by_reason.entry(case.reason.clone()).or_default();
        r.0 += 1;
        r.1 += usize::from(right);
        if !right {
            misses.push(format!(
                "{}{} {} label={}:{} got={got} {:?}",
                if is_dsn { "DSN " } else { "" },
                case.file,
                case.recipient,
                if case.hard { "hard" } else { "soft" },
                case.reason,
                match found {
                    Some(f) => format!(
                        "{:?} {} {}",
                        f.reason,
                        f.status,
                        f.diagnostic.chars().take(120).collect::<String>()
                    ),
                    None => format!(
                        "found {:?}",
                        report.as_ref().map(|r| r
                            .failures
                            .iter()
                            .map(|f| f.recipient.clone())
                            .collect::<Vec<_>>())
                    ),
                }
            ));
        }
    }
    println!(
        "labelled recipients: {total}; right: {ok} ({:.1}%)",
        100.0 * ok as f64 / total as f64
    );
    println!(
        "with an RFC 3464 report: {dsn_total}; right: {dsn_ok} ({:.1}%)",
        100.0 * dsn_ok as f64 / dsn_total as f64
    );
    println!("| label | ours: hard | soft | recipient missed |\n| --- | --- | --- | --- |");
    for label in [true, false] {
        let n = |g| confusion.get(&(label, g)).copied().unwrap_or(0);
        println!(
            "| {} | {} | {} | {} |",
            if label { "hard" } else { "soft" },
            n("hard"),
            n("soft"),
            n("missed")
        );
    }
    println!("| label reason | recipients | right |\n| --- | --- | --- |");
    for (reason, (n, r)) in &by_reason {
        println!("| {reason} | {n} | {r} |");
    }
    if std::env::var_os("BOUNCE_MISSES").is_some() {
        for m in &misses {
            println!("{m}");
        }
    }
    let dsn_rate = dsn_ok as f64 / dsn_total as f64;
    let rate = ok as f64 / total as f64;
    assert!(
        dsn_rate >= 0.95,
        "RFC 3464 reports: {:.1}%",
        dsn_rate * 100.0
    );
    assert!(rate >= 0.85, "all: {:.1}%", rate * 100.0);
}
