//! Property-based fuzzing of MIME edit application (`edits::check` then `edits::apply`) on
//! generated messages: single parts and nested multiparts in every transfer encoding, with
//! boundary-like lines, dots and non-ASCII text in bodies, and random header, text, HTML and
//! part edits with hostile values (CR/LF, boundaries, dots, non-ASCII).
//!
//! Properties: nothing panics; an applied result has only CRLF line ends and no NUL, parses,
//! keeps the part tree (same number of parts) and never gains a header line that no edit
//! asked for (no injection through CR/LF in values).
//!
//! CI runs `FUZZ_CASES` cases (default 64); a long run:
//! `FUZZ_CASES=20000 cargo test --release -p sluice-plugin --test fuzz_edits`.

use mail_parser::MessageParser;
use proptest::prelude::*;
use sluice_core::Envelope;
use sluice_plugin::bindings::types::{Edit, Header, PartBody};
use sluice_plugin::edits::{self, Allowed};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("--b0\r\n--b1--\r\n".to_string()),
        Just(".\r\n..\r\n.".to_string()),
        Just("héllo wörld ✉ 日本".to_string()),
        Just("line\rbare cr\nbare lf".to_string()),
        Just("=3D=\r\n=".to_string()),
        "[ -~]{0,60}",
        prop::collection::vec(any::<char>(), 0..40).prop_map(|v| v.into_iter().collect()),
    ]
}

fn leaf(i: usize) -> impl Strategy<Value = String> {
    let enc = prop::sample::select(vec!["7bit", "8bit", "quoted-printable", "base64", "binary"]);
    let ctype = prop::sample::select(vec![
        "text/plain; charset=utf-8",
        "text/html; charset=iso-8859-1",
        "text/plain",
        "application/octet-stream",
        "image/gif",
    ]);
    (enc, ctype, text()).prop_map(move |(enc, ctype, body)| {
        let body = match enc {
            "base64" => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(body.as_bytes())
            }
            _ => body
                .replace(['\r', '\n'], " ")
                .chars()
                .filter(|c| *c != '\0')
                .collect(),
        };
        format!("Content-Type: {ctype}\r\nContent-Transfer-Encoding: {enc}\r\nX-Part: {i}\r\n\r\n{body}\r\n")
    })
}

fn message() -> impl Strategy<Value = String> {
    let single = leaf(0).prop_map(|p| format!("Subject: single\r\nMIME-Version: 1.0\r\n{p}"));
    let multi = (prop::collection::vec(leaf(1), 1..6), prop::collection::vec(leaf(2), 0..4), any::<bool>())
        .prop_map(|(outer, inner, nest)| {
            let mut m = String::from("Subject: multi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\npreamble\r\n");
            for p in &outer {
                m.push_str("--b0\r\n");
                m.push_str(p);
            }
            if nest && !inner.is_empty() {
                m.push_str("--b0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n");
                for p in &inner {
                    m.push_str("--b1\r\n");
                    m.push_str(p);
                }
                m.push_str("--b1--\r\n");
            }
            m.push_str("--b0--\r\nepilogue\r\n");
            m
        });
    prop_oneof![single, multi]
}

fn edit() -> impl Strategy<Value = Edit> {
    let name = prop::sample::select(vec!["X-Tag", "Subject", "List-Unsubscribe", "X-Spam-Score"]);
    prop_oneof![
        (name.clone(), text()).prop_map(|(n, v)| Edit::AddHeader(Header {
            name: n.into(),
            value: v
        })),
        (name.clone(), text()).prop_map(|(n, v)| Edit::SetHeader(Header {
            name: n.into(),
            value: v
        })),
        name.prop_map(|n| Edit::RemoveHeader(n.into())),
        text().prop_map(Edit::ReplaceText),
        text().prop_map(Edit::ReplaceHtml),
        (0u32..12, text()).prop_map(|(id, body)| Edit::ReplacePart(PartBody { id, body })),
    ]
}

fn header_lines(raw: &[u8]) -> Vec<String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end])
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']) && !l.is_empty())
        .map(|l| l.split(':').next().unwrap_or("").to_ascii_lowercase())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn edits_keep_messages_valid(raw in message(), edits in prop::collection::vec(edit(), 0..6)) {
        let raw = raw.into_bytes();
        let before = MessageParser::default().parse(&raw).map(|m| m.parts.len());
        if edits::check(&edits, Allowed::Content, "render", false).is_err() {
            return Ok(());
        }
        let mut envelope = Envelope::default();
        let result = edits::apply(&raw, &mut envelope.clone(), &edits);
        // With the parse the host already holds, the same result.
        let held = sluice_plugin::message::parser().parse(&raw);
        let with_held = edits::apply_parsed(&raw, held.as_ref(), &mut envelope.clone(), &edits);
        prop_assert_eq!(&result, &with_held);
        let Ok(Some(out)) = edits::apply(&raw, &mut envelope, &edits) else {
            return Ok(());
        };
        for (i, &b) in out.iter().enumerate() {
            prop_assert!(b != 0, "NUL at {}", i);
            if b == b'\r' {
                prop_assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
            }
            if b == b'\n' {
                prop_assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {}", i);
            }
        }
        let parsed = MessageParser::default().parse(&out);
        prop_assert!(parsed.is_some(), "the edited message does not parse");
        if let Some(n) = before {
            prop_assert_eq!(parsed.unwrap().parts.len(), n, "the part tree changed");
        }
        // Every header line of the result existed before or was named by an edit.
        let mut allowed: Vec<String> = header_lines(&raw);
        for e in &edits {
            if let Edit::AddHeader(h) | Edit::SetHeader(h) = e {
                allowed.push(h.name.to_ascii_lowercase());
            }
        }
        allowed.extend(["content-type", "content-transfer-encoding", "mime-version"].map(String::from));
        for h in header_lines(&out) {
            prop_assert!(allowed.contains(&h), "header `{}` appeared from nowhere", h);
        }
    }
}
