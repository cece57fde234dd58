//! The event outbox: every event waits here until the policy's event chain acknowledged it
//! or it expired.
//!
//! A tree `events` of the queue's database holds `e/<id>` = the entry (format version byte,
//! then postcard) and a due index `d/<next attempt, ms, big-endian><id>`. Being in the
//! queue's database, an event published before a queue change reaches the disk no later
//! than that change (sled keeps the order of writes), so a delivery result is never durable
//! without its event. Delivery to event steps is at least once: an entry leaves only after
//! an acknowledgement.

use crate::QueueError;
use serde::{Deserialize, Serialize};
use sluice_core::Event;
use std::sync::Arc;
use std::time::Duration;

const ENTRY: &[u8] = b"e/";
const DUE: &[u8] = b"d/";
const VERSION: u8 = 1;

/// An event with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub event: Event,
    /// Times the event chain ran for it.
    pub attempts: u32,
    /// Next run, unix milliseconds.
    pub next_ms: u64,
    /// Dropped (and counted) when not acknowledged by then, unix milliseconds.
    pub expires_ms: u64,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    /// The `events` tree of the queue's current database; `None` while it is reopened.
    tree: Arc<std::sync::RwLock<Option<sled::Tree>>>,
    wake: Arc<tokio::sync::Notify>,
    ttl: Arc<std::sync::atomic::AtomicU64>,
    /// Where every event is also recorded (unset: no history).
    history: Arc<std::sync::OnceLock<Arc<crate::History>>>,
}

fn entry_key(id: &str) -> Vec<u8> {
    [ENTRY, id.as_bytes()].concat()
}

