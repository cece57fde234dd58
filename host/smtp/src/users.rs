//! SMTP AUTH users: a file of `name:argon2id-hash` lines.
//!
//! The server re-reads the file when its modification time changes, so `sluice user add`
//! takes effect without a restart.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `name:argon2id-hash`")]
    Syntax { path: PathBuf, line: usize },
    #[error("user names may not be empty or contain `:` or whitespace")]
    BadName,
    #[error("cannot hash password: {0}")]
    Hash(String),
}

/// The users file, cached.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, BTreeMap<String, String>)>,
}

impl Users {
    pub fn new(path: &Path) -> Users {
        Users {
            path: path.to_path_buf(),
            cache: Mutex::new((None, BTreeMap::new())),
        }
    }

    /// Reads the file; a missing file means no users.
    pub fn read(path: &Path) -> Result<BTreeMap<String, String>, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(UsersError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(UsersError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            };
            map.insert(name.to_string(), hash.to_string());
        }
        Ok(map)
    }

    fn write(path: &Path, users: &BTreeMap<String, String>) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            sluice_core::durable::create_dir_all(dir).map_err(io)?;
        }
        let text: String = users
            .iter()
            .map(|(name, hash)| format!("{name}:{hash}\n"))
            .collect();
        sluice_core::durable::write_atomic(path, text.as_bytes(), 0o600).map_err(io)
    }

    /// Adds or replaces a user.
    pub fn add(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
        if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
            return Err(UsersError::BadName);
        }
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UsersError::Hash(e.to_string()))?
            .to_string();
        let mut users = Self::read(path)?;
        users.insert(name.to_string(), hash);
        Self::write(path, &users)
    }

    /// Removes a user; `false` when there was none.
    pub fn remove(path: &Path, name: &str) -> Result<bool, UsersError> {
        let mut users = Self::read(path)?;
        let found = users.remove(name).is_some();
        if found {
            Self::write(path, &users)?;
        }
        Ok(found)
    }

    fn hash_of(&self, name: &str) -> Option<String> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            match Self::read(&self.path) {
                Ok(map) => *cache = (mtime, map),
                Err(e) => tracing::error!(error = %e, "cannot read users file"),
            }
        }
        cache.1.get(name).cloned()
    }

    /// Checks a password. Slow on purpose (argon2id): call it off the async threads.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let Some(hash) = self.hash_of(name) else {
            return false;
        };
        let Ok(parsed) = PasswordHash::new(&hash) else {
            tracing::error!(user = name, "unreadable password hash in users file");
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        Users::add(&path, "app", "s3cret").unwrap();
        let users = Users::new(&path);
        assert!(users.verify("app", "s3cret"));
        assert!(!users.verify("app", "wrong"));
        assert!(!users.verify("nobody", "s3cret"));
        assert!(Users::remove(&path, "app").unwrap());
        assert!(!Users::remove(&path, "app").unwrap());
        assert!(Users::read(&path).unwrap().is_empty());
    }
}
