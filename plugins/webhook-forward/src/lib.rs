//! Inbound mail to an HTTP endpoint (what CloudMailin sells): each message is POSTed,
//! signed like Sluice's event webhooks (`X-Sluice-Timestamp`, `X-Sluice-Signature: v1=<hex
//! HMAC-SHA256 of "<timestamp>.<body>">`), as
//!
//! - `format = "json"` (default): `{"envelope": {"from", "to": [...], "helo",
//!   "remote_ip", "tls", "spf", "queue_id"}, "headers": [{"name", "value"}, ...],
//!   "plain", "html", "attachments": [{"file_name", "content_type", "size", "content"
//!   (base64)}]}`;
//! - `format = "raw"`: the message itself (`Content-Type: message/rfc822`), the envelope in
//!   `X-Sluice-From`, `X-Sluice-To` (comma separated), `X-Sluice-Remote-Ip`, `X-Sluice-Helo`.
//!
//! Subscribed at the `data` stage, the endpoint decides the SMTP reply: 2xx → the message
//! is accepted (250) and, the POST being its delivery, dropped (`deliver = true` delivers it
//! as usual too), 4xx → `550 5.7.1` with the endpoint's text, 5xx, timeout or refused →
//! `451 4.4.1` (the sender retries). Subscribed at the `queued` stage instead, the message
//! gets its 250 first and is forwarded with the host's durable retries (5xx/timeout: later
//! again; 4xx: it bounces). Either way the HTTP status, a body excerpt and the time taken are
//! kept with the message as metadata `forward.status`, `forward.response`, `forward.ms`
//! (in its events, and in the archive when there is one).
//!
//! ```toml
//! [[pipeline.step]]
//! name = "forward"
//! plugin = "webhook_forward.wasm"
//! stages = ["data"]            # or ["queued"]
//! timeout_ms = 35000           # the step's limit must exceed the endpoint's timeout
//! [pipeline.step.capabilities]
//! http = ["https://app.example.com"]
//! [pipeline.step.config]
//! url = "https://app.example.com/incoming"
//! secret = "a long random string"
//! format = "json"
//! timeout_ms = 30000
//! deliver = false
//! ```

use base64::Engine;
use serde::{Deserialize, Serialize};
use sluice_plugin_sdk::http;
use sluice_plugin_sdk::{Filter, Message, Outcome, Stage, Verdict, export_filter, host};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    secret: String,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    /// After a 2xx, also deliver the message as usual (to its mailbox or next hop); by
    /// default the POST is its delivery and the message is then dropped.
    #[serde(default)]
    deliver: bool,
}

fn default_format() -> String {
    "json".into()
}

fn default_timeout() -> u64 {
    30_000
}

impl Config {
    fn check(&self) -> Result<(), String> {
        http::parse_url(&self.url)?;
        if self.secret.len() < 16 {
            return Err("secret: at least 16 characters".into());
        }
        if !matches!(self.format.as_str(), "json" | "raw") {
            return Err(format!("format: `json` or `raw`, not `{}`", self.format));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 120_000 {
            return Err("timeout_ms: between 1 and 120000".into());
        }
        Ok(())
    }
}

/// Largest message forwarded (the JSON form grows it by a third).
const MAX_MESSAGE: u64 = 32 << 20;
/// The response body kept with the message.
const EXCERPT: usize = 256;

#[derive(Serialize)]
struct JsonEnvelope<'a> {
    from: &'a str,
    helo: &'a Option<String>,
    queue_id: &'a str,
    remote_ip: &'a str,
    spf: &'a str,
    tls: &'a Option<String>,
    to: &'a [String],
}

#[derive(Serialize)]
struct JsonHeader<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct JsonAttachment<'a> {
    /// Base64.
    content: String,
    content_type: &'a str,
    file_name: &'a Option<String>,
    size: usize,
}

