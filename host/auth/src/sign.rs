//! DKIM signing of sent mail (RFC 6376, RFC 8463): RSA-SHA256 and Ed25519-SHA256 keys per
//! domain, several selectors at once (key rotation), relaxed/relaxed canonicalization (the
//! body by `canon`, the header fields by mail-auth).

use mail_auth::common::crypto::{Algorithm, Ed25519Key, HashOutput, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Headers signed when the configuration names none. `From` is listed twice: a header
/// named more often than it occurs is signed as absent ("over-signing"), so a second
/// `From:` added in transit breaks the signature. Headers absent from the message are
/// signed as absent too (mail-auth adds them to `h=`), so they cannot be added later.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM private key: {0}")]
    Pem(String),
    #[error("unusable key: {0}")]
    Key(String),
}

enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// A signing key with the body hash of the message at hand. The body is hashed here
/// (`canon`, RFC 6376's relaxed canonicalization) and mail-auth sees the header block
/// only: its `hash` call, made for the body alone, gets this one.
struct WithBodyHash<'a, K> {
    key: &'a K,
    body_hash: aws_lc_rs::digest::Digest,
}

impl<K: SigningKey<Hasher = Sha256>> SigningKey for WithBodyHash<'_, K> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.key.sign(input)
    }

    fn hash(&self, _body: impl Writable) -> HashOutput {
        HashOutput::Digest(self.body_hash)
    }

    fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }
}

/// One signing key: a domain and selector (`d=`, `s=`).
pub struct SignKey {
    pub domain: String,
    pub selector: String,
    headers: Vec<String>,
    key: Key,
}

impl SignKey {
    /// From a PEM private key: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    pub fn from_pem(
        domain: &str,
        selector: &str,
        pem: &[u8],
        headers: &[String],
    ) -> Result<SignKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::Pem(e.to_string()))?;
        let headers: Vec<String> = if headers.is_empty() {
            DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
        } else {
            headers.to_vec()
        };
        let key = match &der {
            PrivateKeyDer::Pkcs8(p) => match RsaKey::<Sha256>::from_key_der(der.clone_key()) {
                Ok(rsa) => Key::Rsa(rsa),
                Err(_) => Key::Ed25519(
                    Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                        .map_err(|e| KeyError::Key(e.to_string()))?,
                ),
            },
            PrivateKeyDer::Pkcs1(_) => Key::Rsa(
                RsaKey::<Sha256>::from_key_der(der.clone_key())
                    .map_err(|e| KeyError::Key(e.to_string()))?,
            ),
            _ => return Err(KeyError::Key("neither RSA nor Ed25519".into())),
        };
        Ok(SignKey {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            headers,
            key,
        })
    }

    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// Signs a message given as its header block (with the blank line) and the hash of
    /// its relaxed canonical body.
    fn sign(&self, head: &[u8], body_hash: aws_lc_rs::digest::Digest) -> Result<String, String> {
        let signature = match &self.key {
            Key::Rsa(key) => self.signer(key, body_hash).sign(head),
            Key::Ed25519(key) => self.signer(key, body_hash).sign(head),
        };
        signature
            .map(|s| unfold_last_tag(s.to_header()))
            .map_err(|e| e.to_string())
    }

    fn signer<'a, K: SigningKey<Hasher = Sha256>>(
        &self,
        key: &'a K,
        body_hash: aws_lc_rs::digest::Digest,
    ) -> DkimSigner<WithBodyHash<'a, K>, Done> {
        DkimSigner::from_key(WithBodyHash { key, body_hash })
            .domain(&self.domain)
            .selector(&self.selector)
            .headers(self.headers.iter().cloned())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
    }
}

/// mail-auth may fold the header between the `b=` value and its closing `;`. RFC 6376 has
/// verifiers drop the whitespace around the `b=` value, but some (dkimpy, and so every
/// Python-based checker) keep it, so the signature fails there: write the `;` right after
/// the value.
fn unfold_last_tag(mut header: String) -> String {
    let body = header.trim_end_matches(['\r', '\n']);
    if let Some(before) = body.strip_suffix(';') {
        let value_end = before.trim_end_matches([' ', '\t', '\r', '\n']).len();
        if value_end < before.len() {
            let tail = header[body.len()..].to_string();
            header.truncate(value_end);
            header.push(';');
            header.push_str(&tail);
        }
    }
    header
}

/// Every configured key; signs a message with each key of its `From:` domain.
#[derive(Default)]
pub struct Signer {
    keys: Vec<SignKey>,
}

impl Signer {
    pub fn new(keys: Vec<SignKey>) -> Signer {
        Signer { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `DKIM-Signature` header fields to put on top of `raw`, one per key of the
    /// domain of its (single) `From:` address; empty when there is no such key.
    pub fn sign(&self, raw: &[u8]) -> Result<Vec<u8>, String> {
        if self.keys.is_empty() {
            return Ok(Vec::new());
        }
        let Some(domain) = from_domain(raw) else {
            return Ok(Vec::new());
        };
        let mut keys = self.keys.iter().filter(|k| k.domain == domain).peekable();
        if keys.peek().is_none() {
            return Ok(Vec::new());
        }
        // One body hash for every key of the domain (key rotation signs twice).
        let end = sluice_core::envelope::header_end(raw);
        let body_start = if raw[end..].starts_with(b"\r\n") {
            end + 2
        } else {
            (end + 1).min(raw.len())
        };
        let body_hash = crate::canon::relaxed_body_sha256(&raw[body_start..]);
        let mut out = Vec::new();
        for key in keys {
            out.extend_from_slice(key.sign(&raw[..body_start], body_hash)?.as_bytes());
        }
        Ok(out)
    }
}

/// The lowercased domain of the one address in `From:` (none for several or none).
fn from_domain(raw: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(raw)?;
    let from = message.from()?;
    let mut addresses = from.iter();
    let first = addresses.next()?.address()?;
    if addresses.next().is_some() {
        return None;
    }
    first
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::unfold_last_tag;

    #[test]
    fn the_closing_semicolon_follows_the_signature_value() {
        assert_eq!(
            unfold_last_tag("DKIM-Signature: a=x; b=abc\r\n\tdef==\r\n\t;\r\n".into()),
            "DKIM-Signature: a=x; b=abc\r\n\tdef==;\r\n"
        );
        let kept = "DKIM-Signature: a=x; b=abc==;\r\n";
        assert_eq!(unfold_last_tag(kept.into()), kept);
    }
}
