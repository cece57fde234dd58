//! Bounces and complaints arriving by mail, at the `data` stage of the chain for the bounce
//! domain: RFC 3464 DSNs, the common non-standard bounce formats and RFC 5965 ARF reports
//! (read by `sluice-bounce`) become `bounced` and `complained` events, one per recipient,
//! which the suppression step and the webhooks take from the event bus. The report itself
//! is then dropped (`discard`), or kept for delivery with `keep = true`. A message that is
//! no report passes on untouched.
//!
//! A `bounced` event carries `reply` (the remote's code, enhanced status and words) and the
//! attributes `bounce_type` (`hard`: the address is dead; `soft`: full, blocked, expired,
//! ...), `reason` (`user-unknown`, `mailbox-full`, `blocked`, ...), `format` (`dsn`,
//! `text`) and `remote_mta` when known; a `complained` event `feedback_type`. Both carry the
//! bounced message's Message-ID and, when the returned headers include the `Received`
//! header Sluice wrote, its queue id.
//!
//! A report sent to one of Sluice's VERP return paths (`[verp]` in the server
//! configuration) is about one recipient of one message, whatever the report says: the host
//! decodes the return path (`sluice.verp.queue-id`, `sluice.verp.recipient`), and the event
//! names that message and that recipient (with the report's status for it, or its first
//! failure's when the report names someone else: a forwarding address, say), with the
//! attribute `verp = "1"`.
//!
//! ```toml
//! [[pipeline]]
//! name = "bounces"
//! recipient_domains = ["bounces.example.com"]
//! [[pipeline.step]]
//! name = "bounces"
//! plugin = "bounces.wasm"
//! stages = ["data"]
//! [pipeline.step.capabilities]
//! events = true
//! [pipeline.step.config]
//! keep = false
//! ```

use serde::Deserialize;
use sluice_bounce::{Format, Reason};
use sluice_plugin_sdk::{
    Attribute, EventKind, Filter, Message, NewEvent, Outcome, Reply, Stage, Verdict, export_filter,
    host,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    keep: bool,
}

/// The most of a report read: the report parts come first; a long returned copy of the
/// original message is not needed.
const MAX_READ: u64 = 4 << 20;

fn attribute(key: &str, value: &str) -> Attribute {
    Attribute {
        key: key.into(),
        value: value.into(),
    }
}

/// The reply a bounce event carries: the remote's code when found, or one of the right
/// class; an enhanced status of the same class.
fn reply(f: &sluice_bounce::Failure) -> Reply {
    let class = if f.permanent { '5' } else { '4' };
    let code = f
        .reply_code
        .filter(|c| char::from_digit(u32::from(c / 100), 10) == Some(class))
        .unwrap_or(if f.permanent { 550 } else { 450 });
    let enhanced = if f.status.starts_with(class) {
        f.status.clone()
    } else {
        format!("{class}.0.0")
    };
    let text = if f.diagnostic.is_empty() {
        f.reason.name().to_string()
    } else {
        f.diagnostic.clone()
    };
    Reply {
        code,
        enhanced,
        text,
    }
}

struct Bounces;

impl Filter for Bounces {
    const STAGES: &'static [Stage] = &[Stage::Data];

    fn configure(config: &str) -> Result<(), String> {
        serde_json::from_str::<Config>(config)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn on_data(message: &Message) -> Outcome {
        let config: &Config = sluice_plugin_sdk::config().expect("checked by configure");
        let raw = sluice_plugin_sdk::read_message(message, MAX_READ);
        let Some(mut report) = sluice_bounce::parse(&raw) else {
            return Outcome::cont();
        };
        // A VERP return path names the message and recipient for certain.
        let meta = message.meta();
        let verp = |key: &str| meta.iter().find(|a| a.key == key).map(|a| a.value.clone());
        let verp_recipient = verp("sluice.verp.recipient");
        let verp_queue_id = verp("sluice.verp.queue-id");
        let verped = verp_queue_id.is_some();
        if verp_queue_id.is_some() {
            report.original_queue_id = verp_queue_id;
        }
        if let Some(rcpt) = &verp_recipient
            && !report.failures.is_empty()
        {
            let k = report
                .failures
                .iter()
                .position(|f| f.recipient.eq_ignore_ascii_case(rcpt))
                .unwrap_or(0);
            let mut f = report.failures.swap_remove(k);
            f.recipient = rcpt.to_lowercase();
            report.failures = vec![f];
        }
        let format = match report.format {
            Format::Dsn => "dsn",
            Format::Text => "text",
            Format::Arf => "arf",
        };
        let mut emitted = 0;
        for f in &report.failures {
            let mut attributes = vec![attribute("format", format)];
            if verped {
                attributes.push(attribute("verp", "1"));
            }
            let (kind, reply) = match report.format {
                Format::Arf => {
                    if let Some(t) = &report.feedback_type {
                        attributes.push(attribute("feedback_type", t));
                    }
                    (EventKind::Complained, None)
                }
                // Delivered after all, or an auto-reply: nothing to record.
                _ if f.reason == Reason::NotAFailure => continue,
                _ => {
                    attributes.push(attribute(
                        "bounce_type",
                        if f.hard { "hard" } else { "soft" },
                    ));
                    attributes.push(attribute("reason", f.reason.name()));
                    if let Some(m) = &f.remote_mta {
                        attributes.push(attribute("remote_mta", m));
                    }
                    (EventKind::Bounced, Some(reply(f)))
                }
            };
            let event = NewEvent {
                kind,
                queue_id: report.original_queue_id.clone(),
                message_id: report.original_message_id.clone(),
                sender: None,
                recipient: Some(f.recipient.clone()),
                reply,
                attributes,
            };
            if let Err(e) = host::emit(&event) {
                // Not recorded: the sender retries the report later.
                host::log(host::Level::Error, &format!("event not recorded: {e:?}"));
                return Outcome::defer(451, "4.3.0", "bounce not recorded, try again later");
            }
            emitted += 1;
        }
        host::log(
            host::Level::Info,
            &format!("{format} report: {emitted} event(s)"),
        );
        if config.keep {
            Outcome::cont()
        } else {
            Outcome::cont().verdict(Verdict::Discard)
        }
    }
}

export_filter!(Bounces, reusable);
