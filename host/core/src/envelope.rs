//! The SMTP envelope: what MAIL FROM and RCPT TO said, including DSN parameters.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What the sender asked to get back in a DSN (`RET=`, RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Headers,
}

/// `NOTIFY=` of one recipient (RFC 3461 §4.1). All false means the parameter was absent,
/// which asks for the default: a DSN on failure only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    fn is_default(&self) -> bool {
        !(self.never || self.success || self.failure || self.delay)
    }

    pub fn on_failure(&self) -> bool {
        !self.never && (self.failure || self.is_default())
    }

    pub fn on_delay(&self) -> bool {
        !self.never && self.delay
    }

    pub fn on_success(&self) -> bool {
        !self.never && self.success
    }

    /// The parameter as written on a RCPT line, `None` when absent.
    pub fn to_param(&self) -> Option<String> {
        if self.never {
            return Some("NEVER".into());
        }
        let mut parts = Vec::new();
        if self.success {
            parts.push("SUCCESS");
        }
        if self.failure {
            parts.push("FAILURE");
        }
        if self.delay {
            parts.push("DELAY");
        }
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

/// One recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub notify: Notify,
    /// `ORCPT=` as received (`addr-type;xtext`).
    pub orcpt: Option<String>,
}

impl Recipient {
    pub fn new(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            notify: Notify::default(),
            orcpt: None,
        }
    }

    pub fn domain(&self) -> String {
        crate::domain_of(&self.address)
    }
}

/// Sender, recipients and message-wide parameters of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse path; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub ret: Option<Ret>,
    /// `ENVID=` as received (xtext decoded).
    pub envid: Option<String>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Metadata plugins set (`set-meta`): tenant, stream, campaign tags. Kept with the
    /// queued message and copied into its events.
    pub meta: Vec<(String, String)>,
}

impl Envelope {
    /// Sets a metadata key (replacing its value).
    pub fn set_meta(&mut self, key: &str, value: &str) {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.to_string(),
            None => self.meta.push((key.to_string(), value.to_string())),
        }
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_null_sender(&self) -> bool {
        self.sender.is_empty()
    }
}

/// Facts about the SMTP session a stage may look at; kept with the queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Name of the listener from the config.
    pub listener: String,
    /// `mx` or `submission`.
    pub role: String,
    pub client_ip: IpAddr,
    pub helo: Option<String>,
    /// TLS protocol and cipher when the session is encrypted.
    pub tls: Option<String>,
    pub auth_user: Option<String>,
}

/// Offset of the blank line that ends a message's header block, CRLF or bare LF (the whole
/// message when there is none): `&raw[..header_end(raw)]` is the header fields with the
/// last one's line break.
pub fn header_end(raw: &[u8]) -> usize {
    let mut pos = 0;
    while pos < raw.len() {
        if raw[pos..].starts_with(b"\r\n") || raw[pos] == b'\n' {
            return pos;
        }
        match raw[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos += i + 1,
            None => return raw.len(),
        }
    }
    raw.len()
}

/// The `Message-ID` header of a message (without angle brackets), read from its header
/// block only.
pub fn message_id(body: &[u8]) -> Option<String> {
    let head = &body[..header_end(body)];
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
            let mut value = String::from_utf8_lossy(&line[11..]).into_owned();
            while let Some(next) = lines.peek() {
                if !matches!(next.first(), Some(b' ' | b'\t')) {
                    break;
                }
                value.push_str(&String::from_utf8_lossy(next));
                lines.next();
            }
            let v = value
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim();
            return (!v.is_empty()).then(|| v.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_block_ends_at_the_first_blank_line() {
        for (raw, end) in [
            (&b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"[..], 12),
            (b"A: 1\nB: 2\n\nbody\n\n", 10),
            (b"A: 1\r\n\nbody", 6),
            (b"\r\nbody", 0),
            (b"A: 1\r\n folded\r\n", 15),
            (b"A: 1", 4),
            (b"", 0),
        ] {
            assert_eq!(header_end(raw), end, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            message_id(b"Subject: x\n\nMessage-ID: <in@body>\n"),
            None,
            "a Message-ID line in the body of an LF-only message is not the header"
        );
    }
}
