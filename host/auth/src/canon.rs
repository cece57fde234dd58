//! DKIM's "relaxed" body canonicalization (RFC 6376, 3.4.4) for the signer, line by line:
//! whitespace runs become one space, whitespace at line ends goes, empty lines at the end
//! go, and a non-empty body ends with CRLF.
//!
//! mail-auth's signer canonicalizes a byte at a time (5% of the sending relay's CPU at
//! 50 KB), and it keeps whitespace-only lines at the end of a body, which RFC 6376 drops
//! ("a \r\n \r\n" is "a\r\n"): verifiers that follow the RFC (dkimpy, and so every
//! Python-based checker) then fail the signature; its verifier, the other way round, fails
//! RFC-conforming signatures on such bodies, so received mail's relaxed body hashes are
//! computed here too. Lines are found with `memchr`; a line
//! with no tab and no double space goes to the digest as one slice.

use crate::digest::BufferedDigest;
use mail_auth::common::headers::{Writable, Writer};
use memchr::{memchr, memmem};

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Writes the relaxed canonical form of `body` to `out`. Lines end at LF (a CR right
/// before it belongs to the line end); a CR anywhere else is text.
pub(crate) fn relaxed_body(body: &[u8], out: &mut impl Writer) {
    let double = memmem::Finder::new(b"  ");
    let mut rest = body;
    // Empty lines seen and not yet written: written once a line with text follows.
    let mut empty = 0usize;
    while !rest.is_empty() {
        let (mut line, next) = match memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        while let [head @ .., last] = line {
            if !is_wsp(*last) {
                break;
            }
            line = head;
        }
        if line.is_empty() {
            empty += 1;
            continue;
        }
        for _ in 0..empty {
            out.write(b"\r\n");
        }
        empty = 0;
        if memchr(b'\t', line).is_none() && double.find(line).is_none() {
            out.write(line);
        } else {
            collapse(line, out);
        }
        out.write(b"\r\n");
    }
}

/// Writes `line` with every run of spaces and tabs as one space.
fn collapse(line: &[u8], out: &mut impl Writer) {
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        if is_wsp(line[i]) {
            let mut end = i + 1;
            while end < line.len() && is_wsp(line[end]) {
                end += 1;
            }
            if end - i > 1 || line[i] == b'\t' {
                out.write(&line[start..i]);
                out.write(b" ");
                start = end;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out.write(&line[start..]);
}

/// The SHA-256 of the relaxed canonical body.
pub(crate) fn relaxed_body_sha256(body: &[u8]) -> aws_lc_rs::digest::Digest {
    let mut digest = BufferedDigest::new(&aws_lc_rs::digest::SHA256);
    relaxed_body(body, &mut digest);
    digest.finish()
}

/// A body to be written in relaxed canonical form (for mail-auth's hashers).
pub(crate) struct RelaxedBody<'a>(pub &'a [u8]);

impl Writable for RelaxedBody<'_> {
    fn write(self, out: &mut impl Writer) {
        relaxed_body(self.0, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        relaxed_body(body, &mut out);
        out
    }

    #[test]
    fn the_rfc_example_and_the_ends_of_bodies() {
        // RFC 6376, 3.4.5.
        assert_eq!(canon(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
        assert_eq!(canon(b""), b"");
        assert_eq!(canon(b"\r\n\r\n"), b"");
        assert_eq!(canon(b"no line end"), b"no line end\r\n");
        assert_eq!(canon(b"bare\nlf\n"), b"bare\r\nlf\r\n");
        // Whitespace-only lines are empty lines, and empty lines at the end go.
        assert_eq!(canon(b"a \r\n \r\n\t\r\n"), b"a\r\n");
        assert_eq!(canon(b"a\r\n \r\nb\r\n"), b"a\r\n\r\nb\r\n");
        assert_eq!(canon(b"\t\tx  y \t z\t\r\n"), b" x y z\r\n");
        assert_eq!(canon(b"cr\rinside\r\n"), b"cr\rinside\r\n");
    }

    /// Where the RFC and mail-auth's canonicalization agree (anything but whitespace-only
    /// lines at the end and CRs that do not end a line), the body hash is mail-auth's
    /// (its `bh=` when it signs the whole message itself).
    #[test]
    fn the_body_hash_of_mail_auth_where_it_follows_the_rfc() {
        use base64::Engine;
        use mail_auth::common::crypto::Ed25519Key;
        use mail_auth::dkim::{Canonicalization, DkimSigner};
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let signer = DkimSigner::from_key(Ed25519Key::from_pkcs8_der(pkcs8.as_ref()).unwrap())
            .domain("example.com")
            .selector("s")
            .headers(["From"])
            .body_canonicalization(Canonicalization::Relaxed);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut body = Vec::new();
            for _ in 0..next() % 12 {
                for _ in 0..next() % 40 {
                    body.push(match next() % 8 {
                        0 | 1 => b' ',
                        2 => b'\t',
                        3 => b'.',
                        _ => b'a' + (next() % 26) as u8,
                    });
                }
                body.extend_from_slice(if next() % 5 == 0 { b"\n" } else { b"\r\n" });
            }
            body.extend_from_slice(b"end");
            if next() % 2 == 0 {
                body.extend_from_slice(b"\r\n\r\n");
            }
            let message = [b"From: a@example.com\r\n\r\n".as_slice(), &body].concat();
            let theirs = signer.sign(&message).unwrap().bh;
            let ours = base64::engine::general_purpose::STANDARD
                .encode(relaxed_body_sha256(&body))
                .into_bytes();
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&body));
        }
    }
}
