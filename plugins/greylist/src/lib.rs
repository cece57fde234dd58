//! Greylisting (RFC 6647) at RCPT: the first attempt of a (client network, sender,
//! recipient) triplet gets `451 4.7.1`; a retry after `delay_seconds` (and within
//! `retry_window_hours`) passes, and the triplet then passes at once for `pass_days`.
//! Networks (/24 for IPv4, /64 for IPv6, so a sender's pool of outgoing servers counts as
//! one) that passed `auto_whitelist_after` times skip greylisting. Authenticated sessions
//! are never greylisted. State lives in the step's key-value namespace, with TTLs.
//!
//! ```toml
//! [[pipeline.step]]
//! name = "greylist"
//! plugin = "greylist.wasm"
//! sha256 = "…"
//! stages = ["rcpt"]
//! [pipeline.step.capabilities]
//! kv = "greylist"
//! [pipeline.step.config]
//! delay_seconds = 300
//! retry_window_hours = 48
//! pass_days = 35
//! auto_whitelist_after = 5      # 0: never
//! ```

use serde::Deserialize;
use sluice_plugin_sdk::{Envelope, Filter, Outcome, SessionInfo, Stage, export_filter, host};
use std::net::IpAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_delay")]
    delay_seconds: u64,
    #[serde(default = "default_window")]
    retry_window_hours: u64,
    #[serde(default = "default_pass")]
    pass_days: u64,
    #[serde(default = "default_auto")]
    auto_whitelist_after: i64,
}

fn default_delay() -> u64 {
    300
}
fn default_window() -> u64 {
    48
}
fn default_pass() -> u64 {
    35
}
fn default_auto() -> i64 {
    5
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client's network: /24 or /64.
fn network(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => ip.to_string(),
    }
}

/// Keys are bounded: long addresses are cut (the namespace has a key size limit).
fn key(prefix: &str, parts: &[&str]) -> String {
    let mut k = String::from(prefix);
    for p in parts {
        k.push('/');
        k.extend(p.to_lowercase().chars().take(120));
    }
    k
}

fn tempfail(text: &str) -> Outcome {
    Outcome::defer(451, "4.7.1", text)
}

struct Greylist;

impl Filter for Greylist {
    const STAGES: &'static [Stage] = &[Stage::Rcpt];

    fn configure(c: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(c).map_err(|e| e.to_string())?;
        if c.retry_window_hours * 3600 <= c.delay_seconds {
            return Err("`retry_window_hours` must be longer than `delay_seconds`".into());
        }
        if c.pass_days == 0 {
            return Err("`pass_days` must be at least 1".into());
        }
        Ok(())
    }

    fn on_rcpt(session: SessionInfo, envelope: Envelope, recipient: String) -> Outcome {
        if session.auth_user.is_some() {
            return Outcome::cont();
        }
        let c = config();
        let net = network(&session.client_ip);
        let white = key("w", &[&net]);
        if c.auto_whitelist_after > 0 {
            match host::kv_get(&white) {
                Ok(Some(v)) if count(&v) >= c.auto_whitelist_after => {
                    return Outcome::cont().symbol("GREYLIST_AUTO_WHITELIST", 0.0);
                }
                Ok(_) => {}
                // The store failed: the step's on_error decides.
                Err(e) => panic!("greylist store: {e:?}"),
            }
        }
        let triplet = key("t", &[&net, &envelope.sender, &recipient]);
        let t = now();
        let first = match host::kv_get(&triplet) {
            Ok(v) => v.map(|v| count(&v) as u64),
            Err(e) => panic!("greylist store: {e:?}"),
        };
        let pass_ttl = c.pass_days * 86_400;
        match first {
            None => {
                set(&triplet, t, c.retry_window_hours * 3600);
                tempfail(&format!(
                    "Greylisted: please try again in {} seconds",
                    c.delay_seconds
                ))
            }
            // `u64::MAX` marks a triplet that passed.
            Some(u64::MAX) => {
                set(&triplet, u64::MAX, pass_ttl);
                Outcome::cont()
            }
            Some(f) if t < f + c.delay_seconds => tempfail(&format!(
                "Greylisted: please try again in {} seconds",
                f + c.delay_seconds - t
            )),
            Some(_) => {
                set(&triplet, u64::MAX, pass_ttl);
                if c.auto_whitelist_after > 0
                    && let Err(e) = host::kv_incr(&white, 1, Some(pass_ttl))
                {
                    panic!("greylist store: {e:?}");
                }
                Outcome::cont().symbol("GREYLIST_PASSED", 0.0)
            }
        }
    }
}

fn count(v: &[u8]) -> i64 {
    match v.len() {
        8 => i64::from_le_bytes(v.try_into().expect("8 bytes")),
        _ => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
    }
}

fn set(key: &str, value: u64, ttl: u64) {
    if let Err(e) = host::kv_set(key, &value.to_le_bytes(), Some(ttl)) {
        panic!("greylist store: {e:?}");
    }
}

export_filter!(Greylist, reusable);
