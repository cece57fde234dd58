//! The suppression list seen from the host: the entries the `suppression` plugin keeps in
//! the key-value namespace `suppression` (key `<stream>/<address>`, JSON value), listed,
//! added, removed and exported by the admin API and the CLI.

use serde::{Deserialize, Serialize};
use sluice_store::{KvLimits, KvStore, StoreError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The key-value namespace the plugin is granted.
pub const NAMESPACE: &str = "suppression";

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    HardBounce,
    SpamComplaint,
    Unsubscribe,
    Manual,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::HardBounce => "hard-bounce",
            Reason::SpamComplaint => "spam-complaint",
            Reason::Unsubscribe => "unsubscribe",
            Reason::Manual => "manual",
        }
    }
}

/// Who asked for it (Postmark's origins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The recipient: a bounce, a complaint, an unsubscribe.
    Recipient,
    /// The sending application, through the API.
    Customer,
    /// An operator, through the CLI.
    Admin,
}

impl Origin {
    pub fn as_str(&self) -> &'static str {
        match self {
            Origin::Recipient => "recipient",
            Origin::Customer => "customer",
            Origin::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    reason: Reason,
    origin: Origin,
    time: u64,
}

/// One entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Suppression {
    pub address: String,
    pub reason: Reason,
    pub origin: Origin,
    /// Unix seconds.
    pub time: u64,
}

/// A stream name: 1 to 64 of `a-z 0-9 - _` (what the plugin accepts).
pub fn valid_stream(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An address as stored: trimmed, lowercase; `None` when it cannot be one.
pub fn normalize_address(a: &str) -> Option<String> {
    let a = a.trim().to_lowercase();
    let ok = (3..=254).contains(&a.len())
        && a.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '/');
    ok.then_some(a)
}

fn key(stream: &str, address: &str) -> String {
    format!("{stream}/{address}")
}

/// A page of a stream's entries, by address.
pub fn list(
    kv: &dyn KvStore,
    stream: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Suppression>, Option<String>), StoreError> {
    let prefix = format!("{stream}/");
    let after = after.map(|a| key(stream, a));
    let page = kv.scan(NAMESPACE, &prefix, after.as_deref(), limit)?;
    let entries = page
        .entries
        .into_iter()
        .filter_map(|(k, v)| {
            let s: Stored = serde_json::from_slice(&v).ok()?;
            Some(Suppression {
                address: k.strip_prefix(&prefix)?.to_string(),
                reason: s.reason,
                origin: s.origin,
                time: s.time,
            })
        })
        .collect();
    let next = page
        .next
        .and_then(|k| k.strip_prefix(&prefix).map(str::to_string));
    Ok((entries, next))
}

/// Adds (or replaces) an entry.
pub fn add(
    kv: &dyn KvStore,
    stream: &str,
    address: &str,
    reason: Reason,
    origin: Origin,
) -> Result<Suppression, StoreError> {
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let value = serde_json::to_vec(&Stored {
        reason,
        origin,
        time,
    })
    .expect("entry serialises");
    let limits = KvLimits {
        max_total: u64::MAX,
        ..KvLimits::default()
    };
    kv.set(NAMESPACE, &key(stream, address), &value, None, &limits)?;
    Ok(Suppression {
        address: address.to_string(),
        reason,
        origin,
        time,
    })
}

/// Removes an entry; false when there was none.
pub fn remove(kv: &dyn KvStore, stream: &str, address: &str) -> Result<bool, StoreError> {
    kv.delete(NAMESPACE, &key(stream, address))
}

/// The whole stream as CSV (`address,reason,origin,time`).
pub fn export_csv(kv: &dyn KvStore, stream: &str) -> Result<String, StoreError> {
    let mut out = String::from("address,reason,origin,time\n");
    let mut after: Option<String> = None;
    loop {
        let (entries, next) = list(kv, stream, after.as_deref(), 1000)?;
        for e in &entries {
            out.push_str(&format!(
                "{},{},{},{}\n",
                csv_field(&e.address),
                e.reason.as_str(),
                e.origin.as_str(),
                e.time
            ));
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Quotes a field that needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_export_remove() {
        let kv = sluice_store::kv::MemoryKv::default();
        add(
            &kv,
            "outbound",
            "a@example.com",
            Reason::Manual,
            Origin::Admin,
        )
        .unwrap();
        add(
            &kv,
            "outbound",
            "b@example.com",
            Reason::HardBounce,
            Origin::Recipient,
        )
        .unwrap();
        add(
            &kv,
            "other",
            "c@example.com",
            Reason::Unsubscribe,
            Origin::Customer,
        )
        .unwrap();
        let (page, next) = list(&kv, "outbound", None, 1).unwrap();
        assert_eq!(page[0].address, "a@example.com");
        let (page2, _) = list(&kv, "outbound", next.as_deref(), 10).unwrap();
        assert_eq!(page2[0].address, "b@example.com");
        let csv = export_csv(&kv, "outbound").unwrap();
        assert!(
            csv.contains("b@example.com,hard-bounce,recipient,"),
            "{csv}"
        );
        assert!(!csv.contains("c@example.com"));
        assert!(remove(&kv, "outbound", "a@example.com").unwrap());
        assert!(!remove(&kv, "outbound", "a@example.com").unwrap());
        assert_eq!(
            normalize_address(" Bob@Example.COM "),
            Some("bob@example.com".into())
        );
        assert_eq!(normalize_address("no-at-sign"), None);
        assert_eq!(normalize_address("a/b@c"), None);
        assert!(valid_stream("outbound") && !valid_stream("Out bound") && !valid_stream(""));
    }
}
