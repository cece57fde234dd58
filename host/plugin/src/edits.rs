//! Applying plugin edits once, after a stage: header changes on the raw header block, text
//! and HTML part replacement (re-encoded as quoted-printable UTF-8), and envelope changes.
//! The result is valid MIME: header values are unfolded of CR/LF, non-ASCII values are
//! RFC 2047 encoded, and replaced parts get matching `Content-Type` charset and
//! `Content-Transfer-Encoding`.

use crate::bindings::types::{Edit, Header};
use base64::Engine;
use mail_parser::MessageParser;
use sluice_core::{Envelope, Recipient};

/// Applies `edits`; returns the new message when it changed.
pub fn apply(raw: &[u8], envelope: &mut Envelope, edits: &[Edit]) -> Option<Vec<u8>> {
    let mut text = None;
    let mut html = None;
    let mut header_edits = Vec::new();
    for e in edits {
        match e {
            Edit::ReplaceText(t) => text = Some(t.as_str()),
            Edit::ReplaceHtml(h) => html = Some(h.as_str()),
            Edit::AddRecipient(a) => {
                if !envelope
                    .recipients
                    .iter()
                    .any(|r| r.address.eq_ignore_ascii_case(a))
                {
                    envelope.recipients.push(Recipient::new(clean(a)));
                }
            }
            Edit::RemoveRecipient(a) => envelope
                .recipients
                .retain(|r| !r.address.eq_ignore_ascii_case(a)),
            Edit::SetSender(s) => envelope.sender = clean(s),
            other => header_edits.push(other),
        }
    }
    if text.is_none() && html.is_none() && header_edits.is_empty() {
        return None;
    }
    let mut out = raw.to_vec();
    if let Some(t) = text {
        out = replace_part(&out, t, false).unwrap_or(out);
    }
    if let Some(h) = html {
        out = replace_part(&out, h, true).unwrap_or(out);
    }
    let (head, body) = split(&out);
    let mut fields = Fields::parse(head);
    for e in header_edits {
        match e {
            Edit::AddHeader(h) => fields.add(h),
            Edit::SetHeader(h) => fields.set(h),
            Edit::RemoveHeader(n) => fields.remove(n),
            _ => {}
        }
    }
    let mut result = fields.render();
    result.extend_from_slice(body);
    Some(result)
}

/// Addresses come from plugins: no CR, LF, angle brackets or spaces.
fn clean(a: &str) -> String {
    a.chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '<' | '>' | ' '))
        .collect()
}

/// Header block (without the blank line) and body (after it).
fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    match memchr_find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i + 2], &raw[i + 4..]),
        None => (raw, &[]),
    }
}

fn memchr_find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Header fields, each with its raw text (continuation lines included).
struct Fields {
    fields: Vec<(String, Vec<u8>)>,
}

impl Fields {
    fn parse(head: &[u8]) -> Fields {
        let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
        for line in head.split_inclusive(|&b| b == b'\n') {
            if matches!(line.first(), Some(b' ' | b'\t'))
                && let Some(last) = fields.last_mut()
            {
                last.1.extend_from_slice(line);
                continue;
            }
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map(|i| {
                    String::from_utf8_lossy(&line[..i])
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            fields.push((name, line.to_vec()));
        }
        Fields { fields }
    }

    fn line(h: &Header) -> (String, Vec<u8>) {
        let name: String = h
            .name
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != ':')
            .collect();
        let value = encode_value(&h.value);
        (
            name.to_ascii_lowercase(),
            fold(&format!("{name}: {value}")).into_bytes(),
        )
    }

    fn add(&mut self, h: &Header) {
        self.fields.insert(0, Self::line(h));
    }

    fn set(&mut self, h: &Header) {
        let line = Self::line(h);
        match self.fields.iter().position(|f| f.0 == line.0) {
            Some(i) => {
                self.fields.retain(|f| f.0 != line.0);
                self.fields.insert(i.min(self.fields.len()), line);
            }
            None => self.fields.insert(0, line),
        }
    }

    fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.fields.retain(|f| f.0 != name);
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, raw) in &self.fields {
            out.extend_from_slice(raw);
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A header value safe to write: no CR/LF, non-ASCII as RFC 2047 encoded words.
fn encode_value(v: &str) -> String {
    let v: String = v
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if v.is_ascii() {
        return v;
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in v.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?utf-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Folds a header line at spaces to stay under 78 characters where possible; ends in CRLF.
fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut len = 0;
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            if len + 1 + word.len() > 76 && len > 0 {
                out.push_str("\r\n ");
                len = 1;
            } else {
                out.push(' ');
                len += 1;
            }
        }
        out.push_str(word);
        len += word.len();
    }
    out.push_str("\r\n");
    out
}

/// Replaces the first text/plain (or text/html) part's content.
fn replace_part(raw: &[u8], content: &str, html: bool) -> Option<Vec<u8>> {
    let msg = MessageParser::default().parse(raw)?;
    let part_id = if html {
        *msg.html_body.first()?
    } else {
        *msg.text_body.first()?
    };
    let part = msg.parts.get(part_id as usize)?;
    // A text/html body can be found as the conversion of a text part and vice versa: only
    // replace a part of the wanted type.
    let is_html = matches!(part.body, mail_parser::PartType::Html(_));
    if is_html != html {
        return None;
    }
    let (hs, bs, be) = (
        part.offset_header as usize,
        part.offset_body as usize,
        part.offset_end as usize,
    );
    let head = raw.get(hs..bs)?;
    let head = head.strip_suffix(b"\r\n").unwrap_or(head);
    let mut fields = Fields::parse(head);
    let subtype = if html { "html" } else { "plain" };
    fields.set(&Header {
        name: "Content-Type".into(),
        value: format!("text/{subtype}; charset=utf-8"),
    });
    fields.set(&Header {
        name: "Content-Transfer-Encoding".into(),
        value: "quoted-printable".into(),
    });
    let mut out = Vec::with_capacity(raw.len() + content.len());
    out.extend_from_slice(&raw[..hs]);
    out.extend_from_slice(&fields.render());
    let normalized = content.replace("\r\n", "\n").replace('\n', "\r\n");
    out.extend_from_slice(quoted_printable::encode(normalized.as_bytes()).as_slice());
    let rest = &raw[be.min(raw.len())..];
    if !rest.starts_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> mail_parser::Message<'_> {
        MessageParser::default().parse(raw).expect("parses")
    }

