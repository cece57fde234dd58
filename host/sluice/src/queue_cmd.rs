//! `sluice queue`: list, show, retry and delete queued messages.
//!
//! With the server stopped these open the queue directly. While it runs (sled holds a lock)
//! they go through its admin API (`[http]` must be configured), authenticated with the
//! local key the server writes to `<data_dir>/cli.key` (readable only by its owner, like
//! the queue itself).

use crate::api_client::{Access, ApiClient, local_or_api};
use anyhow::{Result, bail};
use clap::Subcommand;
use sluice_config::Settings;
use sluice_queue::{Queue, SledQueue, Status};

#[derive(Subcommand)]
pub enum QueueCommand {
    /// One line per queued message.
    List {
        /// Only quarantined messages (`sluice quarantine list`).
        #[arg(long)]
        quarantined: bool,
    },
    /// Envelope, per-recipient state and headers of one message.
    Show { id: String },
    /// Makes deferred recipients due now (all messages, or the given ones).
    Retry { ids: Vec<String> },
    /// Delivers quarantined messages after all (a hold by the delivery stage is not applied
    /// to them again).
    Release {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Deletes messages without any notice to the sender.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Refuse messages that are not quarantined (`sluice quarantine delete`).
        #[arg(skip)]
        quarantined_only: bool,
    },
    /// Every recorded event of one message, oldest first (also after it left the queue):
    /// time, kind, queue id, recipient, reply, remote MTA (TAB separated).
    History { id: String },
}

pub fn run(settings: &Settings, command: QueueCommand) -> Result<()> {
    let dir = settings.queue_dir();
    let queue = match local_or_api(settings, "the queue", &dir, || SledQueue::open(&dir))? {
        Access::Local(q) => q,
        Access::Api(api) => return online(&api, command),
    };
    match command {
        QueueCommand::History { id } => crate::events_cmd::history_offline(settings, &queue, &id)?,
        QueueCommand::List { quarantined } => {
            let mut all = queue.list()?;
            if quarantined {
                all.retain(|m| m.quarantine.is_some());
            }
            for m in &all {
                let pending = m.recipients.iter().filter(|r| !r.status.is_final()).count();
                println!(
                    "{}  {:>8}  <{}>  {} recipient(s), {} pending{}",
                    m.id,
                    m.size,
                    m.sender,
                    m.recipients.len(),
                    pending,
                    m.quarantine
                        .as_ref()
                        .map(|q| format!(", quarantined: {q}"))
                        .unwrap_or_default()
                );
            }
            let bad = if quarantined {
                Vec::new()
            } else {
                queue.unreadable()?
            };
            for id in &bad {
                println!(
                    "{id}  unreadable record, moved aside (delete it with `sluice queue delete {id}`)"
                );
            }
            println!("{} message(s)", all.len());
            if !bad.is_empty() {
                println!("{} unreadable record(s)", bad.len());
            }
        }
        QueueCommand::Show { id } => {
            let Some(m) = queue.get(&id)? else {
                bail!("no message {id} in the queue")
            };
            println!(
                "id: {}\nsender: <{}>\nsize: {}\nreceived: {}",
                m.id, m.sender, m.size, m.received_at
            );
            if let Some(envid) = &m.envid {
                println!("envid: {envid}");
            }
            if let Some(q) = &m.quarantine {
                println!("quarantined: {q}");
            }
            for r in &m.recipients {
                println!(
                    "recipient <{}>: {:?}, {} attempt(s){}",
                    r.recipient.address,
                    r.status,
                    r.attempts,
                    r.last_reply
                        .as_ref()
                        .map(|x| format!(", last: {x}"))
                        .unwrap_or_default()
                );
            }
            if let Some(body) = queue.body(&id)? {
                let end = body
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap_or(body.len());
                println!("\n{}", String::from_utf8_lossy(&body[..end]));
            }
        }
        QueueCommand::Retry { ids } => {
            let mut n = 0;
            for mut m in queue.list()? {
                if !ids.is_empty() && !ids.contains(&m.id) {
                    continue;
                }
                for r in &mut m.recipients {
                    if let Status::Deferred { .. } = r.status {
                        r.status = Status::Deferred { next_attempt: 0 };
                    }
                }
                queue.update(&m)?;
                n += 1;
            }
            flush(&queue)?;
            println!("{n} message(s) due now");
        }
        QueueCommand::Release { ids } => {
            for id in &ids {
                let Some(mut m) = queue.get(id)? else {
                    bail!("no message {id} in the queue")
                };
                if m.quarantine.take().is_none() {
                    bail!("message {id} is not quarantined");
                }
                m.meta
                    .retain(|(k, _)| k != sluice_delivery::engine::RELEASED);
                m.meta
                    .push((sluice_delivery::engine::RELEASED.into(), "1".into()));
                queue.update(&m)?;
            }
            flush(&queue)?;
            println!("{} message(s) released", ids.len());
        }
        QueueCommand::Delete {
            ids,
            quarantined_only,
        } => {
            // Every id checked before any is deleted.
            if quarantined_only {
                for id in &ids {
                    if !matches!(queue.get(id)?, Some(m) if m.quarantine.is_some()) {
                        bail!("message {id} is not quarantined");
                    }
                }
            }
            for id in &ids {
                // A record that cannot be read fails `get`; it may also be moved aside.
                let readable = matches!(queue.get(id), Ok(Some(_)));
                if readable || queue.get(id).is_err() {
                    queue.remove(id)?;
                } else if !queue.remove_unreadable(id)? {
                    bail!("no message {id} in the queue");
                }
            }
            flush(&queue)?;
            println!("{} message(s) deleted", ids.len());
        }
    }
    Ok(())
}

