//! The queue on sled, with group commit.
//!
//! One tree holds `m/<id>` (postcard-encoded [`MessageMeta`]) and `b/<id>` (the body). A new
//! message is written as one atomic batch, so a crash never leaves half of it. `enqueue` then
//! waits for a flush: a dedicated thread flushes sled whenever anyone waits, and one flush
//! serves every enqueue that was written before it started (group commit).

use crate::{MessageMeta, Queue, QueueError};
use async_trait::async_trait;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

const META: &[u8] = b"m/";
const BODY: &[u8] = b"b/";

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
    flusher: Arc<Flusher>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.stop.store(true, Ordering::SeqCst);
        let _g = self.flusher.wake.lock().unwrap_or_else(|e| e.into_inner());
        self.flusher.cond.notify_all();
    }
}

impl SledQueue {
    /// Opens (or creates) the queue in `dir` and drops incomplete records.
    pub fn open(dir: &Path) -> Result<SledQueue, QueueError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let (tx, _) = watch::channel(Flushed::default());
        let flusher = Arc::new(Flusher {
            requested: AtomicU64::new(0),
            wake: Mutex::new(()),
            cond: Condvar::new(),
            flushed: tx,
            stop: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
        });
        let q = SledQueue {
            inner: Arc::new(Inner { db, flusher }),
        };
        q.recover()?;
        let (inner, f) = (Arc::downgrade(&q.inner), q.inner.flusher.clone());
        std::thread::Builder::new()
            .name("sluice-queue-flush".into())
            .spawn(move || flush_loop(inner, f))
            .map_err(|e| QueueError::Flush(e.to_string()))?;
        Ok(q)
    }

    /// Removes records a crash could have left: bodies without metadata.
    fn recover(&self) -> Result<(), QueueError> {
        for item in self.inner.db.scan_prefix(BODY) {
            let (k, _) = item?;
            let id = String::from_utf8_lossy(&k[BODY.len()..]).into_owned();
            if !self.inner.db.contains_key(key(META, &id))? {
                tracing::warn!(%id, "dropping queue body without metadata");
                self.inner.db.remove(&k)?;
            }
        }
        Ok(())
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

    fn decode(&self, id: &str, bytes: &[u8]) -> Result<MessageMeta, QueueError> {
        postcard::from_bytes(bytes).map_err(|e| QueueError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })
    }

    fn encode(meta: &MessageMeta) -> Vec<u8> {
        postcard::to_allocvec(meta).expect("message metadata always serializes")
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
        let result = strong.db.flush();
        drop(strong);
        f.flushed.send_modify(|s| {
            s.done = target;
            if let Err(e) = &result {
                s.failed_upto = target;
                *f.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e.to_string();
                tracing::error!(error = %e, "queue flush failed");
            }
        });
    }
}

#[async_trait]
impl Queue for SledQueue {
    async fn enqueue(&self, meta: &MessageMeta, body: &[u8]) -> Result<(), QueueError> {
        let mut batch = sled::Batch::default();
        batch.insert(key(BODY, &meta.id), body);
        batch.insert(key(META, &meta.id), Self::encode(meta));
        self.inner.db.apply_batch(batch)?;
        self.durable().await
    }

    fn update(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        self.inner
            .db
            .insert(key(META, &meta.id), Self::encode(meta))?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), QueueError> {
        let mut batch = sled::Batch::default();
        batch.remove(key(META, id));
        batch.remove(key(BODY, id));
        self.inner.db.apply_batch(batch)?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<MessageMeta>, QueueError> {
        match self.inner.db.get(key(META, id))? {
            Some(v) => Ok(Some(self.decode(id, &v)?)),
            None => Ok(None),
        }
    }

    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self.inner.db.get(key(BODY, id))?.map(|v| v.to_vec()))
    }

    fn list(&self) -> Result<Vec<MessageMeta>, QueueError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(META) {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k[META.len()..]).into_owned();
            out.push(self.decode(&id, &v)?);
        }
        Ok(out)
    }

    async fn sync(&self) -> Result<(), QueueError> {
        self.durable().await
    }
}
