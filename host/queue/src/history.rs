//! The event history: every event, kept for a retention period after it happened, whether
//! or not any `event` step wants it. It answers "what happened to this message" (each
//! delivery attempt is an event with the remote reply) and "recent bounces for this
//! address".
//!
//! A redb database of its own (`<data_dir>/history/events.redb`), written by a background
//! thread: the events of 50 ms go in one transaction, committed without an fsync, and a
//! commit every second makes them durable. Recording an event costs the caller a channel
//! send and never lengthens the queue's fsyncs. The price: a crash loses up to about a
//! second of history (never a message or an event bound for event steps: those are in the
//! queue's database). It was a sled database, whose inserts (four per event) cost about
//! 15% of the relay's CPU (bench/RESULTS.md); an old one is carried over at open.
//! - `h/<event id>` = the event (format version byte, then postcard). Event ids start with
//!   their time in fixed-width hex, so key order is time order.
//! - `hq/<queue id>\0<event id>`, `hr/<recipient, lowercase>\0<event id>`,
//!   `hk/<kind>\0<event id>`: indexes (empty values), in the same transaction as the event.

use crate::QueueError;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use sluice_core::Event;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOG: &[u8] = b"h/";
const BY_QUEUE: &[u8] = b"hq/";
const BY_RCPT: &[u8] = b"hr/";
const BY_KIND: &[u8] = b"hk/";
const VERSION: u8 = 1;
pub(crate) const EVENTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("events");
/// The database's file in the history folder.
const FILE: &str = "events.redb";
/// redb's page cache: recent events and the indexes' upper levels.
const CACHE: usize = 64 << 20;

pub(crate) fn db_error(e: impl Into<redb::Error>) -> QueueError {
    QueueError::History(Box::new(e.into()))
}

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
/// and syncs.
pub struct History {
    db: Arc<Database>,
    tx: Mutex<Option<SyncSender<Event>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    keep_ms: u64,
}

impl History {
    /// Opens (or creates) the history in `dir`, keeping events for `keep`. Fails while
    /// another process has it open.
    pub fn open(dir: &Path, keep: Duration) -> Result<Arc<History>, QueueError> {
        std::fs::create_dir_all(dir).map_err(QueueError::Body)?;
        let db = Database::builder()
            .set_cache_size(CACHE)
            .create(dir.join(FILE))
            .map_err(db_error)?;
        let tx = begin(&db, Durability::Immediate)?;
        tx.open_table(EVENTS).map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        crate::history_sled::migrate(dir, &db)?;
        let db = Arc::new(db);
        let (tx, rx) = sync_channel(BACKLOG);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-history".into())
            .spawn(move || write_loop(&writer_db, &rx))
            .map_err(QueueError::Body)?;
        Ok(Arc::new(History {
            db,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            keep_ms: keep.as_millis() as u64,
        }))
    }

    /// Records an event (visible to searches a moment later). Never blocks on the writer's
    /// backlog: with a full one the caller writes the event itself.
    pub fn record(&self, event: Event) {
        let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return; // closing
        };
        let event = match tx.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => e,
        };
        if let Err(e) = write(&self.db, std::slice::from_ref(&event), Durability::None) {
            tracing::error!(id = %event.id, error = %e, "cannot record an event in the history");
        }
    }

    /// Events matching `q`, newest first.
    pub fn search(&self, q: &EventQuery) -> Result<EventPage, QueueError> {
        search(&self.db, q)
    }

    /// Every event of one message, oldest first (at most 10,000).
    pub fn of_message(&self, queue_id: &str) -> Result<Vec<Event>, QueueError> {
        of_message(&self.db, queue_id, 10_000)
    }

    /// Drops events older than the retention; returns how many.
    pub fn purge_expired(&self, now_ms: u64) -> Result<usize, QueueError> {
        purge(&self.db, now_ms.saturating_sub(self.keep_ms))
    }

    /// Waits until every recorded event is written and on disk.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
        if let Err(e) = write(&self.db, &[], Durability::Immediate) {
            tracing::error!(error = %e, "cannot sync the event history");
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
/// How often written events are made durable (an fsync).
const SYNC: Duration = Duration::from_secs(1);

fn write_loop(db: &Database, rx: &Receiver<Event>) {
    let mut synced = Instant::now();
    let mut unsynced = false;
    loop {
        let first = if unsynced {
            match rx.recv_timeout(SYNC.saturating_sub(synced.elapsed())) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(e) => Some(e),
                Err(_) => return,
            }
        };
        if first.is_some() {
            std::thread::sleep(GATHER);
        }
        let events: Vec<Event> = first.into_iter().chain(rx.try_iter()).collect();
        let durable = synced.elapsed() >= SYNC;
        if events.is_empty() && !durable {
            continue;
        }
        let durability = match durable {
            true => Durability::Immediate,
            false => Durability::None,
        };
        match write(db, &events, durability) {
            Ok(()) if durable => {
                synced = Instant::now();
                unsynced = false;
            }
            Ok(()) => unsynced = true,
            Err(err) => {
                tracing::error!(events = events.len(), error = %err, "cannot write the event history")
            }
        }
    }
}

