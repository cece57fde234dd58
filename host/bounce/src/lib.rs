//! Reading bounces and complaints: RFC 3464 delivery status notifications, the common
//! non-standard bounce formats (text bounces of qmail, Exim, Gmail, Exchange, ...) and
//! RFC 5965 ARF feedback reports, turned into one [`Failure`] per recipient with its status,
//! diagnostic, [`Reason`] and whether it is hard (the address is dead) or soft.
//!
//! Shared by the `bounces` plugin (compiled to wasm32-wasip2: no host-only dependencies) and
//! the corpus test in `tests/corpus.rs`.

mod reason;

pub use reason::{Reason, classify, classify_for};

use mail_parser::{MessageParser, MimeHeaders};

/// What kind of report a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 3464 (`message/delivery-status`).
    Dsn,
    /// A bounce in prose, read from its text.
    Text,
    /// RFC 5965 feedback report (a complaint).
    Arf,
}

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Lowercased.
    pub recipient: String,
    /// `failed`, `delayed`, `delivered`, ... when the report says.
    pub action: Option<String>,
    /// Enhanced status code such as `5.1.1`, empty when none was found.
    pub status: String,
    /// The remote server's SMTP reply code, when found.
    pub reply_code: Option<u16>,
    /// The remote server's words (one line, at most 500 characters).
    pub diagnostic: String,
    pub remote_mta: Option<String>,
    pub reason: Reason,
    /// The report says the failure is final (5xx, `failed`, "permanent").
    pub permanent: bool,
    /// Worth suppressing at once: see [`Reason::is_hard`].
    pub hard: bool,
}

/// A bounce or complaint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub format: Format,
    pub failures: Vec<Failure>,
    /// ARF `Feedback-Type` (abuse, fraud, opt-out, ...).
    pub feedback_type: Option<String>,
    /// `Message-ID` of the message that bounced, when the report includes its headers.
    pub original_message_id: Option<String>,
    /// Sluice's queue id of the message that bounced, read from the `Received` header
    /// Sluice wrote (`by <host> (Sluice) with ... id <queue id>`), when the report includes
    /// the headers.
    pub original_queue_id: Option<String>,
}