fn flush(queue: &SledQueue) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(queue.sync())?;
    Ok(())
}

/// The same commands through the running server's admin API.
fn online(api: &ApiClient, command: QueueCommand) -> Result<()> {
    let call = |method: &str, path: &str| api.call(method, path);
    let list = |state: &str| -> Result<Vec<serde_json::Value>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("/queue?state={state}&limit=1000&after={a}"),
                None => format!("/queue?state={state}&limit=1000"),
            };
            let page = call("GET", &q)?;
            all.extend(page["messages"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return Ok(all),
            }
        }
    };
    match command {
        QueueCommand::History { id } => crate::events_cmd::history_online(api, &id)?,
        QueueCommand::List { quarantined } => {
            let all = list(if quarantined { "quarantined" } else { "all" })?;
            for m in &all {
                println!(
                    "{}  {:>8}  <{}>  {} recipient(s), {} pending{}",
                    m["id"].as_str().unwrap_or(""),
                    m["size"],
                    m["sender"].as_str().unwrap_or(""),
                    m["recipients"],
                    m["pending"],
                    m["quarantine"]
                        .as_str()
                        .map(|q| format!(", quarantined: {q}"))
                        .unwrap_or_default()
                );
            }
            println!("{} message(s)", all.len());
        }
        QueueCommand::Show { id } => {
            let m = call("GET", &format!("/queue/{id}"))?;
            println!(
                "id: {}\nsender: <{}>\nsize: {}\nreceived: {}",
                m["id"].as_str().unwrap_or(""),
                m["sender"].as_str().unwrap_or(""),
                m["size"],
                m["received_at"]
            );
            if let Some(envid) = m["envid"].as_str() {
                println!("envid: {envid}");
            }
            if let Some(q) = m["quarantine"].as_str() {
                println!("quarantined: {q}");
            }
            for r in m["recipients"].as_array().into_iter().flatten() {
                println!(
                    "recipient <{}>: {}, {} attempt(s){}",
                    r["address"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["attempts"],
                    r["last_reply"]
                        .as_str()
                        .map(|x| format!(", last: {x}"))
                        .unwrap_or_default()
                );
            }
        }
        QueueCommand::Retry { ids } => {
            let ids = if ids.is_empty() {
                list("all")?
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect()
            } else {
                ids
            };
            for id in &ids {
                call("POST", &format!("/queue/{id}/retry"))?;
            }
            println!("{} message(s) due now", ids.len());
        }
        QueueCommand::Release { ids } => {
            for id in &ids {
                call("POST", &format!("/queue/{id}/release"))?;
            }
            println!("{} message(s) released", ids.len());
        }
        QueueCommand::Delete {
            ids,
            quarantined_only,
        } => {
            if quarantined_only {
                for id in &ids {
                    if call("GET", &format!("/queue/{id}"))?["quarantine"].is_null() {
                        bail!("message {id} is not quarantined");
                    }
                }
            }
            for id in &ids {
                call("DELETE", &format!("/queue/{id}"))?;
            }
            println!("{} message(s) deleted", ids.len());
        }
    }
    Ok(())
}

/// `sluice quarantine`: the queue's quarantined messages (held by a policy verdict, kept
/// `[delivery] quarantine_retention`, 30 days by default).
#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Quarantined messages, one line each with the reason.
    List,
    /// Envelope, reason, per-recipient state and headers of one message.
    Show { id: String },
    /// Delivers quarantined messages as if accepted (the quarantine verdict is not applied
    /// to them again).
    Release {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Deletes quarantined messages without notice to the sender.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub fn quarantine(settings: &Settings, command: QuarantineCommand) -> Result<()> {
    run(
        settings,
        match command {
            QuarantineCommand::List => QueueCommand::List { quarantined: true },
            QuarantineCommand::Show { id } => QueueCommand::Show { id },
            QuarantineCommand::Release { ids } => QueueCommand::Release { ids },
            QuarantineCommand::Delete { ids } => QueueCommand::Delete {
                ids,
                quarantined_only: true,
            },
        },
    )
}
