//! Applying plugin edits once, after a stage: header changes on the raw header block, text
//! and HTML part replacement (UTF-8; 7bit when the text allows, else quoted-printable), and
//! envelope changes.
//! The result is valid MIME: header values are unfolded of CR/LF, non-ASCII values are
//! RFC 2047 encoded, and replaced parts get matching `Content-Type` charset and
//! `Content-Transfer-Encoding`.

use crate::bindings::types::{Edit, Header};
use base64::Engine;
use mail_parser::MimeHeaders;
use sluice_core::{Envelope, Recipient};

/// Most edits one step may return.
pub const MAX_EDITS: usize = 1000;

/// Why a step's edits were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("edit `{0}` is not allowed at stage {1}")]
    Stage(&'static str, &'static str),
    #[error("capability `envelope` is not granted (edit `{0}`)")]
    Envelope(&'static str),
    #[error("invalid header name `{0}`")]
    HeaderName(String),
    #[error("invalid address `{0}`")]
    Address(String),
    #[error("{0} edits, limit {MAX_EDITS}")]
    TooMany(usize),
    #[error("part {0} is not a text part of this message")]
    NoSuchPart(u32),
    #[error("replacing parts changed the message structure")]
    Structure,
    #[error("metadata key `{0}` is reserved for the host")]
    ReservedMeta(String),
}

/// The edit's name as in the WIT contract.
pub fn edit_name(e: &Edit) -> &'static str {
    match e {
        Edit::AddHeader(_) => "add-header",
        Edit::SetHeader(_) => "set-header",
        Edit::RemoveHeader(_) => "remove-header",
        Edit::ReplaceText(_) => "replace-text",
        Edit::ReplaceHtml(_) => "replace-html",
        Edit::ReplacePart(_) => "replace-part",
        Edit::AddRecipient(_) => "add-recipient",
        Edit::RemoveRecipient(_) => "remove-recipient",
        Edit::SetSender(_) => "set-sender",
        Edit::SetMeta(_) => "set-meta",
    }
}

/// What kinds of edit a stage takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// `data`: everything (envelope edits with the capability).
    All,
    /// `queued`: metadata only.
    Meta,
    /// `render`: headers and bodies.
    Content,
    /// Every other stage.
    Nothing,
}

