//! The suppression list of one stream (a policy-defined name, like Postmark's message
//! streams): at RCPT a suppressed recipient gets `550 5.7.1` naming the reason; hard bounces,
//! spam complaints and unsubscribes arriving as events add recipients automatically.
//! Operators manage the same entries with `sluice suppression` and `/api/v1/suppressions`.
//!
//! Entries live in the key-value namespace `suppression` (the step must be granted exactly
//! that one, the host's API reads it too): key `<stream>/<address, lowercase>`, value JSON
//! `{"reason": "hard-bounce"|"spam-complaint"|"unsubscribe"|"manual",
//!   "origin": "recipient"|"customer"|"admin", "time": <unix seconds>}`, kept indefinitely.
//!
//! ```toml
//! [[pipeline.step]]
//! name = "suppression"
//! plugin = "suppression.wasm"
//! sha256 = "…"
//! stages = ["rcpt", "event"]
//! [pipeline.step.capabilities]
//! kv = "suppression"
//! [pipeline.step.config]
//! stream = "outbound"
//! ```

use serde::{Deserialize, Serialize};
use sluice_plugin_sdk::{
    Envelope, Event, EventKind, Filter, Outcome, SessionInfo, Stage, export_filter, host,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_stream")]
    stream: String,
}

fn default_stream() -> String {
    "outbound".into()
}

fn config() -> Config {
    serde_json::from_str(&sluice_plugin_sdk::config_json()).expect("checked by configure")
}

#[derive(Serialize, Deserialize)]
struct Entry {
    reason: String,
    origin: String,
    time: u64,
}

fn key(stream: &str, address: &str) -> String {
    format!("{stream}/{}", address.trim().to_lowercase())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stream name: 1 to 64 of `a-z 0-9 - _`.
fn valid_stream(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

struct Suppression;

impl Filter for Suppression {
    const STAGES: &'static [Stage] = &[Stage::Rcpt, Stage::Event];

    fn configure(c: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(c).map_err(|e| e.to_string())?;
        if !valid_stream(&c.stream) {
            return Err(format!(
                "`stream` must be 1 to 64 of a-z, 0-9, - and _, not `{}`",
                c.stream
            ));
        }
        Ok(())
    }

    fn on_rcpt(_session: SessionInfo, _envelope: Envelope, recipient: String) -> Outcome {
        let c = config();
        match host::kv_get(&key(&c.stream, &recipient)) {
            Ok(None) => Outcome::cont(),
            Ok(Some(v)) => {
                let reason = serde_json::from_slice::<Entry>(&v)
                    .map(|e| e.reason)
                    .unwrap_or_else(|_| "suppressed".into());
                Outcome::reject(
                    550,
                    "5.7.1",
                    &format!(
                        "Recipient suppressed on stream {} ({reason}): not sent",
                        c.stream
                    ),
                )
            }
            // The store failed: the step's on_error decides.
            Err(e) => panic!("suppression store: {e:?}"),
        }
    }

    fn on_event(event: Event) -> Outcome {
        let reason = match &event.kind {
            // Only permanent failures: a 4xx that expired is not a hard bounce.
            EventKind::Bounced if event.reply.as_ref().is_some_and(|r| r.code >= 500) => {
                "hard-bounce"
            }
            EventKind::Complained => "spam-complaint",
            EventKind::Unsubscribed => "unsubscribe",
            _ => return Outcome::cont(),
        };
        let Some(recipient) = event.recipient else {
            return Outcome::cont();
        };
        let c = config();
        let k = key(&c.stream, &recipient);
        // An existing entry keeps its first reason and time.
        match host::kv_get(&k) {
            Ok(Some(_)) => return Outcome::cont(),
            Ok(None) => {}
            // Not acknowledged: the event comes again.
            Err(_) => return Outcome::defer(451, "4.3.0", "suppression store unavailable"),
        }
        let entry = Entry {
            reason: reason.into(),
            origin: "recipient".into(),
            time: now(),
        };
        let value = serde_json::to_vec(&entry).expect("entry serialises");
        if host::kv_set(&k, &value, None).is_err() {
            return Outcome::defer(451, "4.3.0", "suppression store unavailable");
        }
        Outcome::cont()
    }
}

export_filter!(Suppression);