    #[test]
    fn header_edits_keep_the_message_valid() {
        let raw = b"Received: x\r\nSubject: hi\r\nX-Old: 1\r\nX-Old: 2\r\n\r\nbody\r\n";
        let mut env = Envelope::default();
        let out = apply(
            raw,
            &mut env,
            &[
                Edit::AddHeader(Header {
                    name: "X-Tag".into(),
                    value: "a\r\nInjected: yes".into(),
                }),
                Edit::SetHeader(Header {
                    name: "Subject".into(),
                    value: "héllo wörld".into(),
                }),
                Edit::RemoveHeader("x-old".into()),
            ],
        )
        .unwrap();
        let m = parse(&out);
        assert_eq!(m.subject(), Some("héllo wörld"));
        assert!(m.header_raw("X-Old").is_none());
        assert!(
            m.header_raw("Injected").is_none(),
            "CR/LF in a value must not inject"
        );
        assert_eq!(m.body_text(0).unwrap().trim(), "body");
        assert!(out.starts_with(b"X-Tag: a  Injected: yes\r\n"));
    }

    #[test]
    fn replacing_parts_of_a_multipart_message() {
        let raw = concat!(
            "Subject: m\r\nMIME-Version: 1.0\r\n",
            "Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\n\r\nold text\r\n",
            "--b\r\nContent-Type: text/html\r\n\r\n<p>old</p>\r\n",
            "--b--\r\n"
        );
        let mut env = Envelope::default();
        let out = apply(
            raw.as_bytes(),
            &mut env,
            &[
                Edit::ReplaceText("new text ✓ with a long line that must be wrapped because quoted printable lines are limited to seventy-six characters".into()),
                Edit::ReplaceHtml("<p>new <a href=\"https://t.example/c?u=1\">link</a></p>".into()),
            ],
        )
        .unwrap();
        let m = parse(&out);
        assert!(
            m.body_text(0)
                .unwrap()
                .starts_with("new text ✓ with a long line")
        );
        assert_eq!(
            m.body_html(0).unwrap().trim(),
            "<p>new <a href=\"https://t.example/c?u=1\">link</a></p>"
        );
        assert_eq!(m.parts.len(), 3);
        for line in out.split(|&b| b == b'\n') {
            assert!(
                line.len() <= 78,
                "line too long: {}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn replacing_the_text_of_a_single_part_message_and_envelope_edits() {
        let raw =
            b"From: a@b\r\nSubject: s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nold\r\n";
        let mut env = Envelope {
            sender: "a@b".into(),
            recipients: vec![Recipient::new("x@y")],
            ..Envelope::default()
        };
        let out = apply(
            raw,
            &mut env,
            &[
                Edit::ReplaceText("nouveau été".into()),
                Edit::AddRecipient("archive@y".into()),
                Edit::RemoveRecipient("X@Y".into()),
                Edit::SetSender("bounce+1@b".into()),
            ],
        )
        .unwrap();
        let m = parse(&out);
        assert_eq!(m.body_text(0).unwrap().trim(), "nouveau été");
        assert_eq!(m.subject(), Some("s"));
        assert_eq!(m.header_raw("From").map(str::trim), Some("a@b"));
        assert_eq!(env.sender, "bounce+1@b");
        let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(rcpts, vec!["archive@y"]);
    }
}
