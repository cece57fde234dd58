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
pub mod mem;
pub mod meta;
pub mod outbox;
pub mod sled_queue;
pub mod sled_sync;

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
    /// Stores a new message and its events: on the bus for `event` steps when `deliver`,
    /// in the history in any case; returns once the message (and the bus's copy) is
    /// durable.
    async fn enqueue_with_events(
        &self,
        meta: &MessageMeta,
        body: &[u8],
        events: Vec<sluice_core::Event>,
        deliver: bool,
    ) -> Result<(), QueueError> {
        if !deliver {
            self.enqueue(meta, body).await?;
            for e in &events {
                self.record_event(e)?;
            }
            return Ok(());
        }
        for e in events {
            self.publish_event(e)?;
        }
        self.enqueue(meta, body).await
    }
    /// Puts an event on the bus; durable at the next flush, ordered before any later
    /// queue change. A queue without an outbox drops it.
    fn publish_event(&self, event: sluice_core::Event) -> Result<(), QueueError> {
        tracing::debug!(id = %event.id, kind = event.kind.name(), "event dropped: no outbox");
        Ok(())
    }
    /// Records an event in the history only (no `event` step wants it). A queue without a
    /// history drops it.
    fn record_event(&self, event: &sluice_core::Event) -> Result<(), QueueError> {
        let _ = event;
        Ok(())
    }
    /// Recorded events matching `q`, newest first. A queue without a history has none.
    fn history(&self, q: &EventQuery) -> Result<EventPage, QueueError> {
        let _ = q;
        Ok(EventPage::default())
    }
    /// Every recorded event of one message, oldest first.
    fn message_history(&self, queue_id: &str) -> Result<Vec<sluice_core::Event>, QueueError> {
        let _ = queue_id;
        Ok(Vec::new())
    }
    /// Puts an event on the bus when `deliver` (an `event` step wants it), else records it
    /// in the history only.
    fn event(&self, event: sluice_core::Event, deliver: bool) -> Result<(), QueueError> {
        if deliver {
            self.publish_event(event)
        } else {
            self.record_event(&event)
        }
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
}