fn due_key(next_ms: u64, id: &str) -> Vec<u8> {
    [DUE, &next_ms.to_be_bytes()[..], id.as_bytes()].concat()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        Outbox {
            tree: Arc::new(std::sync::RwLock::new(None)),
            wake: Arc::new(tokio::sync::Notify::new()),
            ttl: Arc::new(std::sync::atomic::AtomicU64::new(3 * 24 * 3600 * 1000)),
            history: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Points the outbox at a (re)opened database.
    pub(crate) fn attach(&self, db: &sled::Db) -> Result<(), QueueError> {
        let tree = db.open_tree("events")?;
        *self.tree.write().unwrap_or_else(|e| e.into_inner()) = Some(tree);
        Ok(())
    }

    /// Lets go of the database so that it can close.
    pub(crate) fn detach(&self) {
        *self.tree.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn tree(&self) -> Result<sled::Tree, QueueError> {
        self.tree
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(QueueError::Closed)
    }

    /// How long an event is retried before it expires (default 3 days).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl
            .store(ttl.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records every event published from now on in `history` as well (set once, at
    /// start).
    pub fn set_history(&self, history: Arc<crate::History>) {
        let _ = self.history.set(history);
    }

    /// The history events are recorded in, when there is one.
    pub fn history(&self) -> Option<&Arc<crate::History>> {
        self.history.get()
    }

    /// Whether events are recorded in a history.
    pub fn keeps_history(&self) -> bool {
        self.history.get().is_some()
    }

    /// Records an event in the history only (no `event` step wants it).
    pub fn record(&self, event: Event) {
        if let Some(h) = self.history.get() {
            h.record(event);
        }
    }

    /// Woken when an event is published.
    pub fn notified(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Adds an event, due now.
    pub fn publish(&self, event: Event) -> Result<(), QueueError> {
        let copy = self.keeps_history().then(|| event.clone());
        self.publish_after(event, 0)?;
        if let Some(e) = copy {
            self.record(e);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Adds an event due in `delay_ms`, without waking the dispatcher: for events of a
    /// message not yet durable, made due with [`Outbox::make_due`] once it is (or removed
    /// with [`Outbox::discard`] if it never is). A crash in between leaves them due a moment
    /// later, never lost.
    pub(crate) fn publish_after(&self, event: Event, delay_ms: u64) -> Result<(), QueueError> {
        sluice_metrics::global()
            .events_published
            .with_label_values(&[sluice_metrics::event_kind(event.kind.name())])
            .inc();
        let ttl = self.ttl.load(std::sync::atomic::Ordering::Relaxed);
        let now = now_ms();
        let entry = OutboxEntry {
            attempts: 0,
            next_ms: now + delay_ms,
            expires_ms: event.time_ms.max(now).saturating_add(ttl),
            event,
        };
        self.write(&entry, None)
    }

    /// Makes events published with a delay due now, and records them in the history.
    pub(crate) fn make_due(&self, ids: &[String]) {
        let now = now_ms();
        for id in ids {
            if let Ok(Some(mut e)) = self.get(id) {
                let old = e.next_ms;
                e.next_ms = now;
                if let Err(err) = self.write(&e, Some(old)) {
                    tracing::error!(%id, error = %err, "cannot make an event due; it will be due shortly anyway");
                }
                self.record(e.event);
            }
        }
        self.wake.notify_one();
    }

    fn write(&self, entry: &OutboxEntry, old_due: Option<u64>) -> Result<(), QueueError> {
        let id = &entry.event.id;
        let bytes = crate::versioned::encode(VERSION, entry);
        let mut batch = sled::Batch::default();
        if let Some(old) = old_due {
            batch.remove(due_key(old, id));
        }
        batch.insert(entry_key(id), bytes);
        batch.insert(due_key(entry.next_ms, id), &[]);
        self.tree()?.apply_batch(batch)?;
        Ok(())
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<OutboxEntry, QueueError> {
        crate::versioned::decode(id, bytes, VERSION, "event")
    }

    pub fn get(&self, id: &str) -> Result<Option<OutboxEntry>, QueueError> {
        match self.tree()?.get(entry_key(id))? {
            Some(v) => Ok(Some(Self::decode(id, &v)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries due at `now_ms`, earliest first. An unreadable entry is
    /// removed and logged rather than blocking the others.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, QueueError> {
        let mut out = Vec::new();
        let end = due_key(now_ms.saturating_add(1), "");
        let tree = self.tree()?;
        for item in tree.range(DUE.to_vec()..end) {
            let (k, _) = item?;
            let id = String::from_utf8_lossy(&k[DUE.len() + 8..]).into_owned();
            match tree.get(entry_key(&id))? {
                Some(v) => match Self::decode(&id, &v) {
                    Ok(e) => out.push(e),
                    Err(e) => {
                        tracing::error!(%id, error = %e, "dropping unreadable event");
                        tree.remove(&k)?;
                        tree.remove(entry_key(&id))?;
                    }
                },
                // An index entry left behind by a crash between two writes of one batch
                // cannot happen (batches are atomic); tolerate it anyway.
                None => {
                    tree.remove(&k)?;
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the earliest entry is due, unix milliseconds.
    pub fn next_due(&self) -> Result<Option<u64>, QueueError> {
        match self.tree()?.scan_prefix(DUE).next() {
            Some(item) => {
                let (k, _) = item?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[DUE.len()..DUE.len() + 8]);
                Ok(Some(u64::from_be_bytes(b)))
            }
            None => Ok(None),
        }
    }

    /// The event chain is done with this entry.
    pub fn ack(&self, entry: &OutboxEntry) -> Result<(), QueueError> {
        let mut batch = sled::Batch::default();
        batch.remove(entry_key(&entry.event.id));
        batch.remove(due_key(entry.next_ms, &entry.event.id));
        self.tree()?.apply_batch(batch)?;
        Ok(())
    }

    /// Removes events that turned out never to have happened (their message was not
    /// queued after all).
    pub fn discard(&self, ids: &[String]) {
        for id in ids {
            if let Ok(Some(e)) = self.get(id) {
                let _ = self.ack(&e);
            }
        }
    }

    /// Schedules the entry again at `next_ms`.
    pub fn retry(&self, entry: &OutboxEntry, next_ms: u64) -> Result<OutboxEntry, QueueError> {
        // Gone meanwhile (discarded): do not bring it back.
        if self.tree()?.get(entry_key(&entry.event.id))?.is_none() {
            return Ok(entry.clone());
        }
        let mut e = entry.clone();
        e.attempts += 1;
        e.next_ms = next_ms;
        self.write(&e, Some(entry.next_ms))?;
        Ok(e)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.tree()
            .map(|t| t.scan_prefix(ENTRY).count())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.tree()
            .map(|t| t.scan_prefix(ENTRY).next().is_none())
            .unwrap_or(true)
    }
}

impl sluice_core::EventSink for Outbox {
    fn publish(&self, event: Event) -> Result<(), String> {
        Outbox::publish(self, event).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::EventKind;

    #[test]
    fn events_wait_until_acknowledged_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let q = crate::SledQueue::open(dir.path()).unwrap();
            let ob = q.outbox();
            let mut e = Event::new(EventKind::Delivered, "a@b");
            e.recipient = Some("c@d".into());
            id = e.id.clone();
            ob.publish(e).unwrap();
            ob.publish(Event::new(EventKind::Other("custom".into()), ""))
                .unwrap();
            let due = ob.due(now_ms() + 10, 10).unwrap();
            assert_eq!(due.len(), 2);
            let first = due.iter().find(|e| e.event.id == id).unwrap();
            let later = ob.retry(first, now_ms() + 60_000).unwrap();
            assert_eq!(later.attempts, 1);
            let other = due.iter().find(|e| e.event.id != id).unwrap();
            ob.ack(other).unwrap();
            assert_eq!(ob.due(now_ms() + 10, 10).unwrap().len(), 0);
            assert_eq!(ob.len(), 1);
        }
        let q = crate::SledQueue::open(dir.path()).unwrap();
        let ob = q.outbox();
        let e = ob.get(&id).unwrap().expect("kept across reopening");
        assert_eq!(e.event.recipient.as_deref(), Some("c@d"));
        assert_eq!(ob.due(now_ms() + 120_000, 10).unwrap().len(), 1);
    }
}
