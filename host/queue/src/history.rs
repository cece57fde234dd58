//! The event history: every event, kept for a retention period after it happened, whether
//! or not any `event` step wants it. It answers "what happened to this message" (each
//! delivery attempt is an event with the remote reply) and "recent bounces for this
//! address".
//!
//! Its own sled database (`<data_dir>/history`), written by a background thread every 50 ms
//! and flushed by sled every second: recording an event costs the caller a channel send,
//! and never lengthens the queue's fsyncs (measured: in the queue's database, written with
//! each event, it halved relay throughput). The price: a crash loses up to about a second
//! of history (never a message or an event bound for event steps: those are in the queue's
//! database).
//! - `h/<event id>` = the event (format version byte, then postcard). Event ids start with
//!   their time in fixed-width hex, so key order is time order.
//! - `hq/<queue id>\0<event id>`, `hr/<recipient, lowercase>\0<event id>`,
//!   `hk/<kind>\0<event id>`: indexes (empty values).

use crate::QueueError;
use sluice_core::Event;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LOG: &[u8] = b"h/";
const BY_QUEUE: &[u8] = b"hq/";
const BY_RCPT: &[u8] = b"hr/";
const BY_KIND: &[u8] = b"hk/";
const VERSION: u8 = 1;

/// What [`search`] looks for; every given criterion must hold.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// An event kind's name (`delivered`, `bounced`, or an extension's name).
    pub kind: Option<String>,
    /// A recipient address (any case).
    pub recipient: Option<String>,
    /// Events at or after this time, unix milliseconds.
    pub since_ms: Option<u64>,
    /// Events older than this event id (paging: the previous page's `next`).
    pub before: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// A page of [`search`], newest first.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `before` for the next page; `None` on the last one.
    pub next: Option<String>,
}

fn log_key(id: &str) -> Vec<u8> {
    [LOG, id.as_bytes()].concat()
}

fn index_key(prefix: &[u8], term: &str, id: &str) -> Vec<u8> {
    [prefix, term.as_bytes(), b"\0", id.as_bytes()].concat()
}

fn index_keys(e: &Event) -> Vec<Vec<u8>> {
    let mut keys = vec![index_key(BY_KIND, e.kind.name(), &e.id)];
    if let Some(q) = &e.queue_id {
        keys.push(index_key(BY_QUEUE, q, &e.id));
    }
    if let Some(r) = &e.recipient {
        keys.push(index_key(BY_RCPT, &r.to_lowercase(), &e.id));
    }
    keys
}

/// Events waiting for the writer thread at most; past that, callers write themselves.
const BACKLOG: usize = 16 * 1024;

/// The event history. Cheap to share (`Arc`); dropping the last handle drains the writer
/// and flushes.
pub struct History {
    tree: sled::Tree,
    db: sled::Db,
    tx: Mutex<Option<SyncSender<Event>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    keep_ms: u64,
}

impl History {
    /// Opens (or creates) the history in `dir`, keeping events for `keep`.
    pub fn open(dir: &Path, keep: Duration) -> Result<Arc<History>, QueueError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(1000))
            .open()?;
        let tree = db.open_tree("history")?;
        let (tx, rx) = sync_channel(BACKLOG);
        let t = tree.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-history".into())
            .spawn(move || write_loop(&t, &rx))
            .map_err(QueueError::Body)?;
        Ok(Arc::new(History {
            tree,
            db,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            keep_ms: keep.as_millis() as u64,
        }))
    }

    /// Records an event (visible to searches a moment later). Never blocks on the writer:
    /// with a full backlog the caller writes the event itself.
    pub fn record(&self, event: Event) {
        let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return; // closing
        };
        let event = match tx.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => e,
        };
        if let Err(e) = write(&self.tree, &event) {
            tracing::error!(id = %event.id, error = %e, "cannot record an event in the history");
        }
    }

    /// Events matching `q`, newest first.
    pub fn search(&self, q: &EventQuery) -> Result<EventPage, QueueError> {
        search(&self.tree, q)
    }

    /// Every event of one message, oldest first (at most 10,000).
    pub fn of_message(&self, queue_id: &str) -> Result<Vec<Event>, QueueError> {
        of_message(&self.tree, queue_id, 10_000)
    }

    /// Drops events older than the retention; returns how many.
    pub fn purge_expired(&self, now_ms: u64) -> Result<usize, QueueError> {
        purge(&self.tree, now_ms.saturating_sub(self.keep_ms))
    }

    /// Waits until every recorded event is written and on disk.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "cannot flush the event history");
        }
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.close();
    }
}

