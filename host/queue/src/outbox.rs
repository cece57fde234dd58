//! The event outbox: every event waits here until the policy's event chain acknowledged it
//! or it expired.
//!
//! A tree `events` of the queue's database holds `e/<id>` = the entry (format version byte,
//! then postcard) and a due index `d/<next attempt, ms, big-endian><id>`. Being in the
//! queue's database, an event published before a queue change reaches the disk no later
//! than that change (sled keeps the order of writes), so a delivery result is never durable
//! without its event. Delivery to event steps is at least once: an entry leaves only after
//! an acknowledgement.
//!
//! No sled batches (each seals a log buffer and wakes sled's whole IO pool): the writes
//! come in an order whose every prefix, seen by a concurrent [`Outbox::due`] scan or left
//! by a crash, is safe. An entry is written before its due key and removed after it, so a
//! due key always finds its entry while the entry lives; a due key whose time is not the
//! entry's `next_ms` is stale (the entry was rescheduled) and skipped; an entry left
//! without its due key by a crash gets it back when the database opens.
//!
//! Events due now also wait in memory (up to [`READY_MAX`]), where the dispatcher takes
//! them first: an event published due now is written without a due key (a crash leaves
//! it to the repair at open, which makes it due), and one made due after its message's
//! enqueue keeps the due key it was written with, a moment later, instead of being
//! rewritten. An index scan skips the entries held in memory. Either way an event costs
//! its entry's write and removal, and at most one due key.

use crate::QueueError;
use serde::{Deserialize, Serialize};
use sluice_core::Event;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ENTRY: &[u8] = b"e/";
const DUE: &[u8] = b"d/";
const VERSION: u8 = 1;
/// Events due now held in memory; past this, new ones wait in the index only.
pub const READY_MAX: usize = 4096;

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
    /// Whether the due index has a key for it at `next_ms` (not stored: an entry read
    /// from the database has one).
    #[serde(skip, default = "indexed")]
    pub indexed: bool,
}

fn indexed() -> bool {
    true
}

/// Events due now, in memory, and those handed to the dispatcher from here until it
/// settles them (an index scan skips both).
#[derive(Default)]
struct Ready {
    entries: VecDeque<OutboxEntry>,
    held: HashSet<String>,
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
    ready: Arc<Mutex<Ready>>,
}

fn entry_key(id: &str) -> Vec<u8> {
    [ENTRY, id.as_bytes()].concat()
}

fn due_key(next_ms: u64, id: &str) -> Vec<u8> {
    [DUE, &next_ms.to_be_bytes()[..], id.as_bytes()].concat()
}

