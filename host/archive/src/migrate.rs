//! Archives written before the index moved beside the segments had a sled index in
//! `index/`. Everything in it but the purged entries' tombstones and the chain checkpoint
//! is rebuilt from the segments, so those two are carried over (as the tombstone file
//! `19700101-0000.tomb`, a day no segment has, and the `checkpoint` file) and the sled
//! index is removed.

use crate::ArchiveError;
use crate::index::Tombstone;
use crate::segment::SegId;
use serde::Deserialize;
use std::path::Path;

/// The sled index's tombstone value (after its tag byte 2).
#[derive(Deserialize)]
struct OldTombstone {
    created_ms: u64,
    entry_hash: [u8; 32],
    chain: [u8; 32],
}

pub(crate) fn from_sled(dir: &Path) -> Result<(), ArchiveError> {
    let old = dir.join("index");
    if !old.exists() {
        return Ok(());
    }
    let bad = |e: sled::Error| ArchiveError::Corrupt(format!("old sled index: {e}"));
    let db = sled::open(&old).map_err(bad)?;
    let tree = db.open_tree("archive").map_err(bad)?;
    if let Some(v) = tree.get(b"sc").map_err(bad)?
        && v.len() == 40
    {
        let first = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        let chain: [u8; 32] = v[8..].try_into().expect("32 bytes");
        crate::index::write_checkpoint(dir, first, chain)?;
    }
    let mut tombs = Vec::new();
    for item in tree.scan_prefix(b"e") {
        let (k, v) = item.map_err(bad)?;
        if k.len() == 9 && v.first() == Some(&2) {
            let id = u64::from_be_bytes(k[1..].try_into().expect("8 bytes"));
            let t: OldTombstone = postcard::from_bytes(&v[1..])
                .map_err(|e| ArchiveError::Corrupt(format!("old sled index tombstone: {e}")))?;
            tombs.push(Tombstone {
                id,
                created_ms: t.created_ms,
                entry_hash: t.entry_hash,
                chain: t.chain,
            });
        }
    }
    drop(tree);
    drop(db);
    if !tombs.is_empty() {
        crate::index::write_tombs(&dir.join("segments"), SegId { day: 0, n: 0 }, &tombs)?;
    }
    tracing::info!(
        tombstones = tombs.len(),
        "archive: the old sled index was replaced by index files beside the segments"
    );
    std::fs::remove_dir_all(&old)?;
    sluice_core::durable::sync_dir(dir)?;
    Ok(())
}
