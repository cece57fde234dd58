//! The durable message queue: message metadata with per-recipient state, and bodies.
//!
//! [`Queue`] is the interface the SMTP session and delivery use. [`SledQueue`] keeps
//! metadata in sled and bodies in append-only segment files, and makes `enqueue` durable
//! with a group commit shared by concurrent sessions; [`MemQueue`] is the model it is
//! tested against.
//!
//! # Layout
//! - [`meta`]: [`MessageMeta`] and [`RecipientState`], the stored record.
//! - [`sled_queue`]: the sled implementation and its group-commit flusher.
//! - [`body_log`]: bodies in segment files, with checksums and reference counts.
//! - [`mem`]: the in-memory model.
//! - [`outbox`]: the durable event outbox, in the queue's database.
//! - [`sled_sync`]: the fsyncs that make a sled flush survive a power cut.
//!
//! *Invariant*: when `enqueue` returns `Ok`, the message and its envelope are on disk.

pub mod body_log;
pub mod history;
mod history_sled;
pub mod mem;
pub mod meta;
pub mod outbox;
pub mod sled_queue;
pub mod sled_sync;
mod versioned;

pub use history::{EventPage, EventQuery, History};
pub use mem::MemQueue;
pub use meta::{MessageMeta, RecipientState, Status, new_id, now_secs};
pub use outbox::{Outbox, OutboxEntry};
pub use sled_queue::SledQueue;

use async_trait::async_trait;
use std::sync::Arc;

/// A message just made durable, handed to delivery with its body so that the first attempt
/// does not read it back from disk.
#[derive(Debug, Clone)]
pub struct Queued {
    pub meta: MessageMeta,
    pub body: Arc<Vec<u8>>,
}

/// The bounded hand-off of new messages from the SMTP sessions to delivery.
///
/// At most `capacity` messages wait with their bodies; past that a message goes by id only
/// (delivery reads its body from the queue when it gets to it), so a delivery backlog never
/// holds bodies in memory without bound and never slows the sessions down.
#[derive(Clone)]
pub struct Handoff {
    tx: tokio::sync::mpsc::Sender<Queued>,
    overflow: tokio::sync::mpsc::UnboundedSender<String>,
}

/// The delivery side of a [`Handoff`].
pub struct HandoffRx {
    pub queued: tokio::sync::mpsc::Receiver<Queued>,
    pub overflow: tokio::sync::mpsc::UnboundedReceiver<String>,
}

pub fn handoff(capacity: usize) -> (Handoff, HandoffRx) {
    let (tx, queued) = tokio::sync::mpsc::channel(capacity.max(1));
    let (otx, overflow) = tokio::sync::mpsc::unbounded_channel();
    (
        Handoff { tx, overflow: otx },
        HandoffRx { queued, overflow },
    )
}

impl Handoff {
    /// Hands a message that was just made durable to delivery; never waits.
    pub fn hand(&self, q: Queued) {
        use tokio::sync::mpsc::error::TrySendError;
        if let Err(TrySendError::Full(q)) = self.tx.try_send(q) {
            let _ = self.overflow.send(q.meta.id);
        }
    }
}

/// A queue failure. Always an I/O-level problem: callers answer 451 and retry later.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt queue record {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("queue body storage: {0}")]
    Body(std::io::Error),
    #[error("queue flush failed: {0}")]
    Flush(String),
    #[error("not enough disk space for the queue: {0}")]
    NoSpace(String),
    #[error("queue is closed")]
    Closed,
    #[error("event history storage: {0}")]
    History(Box<redb::Error>),
}

impl QueueError {
    /// The disk is full (or below the queue's reserve): answer `452 4.3.1`, not `451`.
    pub fn is_no_space(&self) -> bool {
        let full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
        };
        match self {
            QueueError::NoSpace(_) => true,
            QueueError::Body(e) => full(e),
            QueueError::Storage(sled::Error::Io(e)) => full(e),
            _ => false,
        }
    }
}

/// Storage for queued messages.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Stores a new message; returns once it is durable.
    async fn enqueue(&self, meta: &MessageMeta, body: &[u8]) -> Result<(), QueueError>;
    /// Stores a new message and its events (see [`Queue::event`]); returns once the
    /// message, and the bus's copies when `deliver`, are durable.
    async fn enqueue_with_events(
        &self,
        meta: &MessageMeta,
        body: &[u8],
        events: Vec<sluice_core::Event>,
        deliver: bool,
    ) -> Result<(), QueueError> {
        self.enqueue(meta, body).await?;
        for e in events {
            self.event(e, deliver)?;
        }
        Ok(())
    }
    /// Whether events given to [`Queue::event`] without `deliver` are kept (an event
    /// history is open): when not, and no `event` step wants them, callers need not build
    /// them.
    fn keeps_events(&self) -> bool {
        false
    }
    /// Puts an event on the bus when `deliver` (an `event` step wants it; durable at the
    /// next flush, ordered before any later queue change) and in the history if there is
    /// one. A queue without an outbox drops it.
    fn event(&self, event: sluice_core::Event, deliver: bool) -> Result<(), QueueError> {
        let _ = deliver;
        tracing::debug!(id = %event.id, kind = event.kind.name(), "event dropped: no outbox");
        Ok(())
    }
    /// Whether a message of `size` bytes would fit now (the disk's reserve included);
    /// checked before a client sends the data.
    fn has_room(&self, size: u64) -> Result<(), QueueError> {
        let _ = size;
        Ok(())
    }
    /// Replaces a message's metadata. Durable at the next flush (at most ~1 s later).
    fn update(&self, meta: &MessageMeta) -> Result<(), QueueError>;
    /// Deletes a message and its body.
    fn remove(&self, id: &str) -> Result<(), QueueError>;
    fn get(&self, id: &str) -> Result<Option<MessageMeta>, QueueError>;
    /// The address of recipient `index` (envelope order) of message `id`: from its record
    /// while it is queued, after that from the event history where there is one.
    fn recipient_of(&self, id: &str, index: usize) -> Result<Option<String>, QueueError> {
        Ok(self
            .get(id)?
            .and_then(|m| m.recipients.get(index).map(|r| r.recipient.address.clone())))
    }
    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError>;
    /// Every message, in id (arrival) order.
    fn list(&self) -> Result<Vec<MessageMeta>, QueueError>;
    /// Every message, in id order, one at a time: a scan of a large queue that holds one
    /// record in memory at a time. Unreadable records are moved aside as in `list`.
    fn for_each(&self, f: &mut dyn FnMut(MessageMeta)) -> Result<(), QueueError> {
        for m in self.list()? {
            f(m);
        }
        Ok(())
    }
    /// Makes every earlier change durable.
    async fn sync(&self) -> Result<(), QueueError>;
    /// Makes every earlier change durable, riding the next flush other writers ask for
    /// if one comes within `within`, asking for one after that: under load no flush of
    /// its own. What a commit hook's writers wait for.
    async fn sync_soon(&self, within: std::time::Duration) -> Result<(), QueueError> {
        let _ = within;
        self.sync().await
    }
    /// Has each later [`Queue::sync`] (and every other flush) sync `hook` first; returns
    /// whether this queue can (one without its own flushes cannot).
    fn add_commit_hook(&self, hook: Arc<dyn sluice_core::durable::CommitHook>) -> bool {
        let _ = hook;
        false
    }
}
