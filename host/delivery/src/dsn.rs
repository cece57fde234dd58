//! Delivery status notifications (RFC 3464): a `multipart/report` with a human part, the
//! `message/delivery-status` part and the original message or its headers (RFC 3461 `RET`).

use sluice_core::{Reply, Ret};
use sluice_queue::{MessageMeta, RecipientState};

/// The `Action:` of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

fn status_of(reply: Option<&Reply>, action: Action) -> String {
    match reply {
        Some(r) if !r.enhanced.is_empty() => r.enhanced.clone(),
        Some(r) => format!("{}.0.0", r.code / 100),
        None if action == Action::Failed => "5.0.0".into(),
        None if action == Action::Delayed => "4.0.0".into(),
        None => "2.0.0".into(),
    }
}

fn rfc2822(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

/// The header block of a message (up to and including the blank line).
fn headers_of(body: &[u8]) -> &[u8] {
    match memchr::memmem::find(body, b"\r\n\r\n") {
        Some(i) => &body[..i + 4],
        None => body,
    }
}

/// Builds the report about `recipients` of `meta`, addressed to its sender.
pub fn build(
    hostname: &str,
    meta: &MessageMeta,
    body: &[u8],
    recipients: &[(&RecipientState, Action)],
    expire_at: u64,
    max_original: usize,
) -> Vec<u8> {
    let action = recipients.first().map_or(Action::Failed, |r| r.1);
    let subject = match action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Delivered | Action::Relayed => "Successful Mail Delivery Report",
    };
    let boundary = format!("{}/{}", meta.id, hostname);
    let now = sluice_queue::now_secs();
    let mut out = String::with_capacity(2048);
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{now}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n",
        to = meta.sender,
        date = rfc2822(now),
        id = meta.id,
    ));
    out.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\n{}\r\n\r\n",
        match action {
            Action::Failed => "Your message could not be delivered to one or more recipients.",
            Action::Delayed =>
                "Your message could not be delivered yet. The mail system will keep trying.",
            Action::Delivered | Action::Relayed =>
                "Your message was delivered as you asked to be told.",
        }
    ));
    for (r, _) in recipients {
        let why = r
            .last_reply
            .as_ref()
            .map(|x| x.to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "<{}>: {}\r\n",
            r.recipient.address,
            why.replace('\n', " ")
        ));
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {hostname}\r\n"
    ));
    if let Some(envid) = &meta.envid {
        out.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    out.push_str(&format!("Arrival-Date: {}\r\n", rfc2822(meta.received_at)));
    for (r, action) in recipients {
        out.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\n",
            r.recipient.address
        ));
        if let Some(o) = &r.recipient.orcpt {
            out.push_str(&format!("Original-Recipient: rfc822; {o}\r\n"));
        }
        out.push_str(&format!(
            "Action: {}\r\nStatus: {}\r\n",
            action.as_str(),
            status_of(r.last_reply.as_ref(), *action)
        ));
        if let Some(remote) = &r.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {remote}\r\n"));
            if let Some(reply) = &r.last_reply {
                out.push_str(&format!(
                    "Diagnostic-Code: smtp; {}\r\n",
                    reply.to_string().replace(['\r', '\n'], " ")
                ));
            }
        }
        out.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc2822(now)));
        if *action == Action::Delayed {
            out.push_str(&format!("Will-Retry-Until: {}\r\n", rfc2822(expire_at)));
        }
    }
    // The original: whole on failure unless RET=HDRS or too big; headers for other reports
    // unless RET=FULL.
    let full = match meta.ret {
        Some(Ret::Full) => true,
        Some(Ret::Headers) => false,
        None => action == Action::Failed,
    } && body.len() <= max_original;
    let mut bytes = out.into_bytes();
    if full {
        bytes.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(body);
    } else {
        bytes.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(headers_of(body));
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}