/// Reads a report; `None` when the message is neither a bounce nor a complaint that names a
/// recipient.
pub fn parse(raw: &[u8]) -> Option<Report> {
    let message = MessageParser::default().parse(raw)?;
    let mut found = Found::default();
    walk(&message, 0, &mut found);
    let Found {
        mut dsn_fields,
        arf_fields,
        original_headers,
    } = found;
    let mut text = body_text(&message);
    if text.trim().is_empty()
        && let Some(first) = message.parts.first()
    {
        // A report whose MIME structure the parser could not follow: its raw body.
        text = String::from_utf8_lossy(first.contents()).into_owned();
    }
    let (human, copy) = split_original(&text);
    // A delivery status in the text itself (no MIME report).
    if dsn_fields.is_none() {
        let lower = text.to_ascii_lowercase();
        if let Some(i) = ["reporting-mta:", "final-recipient:", "original-recipient:"]
            .iter()
            .filter_map(|f| lower.find(f))
            .min()
        {
            dsn_fields = Some(text.as_bytes()[i..].to_vec());
        }
    }
    let original = original_headers.unwrap_or_else(|| copy.as_bytes().to_vec());
    let original_message_id = header_value(&original, "message-id")
        .map(|v| {
            v.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .filter(|v| !v.is_empty());
    let original_queue_id = sluice_queue_id(&original);
    let sender = message
        .to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_ascii_lowercase);
    if let Some(fields) = arf_fields {
        let fields = String::from_utf8_lossy(&fields).into_owned();
        let groups = field_groups(&fields);
        let all: Vec<(String, String)> = groups.into_iter().flatten().collect();
        let get = |name: &str| {
            all.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let mut recipients: Vec<String> = all
            .iter()
            .filter(|(k, _)| k == "original-rcpt-to" || k == "removal-recipient")
            .filter_map(|(_, v)| first_address(v))
            .collect();
        if recipients.is_empty() {
            recipients = header_value(&original, "to")
                .map(|v| addresses(&v))
                .unwrap_or_default();
        }
        recipients.dedup();
        if recipients.is_empty() {
            return None;
        }
        return Some(Report {
            format: Format::Arf,
            failures: recipients
                .into_iter()
                .map(|recipient| Failure {
                    recipient,
                    action: None,
                    status: String::new(),
                    reply_code: None,
                    diagnostic: String::new(),
                    remote_mta: None,
                    reason: Reason::NotAFailure,
                    permanent: false,
                    hard: false,
                })
                .collect(),
            feedback_type: get("feedback-type").map(|v| v.to_ascii_lowercase()),
            original_message_id,
            original_queue_id,
        });
    }
    // Content-filter gateways answer "user unknown" for what their policy refuses.
    let gateway = ["X-NAI-Header", "X-Mailer"].iter().any(|h| {
        message
            .header_values(*h)
            .filter_map(|v| v.as_text())
            .any(|v| FILTER_GATEWAYS.iter().any(|g| v.contains(g)))
    });
    if let Some(fields) = dsn_fields {
        let fields = String::from_utf8_lossy(&fields).into_owned();
        let mut failures = dsn(&fields, human);
        if gateway {
            for f in &mut failures {
                if f.reason == Reason::UserUnknown && !f.status.starts_with("5.1.") {
                    f.reason = Reason::Blocked;
                    f.hard = false;
                }
            }
        }
        if !failures.is_empty() {
            return Some(Report {
                format: Format::Dsn,
                failures,
                feedback_type: None,
                original_message_id,
                original_queue_id,
            });
        }
    }
    let mut failed: Vec<String> = message
        .header_values("X-Failed-Recipients")
        .filter_map(|v| v.as_text())
        .flat_map(|v| v.split(',').filter_map(first_address).collect::<Vec<_>>())
        .collect();
    if failed.is_empty() {
        failed = addresses(human)
            .into_iter()
            .filter(|a| Some(a) != sender.as_ref() && !is_robot(a))
            .collect();
    }
    if failed.is_empty()
        && let Some(to) = header_value(&original, "to").and_then(|v| first_address(&v))
    {
        failed.push(to);
    }
    if failed.is_empty() {
        return None;
    }
    let failures = failed
        .iter()
        .map(|r| from_text(r, &failed, human))
        .collect();
    Some(Report {
        format: Format::Text,
        failures,
        feedback_type: None,
        original_message_id,
        original_queue_id,
    })
}

/// The queue id in the `Received` header Sluice wrote into a message it accepted.
fn sluice_queue_id(headers: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let head = head.split("\n\n").next().unwrap_or_default();
    // Unfold, then look at each Received field.
    let unfolded = head
        .replace("\r\n\t", " ")
        .replace("\r\n ", " ")
        .replace("\n\t", " ")
        .replace("\n ", " ");
    unfolded
        .lines()
        .filter(|l| {
            l.len() > 9 && l[..9].eq_ignore_ascii_case("received:") && l.contains("(Sluice)")
        })
        .find_map(|l| {
            let after = &l[l.find(" id ")? + 4..];
            let id: String = after
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            (!id.is_empty()).then_some(id)
        })
}

/// Content-filter appliances whose own bounces say "user unknown" for a policy block.
const FILTER_GATEWAYS: &[&str] = &["McAfee Email and Web Security", "SurfControl E-mail Filter"];

#[derive(Default)]
struct Found {
    dsn_fields: Option<Vec<u8>>,
    arf_fields: Option<Vec<u8>>,
    original_headers: Option<Vec<u8>>,
}

/// The report parts of a message, looking into attached messages (a bounce forwarded by
/// a gateway) when the outer one has none.
fn walk(message: &mail_parser::Message<'_>, depth: usize, found: &mut Found) {
    let mut nested = Vec::new();
    for part in message.parts.iter() {
        let t = part
            .content_type()
            .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()))
            .unwrap_or_default()
            .to_ascii_lowercase();
        match t.as_str() {
            "message/delivery-status" | "message/global-delivery-status"
                if found.dsn_fields.is_none() =>
            {
                found.dsn_fields = Some(part.contents().to_vec());
            }
            "message/feedback-report" if found.arf_fields.is_none() => {
                found.arf_fields = Some(part.contents().to_vec());
            }
            "message/rfc822" | "message/global" | "text/rfc822-headers" => {
                if found.original_headers.is_none() {
                    found.original_headers = Some(match &part.body {
                        mail_parser::PartType::Message(m) => m.raw_message().to_vec(),
                        _ => part.contents().to_vec(),
                    });
                }
                if let mail_parser::PartType::Message(m) = &part.body {
                    nested.push(m);
                }
            }
            _ => {}
        }
    }
    if found.dsn_fields.is_none() && found.arf_fields.is_none() && depth < 3 {
        for m in nested {
            let before = found.original_headers.take();
            walk(m, depth + 1, found);
            if found.dsn_fields.is_none() && found.arf_fields.is_none() {
                found.original_headers = before;
            } else {
                break;
            }
        }
    }
}

