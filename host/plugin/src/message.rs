//! The message a plugin reads: raw bytes, queue id, envelope (with metadata) and session
//! facts, parsed by mail-parser at most once per message version and only when a plugin
//! asks for parsed content.

use crate::bindings::types::{self, Attachment, AuthResults, Header, Part};
use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders, PartType};
use sluice_core::{Envelope, SessionInfo};
use std::sync::{Arc, OnceLock};

/// The parser for what the host reads of a message: the MIME structure, Message-ID,
/// Subject and Date. Every other field stays raw (the contract hands header values over
/// raw and decoded by [`decode_value`]): the default parser also took `Received` chains and
/// address lists apart that nothing reads (about 2% of the server's CPU with the spam step
/// under load).
pub fn parser() -> &'static MessageParser {
    static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
        MessageParser::new()
            .with_mime_headers()
            .header_id(HeaderName::MessageId)
            .header_text(HeaderName::Subject)
            .header_date(HeaderName::Date)
    });
    &PARSER
}

/// Shared between every step that sees this version of the message.
pub struct MessageData {
    pub raw: Arc<Vec<u8>>,
    pub queue_id: String,
    pub envelope: Envelope,
    /// `None` for mail the host made itself (DSNs).
    pub session: Option<SessionInfo>,
    /// Shared with the versions that differ only in their envelope (a step that set
    /// metadata): same bytes, same parse.
    parses: Arc<Parses>,
}

/// What was parsed of one message's bytes.
#[derive(Default)]
struct Parses {
    parsed: OnceLock<Parsed>,
    /// The top-level header block alone, for callers that read headers only (most steps,
    /// the archive's metadata) while nothing has parsed the whole message.
    head: OnceLock<Parsed>,
}

self_cell::self_cell!(
    /// A parse that borrows from the bytes it was made of, which it keeps: mail-parser
    /// leaves the headers and the bodies that need no decoding in them, and an owned copy
    /// of the parse (`Message::into_owned`) copied them all (a 50 KB body for every
    /// message a plugin reads the parts of).
    struct Parsed {
        owner: Arc<Vec<u8>>,
        #[covariant]
        dependent: Message,
    }
);

impl MessageData {
    pub fn new(
        raw: Arc<Vec<u8>>,
        queue_id: &str,
        envelope: Envelope,
        session: Option<SessionInfo>,
    ) -> Arc<MessageData> {
        Arc::new(MessageData {
            raw,
            queue_id: queue_id.to_string(),
            envelope,
            session,
            parses: Arc::default(),
        })
    }

    /// The same message facts with new bytes and envelope (after a step's edits). When
    /// `raw` is this version's own bytes (only the envelope changed), what was parsed of
    /// them is kept.
    pub fn edited(&self, raw: Arc<Vec<u8>>, envelope: Envelope) -> Arc<MessageData> {
        let parses = if Arc::ptr_eq(&raw, &self.raw) {
            self.parses.clone()
        } else {
            Arc::default()
        };
        Arc::new(MessageData {
            raw,
            queue_id: self.queue_id.clone(),
            envelope,
            session: self.session.clone(),
            parses,
        })
    }

