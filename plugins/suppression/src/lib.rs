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
//! Hard bounces (the address or domain is dead: `bounce_type = hard` on the event, set by
//! the host for delivery failures and by the `bounces` plugin for reports) suppress at
//! once; soft ones (full, blocked, expired, ...) after `soft_bounce_limit` of them within
//! `soft_bounce_days` (3 in 7 days by default; counters under `~soft/` in the same
//! namespace).
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
    /// Soft bounces (mailbox full, blocked, ...) of one address within `soft_bounce_days`
    /// after which it is suppressed as a hard bounce; 0: soft bounces never suppress.
    #[serde(default = "default_soft_limit")]
    soft_bounce_limit: u32,
    #[serde(default = "default_soft_days")]
    soft_bounce_days: u32,
}

fn default_stream() -> String {
    "outbound".into()
}

fn default_soft_limit() -> u32 {
    3
}

fn default_soft_days() -> u32 {
    7
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
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

fn attribute<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event
        .attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| a.value.as_str())
}

/// Counts a soft bounce; true when it is the `soft_bounce_limit`th within the window. The
/// counters live beside the entries under `~soft/` (no stream name starts with `~`).
fn repeated_soft_bounce(c: &Config, recipient: Option<&str>) -> bool {
    let Some(recipient) = recipient else {
        return false;
    };
    if c.soft_bounce_limit == 0 {
        return false;
    }
    let ttl = u64::from(c.soft_bounce_days) * 86400;
    match host::kv_incr(
        &format!("~soft/{}", key(&c.stream, recipient)),
        1,
        Some(ttl),
    ) {
        Ok(n) => n >= i64::from(c.soft_bounce_limit),
        Err(e) => {
            host::log(
                host::Level::Warn,
                &format!("soft bounce not counted: {e:?}"),
            );
            false
        }
    }
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
        if c.soft_bounce_limit > 0 && c.soft_bounce_days == 0 {
            return Err("`soft_bounce_days` must be at least 1".into());
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
        let c = config();
        let reason = match &event.kind {
            EventKind::Bounced => {
                // `bounce_type` from the host (delivery) or the bounces plugin; a bare 5xx
                // otherwise.
                let hard = match attribute(&event, "bounce_type") {
                    Some("hard") => true,
                    Some(_) => false,
                    None => event.reply.as_ref().is_some_and(|r| r.code >= 500),
                };
                if !hard && !repeated_soft_bounce(c, event.recipient.as_deref()) {
                    return Outcome::cont();
                }
                "hard-bounce"
            }
            EventKind::Complained => "spam-complaint",
            EventKind::Unsubscribed => "unsubscribe",
            _ => return Outcome::cont(),
        };
        let Some(recipient) = event.recipient else {
            return Outcome::cont();
        };
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

export_filter!(Suppression, reusable);
