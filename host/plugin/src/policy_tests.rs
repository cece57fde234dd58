//! Policy test cases (`[[test]]` in a policy file): each message goes through the SMTP
//! stages and `data` of the chain that applies, with stores and events in memory so that a
//! test never touches live state, and the verdict, score and header changes are compared
//! with what the case expects. `check-config`, start and reload run them; a failing case
//! keeps the policies from going live.

use crate::chain::{StageInput, StageResult};
use crate::message::MessageData;
use crate::pipeline::{wit_envelope, wit_session};
use crate::policy::{PolicySet, PolicyTest};
use crate::step::Services;
use sluice_config::error::Problem;
use sluice_core::{Envelope, Recipient, SessionInfo, Verdict};
use std::collections::HashSet;

/// Runs every case; returns one problem per failed case.
pub async fn run(set: &PolicySet) -> Vec<Problem> {
    let mut problems = Vec::new();
    for t in &set.tests {
        if let Err(why) = run_one(set, t).await {
            problems.push(Problem {
                file: t.file.display().to_string(),
                line: t.line,
                key: format!("test[{}]", t.index),
                message: format!("test `{}` failed: {why}", t.case.name),
            });
        }
    }
    problems
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Continue | Verdict::Accept => "accept",
        Verdict::Reject(_) => "reject",
        Verdict::Defer(_) => "defer",
        Verdict::Quarantine(_) => "quarantine",
        Verdict::Discard => "discard",
    }
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Reject(r) | Verdict::Defer(r) => format!("{} ({r})", verdict_name(v)),
        Verdict::Quarantine(why) => format!("quarantine ({why})"),
        other => verdict_name(other).to_string(),
    }
}

async fn run_one(set: &PolicySet, t: &PolicyTest) -> Result<(), String> {
    let c = &t.case;
    let raw = std::fs::read(&c.message).map_err(|e| format!("cannot read {}: {e}", c.message))?;
    let raw = String::from_utf8_lossy(&raw)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes();
    let session = SessionInfo {
        listener: c.listener.clone(),
        role: c.listener.clone(),
        client_ip: "127.0.0.1".parse().expect("an address"),
        helo: Some("policy-test.local".into()),
        tls: None,
        auth_user: c.auth.clone(),
    };
    let mut envelope = Envelope {
        sender: c.from.clone(),
        recipients: Vec::new(),
        ..Envelope::default()
    };
    let (services, _events) = Services::in_memory();
    let w = wit_session(&session);
    let mut result: Option<StageResult> = None;
    // The SMTP stages, as a session would run them.
    let mut stages = vec![
        (None, StageInput::Connect(w.clone())),
        (None, StageInput::Ehlo(w.clone())),
        (
            Some(vec![]),
            StageInput::Mail(w.clone(), wit_envelope(&envelope)),
        ),
    ];
    for (i, r) in c.to.iter().enumerate() {
        let mut env = envelope.clone();
        env.recipients = c.to[..i].iter().map(Recipient::new).collect();
        stages.push((
            Some(c.to[..=i].to_vec()),
            StageInput::Rcpt(w.clone(), wit_envelope(&env), r.clone()),
        ));
    }
    for (rcpts, mut input) in stages {
        let sender = rcpts.as_ref().map(|_| c.from.as_str());
        let rcpts = rcpts.filter(|r| !r.is_empty());
        let Some(chain) = set.chain(Some(&session), sender, rcpts.as_deref()) else {
            continue;
        };
        let r = chain.run_with(&mut input, Some(&services)).await;
        if !matches!(r.verdict, Verdict::Continue | Verdict::Accept) {
            result = Some(r);
            break;
        }
    }
    envelope.recipients = c.to.iter().map(Recipient::new).collect();
    let mut message = raw.clone();
    if result.is_none() {
        let chain = set.chain(Some(&session), Some(&c.from), Some(&c.to));
        if let Some(chain) = chain {
            let data = MessageData::new(
                std::sync::Arc::new(raw.clone()),
                "POLICYTEST",
                envelope.clone(),
                Some(session.clone()),
            );
            let mut input = StageInput::Data(data);
            let r = chain.run_with(&mut input, Some(&services)).await;
            if let Some(m) = input.message() {
                message = m.raw.to_vec();
            }
            result = Some(r);
        }
    }
    let (verdict, score) = result.map_or((Verdict::Continue, 0.0), |r| (r.verdict, r.score));
    let mut failures = Vec::new();
    if verdict_name(&verdict) != c.expect {
        failures.push(format!("expected {}, got {}", c.expect, describe(&verdict)));
    }
    if c.score_min.is_some_and(|m| score < m) || c.score_max.is_some_and(|m| score > m) {
        failures.push(format!(
            "score {score:.2} outside [{}, {}]",
            c.score_min.map_or("-inf".into(), |m| m.to_string()),
            c.score_max.map_or("+inf".into(), |m| m.to_string())
        ));
    }
    let names = |m: &[u8]| -> HashSet<String> {
        mail_parser::MessageParser::default()
            .parse(m)
            .map(|p| {
                p.headers_raw()
                    .map(|(n, _)| n.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (names(&raw), names(&message));
    let changed = |n: &str| {
        // A set header counts as added even when one of that name was there.
        let n = n.to_ascii_lowercase();
        let b: Vec<_> = header_values(&raw, &n);
        let a: Vec<_> = header_values(&message, &n);
        b != a
    };
    for h in &c.headers_added {
        if !after.contains(&h.to_ascii_lowercase()) || !changed(h) {
            failures.push(format!("header {h} was not added"));
        }
    }
    for h in &c.headers_removed {
        if !before.contains(&h.to_ascii_lowercase()) {
            failures.push(format!("header {h} is not in the message to begin with"));
        } else if after.contains(&h.to_ascii_lowercase()) {
            failures.push(format!("header {h} was not removed"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn header_values(m: &[u8], name: &str) -> Vec<String> {
    mail_parser::MessageParser::default()
        .parse(m)
        .map(|p| {
            p.headers_raw()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
                .collect()
        })
        .unwrap_or_default()
}