/// The bounce's own words: its text parts (an HTML-only body as its text).
fn body_text(message: &mail_parser::Message<'_>) -> String {
    (0..10)
        .map_while(|i| message.body_text(i))
        .map(|t| t.into_owned() + "\n")
        .collect()
}

/// Lines that start the copy of the original message in text bounces.
const ORIGINAL_MARKERS: &[&str] = &[
    "below this line is a copy of the message",
    "this is a copy of the message",
    "original message follows",
    "----- original message -----",
    "------ original message ------",
    "--- original message ---",
    "original message headers",
    "unsent message below",
    "message header follows",
    "headers of your message",
    "content-type: message/rfc822",
    "---- start of returned message",
    "your message reads",
    "the text you sent follows",
    "original message ---",
];

/// The human part of a text bounce and the copy of the original message after it.
fn split_original(text: &str) -> (&str, &str) {
    let lower = text.to_ascii_lowercase();
    let mut cut = text.len();
    for m in ORIGINAL_MARKERS {
        if let Some(i) = lower.find(m)
            && i < cut
            && i > 0
        {
            cut = i;
        }
    }
    // A header block of the original ("Return-Path:", "Received:" at a line start).
    for m in ["\nreturn-path:", "\nreceived: from", "\nreceived: by"] {
        if let Some(i) = lower.find(m)
            && i < cut
        {
            cut = i;
        }
    }
    text.split_at(cut)
}

