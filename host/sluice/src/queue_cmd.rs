//! `sluice queue`: list, show, retry and delete queued messages.
//!
//! These open the queue directly, so the server must be stopped (sled holds a lock). The
//! HTTP API (a later issue) will offer the same on a running server.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sluice_config::Settings;
use sluice_queue::{Queue, SledQueue, Status};

#[derive(Subcommand)]
pub enum QueueCommand {
    /// One line per queued message.
    List,
    /// Envelope, per-recipient state and headers of one message.
    Show { id: String },
    /// Makes deferred recipients due now (all messages, or the given ones).
    Retry { ids: Vec<String> },
    /// Deletes messages without any notice to the sender.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub fn run(settings: &Settings, command: QueueCommand) -> Result<()> {
    let queue = SledQueue::open(&settings.queue_dir()).with_context(|| {
        format!(
            "cannot open the queue in {} (stop the running server first)",
            settings.queue_dir().display()
        )
    })?;
    match command {
        QueueCommand::List => {
            let all = queue.list()?;
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
            let bad = queue.unreadable()?;
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
        QueueCommand::Delete { ids } => {
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
