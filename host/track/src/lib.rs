//! Tracking tokens: what the link-tracking plugin puts in rewritten links, open pixels and
//! unsubscribe URLs (through the host's `tracking-url` call), and what the HTTP listener's
//! `/c/`, `/o/` and `/u/` endpoints accept.
//!
//! A token carries the message (queue id), the recipient, the link's index and, for a click,
//! the URL the link stood for, plus what routes the message's events (listener, whether the
//! session was authenticated). It is signed with HMAC-SHA256 under the current key and
//! accepted under the current or a previous key (rotation). The URL is inside the signed
//! payload, so `/c/` redirects only to a URL that was in the message, and only an http(s)
//! URL without control characters or spaces is ever signed (no header injection).
//!
//! The payload is readable by whoever holds the link (base64, not encrypted): it holds the
//! recipient's own address and a link from the message they received.
//!
//! [`verp`] signs the VERP return paths of outbound mail with the same kind of keys.

pub mod verp;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Where a token leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/c/`: a rewritten link; redirects to its URL.
    Click,
    /// `/o/`: the open pixel.
    Open,
    /// `/u/`: the unsubscribe page (GET) and one-click unsubscribe (POST, RFC 8058).
    Unsubscribe,
}

impl Kind {
    /// The path segment of the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Kind::Click => "c",
            Kind::Open => "o",
            Kind::Unsubscribe => "u",
        }
    }

    fn code(self) -> u8 {
        match self {
            Kind::Click => 0,
            Kind::Open => 1,
            Kind::Unsubscribe => 2,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        [Kind::Click, Kind::Open, Kind::Unsubscribe]
            .into_iter()
            .find(|k| k.code() == c)
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub queue_id: String,
    pub recipient: String,
    /// The link's position in the message (0 for opens and unsubscribes).
    pub link: u32,
    /// The original URL (clicks only).
    pub url: Option<String>,
    /// The listener the message came in on: events of the hit go to the same event chains
    /// as the message's other events.
    pub listener: Option<String>,
    pub authenticated: bool,
}

/// Why a token cannot be made.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not an absolute http(s) URL, or it holds spaces or control characters.
    BadUrl,
    /// A click needs its URL; other kinds have none.
    UrlMismatch,
    /// A field is longer than a token allows.
    TooLong(&'static str),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::BadUrl => f.write_str(
                "only absolute http(s) URLs without spaces or control characters are tracked",
            ),
            TokenError::UrlMismatch => {
                f.write_str("a click needs its URL, opens and unsubscribes take none")
            }
            TokenError::TooLong(what) => write!(f, "{what} too long for a tracking token"),
        }
    }
}

impl std::error::Error for TokenError {}

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
/// Longest URL a click token carries.
pub const MAX_URL: usize = 2048;
/// Longest token text accepted (a 2048-byte URL and every other field at its longest fit).
const MAX_TOKEN: usize = 4096;

/// Whether `url` may be tracked: absolute http or https, printable ASCII without spaces.
pub fn trackable(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        && url.len() > lower.find("//").map_or(0, |i| i + 2)
        && url.len() <= MAX_URL
        && url.bytes().all(|b| b.is_ascii_graphic())
}

/// The signing keys: the first signs, every one verifies.
pub struct Keys {
    keys: Vec<hmac::Key>,
}

impl Keys {
    /// `current` signs new tokens; tokens signed under `previous` keys are still accepted.
    pub fn new(current: &[u8], previous: &[Vec<u8>]) -> Keys {
        let keys = std::iter::once(current)
            .chain(previous.iter().map(Vec::as_slice))
            .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k))
            .collect();
        Keys { keys }
    }

    /// The token text (URL-safe base64) for `t`.
    pub fn sign(&self, t: &Token) -> Result<String, TokenError> {
        match (t.kind, &t.url) {
            (Kind::Click, Some(url)) if !trackable(url) => return Err(TokenError::BadUrl),
            (Kind::Click, Some(_)) => {}
            (Kind::Click, None) | (_, Some(_)) => return Err(TokenError::UrlMismatch),
            _ => {}
        }
        let mut p = Vec::with_capacity(64 + t.url.as_ref().map_or(0, String::len));
        p.push(VERSION);
        p.push(t.kind.code());
        p.push(u8::from(t.authenticated) | if t.listener.is_some() { 2 } else { 0 });
        p.extend_from_slice(&t.link.to_le_bytes());
        short(&mut p, &t.queue_id, "queue id")?;
        short(&mut p, &t.recipient, "recipient")?;
        if let Some(l) = &t.listener {
            short(&mut p, l, "listener")?;
        }
        if let Some(url) = &t.url {
            p.extend_from_slice(url.as_bytes());
        }
        let mac = hmac::sign(&self.keys[0], &p);
        p.extend_from_slice(&mac.as_ref()[..MAC_LEN]);
        Ok(URL_SAFE_NO_PAD.encode(p))
    }

    /// The token `text` says, when one of the keys signed it and it is of `kind`.
    pub fn verify(&self, text: &str, kind: Kind) -> Option<Token> {
        if text.len() > MAX_TOKEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        let (p, mac) = raw.split_at(raw.len().checked_sub(MAC_LEN)?);
        let signed = self
            .keys
            .iter()
            .any(|k| same_mac(&hmac::sign(k, p).as_ref()[..MAC_LEN], mac));
        if !signed {
            return None;
        }
        let mut r = Reader(p);
        if r.byte()? != VERSION || Kind::from_code(r.byte()?)? != kind {
            return None;
        }
        let flags = r.byte()?;
        let link = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let queue_id = r.short()?;
        let recipient = r.short()?;
        let listener = if flags & 2 != 0 {
            Some(r.short()?)
        } else {
            None
        };
        let url = match kind {
            Kind::Click => Some(String::from_utf8(r.0.to_vec()).ok()?),
            _ if r.0.is_empty() => None,
            _ => return None,
        };
        // Signed tokens were checked when made; this guards against a leaked key only.
        if url.as_deref().is_some_and(|u| !trackable(u)) {
            return None;
        }
        Some(Token {
            kind,
            queue_id,
            recipient,
            link,
            url,
            listener,
            authenticated: flags & 1 != 0,
        })
    }
}

fn short(p: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), TokenError> {
    let len = u8::try_from(s.len()).map_err(|_| TokenError::TooLong(what))?;
    p.push(len);
    p.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn short(&mut self) -> Option<String> {
        let n = self.byte()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The key-value namespace where the host keeps each tracked message's [`Context`].
pub const CONTEXT_NAMESPACE: &str = "sluice.tracking";

/// What the host remembers of a tracked message (once per message, for as long as its
/// links are honoured), so that the events of hits carry what the message's other events
/// carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub message_id: Option<String>,
    pub sender: String,
    /// The message's metadata (tenant, stream, campaign).
    pub attributes: Vec<(String, String)>,
}

/// Whether two MACs (or their truncations) are equal, in time that does not depend on
/// where they differ.
pub(crate) fn same_mac(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click() -> Token {
        Token {
            kind: Kind::Click,
            queue_id: "01A2B3".into(),
            recipient: "bob@example.net".into(),
            link: 3,
            url: Some("https://shop.example/p?a=1&b=%20x".into()),
            listener: Some("submission".into()),
            authenticated: true,
        }
    }

    #[test]
    fn a_signed_token_reads_back_under_its_kind_only() {
        let keys = Keys::new(b"k1 k1 k1 k1 k1 k1 k1 k1 k1 k1 k1", &[]);
        let text = keys.sign(&click()).unwrap();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(keys.verify(&text, Kind::Click), Some(click()));
        assert_eq!(keys.verify(&text, Kind::Open), None);
        let open = Token {
            kind: Kind::Open,
            url: None,
            listener: None,
            authenticated: false,
            ..click()
        };
        let t = keys.sign(&open).unwrap();
        assert_eq!(keys.verify(&t, Kind::Open), Some(open));
    }

    #[test]
    fn altered_or_foreign_tokens_are_refused() {
        let keys = Keys::new(b"current", &[]);
        let text = keys.sign(&click()).unwrap();
        // Every single-character change is refused.
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            if altered != text {
                assert_eq!(keys.verify(&altered, Kind::Click), None, "position {i}");
            }
        }
        assert_eq!(Keys::new(b"other", &[]).verify(&text, Kind::Click), None);
        assert_eq!(keys.verify("", Kind::Click), None);
        assert_eq!(keys.verify("!!!", Kind::Click), None);
        assert_eq!(keys.verify(&"A".repeat(5000), Kind::Click), None);
    }

    #[test]
    fn rotation_accepts_tokens_of_the_previous_key() {
        let old = Keys::new(b"old", &[]);
        let text = old.sign(&click()).unwrap();
        let rotated = Keys::new(b"new", &[b"old".to_vec()]);
        assert_eq!(rotated.verify(&text, Kind::Click), Some(click()));
        let fresh = rotated.sign(&click()).unwrap();
        assert_ne!(fresh, text, "new tokens use the new key");
        assert_eq!(old.verify(&fresh, Kind::Click), None);
    }

    #[test]
    fn only_plain_http_urls_are_signed() {
        let keys = Keys::new(b"k", &[]);
        for bad in [
            "javascript:alert(1)",
            "https://x.example/\r\nSet-Cookie: a=b",
            "https://x.example/a b",
            "//x.example/",
            "https://",
            "mailto:a@b.example",
        ] {
            let t = Token {
                url: Some(bad.into()),
                ..click()
            };
            assert_eq!(keys.sign(&t), Err(TokenError::BadUrl), "{bad}");
        }
        let t = Token {
            url: None,
            ..click()
        };
        assert_eq!(keys.sign(&t), Err(TokenError::UrlMismatch));
        assert!(trackable("HTTP://X.EXAMPLE/"));
    }
}