/// How long the writer lets events gather before it writes them (they wait in the channel
/// without waking it).
const GATHER: Duration = Duration::from_millis(50);

fn write_loop(tree: &sled::Tree, rx: &Receiver<Event>) {
    while let Ok(first) = rx.recv() {
        std::thread::sleep(GATHER);
        for e in std::iter::once(first).chain(rx.try_iter()) {
            if let Err(err) = write(tree, &e) {
                tracing::error!(id = %e.id, error = %err, "cannot write the event history");
            }
        }
    }
}

/// Writes one event: its record, then its index entries, as plain inserts, not a batch
/// (ARCHITECTURE.md, "sled batches only where two keys must appear together"). sled
/// recovers a prefix of its log, so after a crash an index entry never points at a missing
/// record.
fn write(tree: &sled::Tree, e: &Event) -> Result<(), sled::Error> {
    tree.insert(log_key(&e.id), crate::versioned::encode(VERSION, e))?;
    for k in index_keys(e) {
        tree.insert(k, &[])?;
    }
    Ok(())
}

fn decode(id: &str, bytes: &[u8]) -> Result<Event, QueueError> {
    crate::versioned::decode(id, bytes, VERSION, "history")
}

/// The time in an event id (`E` + 13 hex digits of unix milliseconds + ...).
fn id_time(id: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(id.get(1..14)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

fn get(tree: &sled::Tree, id: &str) -> Result<Option<Event>, QueueError> {
    match tree.get(log_key(id))? {
        Some(v) => Ok(Some(decode(id, &v)?)),
        None => Ok(None),
    }
}

/// Events matching `q`, newest first. Driven by the most selective index given
/// (recipient, then kind, then the whole log); ids are time-ordered, so a `since` bound
/// ends the scan.
fn search(tree: &sled::Tree, q: &EventQuery) -> Result<EventPage, QueueError> {
    let limit = q.limit.max(1);
    let recipient = q.recipient.as_ref().map(|r| r.to_lowercase());
    let whole_log = recipient.is_none() && q.kind.is_none();
    let prefix: Vec<u8> = match (&recipient, &q.kind) {
        (Some(r), _) => [BY_RCPT, r.as_bytes(), b"\0"].concat(),
        (None, Some(k)) => [BY_KIND, k.as_bytes(), b"\0"].concat(),
        (None, None) => LOG.to_vec(),
    };
    let end = match &q.before {
        Some(b) => [&prefix[..], b.as_bytes()].concat(),
        None => {
            let mut e = prefix.clone();
            e.push(0xff);
            e
        }
    };
    let mut page = EventPage::default();
    for item in tree.range(prefix.clone()..end).rev() {
        let (k, v) = item?;
        let id_bytes = &k[prefix.len()..];
        if let (Some(since), Some(t)) = (q.since_ms, id_time(id_bytes))
            && t < since
        {
            break;
        }
        let id = String::from_utf8_lossy(id_bytes).into_owned();
        let event = if whole_log {
            decode(&id, &v)?
        } else {
            match get(tree, &id)? {
                Some(e) => e,
                None => continue,
            }
        };
        if q.kind.as_deref().is_some_and(|k| event.kind.name() != k) {
            continue;
        }
        if page.events.len() == limit {
            page.next = page.events.last().map(|e| e.id.clone());
            break;
        }
        page.events.push(event);
    }
    Ok(page)
}

/// Every event of one message, oldest first (at most `limit`).
fn of_message(tree: &sled::Tree, queue_id: &str, limit: usize) -> Result<Vec<Event>, QueueError> {
    let prefix = [BY_QUEUE, queue_id.as_bytes(), b"\0"].concat();
    let mut out = Vec::new();
    for item in tree.scan_prefix(&prefix).take(limit) {
        let (k, _) = item?;
        let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        if let Some(e) = get(tree, &id)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Removes the history of events older than `before_ms`; returns how many.
fn purge(tree: &sled::Tree, before_ms: u64) -> Result<usize, QueueError> {
    let mut removed = 0;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in tree.scan_prefix(LOG).take(1000) {
            let (k, v) = item?;
            let id_bytes = &k[LOG.len()..];
            if id_time(id_bytes).is_some_and(|t| t >= before_ms) {
                break;
            }
            let id = String::from_utf8_lossy(id_bytes).into_owned();
            match decode(&id, &v) {
                Ok(e) => {
                    for key in index_keys(&e) {
                        batch.remove(key);
                    }
                }
                // Its index keys cannot be named: they stay, and searches skip them.
                Err(e) => tracing::warn!(%id, error = %e, "purging an unreadable history record"),
            }
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            return Ok(removed);
        }
        tree.apply_batch(batch)?;
        removed += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::EventKind;

    fn event(kind: EventKind, queue_id: &str, rcpt: &str, time_ms: u64) -> Event {
        let mut e = Event::new(kind, "sender@example.com");
        // A fixed time, in the id too (as Event::new writes it).
        e.id = format!("E{time_ms:013X}{:016X}", e.id.len() as u64 + time_ms);
        e.time_ms = time_ms;
        e.queue_id = Some(queue_id.into());
        e.recipient = Some(rcpt.into());
        e
    }

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let t = db.open_tree("events").unwrap();
        (dir, t)
    }

    fn put(t: &sled::Tree, events: &[Event]) {
        for e in events {
            write(t, e).unwrap();
        }
    }

    #[test]
    fn searches_page_newest_first_and_filter() {
        let (_d, t) = tree();
        let mut all = Vec::new();
        for i in 0..25u64 {
            let kind = if i % 5 == 0 {
                EventKind::Bounced
            } else {
                EventKind::Delivered
            };
            all.push(event(
                kind,
                &format!("Q{}", i / 3),
                &format!("User{}@X.example", i % 2),
                1_000 + i,
            ));
        }
        put(&t, &all);
        // Whole log, paged.
        let mut q = EventQuery {
            limit: 10,
            ..EventQuery::default()
        };
        let p1 = search(&t, &q).unwrap();
        assert_eq!(p1.events.len(), 10);
        assert_eq!(p1.events[0].time_ms, 1_024);
        q.before = p1.next.clone();
        let p2 = search(&t, &q).unwrap();
        assert_eq!(p2.events[0].time_ms, 1_014);
        q.before = search(&t, &q).unwrap().next;
        let p3 = search(&t, &q).unwrap();
        assert_eq!((p3.events.len(), p3.next), (5, None));
        // By kind, by recipient (any case), both, and a time bound.
        let bounced = search(
            &t,
            &EventQuery {
                kind: Some("bounced".into()),
                limit: 100,
                ..EventQuery::default()
            },
        )
        .unwrap();
        assert_eq!(bounced.events.len(), 5);
        let user0 = EventQuery {
            recipient: Some("user0@x.EXAMPLE".into()),
            limit: 100,
            ..EventQuery::default()
        };
        assert_eq!(search(&t, &user0).unwrap().events.len(), 13);
        let both = EventQuery {
            kind: Some("bounced".into()),
            ..user0.clone()
        };
        // i in 0, 10, 20 (even and a multiple of 5).
        assert_eq!(search(&t, &both).unwrap().events.len(), 3);
        let recent = EventQuery {
            since_ms: Some(1_020),
            ..user0
        };
        assert_eq!(search(&t, &recent).unwrap().events.len(), 3);
        // One message's history, oldest first.
        let h = of_message(&t, "Q2", 100).unwrap();
        let times: Vec<u64> = h.iter().map(|e| e.time_ms).collect();
        assert_eq!(times, [1_006, 1_007, 1_008]);
    }

    #[test]
    fn recorded_events_survive_closing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Duration::from_secs(86400);
        let h = History::open(dir.path(), keep).unwrap();
        // More than the writer's backlog: some are written by the caller itself.
        for i in 0..(BACKLOG as u64 + 3000) {
            h.record(event(
                EventKind::Delivered,
                &format!("Q{i}"),
                "a@b.example",
                5_000 + i,
            ));
        }
        drop(h);
        let h = History::open(dir.path(), keep).unwrap();
        assert_eq!(h.of_message("Q0").unwrap().len(), 1);
        assert_eq!(
            h.of_message(&format!("Q{}", BACKLOG + 2999)).unwrap().len(),
            1
        );
        let all = h
            .search(&EventQuery {
                recipient: Some("a@b.example".into()),
                limit: 100_000,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(all.events.len(), BACKLOG + 3000);
    }

    #[test]
    fn purge_removes_old_events_and_their_index_entries() {
        let (_d, t) = tree();
        let events: Vec<Event> = (0..2500u64)
            .map(|i| {
                event(
                    EventKind::Delivered,
                    &format!("Q{i}"),
                    "a@b.example",
                    10_000 + i,
                )
            })
            .collect();
        put(&t, &events);
        assert_eq!(purge(&t, 12_000).unwrap(), 2000);
        assert!(of_message(&t, "Q1999", 10).unwrap().is_empty());
        assert_eq!(of_message(&t, "Q2000", 10).unwrap().len(), 1);
        // Nothing left behind but the 500 newer events' keys (log + 3 indexes each).
        assert_eq!(t.len(), 500 * 4);
        assert_eq!(purge(&t, 12_000).unwrap(), 0);
    }
}
