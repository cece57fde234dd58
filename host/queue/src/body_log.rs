//! Message bodies in append-only segment files, outside sled.
//!
//! sled is good at small records and poor at 50 KB values (it writes them as blob files and
//! rewrites them when nodes split), so bodies go to `bodies/seg-<n>` files: an enqueue is
//! one append, and one `fdatasync` per group commit makes every body appended before it
//! durable. Each record in sled points at its body with a [`BodyRef`] that carries a CRC, so
//! a record whose body never reached the disk (possible only for a message that never got
//! its 250) is recognised and dropped.
//!
//! A segment is deleted once no queued message points into it and it is no longer the one
//! being appended to. Reference counts are rebuilt from the records at open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Start a new segment past this size.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Segment files kept open for reading; the least recently used is closed past this.
const MAX_OPEN: usize = 64;

/// Where a body is, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

impl BodyRef {
    pub const ENCODED_LEN: usize = 28;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<BodyRef> {
        let b = b.get(..Self::ENCODED_LEN)?;
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(BodyRef {
            segment: u(0),
            offset: u(8),
            len: u(16),
            crc: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
        })
    }
}

struct Current {
    id: u64,
    file: Arc<File>,
    len: u64,
}

struct State {
    current: Current,
    /// Segments written since the last sync (the current one included when dirty).
    dirty: Vec<Arc<File>>,
    /// Live bodies per segment.
    refs: HashMap<u64, u64>,
    /// Open segments for reading, with when each was last used (a tick of `clock`).
    open: HashMap<u64, (Arc<File>, u64)>,
    clock: u64,
}

pub struct BodyLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:016x}"))
}

use sluice_core::durable::sync_dir;

impl BodyLog {
    /// Opens the folder; `refs` counts the bodies the queue still points at, per segment.
    /// Segments nobody points at are deleted, and appends go to a new segment.
    pub fn open(dir: &Path, refs: HashMap<u64, u64>) -> std::io::Result<BodyLog> {
        sluice_core::durable::create_dir_all(dir)?;
        let mut max_id = 0;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("seg-"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            max_id = max_id.max(id);
            if !refs.contains_key(&id) {
                std::fs::remove_file(seg_path(dir, id))?;
            }
        }
        let current = Self::create(dir, max_id + 1)?;
        Ok(BodyLog {
            dir: dir.to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
            state: Mutex::new(State {
                current,
                dirty: Vec::new(),
                refs,
                open: HashMap::new(),
                clock: 0,
            }),
        })
    }

    fn create(dir: &Path, id: u64) -> std::io::Result<Current> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(seg_path(dir, id))?;
        sync_dir(dir)?;
        Ok(Current {
            id,
            file: Arc::new(file),
            len: 0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a body. Durable after the next [`BodyLog::sync`].
    pub fn append(&self, body: &[u8]) -> std::io::Result<BodyRef> {
        let crc = crc32fast::hash(body);
        let mut st = self.lock();
        if st.current.len >= self.segment_bytes {
            let next = Self::create(&self.dir, st.current.id + 1)?;
            let old = std::mem::replace(&mut st.current, next);
            st.dirty.push(old.file.clone());
            if st.refs.get(&old.id).copied().unwrap_or(0) == 0 {
                std::fs::remove_file(seg_path(&self.dir, old.id))?;
            }
        }
        let offset = st.current.len;
        let mut f: &File = &st.current.file;
        if let Err(e) = f.write_all(body) {
            // Whatever part was written is garbage no record points at; keep offsets right.
            st.current.len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            return Err(e);
        }
        st.current.len += body.len() as u64;
        let segment = st.current.id;
        *st.refs.entry(segment).or_default() += 1;
        let file = st.current.file.clone();
        if !st.dirty.iter().any(|d| Arc::ptr_eq(d, &file)) {
            st.dirty.push(file);
        }
        Ok(BodyRef {
            segment,
            offset,
            len: body.len() as u64,
            crc,
        })
    }

    /// Starts writing the dirty segments to disk ([`sluice_core::durable::start_writeback`]).
    pub fn start_sync(&self) {
        let dirty = self.lock().dirty.clone();
        for f in &dirty {
            sluice_core::durable::start_writeback(f);
        }
    }

    /// Makes every earlier append durable.
    /// After an error the files stay dirty, but Linux may already have dropped the pages
    /// that failed, so a later successful sync proves nothing about them: the queue stops
    /// acknowledging and reopens (see `SledQueue`).
    pub fn sync(&self) -> std::io::Result<()> {
        let dirty = std::mem::take(&mut self.lock().dirty);
        for (i, f) in dirty.iter().enumerate() {
            if let Err(e) = f.sync_data() {
                let mut st = self.lock();
                for f in &dirty[i..] {
                    if !st.dirty.iter().any(|d| Arc::ptr_eq(d, f)) {
                        st.dirty.push(f.clone());
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reads a body; `None` when it is missing or does not match its checksum.
    pub fn read(&self, r: &BodyRef) -> std::io::Result<Option<Vec<u8>>> {
        let file = {
            let mut st = self.lock();
            if r.segment == st.current.id {
                st.current.file.clone()
            } else if let Some(f) = st.open.get(&r.segment).map(|(f, _)| f.clone()) {
                st.clock += 1;
                let now = st.clock;
                if let Some(e) = st.open.get_mut(&r.segment) {
                    e.1 = now;
                }
                f
            } else {
                match File::open(seg_path(&self.dir, r.segment)) {
                    Ok(f) => {
                        let f = Arc::new(f);
                        if st.open.len() >= MAX_OPEN
                            && let Some(oldest) =
                                st.open.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k)
                        {
                            st.open.remove(&oldest);
                        }
                        st.clock += 1;
                        let now = st.clock;
                        st.open.insert(r.segment, (f.clone(), now));
                        f
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        };
        let mut buf = vec![0; r.len as usize];
        match file.read_exact_at(&mut buf, r.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok((crc32fast::hash(&buf) == r.crc).then_some(buf))
    }

    /// Forgets a body; deletes its segment when nothing else lives there.
    pub fn release(&self, r: &BodyRef) -> std::io::Result<()> {
        let mut st = self.lock();
        let n = st.refs.entry(r.segment).or_default();
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.refs.remove(&r.segment);
            st.open.remove(&r.segment);
            if r.segment != st.current.id {
                match std::fs::remove_file(seg_path(&self.dir, r.segment)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Segment files open for reading (bounded by `MAX_OPEN`).
    pub fn open_segments(&self) -> usize {
        self.lock().open.len()
    }

    /// Number of segment files on disk, for tests.
    pub fn segments_on_disk(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_segment_files_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BodyLog::open(dir.path(), HashMap::new()).unwrap();
        log.segment_bytes = 100;
        let refs: Vec<BodyRef> = (0..200)
            .map(|i| log.append(format!("{i:0>150}").as_bytes()).unwrap())
            .collect();
        log.sync().unwrap();
        assert!(log.segments_on_disk() >= 199);
        for (i, r) in refs.iter().enumerate() {
            let body = log.read(r).unwrap().unwrap();
            assert_eq!(body, format!("{i:0>150}").as_bytes());
            assert!(log.open_segments() <= MAX_OPEN);
        }
        // The recently used stay open: reading the last one again opens nothing new.
        let before = log.open_segments();
        log.read(&refs[198]).unwrap().unwrap();
        assert_eq!(log.open_segments(), before);
    }
}
