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
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

const META: &[u8] = b"m/";
/// Records that could not be read, kept for inspection.
const BAD: &[u8] = b"bad/";

/// The format version written before each record's metadata (after `[0]`, which no
/// version-1 record starts with).
const RECORD_VERSION: u8 = 2;

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
    last_error: Mutex<String>,
}

/// The sled-backed queue. Cheap to clone; the database closes when the last clone drops.
#[derive(Clone)]
pub struct SledQueue {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// sled's files, fsynced by the flusher after each flush.
    files: Mutex<crate::sled_sync::SledFiles>,
    bodies: BodyLog,
    flusher: Arc<Flusher>,
    outbox: crate::outbox::Outbox,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.stop.store(true, Ordering::SeqCst);
        let _g = self.flusher.wake.lock().unwrap_or_else(|e| e.into_inner());
        self.flusher.cond.notify_all();
    }
}

impl SledQueue {
    /// Opens (or creates) the queue in `dir`.
    pub fn open(dir: &Path) -> Result<SledQueue, QueueError> {
        sluice_core::durable::create_dir_all(dir).map_err(io)?;
        let config = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(Some(500))
            .cache_capacity(64 * 1024 * 1024);
        // A queue closed a moment ago may still be finishing its last flush on the flusher
        // thread, which holds the database lock until it ends: wait a little for it.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && tries < 40 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
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
            last_error: Mutex::new(String::new()),
        });
        let mut live = Vec::new();
        // Records moved aside keep their bodies for inspection.
        for item in db.scan_prefix(BAD) {
            let (_, v) = item?;
            if let Some(r) = BodyRef::decode(&v) {
                live.push(r);
            }
        }
        for item in db.scan_prefix(META) {
            let (k, v) = item?;
            match BodyRef::decode(&v) {
                Some(r) => live.push(r),
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), "dropping unreadable queue record");
                    db.remove(&k)?;
                }
            }
        }
        let bodies = BodyLog::open(&dir.join("bodies"), live.into_iter()).map_err(io)?;
        let outbox = crate::outbox::Outbox::open(&db)?;
        db.flush()?;
        let files = crate::sled_sync::SledFiles::open(&dir.join("db")).map_err(io)?;
        let q = SledQueue {
            inner: Arc::new(Inner {
                db,
                files: Mutex::new(files),
                bodies,
                flusher,
                outbox,
            }),
        };
        let (inner, f) = (Arc::downgrade(&q.inner), q.inner.flusher.clone());
        std::thread::Builder::new()
            .name("sluice-queue-flush".into())
            .spawn(move || flush_loop(inner, f))
            .map_err(|e| QueueError::Flush(e.to_string()))?;
        Ok(q)
    }

    /// Waits until everything written before this call is on disk.
    async fn durable(&self) -> Result<(), QueueError> {
        let f = &self.inner.flusher;
        let mut rx = f.flushed.subscribe();
        let ticket = f.requested.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let _g = f.wake.lock().unwrap_or_else(|e| e.into_inner());
            f.cond.notify_one();
        }
        let state = *rx
            .wait_for(|s| s.done >= ticket)
            .await
            .map_err(|_| QueueError::Closed)?;
        if ticket <= state.failed_upto {
            let e = f
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(QueueError::Flush(e));
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
    /// change is on disk whenever that change is.
    pub fn outbox(&self) -> crate::outbox::Outbox {
        self.inner.outbox.clone()
    }
}

fn flush_loop(inner: std::sync::Weak<Inner>, f: Arc<Flusher>) {
    loop {
        let target = {
            let mut g = f.wake.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let target = f.requested.load(Ordering::SeqCst);
                if target > f.flushed.borrow().done || f.stop.load(Ordering::SeqCst) {
                    break target;
                }
                g = f.cond.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        };
        if f.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // Bodies first, then the records that point at them.
        let result = strong
            .bodies
            .sync()
            .map_err(|e| e.to_string())
            .and_then(|()| strong.db.flush().map_err(|e| e.to_string()))
            .and_then(|_| {
                let mut files = strong.files.lock().unwrap_or_else(|e| e.into_inner());
                files.sync().map_err(|e| e.to_string())
            });
        drop(strong);
        f.flushed.send_modify(|s| {
            s.done = target;
            if let Err(e) = &result {
                s.failed_upto = target;
                *f.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e.clone();
                tracing::error!(error = %e, "queue flush failed");
            }
        });
    }
}

