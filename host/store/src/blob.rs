//! Blobs: raw messages kept with metadata for a retention period, each with the SHA-256 of
//! its bytes. The archive plugin stores through this (capability `blobs`) without copying
//! the message through the guest.

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

const VERSION: u8 = 1;

/// The sled implementation: trees `blob_meta` and `blob_body`, keyed `<ns>\0<id>`.
pub struct SledBlobs {
    meta: sled::Tree,
    body: sled::Tree,
}

impl SledBlobs {
    pub(crate) fn new(db: &sled::Db) -> Result<SledBlobs, StoreError> {
        Ok(SledBlobs {
            meta: db.open_tree("blob_meta")?,
            body: db.open_tree("blob_body")?,
        })
    }

    fn decode(v: &[u8]) -> Result<BlobMeta, StoreError> {
        match v {
            [VERSION, rest @ ..] => {
                postcard::from_bytes(rest).map_err(|e| StoreError::Failed(e.to_string()))
            }
            _ => Err(StoreError::Failed("unknown blob record version".into())),
        }
    }
}

impl BlobStore for SledBlobs {
    fn put(
        &self,
        ns: &str,
        body: &[u8],
        attributes: Vec<(String, String)>,
        retention: Duration,
    ) -> Result<String, StoreError> {
        let m = meta_for(ns, body, attributes, retention);
        let k = key(ns, &m.id);
        // The body first: a record never points at a missing body.
        self.body.insert(&k, body)?;
        let rec = postcard::to_extend(&m, vec![VERSION])
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        self.meta.insert(&k, rec)?;
        Ok(m.id)
    }

    fn get(&self, ns: &str, id: &str) -> Result<Option<(BlobMeta, Vec<u8>)>, StoreError> {
        let k = key(ns, id);
        let Some(m) = self.meta.get(&k)? else {
            return Ok(None);
        };
        let m = Self::decode(&m)?;
        Ok(self.body.get(&k)?.map(|b| (m, b.to_vec())))
    }

    fn list(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, StoreError> {
        let base = key(ns, "");
        let start = match after {
            Some(a) => [key(ns, a), vec![0]].concat(),
            None => base.clone(),
        };
        let mut out = Vec::new();
        for item in self.meta.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&base) || out.len() >= limit {
                break;
            }
            out.push(Self::decode(&v)?);
        }
        Ok(out)
    }

    fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_secs();
        let mut n = 0;
        for item in self.meta.iter() {
            let (k, v) = item?;
            let expired = Self::decode(&v).map_or(true, |m| m.expires <= now);
            if expired {
                self.meta.remove(&k)?;
                self.body.remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }
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

    #[test]
    fn sled_blobs() {
        let dir = tempfile::tempdir().unwrap();
        exercise(crate::SledStores::open(dir.path()).unwrap().blobs.as_ref());
    }
}