/// Checks a step's edits before anything is applied: the stage allows them, the step holds
/// the capability, names and addresses are well-formed, and there are not too many.
pub fn check(
    edits: &[Edit],
    allowed: Allowed,
    stage: &'static str,
    envelope_grant: bool,
) -> Result<(), EditError> {
    if edits.len() > MAX_EDITS {
        return Err(EditError::TooMany(edits.len()));
    }
    for e in edits {
        let name = edit_name(e);
        let ok = matches!(
            (allowed, e),
            (Allowed::All, _)
                | (Allowed::Meta, Edit::SetMeta(_))
                | (
                    Allowed::Content,
                    Edit::AddHeader(_)
                        | Edit::SetHeader(_)
                        | Edit::RemoveHeader(_)
                        | Edit::ReplaceText(_)
                        | Edit::ReplaceHtml(_)
                        | Edit::ReplacePart(_),
                )
        );
        if !ok {
            return Err(EditError::Stage(name, stage));
        }
        match e {
            Edit::AddHeader(h) | Edit::SetHeader(h) if !valid_header_name(&h.name) => {
                return Err(EditError::HeaderName(h.name.chars().take(80).collect()));
            }
            Edit::RemoveHeader(n) if !valid_header_name(n) => {
                return Err(EditError::HeaderName(n.chars().take(80).collect()));
            }
            Edit::AddRecipient(a) | Edit::RemoveRecipient(a) | Edit::SetSender(a) => {
                if !envelope_grant {
                    return Err(EditError::Envelope(name));
                }
                let null_sender = matches!(e, Edit::SetSender(_)) && a.is_empty();
                if !null_sender && !valid_address(a) {
                    return Err(EditError::Address(a.chars().take(80).collect()));
                }
            }
            Edit::SetMeta(m) if m.key.starts_with(sluice_core::meta::RESERVED_PREFIX) => {
                return Err(EditError::ReservedMeta(m.key.chars().take(80).collect()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// RFC 5322 field name: printable ASCII but `:`, at most 76 characters.
fn valid_header_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 76 && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// `local@domain` without spaces, controls, angle brackets or a second `@` in the domain.
fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && a.len() <= 254
        && a.chars()
            .all(|c| !c.is_control() && !matches!(c, ' ' | '<' | '>' | '\\'))
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
}

/// Applies checked `edits`; returns the new message when its bytes changed. Envelope and
/// metadata edits change `envelope` in place.
pub fn apply(
    raw: &[u8],
    envelope: &mut Envelope,
    edits: &[Edit],
) -> Result<Option<Vec<u8>>, EditError> {
    apply_parsed(raw, None, envelope, edits)
}

/// [`apply`] with `raw` already parsed by [`crate::message::parser`], when the caller has
/// it (part replacements then parse only the result, to check its part tree).
pub fn apply_parsed(
    raw: &[u8],
    parsed: Option<&mail_parser::Message<'_>>,
    envelope: &mut Envelope,
    edits: &[Edit],
) -> Result<Option<Vec<u8>>, EditError> {
    let mut replacements: Vec<Replacement<'_>> = Vec::new();
    let mut header_edits = Vec::new();
    for e in edits {
        match e {
            Edit::ReplaceText(t) => replacements.push(Replacement::First(false, t)),
            Edit::ReplaceHtml(h) => replacements.push(Replacement::First(true, h)),
            Edit::ReplacePart(p) => replacements.push(Replacement::Id(p.id, &p.body)),
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
            Edit::SetMeta(m) => envelope.set_meta(&m.key, &m.value),
            other => header_edits.push(other),
        }
    }
    if replacements.is_empty() && header_edits.is_empty() {
        return Ok(None);
    }
    let replaced;
    let raw = if replacements.is_empty() {
        raw
    } else {
        replaced = replace_parts(raw, parsed, &replacements)?;
        &replaced[..]
    };
    let (head, body) = split(raw);
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
    Ok(Some(result))
}

enum Replacement<'a> {
    /// The first text/html (true) or text/plain part.
    First(bool, &'a str),
    Id(u32, &'a str),
}

/// Addresses come from plugins: no CR, LF, angle brackets or spaces.
fn clean(a: &str) -> String {
    a.chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '<' | '>' | ' '))
        .collect()
}

/// Header block (without the blank line) and body (after it).
fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memmem::find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i + 2], &raw[i + 4..]),
        None => (raw, &[]),
    }
}

