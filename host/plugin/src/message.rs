//! The message a plugin reads: raw bytes, envelope and session facts, parsed by mail-parser
//! at most once per message version and only when a plugin asks for parsed content.

use crate::bindings::types::{self, Attachment, AuthResults, Envelope, Header, SessionInfo};
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use std::sync::{Arc, OnceLock};

/// Shared between every step that sees this version of the message.
pub struct MessageData {
    pub raw: Arc<Vec<u8>>,
    pub envelope: Envelope,
    pub session: SessionInfo,
    pub auth: AuthResults,
    parsed: OnceLock<Message<'static>>,
}

impl MessageData {
    pub fn new(
        raw: Arc<Vec<u8>>,
        envelope: Envelope,
        session: SessionInfo,
        auth: AuthResults,
    ) -> Arc<MessageData> {
        Arc::new(MessageData {
            raw,
            envelope,
            session,
            auth,
            parsed: OnceLock::new(),
        })
    }

    /// The parsed message (parsed on first use).
    pub fn parsed(&self) -> &Message<'static> {
        self.parsed.get_or_init(|| {
            MessageParser::default()
                .parse(self.raw.as_slice())
                .map(|m| m.into_owned())
                .unwrap_or_default()
        })
    }

    pub fn headers(&self) -> Vec<Header> {
        self.parsed()
            .headers_raw()
            .map(|(name, value)| Header {
                name: name.to_string(),
                value: unfold(value),
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Vec<String> {
        self.parsed()
            .headers_raw()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| unfold(v))
            .collect()
    }

    pub fn text_parts(&self) -> Vec<String> {
        let m = self.parsed();
        (0..m.text_body_count())
            .filter_map(|i| m.body_text(i).map(|t| t.into_owned()))
            .collect()
    }

    pub fn html_parts(&self) -> Vec<String> {
        let m = self.parsed();
        (0..m.html_body_count())
            .filter_map(|i| m.body_html(i).map(|t| t.into_owned()))
            .collect()
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.parsed()
            .attachments()
            .map(|p| Attachment {
                filename: p.attachment_name().map(str::to_string),
                content_type: p
                    .content_type()
                    .map(|ct| match &ct.c_subtype {
                        Some(sub) => format!("{}/{}", ct.c_type, sub),
                        None => ct.c_type.to_string(),
                    })
                    .unwrap_or_else(|| "application/octet-stream".into()),
                size: match &p.body {
                    PartType::Binary(b) | PartType::InlineBinary(b) => b.len() as u64,
                    PartType::Text(t) | PartType::Html(t) => t.len() as u64,
                    _ => u64::from(p.offset_end.saturating_sub(p.offset_body)),
                },
            })
            .collect()
    }

    pub fn bytes(&self, offset: u64, len: u32) -> Vec<u8> {
        let start = (offset as usize).min(self.raw.len());
        let end = start.saturating_add(len as usize).min(self.raw.len());
        self.raw[start..end].to_vec()
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

impl types::HostMessage for crate::step::StepState {
    fn envelope(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> Envelope {
        self.message(&m)
            .map(|d| d.envelope.clone())
            .unwrap_or_else(empty_envelope)
    }

    fn session(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> SessionInfo {
        self.message(&m)
            .map(|d| d.session.clone())
            .unwrap_or_else(empty_session)
    }

    fn auth_results(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> AuthResults {
        self.message(&m)
            .map(|d| d.auth.clone())
            .unwrap_or_else(no_auth_results)
    }

    fn headers(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> Vec<Header> {
        self.message(&m).map(|d| d.headers()).unwrap_or_default()
    }

    fn header(
        &mut self,
        m: wasmtime::component::Resource<MessageHandle>,
        name: String,
    ) -> Vec<String> {
        self.message(&m)
            .map(|d| d.header(&name))
            .unwrap_or_default()
    }

    fn text_parts(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> Vec<String> {
        self.message(&m).map(|d| d.text_parts()).unwrap_or_default()
    }

    fn html_parts(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> Vec<String> {
        self.message(&m).map(|d| d.html_parts()).unwrap_or_default()
    }

    fn attachments(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> Vec<Attachment> {
        self.message(&m)
            .map(|d| d.attachments())
            .unwrap_or_default()
    }

    fn size(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> u64 {
        self.message(&m).map_or(0, |d| d.raw.len() as u64)
    }

    fn bytes(
        &mut self,
        m: wasmtime::component::Resource<MessageHandle>,
        offset: u64,
        len: u32,
    ) -> Vec<u8> {
        self.message(&m)
            .map(|d| d.bytes(offset, len))
            .unwrap_or_default()
    }

    fn drop(&mut self, m: wasmtime::component::Resource<MessageHandle>) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}

pub fn empty_envelope() -> Envelope {
    Envelope {
        sender: String::new(),
        recipients: Vec::new(),
    }
}

pub fn empty_session() -> SessionInfo {
    SessionInfo {
        listener: String::new(),
        role: String::new(),
        client_ip: String::new(),
        helo: None,
        tls: None,
        auth_user: None,
    }
}

/// Until the host verifies SPF/DKIM/DMARC/ARC (a later issue), every result is "none".
pub fn no_auth_results() -> AuthResults {
    AuthResults {
        spf: "none".into(),
        dkim: "none".into(),
        dmarc: "none".into(),
        arc: "none".into(),
    }
}