/// The due time a due key carries.
fn due_time(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[DUE.len()..DUE.len() + 8]);
    u64::from_be_bytes(b)
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
            ready: Arc::default(),
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether memory has room for another event due now.
    fn has_room(&self) -> bool {
        self.ready().entries.len() < READY_MAX
    }

    /// Holds entries in memory for the dispatcher.
    fn hold(&self, entries: impl IntoIterator<Item = OutboxEntry>) {
        let mut r = self.ready();
        for e in entries {
            r.held.insert(e.event.id.clone());
            r.entries.push_back(e);
        }
    }

    /// The dispatcher is done with this entry (acknowledged, rescheduled or dropped).
    fn release(&self, id: &str) {
        self.ready().held.remove(id);
    }

    /// Points the outbox at a (re)opened database.
    pub(crate) fn attach(&self, db: &sled::Db) -> Result<(), QueueError> {
        let tree = db.open_tree("events")?;
        let repaired = Self::repair(&tree)?;
        if repaired > 0 {
            // Events published due now wait in memory without a due key: any the event
            // chain had not taken when the process ended (or a crash cut a write short).
            tracing::info!(
                repaired,
                "events not yet handed to the event chain when the queue closed are due again"
            );
        }
        *self.tree.write().unwrap_or_else(|e| e.into_inner()) = Some(tree);
        Ok(())
    }

    /// Gives every entry its due key back (a crash between the two writes of
    /// [`Outbox::write`] leaves an entry without one). Returns how many it added.
    fn repair(tree: &sled::Tree) -> Result<usize, QueueError> {
        let mut added = 0;
        for item in tree.scan_prefix(ENTRY) {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k[ENTRY.len()..]).into_owned();
            // Unreadable entries keep no due key of their own: `due` cannot reach them,
            // so give them one and let `due` drop and log them.
            let next_ms = Self::decode(&id, &v).map(|e| e.next_ms).unwrap_or(0);
            let due = due_key(next_ms, &id);
            if !tree.contains_key(&due)? {
                tree.insert(due, &[])?;
                added += 1;
            }
        }
        Ok(added)
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

    /// Adds an event, due now: its entry is written, and held in memory for the
    /// dispatcher without a due key while there is room.
    pub fn publish(&self, event: Event) -> Result<(), QueueError> {
        let copy = self.keeps_history().then(|| event.clone());
        let mut entry = self.entry(event, 0);
        entry.indexed = !self.has_room();
        // Written before the dispatcher can see it, so that no acknowledgement comes first.
        self.write(&entry, None)?;
        if !entry.indexed {
            self.hold([entry]);
        }
        if let Some(e) = copy {
            self.record(e);
        }
        self.wake.notify_one();
        Ok(())
    }

    fn entry(&self, event: Event, delay_ms: u64) -> OutboxEntry {
        sluice_metrics::global()
            .events_published
            .with_label_values(&[sluice_metrics::event_kind(event.kind.name())])
            .inc();
        let ttl = self.ttl.load(std::sync::atomic::Ordering::Relaxed);
        let now = now_ms();
        OutboxEntry {
            attempts: 0,
            next_ms: now + delay_ms,
            expires_ms: event.time_ms.max(now).saturating_add(ttl),
            event,
            indexed: true,
        }
    }

    /// Adds an event due in `delay_ms`, without waking the dispatcher: for events of a
    /// message not yet durable, made due with [`Outbox::make_due`] once it is (or removed
    /// with [`Outbox::discard`] if it never is). A crash in between leaves them due a moment
    /// later, never lost.
    pub(crate) fn publish_after(
        &self,
        event: Event,
        delay_ms: u64,
    ) -> Result<OutboxEntry, QueueError> {
        let entry = self.entry(event, delay_ms);
        self.write(&entry, None)?;
        Ok(entry)
    }

    /// Makes events published with a delay due now (in memory: each keeps its due key of
    /// a moment later for a crash, and is not rewritten), and records them in the history.
    pub(crate) fn make_due(&self, entries: Vec<OutboxEntry>) {
        if self.keeps_history() {
            for e in &entries {
                self.record(e.event.clone());
            }
        }
        if self.has_room() {
            self.hold(entries);
        } else {
            // No room: due now through the index.
            for mut e in entries {
                let old = e.next_ms;
                e.next_ms = now_ms();
                if let Err(err) = self.write(&e, Some(old)) {
                    tracing::error!(id = %e.event.id, error = %err, "cannot make an event due; it will be due shortly anyway");
                }
            }
        }
        self.wake.notify_one();
    }

    /// Writes the entry, then its due key when `entry.indexed`, then removes the due key
    /// it had (`old_due`): every prefix of these writes is safe (see the module's doc).
    fn write(&self, entry: &OutboxEntry, old_due: Option<u64>) -> Result<(), QueueError> {
        let id = &entry.event.id;
        let bytes = crate::versioned::encode(VERSION, entry);
        let tree = self.tree()?;
        tree.insert(entry_key(id), bytes)?;
        if entry.indexed {
            tree.insert(due_key(entry.next_ms, id), &[])?;
        }
        if let Some(old) = old_due.filter(|&old| !entry.indexed || old != entry.next_ms) {
            tree.remove(due_key(old, id))?;
        }
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

    /// Up to `limit` entries due at `now_ms`: those held in memory first, in the order
    /// they became due, then the index's, earliest first. An unreadable entry is removed
    /// and logged rather than blocking the others. Entries from memory stay held (an index
    /// scan skips them) until acknowledged or rescheduled.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, QueueError> {
        let mut out = Vec::new();
        let held = {
            let mut r = self.ready();
            let n = r.entries.len().min(limit);
            out.extend(r.entries.drain(..n));
            r.held.clone()
        };
        if out.len() >= limit {
            return Ok(out);
        }
        let end = due_key(now_ms.saturating_add(1), "");
        let tree = self.tree()?;
        for item in tree.range(DUE.to_vec()..end) {
            let (k, _) = item?;
            let id = String::from_utf8_lossy(&k[DUE.len() + 8..]).into_owned();
            if held.contains(&id) {
                continue;
            }
            match tree.get(entry_key(&id))? {
                Some(v) => match Self::decode(&id, &v) {
                    Ok(e) if e.next_ms == due_time(&k) => out.push(e),
                    // Rescheduled: its current due key is elsewhere in the index.
                    Ok(_) => {
                        tree.remove(&k)?;
                    }
                    Err(e) => {
                        tracing::error!(%id, error = %e, "dropping unreadable event");
                        tree.remove(&k)?;
                        tree.remove(entry_key(&id))?;
                    }
                },
                // Acknowledged meanwhile (an entry is written before its due key and
                // removed after it, so a live entry is never missed here).
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
                Ok(Some(due_time(&k)))
            }
            None => Ok(None),
        }
    }

    /// The event chain is done with this entry.
    /// Removes the due key first: a crash in between leaves the entry, made due again at
    /// open (at least once).
    pub fn ack(&self, entry: &OutboxEntry) -> Result<(), QueueError> {
        // Released whatever happens: an entry the database still has is found again by
        // an index scan (or, without a due key, by the repair when the database reopens).
        self.release(&entry.event.id);
        let tree = self.tree()?;
        if entry.indexed {
            tree.remove(due_key(entry.next_ms, &entry.event.id))?;
        }
        tree.remove(entry_key(&entry.event.id))?;
        Ok(())
    }

    /// Removes events that turned out never to have happened (their message was not
    /// queued after all).
    pub(crate) fn discard(&self, entries: &[OutboxEntry]) {
        for e in entries {
            let _ = self.ack(e);
        }
    }

    /// Schedules the entry again at `next_ms`.
    pub fn retry(&self, entry: &OutboxEntry, next_ms: u64) -> Result<OutboxEntry, QueueError> {
        let result = self.reschedule(entry, next_ms);
        self.release(&entry.event.id);
        result
    }

    fn reschedule(&self, entry: &OutboxEntry, next_ms: u64) -> Result<OutboxEntry, QueueError> {
        // Gone meanwhile (discarded): do not bring it back.
        if self.tree()?.get(entry_key(&entry.event.id))?.is_none() {
            return Ok(entry.clone());
        }
        let mut e = entry.clone();
        e.attempts += 1;
        e.next_ms = next_ms;
        e.indexed = true;
        self.write(&e, entry.indexed.then_some(entry.next_ms))?;
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

    /// No entry and no due key left.
    fn assert_drained(ob: &Outbox) {
        assert!(ob.is_empty());
        assert_eq!(ob.next_due().unwrap(), None, "no due key left behind");
    }

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

    /// The dispatcher scans while publishers write: every event published is seen.
    #[test]
    fn a_scan_during_publishing_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let q = crate::SledQueue::open(dir.path()).unwrap();
        let ob = q.outbox();
        const THREADS: usize = 4;
        const EACH: usize = 500;
        let publishers: Vec<_> = (0..THREADS)
            .map(|_| {
                let ob = ob.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..EACH {
                        let e = Event::new(EventKind::Queued, "a@b");
                        ids.push(e.id.clone());
                        if i % 2 == 0 {
                            ob.publish(e).unwrap();
                        } else {
                            // The enqueue path: published late, then made due.
                            let entry = ob.publish_after(e, 2000).unwrap();
                            ob.make_due(vec![entry]);
                        }
                    }
                    ids
                })
            })
            .collect();
        let mut seen = HashSet::new();
        loop {
            // Once the publishers are done, scan until nothing is left.
            let finished = publishers.iter().all(|p| p.is_finished());
            let due = ob.due(now_ms() + 10, 64).unwrap();
            if finished && due.is_empty() {
                break;
            }
            for e in due {
                seen.insert(e.event.id.clone());
                ob.ack(&e).unwrap();
            }
        }
        let mut all = 0;
        for p in publishers {
            for id in p.join().unwrap() {
                assert!(seen.contains(&id), "event {id} was never due");
                all += 1;
            }
        }
        assert_eq!(all, THREADS * EACH);
        assert_drained(&ob);
    }

    /// An event due now is written without a due key and held in memory; after a crash
    /// the repair at open makes it due.
    #[test]
    fn an_event_due_now_is_held_in_memory_and_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let q = crate::SledQueue::open(dir.path()).unwrap();
            let ob = q.outbox();
            let e = Event::new(EventKind::Delivered, "a@b");
            id = e.id.clone();
            ob.publish(e).unwrap();
            assert_eq!(ob.next_due().unwrap(), None, "no due key written");
            assert_eq!(ob.len(), 1);
            let due = ob.due(now_ms(), 10).unwrap();
            assert_eq!(due.len(), 1);
            assert!(!due[0].indexed);
            // Not acknowledged: the process ends here.
        }
        let q = crate::SledQueue::open(dir.path()).unwrap();
        let ob = q.outbox();
        let due = ob.due(now_ms() + 10, 10).unwrap();
        assert_eq!(due.len(), 1, "due again after the crash");
        assert_eq!(due[0].event.id, id);
        assert!(due[0].indexed);
        ob.ack(&due[0]).unwrap();
        assert_drained(&ob);
    }

    /// An event made due after its message's enqueue is not rewritten: it keeps the due
    /// key of a moment later, and the index scan does not hand it out a second time.
    #[test]
    fn an_event_made_due_is_handed_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = crate::SledQueue::open(dir.path()).unwrap();
        let ob = q.outbox();
        let entry = ob
            .publish_after(Event::new(EventKind::Queued, "a@b"), 1)
            .unwrap();
        let key = entry.next_ms;
        ob.make_due(vec![entry]);
        assert_eq!(ob.next_due().unwrap(), Some(key), "the same due key");
        // Past the key's time: memory and index both have it, it comes once.
        let due = ob.due(key + 10, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert!(
            ob.due(key + 10, 10).unwrap().is_empty(),
            "held until settled"
        );
        let later = ob.retry(&due[0], key + 60_000).unwrap();
        assert_eq!(
            ob.next_due().unwrap(),
            Some(key + 60_000),
            "old key removed"
        );
        let due = ob.due(key + 60_010, 10).unwrap();
        assert_eq!(due, vec![later.clone()]);
        ob.ack(&later).unwrap();
        assert_drained(&ob);
    }

    /// Past `READY_MAX` events waiting in memory, new ones go through the index; each
    /// is handed out once.
    #[test]
    fn past_the_memory_limit_events_wait_in_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let q = crate::SledQueue::open(dir.path()).unwrap();
        let ob = q.outbox();
        let mut ids = HashSet::new();
        for i in 0..READY_MAX + 10 {
            let e = Event::new(EventKind::Delivered, "a@b");
            ids.insert(e.id.clone());
            if i % 2 == 0 {
                ob.publish(e).unwrap();
            } else {
                let entry = ob.publish_after(e, 2000).unwrap();
                ob.make_due(vec![entry]);
            }
        }
        let mut indexed = 0;
        let mut seen = HashSet::new();
        loop {
            let due = ob.due(now_ms() + 10, 64).unwrap();
            if due.is_empty() {
                break;
            }
            for e in due {
                indexed += usize::from(e.indexed && e.next_ms <= now_ms() + 10);
                assert!(seen.insert(e.event.id.clone()), "handed out twice");
                ob.ack(&e).unwrap();
            }
        }
        assert_eq!(seen, ids);
        assert!(indexed >= 10, "the overflow went through the index");
        assert_drained(&ob);
    }

    /// What a crash between two writes can leave: an entry without its due key comes
    /// back due at open; a stale due key (the entry was rescheduled) is skipped.
    #[test]
    fn crash_leftovers_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let (lone, moved);
        {
            let q = crate::SledQueue::open(dir.path()).unwrap();
            let ob = q.outbox();
            let tree = ob.tree().unwrap();
            let e = ob
                .publish_after(Event::new(EventKind::Queued, "a@b"), 0)
                .unwrap();
            tree.remove(due_key(e.next_ms, &e.event.id)).unwrap();
            lone = e.event.id.clone();
            assert!(ob.due(now_ms() + 10, 10).unwrap().is_empty());
            let e = ob
                .publish_after(Event::new(EventKind::Queued, "a@b"), 0)
                .unwrap();
            let later = ob.retry(&e, now_ms() + 60_000).unwrap();
            // The old due key as a crash before its removal would leave it.
            tree.insert(due_key(e.next_ms, &e.event.id), &[]).unwrap();
            moved = later.event.id.clone();
            let due = ob.due(now_ms() + 10, 10).unwrap();
            assert!(
                due.is_empty(),
                "a stale due key is not a due event: {due:?}"
            );
        }
        let q = crate::SledQueue::open(dir.path()).unwrap();
        let ob = q.outbox();
        let due = ob.due(now_ms() + 10, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event.id, lone);
        let due = ob.due(now_ms() + 120_000, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert!(due.iter().any(|e| e.event.id == moved && e.attempts == 1));
    }
}