/// Header fields, each with its raw text (continuation lines included).
struct Fields {
    /// Added at the top, in order of addition (the last added ends up first).
    top: Vec<(String, Vec<u8>)>,
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
        Fields {
            top: Vec::new(),
            fields,
        }
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
        self.top.push(Self::line(h));
    }

    fn set(&mut self, h: &Header) {
        let line = Self::line(h);
        let in_top = self.top.iter().position(|f| f.0 == line.0);
        let in_fields = self.fields.iter().position(|f| f.0 == line.0);
        self.top.retain(|f| f.0 != line.0);
        self.fields.retain(|f| f.0 != line.0);
        match (in_top, in_fields) {
            (None, Some(i)) => self.fields.insert(i.min(self.fields.len()), line),
            _ => self.top.push(line),
        }
    }

    fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.top.retain(|f| f.0 != name);
        self.fields.retain(|f| f.0 != name);
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, raw) in self.top.iter().rev().chain(&self.fields) {
            out.extend_from_slice(raw);
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A header value safe to write: no CR/LF, non-ASCII as RFC 2047 encoded words.
fn encode_value(v: &str) -> String {
    // Control characters become spaces and runs of white space one space, so that folding
    // never leaves a line of white space alone.
    let v: String = v
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // A word too long to fold would make a line over 998 octets: encode it.
    if v.is_ascii() && v.split(' ').all(|w| w.len() <= 900) {
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

/// Replaces text parts; every other byte of the message stays. Each replaced part gets a
/// UTF-8 charset and 7bit or quoted-printable encoding in which no line can start with
/// `--`, so replaced text cannot smuggle a MIME boundary; the part tree is checked to be
/// unchanged.
fn replace_parts(
    raw: &[u8],
    parsed: Option<&mail_parser::Message<'_>>,
    replacements: &[Replacement<'_>],
) -> Result<Vec<u8>, EditError> {
    let own;
    let msg = match parsed {
        Some(m) => m,
        None => {
            own = crate::message::parser()
                .parse(raw)
                .ok_or(EditError::Structure)?;
            &own
        }
    };
    let is_text = |id: u32| {
        msg.parts.get(id as usize).and_then(|p| match p.body {
            mail_parser::PartType::Text(_) => Some(false),
            mail_parser::PartType::Html(_) => Some(true),
            _ => None,
        })
    };
    // Latest replacement of a part wins.
    let mut by_part: std::collections::BTreeMap<u32, (bool, &str)> = Default::default();
    for r in replacements {
        let (id, content) = match r {
            Replacement::Id(id, c) => (*id, *c),
            Replacement::First(html, c) => {
                let list = if *html {
                    &msg.html_body
                } else {
                    &msg.text_body
                };
                // A text/html body can be found as the conversion of a text part and vice
                // versa: only replace a part of the wanted type.
                match list.first() {
                    Some(&id) if is_text(id) == Some(*html) => (id, *c),
                    _ => continue,
                }
            }
        };
        let html = is_text(id).ok_or(EditError::NoSuchPart(id))?;
        by_part.insert(id, (html, content));
    }
    // Every multipart's delimiter: mail-parser (which the host parses with) takes
    // `--boundary` as a delimiter anywhere in a line, and by prefix, so 7bit text must not
    // hold one anywhere.
    let delimiters: Vec<Vec<u8>> = msg
        .parts
        .iter()
        .filter(|p| matches!(p.body, mail_parser::PartType::Multipart(_)))
        .filter_map(|p| p.content_type()?.attribute("boundary"))
        .map(|b| format!("--{b}").into_bytes())
        .collect();
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 8);
    let mut copied = 0;
    // Where the rewritten parts are in `out`.
    let mut written = Vec::with_capacity(by_part.len());
    for (&id, &(html, content)) in &by_part {
        let part = &msg.parts[id as usize];
        let (hs, bs, be) = (
            part.offset_header as usize,
            part.offset_body as usize,
            (part.offset_end as usize).min(raw.len()),
        );
        // Parts come in order and do not overlap (text parts have no children).
        if hs < copied {
            return Err(EditError::Structure);
        }
        let head = raw.get(hs..bs).ok_or(EditError::Structure)?;
        let head = head.strip_suffix(b"\r\n").unwrap_or(head);
        let mut fields = Fields::parse(head);
        let subtype = if html { "html" } else { "plain" };
        fields.set(&Header {
            name: "Content-Type".into(),
            value: format!("text/{subtype}; charset=utf-8"),
        });
        out.extend_from_slice(&raw[copied..hs]);
        let start = out.len();
        // Text that 7bit can carry as it is goes as it is (what the sender wrote, and
        // no re-encoding); anything else is quoted-printable.
        let seven_bit = fits_7bit(content, &delimiters);
        fields.set(&Header {
            name: "Content-Transfer-Encoding".into(),
            value: if seven_bit {
                "7bit"
            } else {
                "quoted-printable"
            }
            .into(),
        });
        out.extend_from_slice(&fields.render());
        if seven_bit {
            write_7bit(content, &mut out);
        } else {
            qp_encode_into(content, &mut out);
        }
        let rest = &raw[be..];
        if !rest.starts_with(b"\r\n") && !rest.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        written.push((start, out.len()));
        copied = be;
    }
    out.extend_from_slice(&raw[copied..]);
    // The bytes around each replaced part are the original ones, so the part tree can only
    // change if a written line starts with `--` (a boundary delimiter of an enclosing
    // multipart). Neither the part's own header fields nor the written lines (7bit or
    // quoted-printable) can, by construction; this is checked on every edit. Test builds also re-parse the result
    // and compare the whole tree (a full parse of a 50 KB HTML part, quoted-printable
    // decoding included, was 5% of the outbound relay's CPU).
    if written.iter().any(|&(start, end)| {
        let part = &out[start..end];
        part.starts_with(b"--") || memchr::memmem::find(part, b"\n--").is_some()
    }) {
        return Err(EditError::Structure);
    }
    if cfg!(debug_assertions) {
        let after = crate::message::parser()
            .parse(&out)
            .ok_or(EditError::Structure)?;
        let shape = |m: &mail_parser::Message<'_>| -> Vec<(Option<String>, bool)> {
            m.parts
                .iter()
                .map(|p| {
                    (
                        p.content_type().map(|c| c.c_type.to_ascii_lowercase()),
                        matches!(p.body, mail_parser::PartType::Multipart(_)),
                    )
                })
                .collect()
        };
        if shape(msg) != shape(&after) {
            return Err(EditError::Structure);
        }
    }
    Ok(out)
}

/// Longest line 7bit data may have (RFC 5322 §2.1.1, RFC 2045 §2.7), CRLF not counted.
const MAX_7BIT_LINE: usize = 998;

/// The lines of `text` and, for each, whether a line break (CRLF, a lone CR or a lone LF)
/// follows it.
fn lines(text: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr2(b'\r', b'\n', r) {
            Some(end) => {
                let next = if r[end..].starts_with(b"\r\n") {
                    end + 2
                } else {
                    end + 1
                };
                rest = Some(&r[next..]);
                Some((&r[..end], true))
            }
            None => {
                rest = None;
                Some((r, false))
            }
        }
    })
}

