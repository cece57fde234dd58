//! The stores plugins reach through the host: a key-value store with TTLs, counters, prefix
//! scans and per-namespace quotas, and a blob store for raw messages with metadata and a
//! retention.
//!
//! Each store is a trait whose semantics a distributed store could also provide (Redis
//! Cluster, NATS JetStream key-value and object stores, FoundationDB): per-key atomic
//! operations, ordered prefix scans with a continuation key, TTLs as absolute expiry
//! times, and no cross-key transactions. sled is the embedded default ([`SledStores`]);
//! [`MemoryStores`] serves runs without a server (`sluice trace`, `check-config`) and tests.
//!
//! # Layout
//! - [`kv`]: [`KvStore`], [`KvLimits`], the sled and memory implementations.
//! - [`blob`]: [`BlobStore`], [`BlobMeta`], the memory implementation.

pub mod blob;
pub mod kv;

pub use blob::{BlobMeta, BlobStore};
pub use kv::{KvLimits, KvPage, KvStore};

use std::sync::Arc;

/// What a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A quota or size limit was reached; the text says which.
    #[error("quota: {0}")]
    Quota(String),
    #[error("store: {0}")]
    Failed(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Failed(e.to_string())
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The key-value store on a sled database of its own (not the queue's). Blobs live in
/// the archive (`sluice-archive`).
#[derive(Clone)]
pub struct SledStores {
    pub kv: Arc<kv::SledKv>,
}

impl SledStores {
    pub fn open(dir: &std::path::Path) -> Result<SledStores, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        Ok(SledStores {
            kv: Arc::new(kv::SledKv::new(&db)?),
        })
    }
}

/// Both stores in memory.
#[derive(Clone, Default)]
pub struct MemoryStores {
    pub kv: Arc<kv::MemoryKv>,
    pub blobs: Arc<blob::MemoryBlobs>,
}
