//! The queue on sled, with group commit.
//!
//! sled holds one record per message under `m/<id>`: a [`BodyRef`] followed by the
//! postcard-encoded [`MessageMeta`]. Bodies live in the [`BodyLog`]. `enqueue` appends the
//! body, inserts the record and waits for a flush: a dedicated thread syncs the body log and
//! then sled whenever anyone waits, and one flush serves every enqueue written before it
//! started (group commit). sled's own flush is not an fsync ([`crate::sled_sync`]): the
//! flusher fsyncs sled's files itself, so a 250 depends only on fsyncs Sluice issues.

use crate::body_log::{BodyLog, BodyRef};
use crate::{MessageMeta, Queue, QueueError};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const META: &[u8] = b"m/";
/// Records that could not be read, kept for inspection.
const BAD: &[u8] = b"bad/";

/// The format version written before each record's metadata (after `[0]`, which no
/// version-1 record starts with).
const RECORD_VERSION: u8 = 2;

/// Longest time a change nobody waits for (a record update, an event) stays unsynced.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Outcome of the flushes so far: every ticket up to `done` is durable, unless it is at or
/// below `failed_upto`, which a failed flush covered.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    done: u64,
    failed_upto: u64,
}

struct Flusher {
    /// Tickets handed out; a ticket is taken after the write it covers.
    requested: AtomicU64,
    wake: Mutex<()>,
    cond: Condvar,
    flushed: watch::Sender<Flushed>,
    stop: AtomicBool,
    /// Set by the first failed write or flush: after it nothing written through this
    /// database is trusted to reach the disk (an fsync error may have dropped dirty pages
    /// for good), so no later flush may acknowledge anything. Cleared only by reopening.
    poison: Mutex<Option<Failure>>,
    poisoned: AtomicBool,
    /// Other stores synced before each flush.
    hooks: Hooks,
    /// [`SledQueue::set_commit_interval`], in microseconds.
    interval_us: Arc<AtomicU64>,
}

/// Why the store stopped taking writes.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    no_space: bool,
}

impl Failure {
    fn error(&self) -> QueueError {
        if self.no_space {
            QueueError::NoSpace(self.message.clone())
        } else {
            QueueError::Flush(self.message.clone())
        }
    }
}

impl Flusher {
    fn poison(&self, e: &QueueError) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::error!(error = %e, "queue storage failed: refusing new mail until the store is reopened");
            *p = Some(Failure {
                message: e.to_string(),
                no_space: e.is_no_space(),
            });
            self.poisoned.store(true, Ordering::SeqCst);
        }
    }

    fn failure(&self) -> Option<QueueError> {
        if !self.poisoned.load(Ordering::SeqCst) {
            return None;
        }
        let p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        p.as_ref().map(Failure::error)
    }
}

/// The sled-backed queue. Cheap to clone; the database closes when the last clone drops.
///
/// A failed write or flush poisons the open database (see [`Flusher`]); the next operation
/// closes and reopens it from what is on disk (at most once a second), so the queue
/// recovers by itself once the disk works again.
#[derive(Clone)]
pub struct SledQueue {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    /// `None` while a reopen failed; the next operation tries again.
    current: RwLock<Option<Arc<Inner>>>,
    outbox: crate::outbox::Outbox,
    /// Messages whose enqueue failed after their record was written: the client got a 4xx
    /// and sends again, so they are removed again after a reopen in case the failed flush
    /// wrote them anyway.
    abandoned: Mutex<Vec<String>>,
    last_reopen: Mutex<Option<Instant>>,
    /// Free bytes kept in reserve on the queue's filesystem.
    min_free: AtomicU64,
    /// The last free-space reading and when it was taken (see [`ROOM_FRESH`]).
    room: Mutex<Option<(Instant, u64)>>,
    /// Synced at the start of every flush ([`Queue::add_commit_hook`]).
    hooks: Hooks,
    /// [`SledQueue::set_commit_interval`], in microseconds.
    interval_us: Arc<AtomicU64>,
}

type Hooks = Arc<Mutex<Vec<Arc<dyn sluice_core::durable::CommitHook>>>>;

struct Inner {
    db: sled::Db,
    /// sled's files, fsynced by the flusher after each flush.
    files: Mutex<crate::sled_sync::SledFiles>,
    bodies: BodyLog,
    flusher: Arc<Flusher>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.stop.store(true, Ordering::SeqCst);
        let _g = self.flusher.wake.lock().unwrap_or_else(|e| e.into_inner());
        self.flusher.cond.notify_all();
    }
}

