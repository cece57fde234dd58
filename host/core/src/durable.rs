//! Files written so that a power cut leaves either the old or the new contents.
//!
//! The data goes to a temporary file beside the target, which is fsynced, renamed over the
//! target, and then the folder is fsynced so that the new name survives too. Anything
//! Sluice writes and later relies on (certificates, the users file, compiled plugins) goes
//! through [`write_atomic`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `data` atomically and durably, with permission bits `mode` (for
/// new files; umask applies).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Another store whose writes ride a group commit (the queue's): the committer calls
/// [`CommitHook::sync`] before making its own records durable, so that whatever was written
/// to the hooked store before the commit began is on disk before any record written after
/// it could be. A store that waits for that commit instead of syncing on its own saves an
/// `fdatasync` per write group.
pub trait CommitHook: Send + Sync {
    /// Starts writing what was written so far to disk without waiting ([`start_writeback`]),
    /// so that the commit's syncs overlap; called before any of them.
    fn start_sync(&self) {}

    /// Makes every write made so far durable. An error is the hooked store's own to
    /// report (to the writers waiting on it); the commit goes on.
    fn sync(&self) -> std::io::Result<()>;
}

/// Starts writing `file`'s dirty pages to disk and returns at once (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`; elsewhere nothing). It makes nothing durable:
/// `sync_data` still must follow. Started on every file of a group commit before the
/// first sync, the data goes out together and the first sync's journal commit covers the
/// others' metadata: three appended files synced in turn took ~30% less time and ~20%
/// less CPU per commit (`bench/fsync_cost.py`, `sfr` against `seq`); the relay under load
/// (`bench/relay_bench.py`) showed no difference beyond its run-to-run noise.
pub fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `sync_file_range` takes a descriptor and integers and touches no memory
        // of ours; the descriptor is open for as long as `file` is borrowed. Its result is
        // advisory (the sync that follows reports any error), so it is ignored.
        #[allow(unsafe_code)]
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Makes a folder's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, making each new entry durable.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir)?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("sluice-durable-{}", std::process::id()));
        create_dir_all(&dir.join("a/b")).unwrap();
        let target = dir.join("a/b/file");
        write_atomic(&target, b"one", 0o600).unwrap();
        write_atomic(&target, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