    /// The parsed message (parsed on first use).
    pub fn parsed(&self) -> &Message<'_> {
        self.parses
            .parsed
            .get_or_init(|| {
                Parsed::new(self.raw.clone(), |raw| {
                    or_empty(parser().parse(raw.as_slice()))
                })
            })
            .borrow_dependent()
    }

    /// The message's top-level headers: from the full parse when something made it, else
    /// from a parse of the header block alone (the body is neither decoded nor copied).
    pub fn head(&self) -> &Message<'_> {
        if let Some(m) = self.parses.parsed.get() {
            return m.borrow_dependent();
        }
        self.parses
            .head
            .get_or_init(|| {
                Parsed::new(self.raw.clone(), |raw| {
                    let block = &raw[..sluice_core::envelope::header_end(raw)];
                    or_empty(parser().parse_headers(block))
                })
            })
            .borrow_dependent()
    }

    /// The parsed message if something parsed it already.
    pub fn parsed_if_ready(&self) -> Option<&Message<'_>> {
        self.parses.parsed.get().map(Parsed::borrow_dependent)
    }

    /// The `Message-ID` header without angle brackets.
    pub fn message_id(&self) -> Option<String> {
        self.head().message_id().map(str::to_string)
    }

    pub fn headers(&self) -> Vec<Header> {
        self.head()
            .headers_raw()
            .map(|(name, value)| Header {
                name: name.to_string(),
                value: decode_value(value),
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Vec<String> {
        self.head()
            .headers_raw()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| decode_value(v))
            .collect()
    }

    pub fn text_parts(&self) -> Vec<String> {
        let m = self.parsed();
        (0..m.text_body_count())
            .filter_map(|i| m.body_text(i).map(|t| t.into_owned()))
            .collect()
    }

    /// The message's own text/html bodies: a text-only message has none (mail-parser would
    /// render its text as HTML; plugins that want a rendering can make one).
    pub fn html_parts(&self) -> Vec<String> {
        let m = self.parsed();
        m.html_body
            .iter()
            .filter_map(|&i| match &m.parts.get(i as usize)?.body {
                PartType::Html(h) => Some(h.to_string()),
                _ => None,
            })
            .collect()
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.parsed()
            .attachments()
            .map(|p| Attachment {
                filename: p.attachment_name().map(str::to_string),
                content_type: content_type(p),
                size: part_size(p),
            })
            .collect()
    }

    /// Every MIME part of the top-level message, in order, with its parent.
    pub fn parts(&self) -> Vec<Part> {
        let m = self.parsed();
        let mut parent = vec![None; m.parts.len()];
        for (i, p) in m.parts.iter().enumerate() {
            if let PartType::Multipart(children) = &p.body {
                for &c in children {
                    if let Some(slot) = parent.get_mut(c as usize) {
                        *slot = Some(i as u32);
                    }
                }
            }
        }
        m.parts
            .iter()
            .enumerate()
            .map(|(i, p)| Part {
                id: i as u32,
                parent: parent[i],
                content_type: content_type(p),
                disposition: p
                    .content_disposition()
                    .map(|d| d.c_type.to_ascii_lowercase()),
                filename: p.attachment_name().map(str::to_string),
                charset: p
                    .content_type()
                    .and_then(|ct| ct.attribute("charset"))
                    .map(|c| c.to_ascii_lowercase()),
                size: match &p.body {
                    PartType::Multipart(_) => 0,
                    _ => part_size(p),
                },
            })
            .collect()
    }

    pub fn part_text(&self, id: u32) -> Option<String> {
        match &self.parsed().parts.get(id as usize)?.body {
            PartType::Text(t) | PartType::Html(t) => Some(t.to_string()),
            _ => None,
        }
    }

    pub fn part_bytes(&self, id: u32, offset: u64, len: u32) -> Vec<u8> {
        let Some(p) = self.parsed().parts.get(id as usize) else {
            return Vec::new();
        };
        let slice = |b: &[u8]| {
            let start = (offset as usize).min(b.len());
            let end = start.saturating_add(len as usize).min(b.len());
            b[start..end].to_vec()
        };
        match &p.body {
            PartType::Text(t) | PartType::Html(t) => slice(t.as_bytes()),
            PartType::Binary(b) | PartType::InlineBinary(b) => slice(b),
            PartType::Message(_) => {
                let (s, e) = (p.offset_body as usize, p.offset_end as usize);
                slice(self.raw.get(s..e.min(self.raw.len())).unwrap_or_default())
            }
            PartType::Multipart(_) => Vec::new(),
        }
    }

    pub fn bytes(&self, offset: u64, len: u32) -> Vec<u8> {
        let start = (offset as usize).min(self.raw.len());
        let end = start.saturating_add(len as usize).min(self.raw.len());
        self.raw[start..end].to_vec()
    }
}

/// The parse, or an empty message with an empty root part when mail-parser found no
/// headers (its accessors index the root part: a bare default would panic in them).
fn or_empty(m: Option<Message<'_>>) -> Message<'_> {
    m.unwrap_or_else(|| {
        let mut m = Message::default();
        m.parts.push(mail_parser::MessagePart::default());
        m
    })
}

fn content_type(p: &mail_parser::MessagePart<'_>) -> String {
    match p.content_type() {
        Some(ct) => match &ct.c_subtype {
            Some(sub) => format!("{}/{}", ct.c_type, sub),
            None => ct.c_type.to_string(),
        }
        .to_ascii_lowercase(),
        None => match &p.body {
            PartType::Message(_) => "message/rfc822".into(),
            _ => "text/plain".into(),
        },
    }
}

fn part_size(p: &mail_parser::MessagePart<'_>) -> u64 {
    match &p.body {
        PartType::Binary(b) | PartType::InlineBinary(b) => b.len() as u64,
        PartType::Text(t) | PartType::Html(t) => t.len() as u64,
        _ => u64::from(p.offset_end.saturating_sub(p.offset_body)),
    }
}

/// A raw header value unfolded, RFC 2047 encoded words decoded, and trimmed.
pub fn decode_value(value: &str) -> String {
    if !value.contains("=?") {
        return unfold(value);
    }
    let line = format!("{}\n", unfold(value));
    match mail_parser::parsers::MessageStream::new(line.as_bytes()).parse_unstructured() {
        mail_parser::HeaderValue::Text(t) => t.trim().to_string(),
        _ => unfold(value),
    }
}

/// A header value with folding removed, leading space trimmed.
fn unfold(value: &str) -> String {
    value
        .replace("\r\n", "")
        .replace('\n', "")
        .trim()
        .to_string()
}

/// The resource handed to plugins: a reference to shared message data.
#[derive(Clone)]
pub struct MessageHandle(pub Arc<MessageData>);

/// Nothing but the message data is reachable through the resource.
impl types::Host for crate::step::StepState {}

type Res = wasmtime::component::Resource<MessageHandle>;

impl types::HostMessage for crate::step::StepState {
    fn queue_id(&mut self, m: Res) -> String {
        self.message(&m)
            .map(|d| d.queue_id.clone())
            .unwrap_or_default()
    }

    fn envelope(&mut self, m: Res) -> types::Envelope {
        self.message(&m)
            .map(|d| crate::pipeline::wit_envelope(&d.envelope))
            .unwrap_or_else(empty_envelope)
    }

    fn session(&mut self, m: Res) -> types::SessionInfo {
        self.message(&m)
            .and_then(|d| d.session.as_ref().map(crate::pipeline::wit_session))
            .unwrap_or_else(empty_session)
    }

    fn auth_results(&mut self, m: Res) -> AuthResults {
        self.message(&m)
            .map(|d| auth_results_of(&d.envelope))
            .unwrap_or_else(no_auth_results)
    }

    fn meta(&mut self, m: Res) -> Vec<types::Attribute> {
        self.message(&m)
            .map(|d| crate::pipeline::wit_attributes(&d.envelope.meta))
            .unwrap_or_default()
    }

    fn headers(&mut self, m: Res) -> Vec<Header> {
        self.message(&m).map(|d| d.headers()).unwrap_or_default()
    }

    fn header(&mut self, m: Res, name: String) -> Vec<String> {
        self.message(&m)
            .map(|d| d.header(&name))
            .unwrap_or_default()
    }

    fn text_parts(&mut self, m: Res) -> Vec<String> {
        self.message(&m).map(|d| d.text_parts()).unwrap_or_default()
    }

    fn html_parts(&mut self, m: Res) -> Vec<String> {
        self.message(&m).map(|d| d.html_parts()).unwrap_or_default()
    }

    fn attachments(&mut self, m: Res) -> Vec<Attachment> {
        self.message(&m)
            .map(|d| d.attachments())
            .unwrap_or_default()
    }

    fn parts(&mut self, m: Res) -> Vec<Part> {
        self.message(&m).map(|d| d.parts()).unwrap_or_default()
    }

    fn part_text(&mut self, m: Res, id: u32) -> Option<String> {
        self.message(&m).and_then(|d| d.part_text(id))
    }

    fn part_bytes(&mut self, m: Res, id: u32, offset: u64, len: u32) -> Vec<u8> {
        self.message(&m)
            .map(|d| d.part_bytes(id, offset, len))
            .unwrap_or_default()
    }

    fn size(&mut self, m: Res) -> u64 {
        self.message(&m).map_or(0, |d| d.raw.len() as u64)
    }

    fn bytes(&mut self, m: Res, offset: u64, len: u32) -> Vec<u8> {
        self.message(&m)
            .map(|d| d.bytes(offset, len))
            .unwrap_or_default()
    }

    fn drop(&mut self, m: Res) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}

pub fn empty_envelope() -> types::Envelope {
    types::Envelope {
        sender: String::new(),
        recipients: Vec::new(),
    }
}

pub fn empty_session() -> types::SessionInfo {
    types::SessionInfo {
        listener: String::new(),
        role: String::new(),
        client_ip: String::new(),
        helo: None,
        tls: None,
        auth_user: None,
    }
}

/// The host's results as kept in the envelope's metadata (`sluice_core::meta`, written by
/// the SMTP session when `[authentication]` is on); `none` where there is none.
pub fn auth_results_of(envelope: &Envelope) -> AuthResults {
    use sluice_core::meta;
    let get = |k| envelope.meta(k).unwrap_or("none").to_string();
    AuthResults {
        spf: get(meta::SPF),
        dkim: get(meta::DKIM),
        dmarc: get(meta::DMARC),
        arc: get(meta::ARC),
    }
}

/// Every result `none` (no message to read them from).
pub fn no_auth_results() -> AuthResults {
    AuthResults {
        spf: "none".into(),
        dkim: "none".into(),
        dmarc: "none".into(),
        arc: "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_decoded() {
        assert_eq!(
            decode_value(" =?utf-8?B?aMOpbGxv?= world\r\n"),
            "héllo world"
        );
        assert_eq!(
            decode_value(" =?iso-8859-1?Q?caf=E9?=\r\n =?utf-8?Q?_cr=C3=A8me?="),
            "café crème"
        );
        assert_eq!(decode_value(" plain\r\n value"), "plain value");
    }

    #[test]
    fn headers_read_without_a_full_parse_match_the_full_parse() {
        let env = Envelope::default();
        for raw in [
            "Subject: =?utf-8?Q?caf=C3=A9?=\r\n folded\r\nMessage-ID: <x@y>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nX-A: 1\r\n\r\nbody\r\n\r\nX-B: not a header\r\n",
            "Subject: lf only\nX-A: 1\n\nbody\n",
            "Subject: no body\r\nX-A: 1\r\n",
            "Subject: empty body\r\n\r\n",
            "no header at all\r\n",
            "",
        ] {
            let head = MessageData::new(Arc::new(raw.as_bytes().to_vec()), "q", env.clone(), None);
            let full = MessageData::new(Arc::new(raw.as_bytes().to_vec()), "q", env.clone(), None);
            full.parsed();
            let pairs = |m: &MessageData| -> Vec<(String, String)> {
                m.headers().into_iter().map(|h| (h.name, h.value)).collect()
            };
            assert_eq!(pairs(&head), pairs(&full), "{raw:?}");
            assert_eq!(head.header("x-a"), full.header("X-A"), "{raw:?}");
            assert_eq!(head.header("x-b"), Vec::<String>::new(), "{raw:?}");
            assert_eq!(head.message_id(), full.message_id(), "{raw:?}");
            assert_eq!(head.head().subject(), full.parsed().subject(), "{raw:?}");
            assert_eq!(head.head().date(), full.parsed().date(), "{raw:?}");
            assert!(
                head.parsed_if_ready().is_none(),
                "headers alone parse no body"
            );
        }
    }

    #[test]
    fn a_new_envelope_keeps_the_parse_and_new_bytes_do_not() {
        let raw = Arc::new(b"Subject: one\r\n\r\nbody\r\n".to_vec());
        let m = MessageData::new(raw.clone(), "q", Envelope::default(), None);
        m.parsed();
        let mut envelope = Envelope::default();
        envelope.set_meta("k", "v");
        let meta_only = m.edited(raw, envelope.clone());
        assert!(
            meta_only.parsed_if_ready().is_some(),
            "same bytes, same parse"
        );
        assert_eq!(meta_only.envelope.meta("k"), Some("v"));
        let rewritten =
            meta_only.edited(Arc::new(b"Subject: two\r\n\r\nbody\r\n".to_vec()), envelope);
        assert!(
            rewritten.parsed_if_ready().is_none(),
            "new bytes, no parse yet"
        );
        assert_eq!(rewritten.head().subject(), Some("two"));
        assert_eq!(meta_only.parsed().subject(), Some("one"));
    }

    #[test]
    fn the_part_tree_has_parents_and_types() {
        let raw = concat!(
            "Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n",
            "--o\r\nContent-Type: multipart/alternative; boundary=\"i\"\r\n\r\n",
            "--i\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n",
            "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n",
            "--i\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hi</p>\r\n",
            "--i--\r\n",
            "--o\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n",
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n",
            "--o--\r\n"
        );
        let d = MessageData::new(
            Arc::new(raw.as_bytes().to_vec()),
            "Q1",
            Envelope::default(),
            None,
        );
        let parts = d.parts();
        let summary: Vec<(u32, Option<u32>, &str)> = parts
            .iter()
            .map(|p| (p.id, p.parent, p.content_type.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, None, "multipart/mixed"),
                (1, Some(0), "multipart/alternative"),
                (2, Some(1), "text/plain"),
                (3, Some(1), "text/html"),
                (4, Some(0), "application/pdf"),
            ]
        );
        assert_eq!(parts[2].charset.as_deref(), Some("iso-8859-1"));
        assert_eq!(parts[4].filename.as_deref(), Some("a.pdf"));
        assert_eq!(parts[4].disposition.as_deref(), Some("attachment"));
        assert_eq!(parts[4].size, 5);
        assert_eq!(d.part_text(2).as_deref().map(str::trim), Some("café"));
        assert_eq!(d.part_bytes(4, 0, 100), b"%PDF-");
        assert_eq!(d.part_bytes(4, 1, 2), b"PD");
        assert!(d.part_text(4).is_none());
    }
}