impl Inner {
    fn open(
        dir: &Path,
        outbox: &crate::outbox::Outbox,
        hooks: Hooks,
        interval_us: Arc<AtomicU64>,
    ) -> Result<Arc<Inner>, QueueError> {
        // No periodic flush of sled's own: it fsyncs with errors only logged, and a lost
        // fsync error is lost data. The flusher below runs at least every FLUSH_EVERY.
        let config = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            // Records are small and read once per attempt: a small cache keeps a large
            // backlog within bounds (see bench/RESULTS.md, backlog).
            .cache_capacity(32 * 1024 * 1024);
        // A queue closed a moment ago may still be finishing its last flush on the flusher
        // thread, which holds the database lock until it ends: wait a little for it.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && tries < 40 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let (tx, _) = watch::channel(Flushed::default());
        let flusher = Arc::new(Flusher {
            requested: AtomicU64::new(0),
            wake: Mutex::new(()),
            cond: Condvar::new(),
            flushed: tx,
            stop: AtomicBool::new(false),
            poison: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            hooks,
            interval_us,
        });
        // Live bodies per segment, counted as the records stream by.
        let mut live: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        // Records moved aside keep their bodies for inspection.
        for item in db.scan_prefix(BAD) {
            let (_, v) = item?;
            if let Some(r) = BodyRef::decode(&v) {
                *live.entry(r.segment).or_default() += 1;
            }
        }
        for item in db.scan_prefix(META) {
            let (k, v) = item?;
            match BodyRef::decode(&v) {
                Some(r) => *live.entry(r.segment).or_default() += 1,
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), "moving an unreadable queue record aside");
                    db.insert(key(BAD, &String::from_utf8_lossy(&k[META.len()..])), v)?;
                    db.remove(&k)?;
                }
            }
        }
        let bodies = BodyLog::open(&dir.join("bodies"), live).map_err(io)?;
        outbox.attach(&db)?;
        db.flush()?;
        let files = crate::sled_sync::SledFiles::open(&dir.join("db")).map_err(io)?;
        let inner = Arc::new(Inner {
            db,
            files: Mutex::new(files),
            bodies,
            flusher,
        });
        let (weak, f) = (Arc::downgrade(&inner), inner.flusher.clone());
        std::thread::Builder::new()
            .name("sluice-queue-flush".into())
            .spawn(move || flush_loop(weak, f))
            .map_err(|e| QueueError::Flush(e.to_string()))?;
        Ok(inner)
    }

    /// Runs a sled operation; a failure poisons the database.
    fn check<T>(&self, r: Result<T, sled::Error>) -> Result<T, QueueError> {
        r.map_err(|e| {
            let e = QueueError::from(e);
            self.flusher.poison(&e);
            e
        })
    }

    /// Waits until everything written before this call is on disk.
    async fn durable(&self) -> Result<(), QueueError> {
        let f = &self.flusher;
        if let Some(e) = f.failure() {
            return Err(e);
        }
        let rx = f.flushed.subscribe();
        let ticket = f.requested.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let _g = f.wake.lock().unwrap_or_else(|e| e.into_inner());
            f.cond.notify_one();
        }
        self.flushed_to(rx, ticket).await
    }

    /// [`Queue::sync_soon`]: waits for the flush after the next ticket anyone takes, taking
    /// one itself after `within`.
    async fn durable_soon(&self, within: Duration) -> Result<(), QueueError> {
        let f = &self.flusher;
        if let Some(e) = f.failure() {
            return Err(e);
        }
        let rx = f.flushed.subscribe();
        // A flush reaching this ticket read the ticket count after someone took it, and
        // so after every write made before this line.
        let ticket = f.requested.load(Ordering::SeqCst) + 1;
        match tokio::time::timeout(within, self.flushed_to(rx, ticket)).await {
            Ok(result) => result,
            Err(_) => self.durable().await,
        }
    }

    /// Waits until the flusher is done with `ticket`, and says whether that flush held.
    async fn flushed_to(
        &self,
        mut rx: watch::Receiver<Flushed>,
        ticket: u64,
    ) -> Result<(), QueueError> {
        let f = &self.flusher;
        let state = *rx
            .wait_for(|s| s.done >= ticket)
            .await
            .map_err(|_| QueueError::Closed)?;
        if ticket <= state.failed_upto || f.poisoned.load(Ordering::SeqCst) {
            return Err(f.failure().unwrap_or(QueueError::Closed));
        }
        Ok(())
    }

    fn remove_record(&self, id: &str) -> Result<(), QueueError> {
        if let Some(old) = self.check(self.db.remove(key(META, id)))?
            && let Some(r) = BodyRef::decode(&old)
        {
            self.bodies.release(&r).map_err(io)?;
        }
        Ok(())
    }
}

