//! Makes a sled database durable with fsyncs Sluice issues itself.
//!
//! sled 0.34's `Db::flush` writes its log and then calls `sync_file_range`, which neither
//! flushes the device's write cache nor the file's size, and sled writes large values to
//! `blobs/` files and snapshots into its folder without fsyncing them or the folder. So a
//! flush alone does not survive a power cut. [`SledFiles::sync`], called after a flush,
//! fsyncs the log file, every blob file not yet synced, and each folder whose entries
//! changed since the last call.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The files of one sled database (the folder given to `sled::Config::path`).
pub struct SledFiles {
    dir: PathBuf,
    log: File,
    /// Names in the database folder at the last folder fsync.
    entries: HashSet<OsString>,
    /// Blob files already fsynced, and the folder listing that went with them.
    blobs: HashSet<OsString>,
}

fn listing(dir: &Path) -> std::io::Result<HashSet<OsString>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.map(|e| e.file_name())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

impl SledFiles {
    /// Call right after opening the database: fsyncs everything sled created or changed
    /// while opening (the folder, `conf`, the log, snapshots, blobs) and the folder above.
    pub fn open(dir: &Path) -> std::io::Result<SledFiles> {
        let log = File::open(dir.join("db"))?;
        let mut files = SledFiles {
            dir: dir.to_path_buf(),
            log,
            entries: HashSet::new(),
            blobs: HashSet::new(),
        };
        for name in listing(dir)? {
            let path = dir.join(&name);
            if path.is_file() {
                File::open(&path)?.sync_all()?;
            }
        }
        files.sync()?;
        if let Some(parent) = dir.parent() {
            sluice_core::durable::sync_dir(parent)?;
        }
        Ok(files)
    }

    /// Makes everything sled wrote before the last `flush` durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        let blob_dir = self.dir.join("blobs");
        let blobs = listing(&blob_dir)?;
        let mut new_blob = false;
        for name in blobs.difference(&self.blobs) {
            new_blob = true;
            match File::open(blob_dir.join(name)) {
                Ok(f) => f.sync_data()?,
                // Collected by sled since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if new_blob || blobs.len() != self.blobs.len() {
            sluice_core::durable::sync_dir(&blob_dir)?;
        }
        self.blobs = blobs;
        self.log.sync_data()?;
        let entries = listing(&self.dir)?;
        if entries != self.entries {
            sluice_core::durable::sync_dir(&self.dir)?;
            self.entries = entries;
        }
        Ok(())
    }
}