/// The JSON form: `{"attachments", "envelope", "headers", "html", "plain"}`, fields in
/// alphabetical order at every level (as the earlier `serde_json::Value` form wrote them).
/// The bodies, most of the bytes, are escaped by [`json_string`].
fn json(message: &Message) -> Vec<u8> {
    let envelope = message.envelope();
    let session = message.session();
    let auth = message.auth_results();
    let headers = message.headers();
    let parts = message.parts();
    let mut attachments = Vec::new();
    for p in &parts {
        let attached = p.disposition.as_deref() == Some("attachment") || p.filename.is_some();
        if !attached || p.content_type.starts_with("multipart/") {
            continue;
        }
        let content = sluice_plugin_sdk::read_part(message, p.id);
        attachments.push(JsonAttachment {
            content: base64::engine::general_purpose::STANDARD.encode(&content),
            content_type: &p.content_type,
            file_name: &p.filename,
            size: content.len(),
        });
    }
    let queue_id = message.queue_id();
    let plain = message.text_parts().into_iter().next();
    let html = message.html_parts().into_iter().next();
    let envelope = JsonEnvelope {
        from: &envelope.sender,
        helo: &session.helo,
        queue_id: &queue_id,
        remote_ip: &session.client_ip,
        spf: &auth.spf,
        tls: &session.tls,
        to: &envelope.recipients,
    };
    let headers: Vec<JsonHeader> = headers
        .iter()
        .map(|h| JsonHeader {
            name: &h.name,
            value: &h.value,
        })
        .collect();
    let size = plain.as_ref().map_or(0, String::len) + html.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(size + size / 16 + 4096);
    let serialized = "strings and numbers serialize";
    out.extend_from_slice(b"{\"attachments\":");
    serde_json::to_writer(&mut out, &attachments).expect(serialized);
    out.extend_from_slice(b",\"envelope\":");
    serde_json::to_writer(&mut out, &envelope).expect(serialized);
    out.extend_from_slice(b",\"headers\":");
    serde_json::to_writer(&mut out, &headers).expect(serialized);
    for (key, body) in [(&b",\"html\":"[..], &html), (b",\"plain\":", &plain)] {
        out.extend_from_slice(key);
        match body {
            Some(text) => json_string(&mut out, text),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    out
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it (`\"`, `\\`,
/// `\b \f \n \r \t`, other control characters as `\u00xx`), finding the runs that need
/// nothing eight bytes at a time and going straight to the first byte that needs something
/// (a text body has a CR LF on every line): serde_json's byte-by-byte loop was most of this
/// step's time for a 50 KB message.
fn json_string(out: &mut Vec<u8>, s: &str) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `w` that is a control character, `"` or a backslash.
    // A borrow may also mark bytes above a marked one, never below: the lowest mark is
    // always a byte that needs escaping.
    fn special(w: u64) -> u64 {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let below = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        below | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let (mut clean, mut i) = (0, 0);
    while i < b.len() {
        if let Some(word) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            let marks = special(w);
            if marks == 0 {
                i += 8;
                continue;
            }
            i += (marks.trailing_zeros() / 8) as usize;
        }
        let c = b[i];
        let short = match c {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            _ => None,
        };
        if short.is_some() || c < 0x20 {
            out.extend_from_slice(&b[clean..i]);
            match short {
                Some(e) => out.extend_from_slice(&[b'\\', e]),
                None => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(c >> 4)],
                    HEX[usize::from(c & 0xf)],
                ]),
            }
            clean = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&b[clean..]);
    out.push(b'"');
}

/// What the endpoint said, or why it said nothing; and how long it took.
fn forward(message: &Message, c: &Config) -> (Result<http::Response, String>, u64) {
    let envelope = message.envelope();
    let (body, mut headers) = if c.format == "raw" {
        let session = message.session();
        (
            sluice_plugin_sdk::read_message(message, MAX_MESSAGE),
            vec![
                ("content-type", "message/rfc822".to_string()),
                ("x-sluice-from", envelope.sender.clone()),
                ("x-sluice-to", envelope.recipients.join(", ")),
                ("x-sluice-remote-ip", session.client_ip.clone()),
                ("x-sluice-helo", session.helo.clone().unwrap_or_default()),
            ],
        )
    } else {
        (
            json(message),
            vec![("content-type", "application/json".to_string())],
        )
    };
    let timestamp = http::now_seconds();
    headers.push(("user-agent", "Sluice-Forward/1".into()));
    headers.push(("x-sluice-queue-id", message.queue_id()));
    headers.push(("x-sluice-timestamp", timestamp.to_string()));
    headers.push((
        "x-sluice-signature",
        http::signature(&c.secret, timestamp, &body),
    ));
    let started = std::time::Instant::now();
    let result = http::post(&c.url, &headers, &body, c.timeout_ms, EXCERPT);
    (result, started.elapsed().as_millis() as u64)
}

/// One line of printable text from the endpoint's answer.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text
        .split(['\r', '\n'])
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    line.trim().to_string()
}

