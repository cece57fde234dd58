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
//! ```toml
//! [pipeline.step.capabilities]
//! http = ["https://hooks.example.com"]       # the URL's origin must be granted
//! [pipeline.step.config]
//! url = "https://hooks.example.com/sluice"
//! secret = "a long random string"
//! kinds = ["delivered", "bounced", "opened"] # optional: default every kind
//! timeout_ms = 5000
//! ```

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use sluice_plugin_sdk::{Event, Filter, Outcome, Stage, export_filter, host};

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

/// The parts of an http(s) URL a request needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub authority: String,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<Target, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("url: `{url}` is not an http(s) URL"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains(['@', ' ', '#']) || path.contains([' ', '#']) {
        return Err(format!("url: `{url}` is not a usable URL"));
    }
    Ok(Target {
        https,
        authority: authority.to_string(),
        path,
    })
}

impl Config {
    fn check(&self) -> Result<(), String> {
        parse_url(&self.url)?;
        if self.secret.len() < 16 {
            return Err("secret: at least 16 characters".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err("timeout_ms: between 1 and 60000".into());
        }
        Ok(())
    }
}

/// The JSON body of an event (`docs/events.md`).
pub fn body(e: &Event) -> String {
    let reply = e
        .reply
        .as_ref()
        .map(|r| serde_json::json!({"code": r.code, "enhanced": r.enhanced, "text": r.text}));
    let attributes: serde_json::Map<String, serde_json::Value> = e
        .attributes
        .iter()
        .map(|a| (a.key.clone(), serde_json::Value::String(a.value.clone())))
        .collect();
    serde_json::json!({
        "id": e.id,
        "time": e.time,
        "kind": e.kind.name(),
        "queue_id": e.queue_id,
        "message_id": e.message_id,
        "sender": e.sender,
        "recipient": e.recipient,
        "reply": reply,
        "attributes": attributes,
    })
    .to_string()
}

/// `v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body`; the status code, or why there is none.
fn post(config: &Config, headers: &[(&str, String)], body: &str) -> Result<u16, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};
    let target = parse_url(&config.url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(fields);
    request
        .set_method(&wasi::http::types::Method::Post)
        .map_err(|_| "method")?;
    request
        .set_scheme(Some(if target.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|_| "scheme")?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|_| "authority")?;
    request
        .set_path_with_query(Some(&target.path))
        .map_err(|_| "path")?;
    let outgoing = request.body().map_err(|_| "body")?;
    let options = RequestOptions::new();
    let ns = config.timeout_ms * 1_000_000;
    let _ = options.set_connect_timeout(Some(ns));
    let _ = options.set_first_byte_timeout(Some(ns));
    let _ = options.set_between_bytes_timeout(Some(ns));
    let response =
        outgoing_handler::handle(request, Some(options)).map_err(|e| format!("{e:?}"))?;
    {
        let stream = outgoing.write().map_err(|_| "body stream")?;
        for chunk in body.as_bytes().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("sending the body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(r))) => Ok(r.status()),
        Some(Ok(Err(e))) => Err(format!("{e:?}")),
        Some(Err(())) | None => Err("no response".into()),
    }
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Webhook;

impl Filter for Webhook {
    const STAGES: &'static [Stage] = &[Stage::Event];

    fn configure(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        c.check()
    }

    fn on_event(event: Event) -> Outcome {
        let c: Config = match serde_json::from_str(&host::config()) {
            Ok(c) => c,
            Err(e) => return Outcome::defer(451, "4.3.5", &format!("webhook config: {e}")),
        };
        if !c.kinds.is_empty() && !c.kinds.iter().any(|k| k == event.kind.name()) {
            return Outcome::cont();
        }
        let body = body(&event);
        let timestamp = now_seconds();
        let headers = [
            ("content-type", "application/json".to_string()),
            ("user-agent", "Sluice-Webhook/1".to_string()),
            ("x-sluice-event-id", event.id.clone()),
            ("x-sluice-timestamp", timestamp.to_string()),
            ("x-sluice-signature", signature(&c.secret, timestamp, &body)),
        ];
        match post(&c, &headers, &body) {
            Ok(status) if (200..300).contains(&status) => Outcome::cont(),
            Ok(status) => {
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

export_filter!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://hooks.example.com/a/b?c=1").unwrap(),
            Target {
                https: true,
                authority: "hooks.example.com".into(),
                path: "/a/b?c=1".into()
            }
        );
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap().path, "/");
        assert_eq!(parse_url("http://h.example?x=1").unwrap().path, "/?x=1");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://user@x/").is_err());
        assert!(parse_url("https:///x").is_err());
    }

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_and_body() {
        // Computed independently:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'k3y-k3y-k3y-k3y!'
        assert_eq!(
            signature("k3y-k3y-k3y-k3y!", 1_700_000_000, "{\"a\":1}"),
            format!("v1={}", OPENSSL)
        );
    }

    const OPENSSL: &str = "d62f7503cca968563b8fd420cebe0b09ce114d40ce8849187755dd2104fc71b1";
}
