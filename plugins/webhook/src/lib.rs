//! Event webhooks, at the `event` stage: every event (or the kinds listed) is POSTed as JSON
//! (`docs/events.md`) to the configured URL, signed so that the receiver can check it came
//! from this server and is fresh:
//!
//! - `X-Sluice-Event-Id`: the event's unique id (delivery is at least once: receivers
//!   de-duplicate on it);
//! - `X-Sluice-Timestamp`: Unix seconds when the request was made;
//! - `X-Sluice-Signature`: `v1=` and the hex HMAC-SHA256, under `secret`, of
//!   `<timestamp>.<body>`.
//!
//! A 2xx acknowledges the event. Anything else (another status, a refused connection, a
//! timeout) answers `defer`: the host runs the event again with backoff until it is
//! acknowledged or expires (`delivery.event_expire`), across restarts.
//!
//! The step's `timeout_ms` (default 200 ms) must exceed the plugin's HTTP `timeout_ms`, or
//! slow answers fail the step instead of deferring cleanly.
//!
//! ```toml
//! timeout_ms = 10000                         # the step's wall-clock limit
//! [pipeline.step.capabilities]
//! http = ["https://hooks.example.com"]       # the URL's origin must be granted
//! [pipeline.step.config]
//! url = "https://hooks.example.com/sluice"
//! secret = "a long random string"
//! kinds = ["delivered", "bounced", "opened"] # optional: default every kind
//! timeout_ms = 5000
//! ```

use serde::{Deserialize, Serialize};
use sluice_plugin_sdk::http;
use sluice_plugin_sdk::{Event, Filter, Outcome, Stage, export_filter, host};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub url: String,
    pub secret: String,
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    5000
}

impl Config {
    fn check(&self) -> Result<(), String> {
        http::parse_url(&self.url)?;
        if self.secret.len() < 16 {
            return Err("secret: at least 16 characters".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err("timeout_ms: between 1 and 60000".into());
        }
        Ok(())
    }
}

/// What [`body`] serializes: fields in alphabetical order, as the earlier
/// `serde_json::Value` form wrote them.
#[derive(Serialize)]
struct Body<'a> {
    attributes: BTreeMap<&'a str, &'a str>,
    id: &'a str,
    kind: &'a str,
    message_id: &'a Option<String>,
    queue_id: &'a Option<String>,
    recipient: &'a Option<String>,
    reply: Option<Reply<'a>>,
    sender: &'a str,
    time: u64,
}

#[derive(Serialize)]
struct Reply<'a> {
    code: u16,
    enhanced: &'a str,
    text: &'a str,
}

/// The JSON body of an event (`docs/events.md`); a repeated attribute key keeps its last
/// value.
pub fn body(e: &Event) -> String {
    let body = Body {
        attributes: e
            .attributes
            .iter()
            .map(|a| (a.key.as_str(), a.value.as_str()))
            .collect(),
        id: &e.id,
        kind: e.kind.name(),
        message_id: &e.message_id,
        queue_id: &e.queue_id,
        recipient: &e.recipient,
        reply: e.reply.as_ref().map(|r| Reply {
            code: r.code,
            enhanced: &r.enhanced,
            text: &r.text,
        }),
        sender: &e.sender,
        time: e.time,
    };
    serde_json::to_string(&body).expect("strings and numbers serialize")
}

struct Webhook;

impl Filter for Webhook {
    const STAGES: &'static [Stage] = &[Stage::Event];

    fn configure(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        c.check()
    }

    fn on_event(event: Event) -> Outcome {
        let c: &Config = match sluice_plugin_sdk::config() {
            Ok(c) => c,
            Err(e) => return Outcome::defer(451, "4.3.5", &format!("webhook config: {e}")),
        };
        if !c.kinds.is_empty() && !c.kinds.iter().any(|k| k == event.kind.name()) {
            return Outcome::cont();
        }
        let body = body(&event);
        let timestamp = http::now_seconds();
        let headers = [
            ("content-type", "application/json".to_string()),
            ("user-agent", "Sluice-Webhook/1".to_string()),
            ("x-sluice-event-id", event.id.clone()),
            ("x-sluice-timestamp", timestamp.to_string()),
            (
                "x-sluice-signature",
                http::signature(&c.secret, timestamp, body.as_bytes()),
            ),
        ];
        match http::post(&c.url, &headers, body.as_bytes(), c.timeout_ms, 0) {
            Ok(r) if (200..300).contains(&r.status) => Outcome::cont(),
            Ok(http::Response { status, .. }) => {
                host::log(
                    host::Level::Warn,
                    &format!("event {}: the endpoint answered {status}", event.id),
                );
                Outcome::defer(451, "4.4.1", &format!("webhook endpoint answered {status}"))
            }
            Err(e) => {
                host::log(host::Level::Warn, &format!("event {}: {e}", event.id));
                Outcome::defer(451, "4.4.1", "webhook endpoint unreachable")
            }
        }
    }
}

export_filter!(Webhook, reusable);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::{Attribute, EventKind};

    fn event(reply: Option<sluice_plugin_sdk::Reply>) -> Event {
        let attribute = |key: &str, value: &str| Attribute {
            key: key.into(),
            value: value.into(),
        };
        Event {
            id: "ev-1".into(),
            time: 1_790_000_000_123,
            kind: EventKind::Other("custom.kind".into()),
            queue_id: Some("q1".into()),
            message_id: None,
            sender: "app@example.com".into(),
            recipient: Some("user@example.org".into()),
            reply,
            attributes: vec![
                attribute("z", "last"),
                attribute("a", "\"quoted\"\n"),
                attribute("z", "wins"),
            ],
        }
    }

    fn body_reply() -> sluice_plugin_sdk::Reply {
        sluice_plugin_sdk::Reply {
            code: 550,
            enhanced: "5.1.1".into(),
            text: "no such user".into(),
        }
    }

    #[test]
    fn the_body_is_the_documented_json_with_keys_in_order() {
        assert_eq!(
            body(&event(Some(body_reply()))),
            concat!(
                r#"{"attributes":{"a":"\"quoted\"\n","z":"wins"},"id":"ev-1","#,
                r#""kind":"custom.kind","message_id":null,"queue_id":"q1","#,
                r#""recipient":"user@example.org","#,
                r#""reply":{"code":550,"enhanced":"5.1.1","text":"no such user"},"#,
                r#""sender":"app@example.com","time":1790000000123}"#
            )
        );
        // The same bytes as the `serde_json::Value` form earlier releases sent.
        for e in [event(None), event(Some(body_reply()))] {
            let value = serde_json::json!({
                "id": e.id, "time": e.time, "kind": e.kind.name(), "queue_id": e.queue_id,
                "message_id": e.message_id, "sender": e.sender, "recipient": e.recipient,
                "reply": e.reply.as_ref().map(|r| serde_json::json!(
                    {"code": r.code, "enhanced": r.enhanced, "text": r.text})),
                "attributes": e.attributes.iter()
                    .map(|a| (a.key.clone(), serde_json::Value::String(a.value.clone())))
                    .collect::<serde_json::Map<_, _>>(),
            });
            assert_eq!(body(&e), value.to_string());
        }
        let without: serde_json::Value = serde_json::from_str(&body(&event(None))).unwrap();
        assert_eq!(without["reply"], serde_json::Value::Null);
        assert_eq!(without["kind"], "custom.kind");
    }
}