fn io(e: std::io::Error) -> QueueError {
    QueueError::Body(e)
}

#[async_trait]
impl Queue for SledQueue {
    async fn enqueue(&self, meta: &MessageMeta, body: &[u8]) -> Result<(), QueueError> {
        let r = self.inner.bodies.append(body).map_err(io)?;
        if let Err(e) = self
            .inner
            .db
            .insert(key(META, &meta.id), Self::encode(&r, meta))
        {
            let _ = self.inner.bodies.release(&r);
            return Err(e.into());
        }
        self.durable().await
    }

    async fn enqueue_with_events(
        &self,
        meta: &MessageMeta,
        body: &[u8],
        events: Vec<sluice_core::Event>,
    ) -> Result<(), QueueError> {
        // Events first: the flush that makes the record durable covers them too.
        let mut published = Vec::with_capacity(events.len());
        for e in events {
            let id = e.id.clone();
            // Due only a moment later: no event step sees it before the message is durable.
            if let Err(err) = self.inner.outbox.publish_after(e, 2000) {
                self.inner.outbox.discard(&published);
                return Err(err);
            }
            published.push(id);
        }
        let result = self.enqueue(meta, body).await;
        match &result {
            Ok(()) => self.inner.outbox.make_due(&published),
            // The client gets a 4xx and sends again: these events never happened.
            Err(_) => self.inner.outbox.discard(&published),
        }
        result
    }

    fn publish_event(&self, event: sluice_core::Event) -> Result<(), QueueError> {
        self.inner.outbox.publish(event)
    }

    fn update(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        let k = key(META, &meta.id);
        if let Some(old) = self.inner.db.get(&k)? {
            let (r, _) = self.decode(&meta.id, &old)?;
            self.inner.db.insert(k, Self::encode(&r, meta))?;
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), QueueError> {
        if let Some(old) = self.inner.db.remove(key(META, id))?
            && let Some(r) = BodyRef::decode(&old)
        {
            self.inner.bodies.release(&r).map_err(io)?;
        }
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<MessageMeta>, QueueError> {
        match self.inner.db.get(key(META, id))? {
            Some(v) => Ok(Some(self.decode(id, &v)?.1)),
            None => Ok(None),
        }
    }

    /// `None` when the message is gone, or its body never reached the disk.
    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(v) = self.inner.db.get(key(META, id))? else {
            return Ok(None);
        };
        let (r, _) = self.decode(id, &v)?;
        self.inner.bodies.read(&r).map_err(io)
    }

    /// A record that cannot be read is moved aside (under `bad/`), logged, and skipped:
    /// one damaged record never stops the queue.
    fn list(&self) -> Result<Vec<MessageMeta>, QueueError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(META) {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k[META.len()..]).into_owned();
            match self.decode(&id, &v) {
                Ok((_, meta)) => out.push(meta),
                Err(e) => {
                    tracing::error!(%id, error = %e, "moving an unreadable queue record aside");
                    self.inner.db.insert(key(BAD, &id), v)?;
                    self.inner.db.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    async fn sync(&self) -> Result<(), QueueError> {
        self.durable().await
    }
}

impl SledQueue {
    /// Body segment files on disk (for tests of segment clean-up).
    pub fn body_segments(&self) -> usize {
        self.inner.bodies.segments_on_disk()
    }
}

impl SledQueue {
    /// Ids of records moved aside because they could not be read.
    pub fn unreadable(&self) -> Result<Vec<String>, QueueError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(BAD) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[BAD.len()..]).into_owned());
        }
        Ok(out)
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

    #[tokio::test]
    async fn records_of_the_older_layout_are_read_and_garbage_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open(dir.path()).unwrap();
        let body = b"Subject: x\r\n\r\nold\r\n";
        let r = q.inner.bodies.append(body).unwrap();
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
        q.inner.db.insert(key(META, &v1.id), rec).unwrap();
        q.inner
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
