//! Carries an event history kept in sled (before redb) into the redb database: every key
//! as it was (the key layout did not change), then the sled files are removed. A crash
//! part way leaves the sled files, and the next open carries them over again (inserts of
//! the same keys).

use crate::QueueError;
use crate::history::{EVENTS, begin, db_error};
use redb::{Database, Durability};
use std::path::Path;

/// Keys per redb transaction.
const CHUNK: usize = 10_000;

pub(crate) fn migrate(dir: &Path, db: &Database) -> Result<(), QueueError> {
    if !(dir.join("conf").exists() && dir.join("db").exists()) {
        return Ok(());
    }
    let old = sled::Config::new().path(dir).open()?;
    let tree = old.open_tree("history")?;
    let mut keys = 0;
    let mut chunk = Vec::with_capacity(CHUNK);
    for item in tree.iter() {
        chunk.push(item?);
        if chunk.len() == CHUNK {
            keys += put(db, &mut chunk)?;
        }
    }
    keys += put(db, &mut chunk)?;
    drop(tree);
    drop(old);
    for entry in std::fs::read_dir(dir).map_err(QueueError::Body)? {
        let entry = entry.map_err(QueueError::Body)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        match &*name {
            "blobs" => std::fs::remove_dir_all(&path),
            "conf" | "db" => std::fs::remove_file(&path),
            n if n.starts_with("snap.") => std::fs::remove_file(&path),
            _ => Ok(()),
        }
        .map_err(QueueError::Body)?;
    }
    tracing::info!(keys, dir = %dir.display(), "event history carried over from sled");
    Ok(())
}

/// Writes a chunk of sled pairs durably; returns how many.
fn put(db: &Database, chunk: &mut Vec<(sled::IVec, sled::IVec)>) -> Result<usize, QueueError> {
    let tx = begin(db, Durability::Immediate)?;
    {
        let mut t = tx.open_table(EVENTS).map_err(db_error)?;
        for (k, v) in chunk.iter() {
            t.insert(&k[..], &v[..]).map_err(db_error)?;
        }
    }
    tx.commit().map_err(db_error)?;
    let n = chunk.len();
    chunk.clear();
    Ok(n)
}