impl SledQueue {
    /// Opens (or creates) the queue in `dir`.
    pub fn open(dir: &Path) -> Result<SledQueue, QueueError> {
        sluice_core::durable::create_dir_all(dir).map_err(io)?;
        let outbox = crate::outbox::Outbox::new();
        let hooks: Hooks = Arc::default();
        let interval_us = Arc::new(AtomicU64::new(0));
        let inner = Inner::open(dir, &outbox, hooks.clone(), interval_us.clone())?;
        Ok(SledQueue {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                current: RwLock::new(Some(inner)),
                outbox,
                abandoned: Mutex::new(Vec::new()),
                last_reopen: Mutex::new(None),
                min_free: AtomicU64::new(0),
                room: Mutex::new(None),
                hooks,
                interval_us,
            }),
        })
    }

    /// Keeps `bytes` free on the queue's filesystem: below that, new mail is refused with
    /// [`QueueError::NoSpace`] until space returns.
    pub fn set_min_free(&self, bytes: u64) {
        self.shared.min_free.store(bytes, Ordering::Relaxed);
    }

    /// While writers come faster than the disk syncs (the last group commit covered more
    /// than one), starts group commits at least `interval` apart: writes arriving
    /// meanwhile share one round of fsyncs. Writers one at a time do not wait (only the first
    /// after a group may). Zero (the default) starts each as soon as the last one ends.
    pub fn set_commit_interval(&self, interval: Duration) {
        let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        self.shared.interval_us.store(us, Ordering::Relaxed);
    }

    /// The open database, reopened first when a failure poisoned it.
    fn inner(&self) -> Result<Arc<Inner>, QueueError> {
        {
            let cur = self
                .shared
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(i) = cur.as_ref()
                && !i.flusher.poisoned.load(Ordering::SeqCst)
            {
                return Ok(i.clone());
            }
        }
        self.reopen()
    }

    fn reopen(&self) -> Result<Arc<Inner>, QueueError> {
        let mut cur = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let failure = match cur.as_ref() {
            Some(i) => match i.flusher.failure() {
                // Someone else reopened it meanwhile.
                None => return Ok(i.clone()),
                Some(e) => e,
            },
            None => QueueError::Closed,
        };
        {
            let mut last = self
                .shared
                .last_reopen
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(failure);
            }
            *last = Some(Instant::now());
        }
        tracing::warn!(error = %failure, "reopening the queue store");
        self.shared.outbox.detach();
        // Operations still running on the old database finish with it; the open waits for
        // its lock.
        *cur = None;
        let inner = Inner::open(
            &self.shared.dir,
            &self.shared.outbox,
            self.shared.hooks.clone(),
            self.shared.interval_us.clone(),
        )
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot reopen the queue store; trying again later");
        })?;
        let abandoned = std::mem::take(
            &mut *self
                .shared
                .abandoned
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for id in &abandoned {
            if let Err(e) = inner.remove_record(id) {
                tracing::error!(%id, error = %e, "cannot remove the record of a refused message");
            }
        }
        tracing::info!(removed = abandoned.len(), "queue store reopened");
        *cur = Some(inner.clone());
        Ok(inner)
    }

    /// Refuses when the filesystem holds less than the reserve plus `size`; `take` counts
    /// the bytes as written. A reading of the filesystem is reused for [`ROOM_FRESH`], less
    /// what was taken since (`statvfs` on ext4 sums per-CPU counters: once per message it
    /// was 2.5% of the relay's CPU); a refusal is always confirmed by a fresh reading.
    fn check_room(&self, size: u64, take: bool) -> Result<(), QueueError> {
        let min = self.shared.min_free.load(Ordering::Relaxed);
        if min == 0 {
            return Ok(());
        }
        let need = min.saturating_add(size);
        let mut room = self.shared.room.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, free)) = room.as_mut()
            && at.elapsed() < ROOM_FRESH
            && *free >= need
        {
            if take {
                *free -= size;
            }
            return Ok(());
        }
        let st = rustix::fs::statvfs(&self.shared.dir)
            .map_err(|e| QueueError::Body(std::io::Error::from(e)))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let left = if take && free >= need {
            free - size
        } else {
            free
        };
        *room = Some((Instant::now(), left));
        if free < need {
            return Err(QueueError::NoSpace(format!(
                "{free} bytes free on the queue's filesystem, {need} needed (reserve {min})"
            )));
        }
        Ok(())
    }

    fn decode(&self, id: &str, bytes: &[u8]) -> Result<(BodyRef, MessageMeta), QueueError> {
        let corrupt = |reason: String| QueueError::Corrupt {
            id: id.to_string(),
            reason,
        };
        let body = BodyRef::decode(bytes).ok_or_else(|| corrupt("short record".into()))?;
        let rest = &bytes[BodyRef::ENCODED_LEN..];
        let meta = match rest {
            // Version 1 wrote the metadata alone; its first byte is the id's length, never 0.
            [0, RECORD_VERSION, meta @ ..] => postcard::from_bytes(meta),
            [0, v, ..] => return Err(corrupt(format!("unknown record format version {v}"))),
            _ => postcard::from_bytes::<crate::meta::MessageMetaV1>(rest).map(Into::into),
        }
        .map_err(|e| corrupt(e.to_string()))?;
        Ok((body, meta))
    }

    fn encode(body: &BodyRef, meta: &MessageMeta) -> Vec<u8> {
        let mut out = Vec::with_capacity(BodyRef::ENCODED_LEN + 130);
        body.encode(&mut out);
        out.extend_from_slice(&[0, RECORD_VERSION]);
        postcard::to_extend(meta, out).expect("message metadata always serializes")
    }

    /// The event outbox, in the same database so that an event published before a queue
    /// change is on disk whenever that change is. It follows the queue across reopens.
    pub fn outbox(&self) -> crate::outbox::Outbox {
        self.shared.outbox.clone()
    }

    /// Body segment files on disk (for tests of segment clean-up).
    pub fn body_segments(&self) -> usize {
        self.inner()
            .map(|i| i.bodies.segments_on_disk())
            .unwrap_or(0)
    }

    /// Ids of records moved aside because they could not be read.
    pub fn unreadable(&self) -> Result<Vec<String>, QueueError> {
        let inner = self.inner()?;
        let mut out = Vec::new();
        for item in inner.db.scan_prefix(BAD) {
            let (k, _) = inner.check(item)?;
            out.push(String::from_utf8_lossy(&k[BAD.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Deletes a record moved aside, with its body.
    pub fn remove_unreadable(&self, id: &str) -> Result<bool, QueueError> {
        let inner = self.inner()?;
        match inner.check(inner.db.remove(key(BAD, id)))? {
            Some(old) => {
                if let Some(r) = BodyRef::decode(&old) {
                    inner.bodies.release(&r).map_err(io)?;
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

fn flush_loop(inner: std::sync::Weak<Inner>, f: Arc<Flusher>) {
    // When the last group commit started, and how many tickets it covered.
    let (mut last_start, mut last_group) = (Instant::now(), 0);
    loop {
        let target = {
            let mut g = f.wake.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let target = f.requested.load(Ordering::SeqCst);
                if target > f.flushed.borrow().done || f.stop.load(Ordering::SeqCst) {
                    break target;
                }
                let (guard, timeout) = f
                    .cond
                    .wait_timeout(g, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner());
                g = guard;
                // Record updates and events nobody waits for are made durable too.
                if timeout.timed_out() && !f.poisoned.load(Ordering::SeqCst) {
                    break target;
                }
            }
        };
        if f.stop.load(Ordering::SeqCst) {
            return;
        }
        let interval = Duration::from_micros(f.interval_us.load(Ordering::Relaxed));
        let since = last_start.elapsed();
        if last_group > 1 && since < interval {
            // Writers are concurrent: let more of them join this group (the configuration
            // caps the interval at 100 ms, so a stop waits no longer than that).
            std::thread::sleep(interval - since);
        }
        last_start = Instant::now();
        // A ticket is taken after the write it covers: every write up to this one is done.
        let target = target.max(f.requested.load(Ordering::SeqCst));
        last_group = target.saturating_sub(f.flushed.borrow().done);
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // Hooked stores first (records written after this flush may point at their
        // data), then bodies, then the records that point at them.
        let hooks = f.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Every file's writeback first, so that the syncs below overlap.
        for h in &hooks {
            h.start_sync();
        }
        strong.bodies.start_sync();
        for h in hooks {
            if let Err(e) = h.sync() {
                tracing::error!(error = %e, "a store synced with the queue failed to sync");
            }
        }
        let result = strong
            .bodies
            .sync()
            .map_err(io)
            .and_then(|()| strong.db.flush().map_err(QueueError::from))
            .and_then(|_| {
                let mut files = strong.files.lock().unwrap_or_else(|e| e.into_inner());
                files.sync().map_err(io)
            });
        drop(strong);
        if let Err(e) = &result {
            f.poison(e);
        }
        if last_group > 0 {
            let m = sluice_metrics::global();
            m.queue_commit_seconds
                .observe(last_start.elapsed().as_secs_f64());
            m.queue_commit_writes.observe(last_group as f64);
        }
        f.flushed.send_modify(|s| {
            s.done = target;
            if result.is_err() {
                s.failed_upto = target;
            }
        });
    }
}

/// How long a free-space reading of the queue's filesystem stands in for a new one.
const ROOM_FRESH: Duration = Duration::from_millis(10);

/// Bodies from this size on are written and read with `block_in_place`, so that a 50 MB
/// write does not stall the other tasks of an async worker.
const LARGE_BODY: usize = 256 * 1024;

/// Runs blocking file I/O on a large body off the async workers when on a multi-threaded
/// tokio runtime (elsewhere, such as the CLI's current-thread runtime, inline).
fn off_the_workers<T>(len: usize, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi = Handle::try_current()
        .map(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
        .unwrap_or(false);
    if len >= LARGE_BODY && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn io(e: std::io::Error) -> QueueError {
    QueueError::Body(e)
}

#[async_trait]
impl Queue for SledQueue {
    async fn enqueue(&self, meta: &MessageMeta, body: &[u8]) -> Result<(), QueueError> {
        let inner = self.inner()?;
        self.check_room(body.len() as u64, true)?;
        let r = off_the_workers(body.len(), || inner.bodies.append(body)).map_err(io)?;
        if let Err(e) = inner.check(inner.db.insert(key(META, &meta.id), Self::encode(&r, meta))) {
            let _ = inner.bodies.release(&r);
            return Err(e);
        }
        if let Err(e) = inner.durable().await {
            // The client gets a 4xx and sends again: this copy must never be delivered.
            if let Err(err) = inner.remove_record(&meta.id) {
                tracing::debug!(id = %meta.id, error = %err, "record removal after a failed enqueue");
            }
            self.shared
                .abandoned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(meta.id.clone());
            return Err(e);
        }
        Ok(())
    }

    async fn enqueue_with_events(
        &self,
        meta: &MessageMeta,
        body: &[u8],
        events: Vec<sluice_core::Event>,
        deliver: bool,
    ) -> Result<(), QueueError> {
        let outbox = &self.shared.outbox;
        if !deliver {
            self.enqueue(meta, body).await?;
            for e in events {
                outbox.record(e);
            }
            return Ok(());
        }
        // Events first: the flush that makes the record durable covers them too.
        let mut published = Vec::with_capacity(events.len());
        for e in events {
            // Due only a moment later: no event step sees it before the message is durable.
            match outbox.publish_after(e, 2000) {
                Ok(entry) => published.push(entry),
                Err(err) => {
                    outbox.discard(&published);
                    return Err(err);
                }
            }
        }
        let result = self.enqueue(meta, body).await;
        match &result {
            Ok(()) => outbox.make_due(published),
            // The client gets a 4xx and sends again: these events never happened.
            Err(_) => outbox.discard(&published),
        }
        result
    }

    fn keeps_events(&self) -> bool {
        self.shared.outbox.keeps_history()
    }

    fn recipient_of(&self, id: &str, index: usize) -> Result<Option<String>, QueueError> {
        if let Some(m) = self.get(id)? {
            return Ok(m.recipients.get(index).map(|r| r.recipient.address.clone()));
        }
        let Some(history) = self.shared.outbox.history() else {
            return Ok(None);
        };
        // One `queued` (or `quarantined`) event per recipient, in envelope order.
        Ok(history
            .of_message(id)?
            .into_iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    sluice_core::EventKind::Queued | sluice_core::EventKind::Quarantined
                )
            })
            .nth(index)
            .and_then(|e| e.recipient))
    }

    fn event(&self, event: sluice_core::Event, deliver: bool) -> Result<(), QueueError> {
        if deliver {
            self.shared.outbox.publish(event)
        } else {
            self.shared.outbox.record(event);
            Ok(())
        }
    }

    fn has_room(&self, size: u64) -> Result<(), QueueError> {
        self.inner()?;
        self.check_room(size, false)
    }

    fn update(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        let inner = self.inner()?;
        let k = key(META, &meta.id);
        if let Some(old) = inner.check(inner.db.get(&k))? {
            let (r, _) = self.decode(&meta.id, &old)?;
            inner.check(inner.db.insert(k, Self::encode(&r, meta)))?;
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), QueueError> {
        self.inner()?.remove_record(id)
    }

    fn get(&self, id: &str) -> Result<Option<MessageMeta>, QueueError> {
        let inner = self.inner()?;
        match inner.check(inner.db.get(key(META, id)))? {
            Some(v) => Ok(Some(self.decode(id, &v)?.1)),
            None => Ok(None),
        }
    }

    /// `None` when the message is gone, or its body never reached the disk.
    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let inner = self.inner()?;
        let Some(v) = inner.check(inner.db.get(key(META, id)))? else {
            return Ok(None);
        };
        let (r, _) = self.decode(id, &v)?;
        off_the_workers(r.len as usize, || inner.bodies.read(&r)).map_err(io)
    }

    fn list(&self) -> Result<Vec<MessageMeta>, QueueError> {
        let mut out = Vec::new();
        self.for_each(&mut |m| out.push(m))?;
        Ok(out)
    }

    /// A record that cannot be read is moved aside (under `bad/`), logged, and skipped:
    /// one damaged record never stops the queue.
    fn for_each(&self, f: &mut dyn FnMut(MessageMeta)) -> Result<(), QueueError> {
        let inner = self.inner()?;
        for item in inner.db.scan_prefix(META) {
            let (k, v) = inner.check(item)?;
            let id = String::from_utf8_lossy(&k[META.len()..]).into_owned();
            match self.decode(&id, &v) {
                Ok((_, meta)) => f(meta),
                Err(e) => {
                    tracing::error!(%id, error = %e, "moving an unreadable queue record aside");
                    inner.check(inner.db.insert(key(BAD, &id), v))?;
                    inner.check(inner.db.remove(&k))?;
                }
            }
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), QueueError> {
        self.inner()?.durable().await
    }

    async fn sync_soon(&self, within: Duration) -> Result<(), QueueError> {
        self.inner()?.durable_soon(within).await
    }

    fn add_commit_hook(&self, hook: Arc<dyn sluice_core::durable::CommitHook>) -> bool {
        self.shared
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecipientState;
    use serde::Serialize;
    use sluice_core::{Recipient, Ret, SessionInfo};

    /// The version-1 layout, as the previous release wrote it.
    #[derive(Serialize)]
    struct V1 {
        id: String,
        sender: String,
        ret: Option<Ret>,
        envid: Option<String>,
        eight_bit: bool,
        smtputf8: bool,
        received_at: u64,
        size: usize,
        recipients: Vec<RecipientState>,
        quarantine: Option<String>,
        session: Option<SessionInfo>,
    }

    /// Counts its syncs and notes the flushes already done when each began.
    #[derive(Default)]
    struct Hook {
        calls: Mutex<Vec<u64>>,
        flusher: std::sync::OnceLock<Arc<Flusher>>,
    }

    impl sluice_core::durable::CommitHook for Hook {
        fn sync(&self) -> std::io::Result<()> {
            let done = self.flusher.get().map_or(0, |f| f.flushed.borrow().done);
            self.calls.lock().unwrap().push(done);
            Ok(())
        }
    }

    #[tokio::test]
    async fn commit_hooks_are_synced_before_the_flush_they_ride() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open(dir.path()).unwrap();
        let hook = Arc::new(Hook::default());
        let _ = hook.flusher.set(q.inner().unwrap().flusher.clone());
        assert!(q.add_commit_hook(hook.clone()));
        let before = q.inner().unwrap().flusher.flushed.borrow().done;
        q.sync().await.unwrap();
        let after = q.inner().unwrap().flusher.flushed.borrow().done;
        assert!(after > before);
        // The hook ran in that flush, before it was marked done.
        assert!(
            hook.calls
                .lock()
                .unwrap()
                .iter()
                .any(|&d| d >= before && d < after),
            "{:?} {before} {after}",
            hook.calls.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn sync_soon_rides_another_writers_flush_or_asks_after_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open(dir.path()).unwrap();
        let f = q.inner().unwrap().flusher.clone();
        // Riding: it waits (a minute at most) until another writer's flush.
        let rider = {
            let q = q.clone();
            tokio::spawn(async move { q.sync_soon(Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!rider.is_finished(), "no flush was asked for yet");
        let asked = f.requested.load(Ordering::SeqCst);
        q.sync().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), rider)
            .await
            .expect("rode the other flush")
            .unwrap()
            .unwrap();
        assert_eq!(
            f.requested.load(Ordering::SeqCst),
            asked + 1,
            "one flush asked for"
        );
        // Alone: its own flush after the wait.
        let asked = f.requested.load(Ordering::SeqCst);
        q.sync_soon(Duration::from_millis(5)).await.unwrap();
        assert_eq!(f.requested.load(Ordering::SeqCst), asked + 1);
    }

    #[tokio::test]
    async fn group_commits_are_spaced_only_while_writers_are_concurrent() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open(dir.path()).unwrap();
        let interval = Duration::from_secs(1);
        q.set_commit_interval(interval);
        let f = q.inner().unwrap().flusher.clone();
        // A lone writer: each commit covers one ticket, none waits for the interval (and the
        // interval is long, so that slow fsyncs on a busy machine do not matter).
        let t = Instant::now();
        for _ in 0..3 {
            q.sync().await.unwrap();
        }
        assert!(t.elapsed() < interval, "{:?}", t.elapsed());
        // Two writers in one commit: both tickets taken at once, then waited for.
        let t = Instant::now();
        let ticket = f.requested.fetch_add(2, Ordering::SeqCst) + 2;
        {
            let _g = f.wake.lock().unwrap();
            f.cond.notify_one();
        }
        let mut rx = f.flushed.subscribe();
        rx.wait_for(|s| s.done >= ticket).await.unwrap();
        q.sync().await.unwrap();
        assert!(
            t.elapsed() >= interval * 9 / 10,
            "the commit after a group starts an interval after it: {:?}",
            t.elapsed()
        );
        // That commit covered one writer: the next starts at once.
        let t = Instant::now();
        q.sync().await.unwrap();
        assert!(t.elapsed() < interval * 9 / 10, "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn records_of_the_older_layout_are_read_and_garbage_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open(dir.path()).unwrap();
        let body = b"Subject: x\r\n\r\nold\r\n";
        let r = q.inner().unwrap().bodies.append(body).unwrap();
        let v1 = V1 {
            id: "00000000000100000001".into(),
            sender: "a@b.c".into(),
            ret: Some(Ret::Headers),
            envid: None,
            eight_bit: false,
            smtputf8: false,
            received_at: 1,
            size: body.len(),
            recipients: vec![RecipientState::new(Recipient::new("d@e.f"))],
            quarantine: None,
            session: None,
        };
        let mut rec = Vec::new();
        r.encode(&mut rec);
        let rec = postcard::to_extend(&v1, rec).unwrap();
        q.inner()
            .unwrap()
            .db
            .insert(key(META, &v1.id), rec)
            .unwrap();
        q.inner()
            .unwrap()
            .db
            .insert(key(META, "00000000000200000002"), &b"garbage"[..])
            .unwrap();
        q.sync().await.unwrap();
        let all = q.list().unwrap();
        assert_eq!(all.len(), 1, "the garbage record does not stop the listing");
        let m = &all[0];
        assert_eq!(m.id, v1.id);
        assert_eq!(m.ret, Some(Ret::Headers));
        assert_eq!(m.recipients[0].recipient.address, "d@e.f");
        assert!(m.meta.is_empty() && !m.queued_pending);
        assert_eq!(q.body(&m.id).unwrap().as_deref(), Some(&body[..]));
        assert_eq!(
            q.unreadable().unwrap(),
            vec!["00000000000200000002".to_string()]
        );
        // Written back, it takes the current layout and reads the same.
        q.update(m).unwrap();
        assert_eq!(q.get(&m.id).unwrap().as_ref(), Some(m));
    }
}
