//! What each authenticated user may send (the "Cloud SMTP" product's sending controls):
//! authorized senders, checked on MAIL FROM and on the `From:` header, and per-user limits on
//! recipients per message, attachments per message, message size and messages per hour.
//! Sessions without AUTH are not this step's business (it answers `continue`).
//!
//! | check | stage | reply |
//! | --- | --- | --- |
//! | MAIL FROM not among `from` | mail | `550 5.7.1 Sender <a> not allowed for user u` |
//! | more than `max_recipients` | rcpt | `452 4.5.3 Too many recipients (limit N)` (RFC 5321: the client sends the rest in another transaction) |
//! | a `From:` address not among `from` | data | `550 5.7.1 From: address <a> not allowed for user u` |
//! | more than `max_attachments` | data | `550 5.7.1 Too many attachments (n, limit N)` |
//! | larger than `max_message_bytes` | data | `552 5.3.4 Message too big for user u (limit N bytes)` |
//! | `messages_per_hour` reached | data | `451 4.7.1 Hourly sending limit of N messages reached, try again later` |
//!
//! `from` entries are addresses (`noreply@example.com`) or domains with their subdomains
//! (`@example.com`); the null sender is allowed only when `from` lists `<>`. A user not in
//! `users` gets `default` when there is one, or is refused (`550 5.7.1`). The hourly counter
//! is kept in the step's key-value namespace (one key per user and clock hour, with a TTL).
//!
//! ```toml
//! [pipeline.step.config.users.app]
//! from = ["@example.com", "billing@example.org"]
//! max_recipients = 50
//! max_attachments = 10
//! max_message_bytes = 10485760
//! messages_per_hour = 1000
//! ```

use serde::Deserialize;
use sluice_plugin_sdk::{
    Envelope, Filter, Message, Outcome, SessionInfo, Stage, export_filter, host,
};
use std::collections::BTreeMap;

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(default)]
    from: Vec<String>,
    max_recipients: Option<u32>,
    max_attachments: Option<u32>,
    max_message_bytes: Option<u64>,
    messages_per_hour: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    users: BTreeMap<String, Rules>,
    default: Option<Rules>,
}

impl Config {
    fn rules(&self, user: &str) -> Option<&Rules> {
        self.users.get(user).or(self.default.as_ref())
    }
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
}

/// Whether `address` is among `allowed` (addresses, or `@domain` with subdomains; `<>` for
/// the null sender).
fn allowed(allowed: &[String], address: &str) -> bool {
    let address = address.trim().to_ascii_lowercase();
    if address.is_empty() {
        return allowed.iter().any(|a| a == "<>");
    }
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    allowed.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_prefix('@') {
            Some(d) => domain == d || domain.ends_with(&format!(".{d}")),
            None => a == address,
        }
    })
}

/// The addresses of a decoded `From:` value (`Name <a@b>, c@d`).
fn from_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        out.push(rest[open + 1..open + close].trim().to_string());
        rest = &rest[open + close + 1..];
    }
    if out.is_empty() {
        out.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|a| a.contains('@'))
                .map(str::to_string),
        );
    }
    out
}

fn refused_user(user: &str) -> Outcome {
    Outcome::reject(
        550,
        "5.7.1",
        &format!("User {user} has no sending rights here"),
    )
}

struct SenderPolicy;

impl Filter for SenderPolicy {
    const STAGES: &'static [Stage] = &[Stage::Mail, Stage::Rcpt, Stage::Data];

    fn configure(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let named = c.users.iter().map(|(u, r)| (u.as_str(), r));
        for (user, rules) in named.chain(c.default.iter().map(|d| ("default", d))) {
            for f in &rules.from {
                let ok = f == "<>"
                    || f.strip_prefix('@')
                        .is_some_and(|d| d.contains('.') && !d.contains('@'))
                    || f.split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
                if !ok {
                    return Err(format!(
                        "{user}: from: `{f}` is neither an address, `@domain` nor `<>`"
                    ));
                }
            }
        }
        Ok(())
    }

    fn on_mail(session: SessionInfo, envelope: Envelope) -> Outcome {
        let Some(user) = session.auth_user else {
            return Outcome::cont();
        };
        let c = config();
        let Some(rules) = c.rules(&user) else {
            return refused_user(&user);
        };
        if !allowed(&rules.from, &envelope.sender) {
            return Outcome::reject(
                550,
                "5.7.1",
                &format!("Sender <{}> not allowed for user {user}", envelope.sender),
            );
        }
        Outcome::cont()
    }

    fn on_rcpt(session: SessionInfo, envelope: Envelope, _recipient: String) -> Outcome {
        let Some(user) = session.auth_user else {
            return Outcome::cont();
        };
        let c = config();
        let Some(rules) = c.rules(&user) else {
            return refused_user(&user);
        };
        if let Some(max) = rules.max_recipients
            && envelope.recipients.len() as u64 >= u64::from(max)
        {
            return Outcome::defer(452, "4.5.3", &format!("Too many recipients (limit {max})"));
        }
        Outcome::cont()
    }

    fn on_data(message: &Message) -> Outcome {
        let Some(user) = message.session().auth_user else {
            return Outcome::cont();
        };
        let c = config();
        let Some(rules) = c.rules(&user) else {
            return refused_user(&user);
        };
        for value in message.header("From") {
            for address in from_addresses(&value) {
                if !allowed(&rules.from, &address) {
                    return Outcome::reject(
                        550,
                        "5.7.1",
                        &format!("From: address <{address}> not allowed for user {user}"),
                    );
                }
            }
        }
        if let Some(max) = rules.max_message_bytes
            && message.size() > max
        {
            return Outcome::reject(
                552,
                "5.3.4",
                &format!("Message too big for user {user} (limit {max} bytes)"),
            );
        }
        if let Some(max) = rules.max_attachments {
            let n = message.attachments().len();
            if n as u64 > u64::from(max) {
                return Outcome::reject(
                    550,
                    "5.7.1",
                    &format!("Too many attachments ({n}, limit {max})"),
                );
            }
        }
        if let Some(max) = rules.messages_per_hour {
            let hour = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / 3600);
            match host::kv_incr(&format!("hourly/{user}/{hour}"), 1, Some(7200)) {
                Ok(n) if n > i64::from(max) => {
                    return Outcome::defer(
                        451,
                        "4.7.1",
                        &format!("Hourly sending limit of {max} messages reached, try again later"),
                    );
                }
                Ok(_) => {}
                // The counter store failed: the step's on_error decides.
                Err(e) => panic!("hourly counter: {e:?}"),
            }
        }
        Outcome::cont()
    }
}

export_filter!(SenderPolicy, reusable);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders() {
        let list = vec![
            "@example.com".to_string(),
            "billing@example.org".to_string(),
        ];
        assert!(allowed(&list, "app@example.com"));
        assert!(allowed(&list, "App@Mail.Example.com"));
        assert!(allowed(&list, "billing@example.org"));
        assert!(!allowed(&list, "other@example.org"));
        assert!(!allowed(&list, "x@notexample.com"));
        assert!(!allowed(&list, ""));
        assert!(allowed(&["<>".to_string()], ""));
    }

    #[test]
    fn from_values() {
        assert_eq!(
            from_addresses("App <app@example.com>, \"B, C\" <b@example.org>"),
            vec!["app@example.com", "b@example.org"]
        );
        assert_eq!(from_addresses("app@example.com"), vec!["app@example.com"]);
    }
}