/// Whether `text` can go as 7bit data (RFC 2045 §2.7) with CRLF line ends: ASCII without
/// NUL, no line longer than 998 octets, no line starting with `--` (which could read as a
/// boundary of an enclosing multipart) and none of the message's `delimiters` anywhere.
fn fits_7bit(text: &str, delimiters: &[Vec<u8>]) -> bool {
    let bytes = text.as_bytes();
    bytes.is_ascii()
        && memchr::memchr(0, bytes).is_none()
        && !delimiters
            .iter()
            .any(|d| memchr::memmem::find(bytes, d).is_some())
        && lines(bytes).all(|(line, _)| line.len() <= MAX_7BIT_LINE && !line.starts_with(b"--"))
}

/// Appends `text` with CRLF line ends (for text [`fits_7bit`] accepted).
fn write_7bit(text: &str, out: &mut Vec<u8>) {
    let b = text.as_bytes();
    // Every CR and every LF in a CRLF pair (a part's own text after an edit, usually): the
    // text is its own result.
    let crs = memchr::memchr_iter(b'\r', b).count();
    if crs == memchr::memchr_iter(b'\n', b).count()
        && crs == memchr::memmem::find_iter(b, b"\r\n").count()
    {
        out.extend_from_slice(b);
        return;
    }
    out.reserve(text.len() + text.len() / 32 + 2);
    for (line, broken) in lines(b) {
        out.extend_from_slice(line);
        if broken {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Quoted-printable (RFC 2045 §6.7) with lines of at most 76 characters, CRLF line ends,
/// every `-` and a `.` at the start of a line encoded: no line of the result can be read as
/// a MIME boundary or an SMTP end of data.
pub fn qp_encode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    qp_encode_into(text, &mut out);
    out
}

/// [`qp_encode`], appending to `out`.
fn qp_encode_into(text: &str, out: &mut Vec<u8>) {
    out.reserve(text.len() + text.len() / 8 + 2);
    for (line, broken) in lines(text.as_bytes()) {
        qp_line(line, out);
        if broken {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Bytes that quoted-printable may carry as themselves anywhere but at a line's start or
/// end. `-` is always encoded, so that no `--` (a MIME delimiter to parsers that look for
/// one anywhere in a line, as mail-parser does) can appear in the encoded text.
const QP_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'=' as usize && b != b'-' as usize;
        b += 1;
    }
    t[b'\t' as usize] = true;
    t
};

/// One line (no line break in `line`) with soft breaks so that no output line is longer
/// than 76 characters.
fn qp_line(line: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut col = 0;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        // `-` is never plain; a `.` is encoded at a line's start.
        let leading = |col: usize| col == 0 && b == b'.';
        // A run of plain bytes short of the line's last byte that fits before a soft break
        // is copied as it is; the last byte and everything else go one at a time.
        if QP_PLAIN[b as usize] && !leading(col) && col < 75 {
            let limit = (line.len() - 1).min(i + 75 - col);
            let run = line[i..limit]
                .iter()
                .position(|&c| !QP_PLAIN[c as usize])
                .map_or(limit, |n| i + n);
            if run > i {
                out.extend_from_slice(&line[i..run]);
                col += run - i;
                i = run;
                continue;
            }
        }
        let last = i + 1 == line.len();
        let plain = QP_PLAIN[b as usize] && !leading(col) && !(last && (b == b' ' || b == b'\t'));
        let width = if plain { 1 } else { 3 };
        // Room for the token and, unless it ends the line, a soft break.
        if col + width > if last { 76 } else { 75 } {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        if plain && !leading(col) {
            out.push(b);
            col += 1;
        } else {
            out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            col += 3;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(raw)
            .expect("parses")
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
        .unwrap()
        .unwrap();
        let m = parse(&out);
        assert_eq!(m.subject(), Some("héllo wörld"));
        assert!(m.header_raw("X-Old").is_none());
        assert!(
            m.header_raw("Injected").is_none(),
            "CR/LF in a value must not inject"
        );
        assert_eq!(m.body_text(0).unwrap().trim(), "body");
        assert!(out.starts_with(b"X-Tag: a Injected: yes\r\n"));
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
        .unwrap()
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
        .unwrap()
        .unwrap();
        let m = parse(&out);
        assert_eq!(m.body_text(0).unwrap().trim(), "nouveau été");
        assert_eq!(m.subject(), Some("s"));
        assert_eq!(m.header_raw("From").map(str::trim), Some("a@b"));
        assert_eq!(env.sender, "bounce+1@b");
        let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(rcpts, vec!["archive@y"]);
    }

    #[test]
    fn replaced_text_cannot_smuggle_a_boundary() {
        let raw = concat!(
            "Subject: m\r\nMIME-Version: 1.0\r\n",
            "Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n",
            "--b\r\nContent-Type: text/html\r\n\r\n<p>old</p>\r\n",
            "--b--\r\n"
        );
        let evil = "<p>hi</p>\n--b\nContent-Type: application/x-evil\n\nEVIL\n--b--\n.\n";
        let mut env = Envelope::default();
        let edits = [Edit::ReplacePart(crate::bindings::types::PartBody {
            id: 2,
            body: evil.into(),
        })];
        check(&edits, Allowed::All, "data", false).unwrap();
        let out = apply(raw.as_bytes(), &mut env, &edits).unwrap().unwrap();
        let m = parse(&out);
        assert_eq!(m.parts.len(), 3, "no part was smuggled in");
        assert_eq!(m.body_html(0).unwrap().replace("\r\n", "\n"), evil);
        assert_eq!(m.body_text(0).unwrap().trim(), "plain");
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= 78);
        }
        // Only the real boundaries start a line with `--b`.
        let boundary_lines = out.split(|&b| b == b'\n').filter(|l| l.starts_with(b"--b"));
        assert_eq!(boundary_lines.count(), 3);
    }

    #[test]
    fn replaced_parts_are_7bit_when_the_text_allows_else_quoted_printable() {
        let raw = concat!(
            "Subject: m\r\nMIME-Version: 1.0\r\n",
            "Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\ncGxhaW4=\r\n",
            "--b\r\nContent-Type: text/html\r\n\r\n<p>old</p>\r\n",
            "--b--\r\n"
        );
        let long = format!("<p>{}</p>", "x".repeat(MAX_7BIT_LINE));
        let fits = format!("<p>{}</p>", "x".repeat(MAX_7BIT_LINE - 7));
        let cases: &[(&str, &str)] = &[
            // ASCII, line ends of every kind: 7bit with CRLF.
            (
                "<a href=\"https://x.example/?a=1\">x</a>\nline\rcr\r\n.\n",
                "7bit",
            ),
            (&fits, "7bit"),
            ("", "7bit"),
            (&long, "quoted-printable"),
            ("ok\n--b\nContent-Type: x\n", "quoted-printable"),
            // mail-parser takes `--b` (and `--bx`) as a delimiter anywhere in a line.
            ("<p>x--b</p><!-- y --bx -->", "quoted-printable"),
            ("<!--[if mso]><p>-- a</p><![endif]-->", "7bit"),
            ("caf\u{e9}", "quoted-printable"),
            ("nul\0byte", "quoted-printable"),
        ];
        for &(text, want) in cases {
            let mut env = Envelope::default();
            let edits = [
                Edit::ReplaceText(text.into()),
                Edit::ReplaceHtml(text.into()),
            ];
            let out = apply(raw.as_bytes(), &mut env, &edits).unwrap().unwrap();
            let m = parse(&out);
            assert_eq!(m.parts.len(), 3, "{text:?}");
            for id in [1, 2] {
                assert_eq!(
                    m.parts[id].content_transfer_encoding(),
                    Some(want),
                    "{text:?}"
                );
            }
            let norm = |t: &str| t.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(
                norm(&m.body_html(0).unwrap()).trim_end(),
                norm(text).trim_end()
            );
            assert_eq!(
                norm(&m.body_text(0).unwrap()).trim_end(),
                norm(text).trim_end()
            );
            // CRLF only, and no line over the limit.
            let mut prev = 0u8;
            for &b in out.iter() {
                assert!(b != b'\n' || prev == b'\r', "bare LF in {text:?}");
                prev = b;
            }
            assert!(
                out.split(|&b| b == b'\n')
                    .all(|l| l.len() <= MAX_7BIT_LINE + 1)
            );
            // The delimiter appears only where the message's own boundaries are, in any
            // position of a line.
            assert_eq!(
                memchr::memmem::find_iter(&out, b"--b").count(),
                3,
                "{text:?}"
            );
        }
    }

    #[test]
    fn seven_bit_text_gets_crlf_line_ends() {
        for (text, want) in [
            ("", ""),
            ("one line", "one line"),
            ("a\r\nb\r\n", "a\r\nb\r\n"),
            ("a\nb\n", "a\r\nb\r\n"),
            ("a\rb", "a\r\nb"),
            ("a\r\nb\nc\rd\r\n", "a\r\nb\r\nc\r\nd\r\n"),
            ("a\r\r\nb", "a\r\n\r\nb"),
            ("a\n\r\nb", "a\r\n\r\nb"),
            ("\n\r", "\r\n\r\n"),
        ] {
            let mut out = Vec::new();
            write_7bit(text, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn qp_lines_are_short_and_never_start_with_a_dash_or_dot() {
        let text = format!("{}\n-- sig\n.\n{}", "x".repeat(200), "é".repeat(100));
        let enc = qp_encode(&text);
        for line in enc.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(line.len() <= 76, "{}", String::from_utf8_lossy(line));
            assert!(!line.starts_with(b"-") && !line.starts_with(b"."));
        }
        assert!(memchr::memmem::find(&enc, b"--").is_none());
        let decoded = quoted_printable::decode(&enc, quoted_printable::ParseMode::Strict).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            text.replace('\n', "\r\n")
        );
    }

    /// The first, byte-at-a-time encoder: the fast one must write exactly what it wrote.
    fn qp_reference(text: &str) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut out = Vec::new();
        for (li, line) in normalized.split('\n').enumerate() {
            if li > 0 {
                out.extend_from_slice(b"\r\n");
            }
            let bytes = line.as_bytes();
            let mut col = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let last = i + 1 == bytes.len();
                let plain = (b == b'\t' || (0x20..0x7f).contains(&b))
                    && b != b'='
                    && b != b'-'
                    && !(col == 0 && b == b'.')
                    && !(last && (b == b' ' || b == b'\t'));
                let width = if plain { 1 } else { 3 };
                if col + width > if last { 76 } else { 75 } {
                    out.extend_from_slice(b"=\r\n");
                    col = 0;
                }
                if plain && !(col == 0 && (b == b'-' || b == b'.')) {
                    out.push(b);
                    col += 1;
                } else {
                    out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                    col += 3;
                }
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn qp_encode_writes_what_the_reference_writes(
            text in "[-. \t=\r\nxé]{0,40}([a-z]{60,90}[-. \t=\r\nxé]{0,5}){0,4}"
        ) {
            let enc = qp_encode(&text);
            proptest::prop_assert_eq!(&enc, &qp_reference(&text));
            let decoded = quoted_printable::decode(&enc, quoted_printable::ParseMode::Strict).unwrap();
            let expected = text.replace("\r\n", "\n").replace('\r', "\n").replace('\n', "\r\n");
            proptest::prop_assert_eq!(String::from_utf8(decoded).unwrap(), expected);
        }
    }

    #[test]
    fn edits_are_checked_per_stage_and_capability() {
        let add = Edit::AddRecipient("x@example.com".into());
        assert_eq!(
            check(std::slice::from_ref(&add), Allowed::All, "data", false),
            Err(EditError::Envelope("add-recipient"))
        );
        assert!(check(std::slice::from_ref(&add), Allowed::All, "data", true).is_ok());
        assert!(matches!(
            check(
                &[Edit::AddRecipient("bad address".into())],
                Allowed::All,
                "data",
                true
            ),
            Err(EditError::Address(_))
        ));
        assert!(matches!(
            check(&[Edit::RemoveHeader("".into())], Allowed::All, "data", true),
            Err(EditError::HeaderName(_))
        ));
        assert_eq!(
            check(std::slice::from_ref(&add), Allowed::Content, "render", true),
            Err(EditError::Stage("add-recipient", "render"))
        );
        let many = vec![Edit::RemoveHeader("x".into()); MAX_EDITS + 1];
        assert!(matches!(
            check(&many, Allowed::All, "data", true),
            Err(EditError::TooMany(_))
        ));
        let meta = Edit::SetMeta(crate::bindings::types::Attribute {
            key: "stream".into(),
            value: "broadcast".into(),
        });
        assert!(check(std::slice::from_ref(&meta), Allowed::Meta, "queued", false).is_ok());
        let mut env = Envelope::default();
        assert_eq!(apply(b"S: x\r\n\r\nb", &mut env, &[meta]).unwrap(), None);
        assert_eq!(env.meta("stream"), Some("broadcast"));
        // Host keys (authentication results, the quarantine release mark) are not a
        // plugin's to write.
        let forged = Edit::SetMeta(crate::bindings::types::Attribute {
            key: "sluice.released".into(),
            value: "1".into(),
        });
        assert_eq!(
            check(&[forged], Allowed::Meta, "queued", false),
            Err(EditError::ReservedMeta("sluice.released".into()))
        );
    }
}
