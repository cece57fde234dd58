//! API keys: `sluice_<id>_<secret>` bearer tokens. Only the SHA-256 of the secret is stored
//! (the secret is 32 random bytes: a slow password hash adds nothing against guessing and
//! would cost every request), compared in constant time. Keys live in one JSON file that
//! the CLI rewrites atomically while the server runs; the server re-reads it when it
//! changes.
//!
//! A rotated key keeps working until its grace period ends; a revoked key stops at once.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET requests only.
    Read,
    /// Everything.
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope `{other}`: expected read or admin")),
        }
    }
}

/// One stored key (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyEntry {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// Hex SHA-256 of the secret.
    #[schema(ignore)]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which the key no longer works (set by rotation).
    pub expires: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid key file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no key {0}")]
    NotFound(String),
    #[error("no random bytes from the system: {0}")]
    Random(String),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read(path: &Path) -> Result<Vec<KeyEntry>, KeyError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| KeyError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(KeyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, keys: &[KeyEntry]) -> Result<(), KeyError> {
    let text = serde_json::to_vec_pretty(keys).expect("keys serialise");
    sluice_core::durable::write_atomic(path, &text, 0o600).map_err(|source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn random_hex(n: usize) -> Result<String, KeyError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(hex::encode(b))
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two equal-length strings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Creates a key; returns its entry and the token (shown once).
pub fn create(path: &Path, name: &str, scope: Scope) -> Result<(KeyEntry, String), KeyError> {
    let mut keys = read(path)?;
    let id = random_hex(4)?;
    let secret = random_hex(32)?;
    let entry = KeyEntry {
        id: id.clone(),
        name: name.to_string(),
        scope,
        hash: digest(&secret),
        created: now(),
        expires: None,
    };
    keys.push(entry.clone());
    write(path, &keys)?;
    Ok((entry, format!("sluice_{id}_{secret}")))
}

/// The keys, without their hashes.
pub fn list(path: &Path) -> Result<Vec<KeyEntry>, KeyError> {
    Ok(read(path)?
        .into_iter()
        .map(|mut k| {
            k.hash.clear();
            k
        })
        .collect())
}

/// Replaces a key: a new one with the same name and scope; the old one keeps working for
/// `grace_secs` more.
pub fn rotate(path: &Path, id: &str, grace_secs: u64) -> Result<(KeyEntry, String), KeyError> {
    let mut keys = read(path)?;
    let old = keys
        .iter_mut()
        .find(|k| k.id == id)
        .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
    let until = now() + grace_secs;
    old.expires = Some(old.expires.map_or(until, |e| e.min(until)));
    let (name, scope) = (old.name.clone(), old.scope);
    write(path, &keys)?;
    create(path, &name, scope)
}

/// Removes a key at once.
pub fn revoke(path: &Path, id: &str) -> Result<(), KeyError> {
    let mut keys = read(path)?;
    let before = keys.len();
    keys.retain(|k| k.id != id);
    if keys.len() == before {
        return Err(KeyError::NotFound(id.to_string()));
    }
    write(path, &keys)
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unknown,
    Expired,
}

/// Modification time, size and inode: a rewrite (atomic rename) changes at least one.
type FileStamp = (SystemTime, u64, u64);

/// The server's view of the key file, re-read when it changes.
pub struct KeyStore {
    path: PathBuf,
    /// The file's identity when read, and its keys.
    cache: Mutex<(Option<FileStamp>, Vec<KeyEntry>)>,
}

impl KeyStore {
    pub fn new(path: PathBuf) -> KeyStore {
        KeyStore {
            path,
            cache: Mutex::new((None, Vec::new())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key a bearer token belongs to, if it is valid now.
    pub fn check(&self, token: &str) -> Result<KeyEntry, Refusal> {
        let rest = token.strip_prefix("sluice_").ok_or(Refusal::Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(Refusal::Malformed)?;
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino())
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != stamp {
            match read(&self.path) {
                Ok(keys) => *cache = (stamp, keys),
                Err(e) => {
                    // Keep the last good set: a half-edited file must not lock everyone out.
                    tracing::error!(error = %e, "API key file unreadable; keeping the keys read before");
                }
            }
        }
        let entry = cache
            .1
            .iter()
            .find(|k| k.id == id)
            .ok_or(Refusal::Unknown)?;
        if !same(&entry.hash, &digest(secret)) {
            return Err(Refusal::Unknown);
        }
        if entry.expires.is_some_and(|e| now() >= e) {
            return Err(Refusal::Expired);
        }
        Ok(entry.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_check_rotate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let store = KeyStore::new(path.clone());
        let (a, token) = create(&path, "ops", Scope::Admin).unwrap();
        assert_eq!(store.check(&token).unwrap().id, a.id);
        assert_eq!(store.check("nope").unwrap_err(), Refusal::Malformed);
        let forged = format!("sluice_{}_{}", a.id, "0".repeat(64));
        assert_eq!(store.check(&forged).unwrap_err(), Refusal::Unknown);
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains(&token[16..])
        );

        let (b, token_b) = rotate(&path, &a.id, 3600).unwrap();
        assert_eq!((b.name.as_str(), b.scope), ("ops", Scope::Admin));
        assert!(
            store.check(&token).is_ok(),
            "the old key works during the grace period"
        );
        assert!(store.check(&token_b).is_ok());
        rotate(&path, &b.id, 0).unwrap();
        assert_eq!(store.check(&token_b).unwrap_err(), Refusal::Expired);

        revoke(&path, &a.id).unwrap();
        assert_eq!(store.check(&token).unwrap_err(), Refusal::Unknown);
        assert!(matches!(revoke(&path, &a.id), Err(KeyError::NotFound(_))));
        assert!(list(&path).unwrap().iter().all(|k| k.hash.is_empty()));
    }
}