/// A write transaction. Durable commits save redb's allocator state (quick repair), so
/// that opening the history after a crash does not walk the whole database.
pub(crate) fn begin(
    db: &Database,
    durability: Durability,
) -> Result<redb::WriteTransaction, QueueError> {
    let mut tx = db.begin_write().map_err(db_error)?;
    tx.set_quick_repair(matches!(durability, Durability::Immediate));
    tx.set_durability(durability).map_err(db_error)?;
    Ok(tx)
}

/// Writes events, their records and index entries, in one transaction.
fn write(db: &Database, events: &[Event], durability: Durability) -> Result<(), QueueError> {
    let tx = begin(db, durability)?;
    {
        let mut t = tx.open_table(EVENTS).map_err(db_error)?;
        for e in events {
            let record = crate::versioned::encode(VERSION, e);
            t.insert(log_key(&e.id).as_slice(), record.as_slice())
                .map_err(db_error)?;
            for k in index_keys(e) {
                t.insert(k.as_slice(), &[][..]).map_err(db_error)?;
            }
        }
    }
    tx.commit().map_err(db_error)
}

fn decode(id: &str, bytes: &[u8]) -> Result<Event, QueueError> {
    crate::versioned::decode(id, bytes, VERSION, "history")
}

/// The time in an event id (`E` + 13 hex digits of unix milliseconds + ...).
fn id_time(id: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(id.get(1..14)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

fn get(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: &str,
) -> Result<Option<Event>, QueueError> {
    match t.get(log_key(id).as_slice()).map_err(db_error)? {
        Some(v) => Ok(Some(decode(id, v.value())?)),
        None => Ok(None),
    }
}

/// Events matching `q`, newest first. Driven by the most selective index given
/// (recipient, then kind, then the whole log); ids are time-ordered, so a `since` bound
/// ends the scan.
fn search(db: &Database, q: &EventQuery) -> Result<EventPage, QueueError> {
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
    let rtx = db.begin_read().map_err(db_error)?;
    let t = rtx.open_table(EVENTS).map_err(db_error)?;
    let mut page = EventPage::default();
    for item in t
        .range::<&[u8]>(prefix.as_slice()..end.as_slice())
        .map_err(db_error)?
        .rev()
    {
        let (k, v) = item.map_err(db_error)?;
        let id_bytes = &k.value()[prefix.len()..];
        if let (Some(since), Some(time)) = (q.since_ms, id_time(id_bytes))
            && time < since
        {
            break;
        }
        let id = String::from_utf8_lossy(id_bytes).into_owned();
        let event = if whole_log {
            decode(&id, v.value())?
        } else {
            match get(&t, &id)? {
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
fn of_message(db: &Database, queue_id: &str, limit: usize) -> Result<Vec<Event>, QueueError> {
    let prefix = [BY_QUEUE, queue_id.as_bytes(), b"\0"].concat();
    let end = [&prefix[..], &[0xff]].concat();
    let rtx = db.begin_read().map_err(db_error)?;
    let t = rtx.open_table(EVENTS).map_err(db_error)?;
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(prefix.as_slice()..end.as_slice())
        .map_err(db_error)?
        .take(limit)
    {
        let (k, _) = item.map_err(db_error)?;
        let id = String::from_utf8_lossy(&k.value()[prefix.len()..]).into_owned();
        if let Some(e) = get(&t, &id)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Removes the history of events older than `before_ms`, a thousand events per
/// transaction; returns how many.
fn purge(db: &Database, before_ms: u64) -> Result<usize, QueueError> {
    let end = [LOG, &[0xff]].concat();
    let mut removed = 0;
    loop {
        let tx = begin(db, Durability::Immediate)?;
        let mut n = 0;
        {
            let mut t = tx.open_table(EVENTS).map_err(db_error)?;
            let mut doomed = Vec::new();
            for item in t
                .range::<&[u8]>(LOG..end.as_slice())
                .map_err(db_error)?
                .take(1000)
            {
                let (k, v) = item.map_err(db_error)?;
                let id_bytes = &k.value()[LOG.len()..];
                if id_time(id_bytes).is_some_and(|time| time >= before_ms) {
                    break;
                }
                let id = String::from_utf8_lossy(id_bytes).into_owned();
                match decode(&id, v.value()) {
                    Ok(e) => doomed.extend(index_keys(&e)),
                    // Its index keys cannot be named: they stay, and searches skip them.
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "purging an unreadable history record")
                    }
                }
                doomed.push(k.value().to_vec());
                n += 1;
            }
            for k in &doomed {
                t.remove(k.as_slice()).map_err(db_error)?;
            }
        }
        if n == 0 {
            return Ok(removed);
        }
        tx.commit().map_err(db_error)?;
        removed += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;
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

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join(FILE)).unwrap();
        (dir, db)
    }

    fn put(db: &Database, events: &[Event]) {
        for chunk in events.chunks(7) {
            write(db, chunk, Durability::None).unwrap();
        }
    }

    /// Every key in the database.
    fn len(db: &Database) -> u64 {
        let rtx = db.begin_read().unwrap();
        rtx.open_table(EVENTS).unwrap().len().unwrap()
    }

    #[test]
    fn searches_page_newest_first_and_filter() {
        let (_d, t) = db();
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
        let (_d, t) = db();
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
        assert_eq!(len(&t), 500 * 4);
        assert_eq!(purge(&t, 12_000).unwrap(), 0);
    }

    #[test]
    fn a_sled_history_is_carried_over_and_its_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<Event> = (0..25u64)
            .map(|i| {
                event(
                    EventKind::Bounced,
                    &format!("Q{i}"),
                    "a@b.example",
                    7_000 + i,
                )
            })
            .collect();
        {
            // The layout the sled history wrote: the same keys, in a tree named `history`.
            let old = sled::open(dir.path()).unwrap();
            let t = old.open_tree("history").unwrap();
            for e in &events {
                t.insert(log_key(&e.id), crate::versioned::encode(VERSION, e))
                    .unwrap();
                for k in index_keys(e) {
                    t.insert(k, &[]).unwrap();
                }
            }
            old.flush().unwrap();
        }
        let keep = Duration::from_secs(86400);
        let h = History::open(dir.path(), keep).unwrap();
        assert_eq!(h.of_message("Q3").unwrap(), vec![events[3].clone()]);
        let bounced = EventQuery {
            kind: Some("bounced".into()),
            limit: 100,
            ..EventQuery::default()
        };
        assert_eq!(h.search(&bounced).unwrap().events.len(), 25);
        assert_eq!(len(&h.db), 25 * 4);
        drop(h);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [FILE]);
        // Opened again: nothing to carry over, the events stay.
        let h = History::open(dir.path(), keep).unwrap();
        assert_eq!(h.search(&bounced).unwrap().events.len(), 25);
    }

    #[test]
    fn a_second_process_cannot_open_it() {
        let dir = tempfile::tempdir().unwrap();
        let _h = History::open(dir.path(), Duration::from_secs(60)).unwrap();
        // redb's lock is per file and process: a second handle in this process is refused
        // the same way.
        assert!(History::open(dir.path(), Duration::from_secs(60)).is_err());
    }

    /// Set in the child process of the crash test: the folder it writes its history in.
    const CRASH_DIR: &str = "SLUICE_HISTORY_CRASH_DIR";

    #[test]
    fn a_killed_process_keeps_what_was_synced_and_opens_again() {
        if let Ok(dir) = std::env::var(CRASH_DIR) {
            // The child: events, a second for the writer's durable commit, more events
            // written without one, then an abort (no close, no sync).
            let h = History::open(Path::new(&dir), Duration::from_secs(86400)).unwrap();
            for i in 0..100u64 {
                h.record(event(
                    EventKind::Delivered,
                    &format!("Q{i}"),
                    "a@b.example",
                    9_000 + i,
                ));
            }
            std::thread::sleep(SYNC * 2 + GATHER * 2);
            for i in 100..200u64 {
                h.record(event(
                    EventKind::Delivered,
                    &format!("Q{i}"),
                    "a@b.example",
                    9_000 + i,
                ));
            }
            std::thread::sleep(GATHER * 2);
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "history::tests::a_killed_process_keeps_what_was_synced_and_opens_again",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child was to abort");
        let h = History::open(dir.path(), Duration::from_secs(86400)).unwrap();
        let all = h
            .search(&EventQuery {
                recipient: Some("a@b.example".into()),
                limit: 1000,
                ..EventQuery::default()
            })
            .unwrap()
            .events;
        // The first hundred were synced; the rest may or may not have been, but whatever
        // is there is whole: every event found through the index reads back.
        assert!((100..=200).contains(&all.len()), "{} events", all.len());
        for i in 0..100 {
            assert_eq!(h.of_message(&format!("Q{i}")).unwrap().len(), 1, "Q{i}");
        }
        // And it takes writes again.
        h.record(event(EventKind::Bounced, "Q-after", "a@b.example", 20_000));
        h.close();
        assert_eq!(h.of_message("Q-after").unwrap().len(), 1);
    }
}