fn run(message: &Message) -> Outcome {
    let c: &Config = match sluice_plugin_sdk::config() {
        Ok(c) => c,
        Err(e) => return Outcome::defer(451, "4.3.5", &format!("forward config: {e}")),
    };
    if message.size() > MAX_MESSAGE {
        return Outcome::reject(552, "5.3.4", "Message too big to forward");
    }
    let (result, ms) = forward(message, c);
    let outcome = match &result {
        Ok(r) if (200..300).contains(&r.status) && c.deliver => Outcome::cont(),
        Ok(r) if (200..300).contains(&r.status) => Outcome::cont().verdict(Verdict::Discard),
        Ok(r) if (400..500).contains(&r.status) => {
            let text = excerpt(&r.body);
            let text = if text.is_empty() {
                format!("Refused by the recipient's endpoint ({})", r.status)
            } else {
                text
            };
            Outcome::reject(550, "5.7.1", &text)
        }
        Ok(r) => {
            host::log(
                host::Level::Warn,
                &format!("{}: endpoint answered {}", message.queue_id(), r.status),
            );
            Outcome::defer(451, "4.4.1", "Endpoint unavailable, try again later")
        }
        Err(e) => {
            host::log(host::Level::Warn, &format!("{}: {e}", message.queue_id()));
            Outcome::defer(451, "4.4.1", "Endpoint unavailable, try again later")
        }
    };
    let (status, response) = match &result {
        Ok(r) => (r.status.to_string(), excerpt(&r.body)),
        Err(e) => ("none".to_string(), e.chars().take(200).collect()),
    };
    outcome
        .set_meta("forward.status", &status)
        .set_meta("forward.response", &response)
        .set_meta("forward.ms", &ms.to_string())
}

struct Forward;

impl Filter for Forward {
    const STAGES: &'static [Stage] = &[Stage::Data, Stage::Queued];

    fn configure(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        c.check()
    }

    fn on_data(message: &Message) -> Outcome {
        run(message)
    }

    fn on_queued(message: &Message) -> Outcome {
        run(message)
    }
}

export_filter!(Forward, reusable);

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain text, no escapes at all, longer than a word".into(),
            "\"quoted\" and back\\slash".into(),
            "café, naïve, 日本語 and 🎉 stay UTF-8".into(),
            "\u{7f} is not escaped".into(),
        ];
        // Every control character and every special byte, at every offset in a word.
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}'])
            .collect();
        for c in &specials {
            for at in 0..17 {
                let mut s = "x".repeat(at);
                s.push(*c);
                s.push_str(&"y".repeat(17 - at));
                cases.push(s);
            }
        }
        cases.push(specials.iter().collect());
        cases.push("line one\r\nline two\r\n\ttabbed\r\n".repeat(500));
        // Runs of the bytes on either side of each special one and UTF-8, where a borrow
        // in the word-at-a-time test could mark the wrong byte (a fixed xorshift sequence).
        let alphabet = [
            "\0", "\u{1}", "\u{1f}", " ", "!", "\"", "#", "[", "\\", "]", "\u{7f}", "é", "日",
            "🎉", "a",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            let mut s = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for k in 0..(x % 40) {
                s.push_str(alphabet[((x >> (k % 60)) as usize + k as usize * 7) % alphabet.len()]);
            }
            cases.push(s);
        }
        for s in &cases {
            let mut out = Vec::new();
            json_string(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }
}
