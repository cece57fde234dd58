//! Blobs: raw messages kept with metadata for a retention period, each with the SHA-256 of
//! its bytes. The archive plugin stores through this (capability `blobs`) without copying
//! the message through the guest. The server's implementation is `sluice-archive`
//! (compressed segment files, a search index, a hash chain); [`MemoryBlobs`] serves runs
//! without a server.

use crate::{StoreError, now_secs};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// What is kept with a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMeta {
    /// Sortable by creation time.
    pub id: String,
    pub namespace: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which the blob is purged.
    pub expires: u64,
    pub size: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    pub attributes: Vec<(String, String)>,
}

/// Attribute keys the host sets on every stored message (a plugin's own attributes may
/// not use them). The archive indexes the first five for search.
pub mod keys {
    pub const QUEUE_ID: &str = "queue-id";
    pub const MESSAGE_ID: &str = "message-id";
    /// The envelope sender (empty for the null sender).
    pub const SENDER: &str = "sender";
    /// One attribute per envelope recipient.
    pub const RECIPIENT: &str = "recipient";
    /// Decoded (RFC 2047).
    pub const SUBJECT: &str = "subject";
    /// The `Date:` header, RFC 3339.
    pub const DATE: &str = "date";
    pub const SIZE: &str = "size";
    pub const LISTENER: &str = "listener";
    pub const CLIENT_IP: &str = "client-ip";
    pub const HELO: &str = "helo";
    /// TLS protocol and cipher, when the session was encrypted.
    pub const TLS: &str = "tls";
    pub const AUTH_USER: &str = "auth-user";
    /// Prefix of the message's metadata (`meta.<key>`): authentication results
    /// (`meta.sluice.auth.*`), processing time (`meta.sluice.timing.data-ms`), plugin
    /// metadata such as `meta.forward.status`.
    pub const META_PREFIX: &str = "meta.";

    /// Whether the host sets this key.
    pub fn is_host_key(key: &str) -> bool {
        [
            QUEUE_ID, MESSAGE_ID, SENDER, RECIPIENT, SUBJECT, DATE, SIZE, LISTENER, CLIENT_IP,
            HELO, TLS, AUTH_USER,
        ]
        .contains(&key)
            || key.starts_with(META_PREFIX)
    }
}

pub trait BlobStore: Send + Sync {
    /// Stores `body`; returns its id.
    fn put(
        &self,
        ns: &str,
        body: &[u8],
        attributes: Vec<(String, String)>,
        retention: Duration,
    ) -> Result<String, StoreError>;
    fn get(&self, ns: &str, id: &str) -> Result<Option<(BlobMeta, Vec<u8>)>, StoreError>;
    /// Metadata of a namespace's blobs in id order, after `after`, at most `limit`.
    fn list(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, StoreError>;
    /// Removes blobs past their retention; returns how many.
    fn purge_expired(&self) -> Result<usize, StoreError>;
    /// Like [`BlobStore::put`], but returns once the body is written, before it is on
    /// disk: for a store whose syncs ride another store's group commit
    /// (`sluice_core::durable::CommitHook`). After that commit, [`BlobStore::confirm`] says
    /// whether the write is durable. By default the same as `put`.
    fn put_unsynced(
        &self,
        ns: &str,
        body: &[u8],
        attributes: Vec<(String, String)>,
        retention: Duration,
    ) -> Result<String, StoreError> {
        self.put(ns, body, attributes, retention)
    }
    /// Whether a blob stored with [`BlobStore::put_unsynced`] is durable (asked after the
    /// commit that syncs this store).
    fn confirm(&self, id: &str) -> Result<(), StoreError> {
        let _ = id;
        Ok(())
    }
}

fn new_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // A random start per process and a counter: unique, and in creation order within a
    // millisecond.
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let start = *START.get_or_init(|| rand::random::<u64>() >> 1);
    let n = start + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("B{ms:013X}{n:016X}")
}

fn meta_for(
    ns: &str,
    body: &[u8],
    attributes: Vec<(String, String)>,
    retention: Duration,
) -> BlobMeta {
    let created = now_secs();
    BlobMeta {
        id: new_id(),
        namespace: ns.to_string(),
        created,
        expires: created.saturating_add(retention.as_secs()),
        size: body.len() as u64,
        sha256: hex::encode(Sha256::digest(body)),
        attributes,
    }
}

fn key(ns: &str, id: &str) -> Vec<u8> {
    [ns.as_bytes(), &[0], id.as_bytes()].concat()
}

/// Blobs by `<ns>\0<id>` key.
type BlobMap = BTreeMap<Vec<u8>, (BlobMeta, Vec<u8>)>;

/// In memory, for runs without a server.
#[derive(Default)]
pub struct MemoryBlobs {
    map: Mutex<BlobMap>,
}

impl BlobStore for MemoryBlobs {
    fn put(
        &self,
        ns: &str,
        body: &[u8],
        attributes: Vec<(String, String)>,
        retention: Duration,
    ) -> Result<String, StoreError> {
        let m = meta_for(ns, body, attributes, retention);
        let id = m.id.clone();
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(ns, &id), (m, body.to_vec()));
        Ok(id)
    }

    fn get(&self, ns: &str, id: &str) -> Result<Option<(BlobMeta, Vec<u8>)>, StoreError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(ns, id))
            .cloned())
    }

    fn list(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, StoreError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .values()
            .filter(|(m, _)| m.namespace == ns && after.is_none_or(|a| m.id.as_str() > a))
            .take(limit)
            .map(|(m, _)| m.clone())
            .collect())
    }

    fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_secs();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, (m, _)| m.expires > now);
        Ok(before - map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(b: &dyn BlobStore) {
        let day = Duration::from_secs(86400);
        let id1 = b
            .put(
                "archive",
                b"raw one",
                vec![("from".into(), "a@b".into())],
                day,
            )
            .unwrap();
        let id2 = b.put("archive", b"raw two", vec![], day).unwrap();
        b.put("other", b"x", vec![], day).unwrap();
        b.put("archive", b"short-lived", vec![], Duration::ZERO)
            .unwrap();
        let (m, body) = b.get("archive", &id1).unwrap().unwrap();
        assert_eq!(body, b"raw one");
        assert_eq!(m.sha256, hex::encode(Sha256::digest(b"raw one")));
        assert_eq!(m.attributes, vec![("from".to_string(), "a@b".to_string())]);
        assert!(
            b.get("other", &id1).unwrap().is_none(),
            "namespaces are apart"
        );
        let all = b.list("archive", None, 10).unwrap();
        assert_eq!(all.len(), 3);
        let after = b.list("archive", Some(&id1), 10).unwrap();
        assert_eq!(after[0].id, id2);
        assert_eq!(b.purge_expired().unwrap(), 1);
        assert_eq!(b.list("archive", None, 10).unwrap().len(), 2);
    }

    #[test]
    fn memory_blobs() {
        exercise(&MemoryBlobs::default());
    }
}