/// The groups of `name: value` fields of a delivery-status or feedback-report body,
/// names lowercased, continuation lines joined.
fn field_groups(body: &str) -> Vec<Vec<(String, String)>> {
    let mut groups = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = current.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            // Some servers leave out the blank line between recipients: a field seen
            // again starts the next group.
            if current.iter().any(|(have, _)| *have == k) {
                groups.push(std::mem::take(&mut current));
            }
            current.push((k, v.trim().to_string()));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// The recipients of a delivery-status body.
fn dsn(fields: &str, human: &str) -> Vec<Failure> {
    let mut out: Vec<Failure> = Vec::new();
    let groups = field_groups(fields);
    let everyone: Vec<String> = groups
        .iter()
        .flat_map(|g| g.iter())
        .filter(|(k, _)| k == "final-recipient")
        .filter_map(|(_, v)| first_address(v.split_once(';').map_or(v.as_str(), |(_, a)| a)))
        .collect();
    for group in groups {
        let get = |name: &str| {
            group
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let address = [
            "final-recipient",
            "original-recipient",
            "x-actual-recipient",
        ]
        .iter()
        .filter_map(|f| get(f))
        .find_map(|v| first_address(v.split_once(';').map_or(v, |(_, a)| a)));
        let Some(recipient) = address else {
            continue;
        };
        if out.iter().any(|f| f.recipient == recipient) {
            continue;
        }
        let action = get("action").map(|a| a.trim().to_ascii_lowercase());
        let mut status = get("status").and_then(status_code).unwrap_or_default();
        let mut diagnostic = get("diagnostic-code")
            .map(|d| d.split_once(';').map_or(d, |(_, t)| t).trim().to_string())
            .unwrap_or_default();
        if diagnostic.is_empty() {
            diagnostic = block_for(&recipient, &everyone, human);
        }
        // A generic status (5.0.0, 5.1.0) says less than the one in the server's words.
        if let Some(s) = status_code(&diagnostic)
            && (status.is_empty() || status.ends_with(".0"))
        {
            status = s;
        }
        let reply_code = reply_code(&diagnostic);
        let remote_mta =
            get("remote-mta").map(|v| v.split_once(';').map_or(v, |(_, h)| h).trim().to_string());
        let delayed = action.as_deref() == Some("delayed");
        let permanent = !delayed
            && (status.starts_with('5')
                || reply_code.is_some_and(|c| c >= 500)
                || (status.is_empty() && action.as_deref() == Some("failed")));
        let reason = match action.as_deref() {
            Some("delivered" | "relayed" | "expanded") => Reason::NotAFailure,
            _ => classify_for(
                &recipient,
                &status,
                &diagnostic,
                &block_for(&recipient, &everyone, human),
            ),
        };
        out.push(failure(
            recipient, action, status, reply_code, diagnostic, remote_mta, reason, permanent,
        ));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn failure(
    recipient: String,
    action: Option<String>,
    status: String,
    reply_code: Option<u16>,
    diagnostic: String,
    remote_mta: Option<String>,
    reason: Reason,
    permanent: bool,
) -> Failure {
    let diagnostic: String = diagnostic
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(500)
        .collect();
    Failure {
        recipient,
        action,
        status,
        reply_code,
        diagnostic,
        remote_mta,
        reason,
        permanent,
        hard: reason.is_hard(permanent),
    }
}

/// A recipient of a text bounce: what the text around it says.
fn from_text(recipient: &str, all: &[String], human: &str) -> Failure {
    let mut block = block_for(recipient, all, human);
    if status_code(&block).is_none() && reply_code(&block).is_none() {
        block = human.to_string();
    }
    let status = status_code(&block).unwrap_or_default();
    let code = reply_code(&block);
    let lower = human.to_ascii_lowercase();
    let temporary = status.starts_with('4')
        || code.is_some_and(|c| c < 500)
        || (status.is_empty()
            && code.is_none()
            && (lower.contains("temporar")
                || lower.contains("will retry")
                || lower.contains("delayed")));
    let permanent = !temporary;
    let reason = classify_for(recipient, &status, &block, "");
    failure(
        recipient.to_string(),
        None,
        status,
        code,
        block,
        None,
        reason,
        permanent,
    )
}

/// The text from `recipient`'s first mention to the next other recipient's (or the end).
fn block_for(recipient: &str, all: &[String], human: &str) -> String {
    let lower = human.to_ascii_lowercase();
    let Some(start) = lower.find(recipient) else {
        return human.to_string();
    };
    let after = start + recipient.len();
    let end = all
        .iter()
        .filter(|r| r.as_str() != recipient)
        .filter_map(|r| lower[after..].find(r.as_str()).map(|i| after + i))
        .min()
        .unwrap_or(human.len());
    // Some formats put the reason before the address ("550 ... : <addr>"): include the
    // line the address is on.
    let line_start = lower[..start].rfind('\n').map_or(0, |i| i + 1);
    human[line_start..end].to_string()
}

/// The first enhanced status code (`5.1.1`) in `text`.
fn status_code(text: &str) -> Option<String> {
    let b = text.as_bytes();
    for i in 0..b.len() {
        if !matches!(b[i], b'2' | b'4' | b'5')
            || (i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.'))
        {
            continue;
        }
        let mut j = i + 1;
        let mut parts = 1;
        let mut ok = true;
        while parts < 3 {
            if j >= b.len() || b[j] != b'.' {
                ok = false;
                break;
            }
            j += 1;
            let s = j;
            while j < b.len() && b[j].is_ascii_digit() && j - s < 3 {
                j += 1;
            }
            if j == s {
                ok = false;
                break;
            }
            parts += 1;
        }
        if ok
            && (j >= b.len()
                || !(b[j].is_ascii_digit()
                    || (b[j] == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit))))
        {
            return Some(text[i..j].to_string());
        }
    }
    None
}

/// The first SMTP reply code (`550`) standing alone in `text`.
fn reply_code(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        if matches!(b[i], b'4' | b'5')
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.' || b[i - 1] == b'#'))
            && b.get(i + 3)
                .is_none_or(|c| matches!(c, b' ' | b'-' | b'\r' | b'\n' | b'\t'))
        {
            return text[i..i + 3].parse().ok();
        }
    }
    None
}

/// The value of the first header `name` (lowercase) in a header block, unfolded.
fn header_value(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            return None;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case(name)
        {
            let mut value = v.trim().to_string();
            while let Some(next) = lines.peek() {
                if !next.starts_with([' ', '\t']) {
                    break;
                }
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            }
            return Some(value);
        }
    }
    None
}

fn is_address_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"._%+-=!#$&'*/?^`{|}~".contains(&c)
}

/// Every distinct address in `text`, lowercased, in order.
fn addresses(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    for (i, &c) in b.iter().enumerate() {
        if c != b'@' {
            continue;
        }
        let mut s = i;
        while s > 0 && is_address_byte(b[s - 1]) {
            s -= 1;
        }
        let mut e = i + 1;
        while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'-' || b[e] == b'.') {
            e += 1;
        }
        // A quoted local part ("a..b"@example.org) keeps its quotes.
        if s == i
            && i > 0
            && b[i - 1] == b'"'
            && let Some(open) = text[..i - 1].rfind('"')
            && !text[open + 1..i - 1].contains(['\n', '<', '>'])
        {
            s = open;
        }
        let local = text[s..i].trim_start_matches(['.', '\'', '/']);
        let domain = text[i + 1..e].trim_end_matches(['.', '-']);
        if local.is_empty() || !domain.contains('.') {
            continue;
        }
        let a = format!("{local}@{domain}").to_ascii_lowercase();
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn first_address(text: &str) -> Option<String> {
    addresses(text).into_iter().next()
}

/// Addresses of mail systems rather than recipients.
fn is_robot(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or_default();
    [
        "mailer-daemon",
        "postmaster",
        "mail-daemon",
        "noreply",
        "no-reply",
        "bounce",
    ]
    .iter()
    .any(|r| local.starts_with(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_text() {
        assert_eq!(
            status_code("550 5.1.1 <a@b.c>... User").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(status_code("(#5.5.0)").as_deref(), Some("5.5.0"));
        assert_eq!(status_code("192.0.2.32 said"), None);
        assert_eq!(
            reply_code("remote host 192.0.2.32 said: 550 Unknown"),
            Some(550)
        );
        assert_eq!(reply_code("#5.5.0"), None);
    }

    #[test]
    fn a_dsn() {
        let raw = concat!(
            "From: MAILER-DAEMON@mx.example\r\nTo: app@example.com\r\nSubject: failure\r\n",
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n",
            "--b\r\nContent-Type: message/delivery-status\r\n\r\n",
            "Reporting-MTA: dns; mx.example\r\n\r\n",
            "Final-Recipient: rfc822; Bob@Example.NET\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address\r\n rejected: User unknown\r\n\r\n",
            "Final-Recipient: rfc822; full@example.net\r\nAction: failed\r\nStatus: 5.2.2\r\n",
            "Diagnostic-Code: smtp; 552 mailbox full\r\n",
            "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n",
            "Received: from app.test ([192.0.2.1])\r\n\tby mta.example.com (Sluice) with ESMTPSA id 01A2B3C4D5E6F7A8B9C0\r\n\tfor <bob@example.net>; Mon, 1 Jan 2026 00:00:00 +0000\r\n",
            "Message-ID: <m1@example.com>\r\nTo: bob@example.net\r\n",
            "--b--\r\n"
        );
        let r = parse(raw.as_bytes()).unwrap();
        assert_eq!(r.format, Format::Dsn);
        assert_eq!(r.original_message_id.as_deref(), Some("m1@example.com"));
        assert_eq!(r.original_queue_id.as_deref(), Some("01A2B3C4D5E6F7A8B9C0"));
        let f = &r.failures[0];
        assert_eq!(f.recipient, "bob@example.net");
        assert_eq!((f.status.as_str(), f.reply_code), ("5.1.1", Some(550)));
        assert_eq!(f.reason, Reason::UserUnknown);
        assert!(f.hard);
        assert!(
            f.diagnostic
                .contains("Recipient address rejected: User unknown")
        );
        assert_eq!(r.failures[1].reason, Reason::MailboxFull);
        assert!(!r.failures[1].hard);
    }
}
