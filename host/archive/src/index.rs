//! The archive's index, kept in files beside the segments (no database):
//!
//! - A **run** indexes a stretch of one segment's records: a row per entry (id, creation
//!   time, place, namespace) and the search postings (term → entry ids). The records after
//!   a segment's last run file are indexed in memory (an open run, a few `HashMap` pushes
//!   per message); a run is written to `<segment>.<k>.idx` once it holds [`RUN_ENTRIES`]
//!   entries or [`RUN_BYTES`] of records, when its segment is left for a new one, and when
//!   the archive is opened or dropped. A run file is only written after its segment is
//!   synced, so every record it covers is on disk.
//! - A run file holds the postings in blocks of about [`BLOCK`] bytes (sorted by term, each
//!   with its CRC), then its metadata (rows, the blocks' first terms, hashes of its queue
//!   ids) under a CRC. Only the metadata is read at open; a search reads one block per run
//!   for each term it looks up.
//! - `<segment>.tomb`: what a purged segment leaves for the hash chain (each entry's id,
//!   creation time, entry hash and chain value), until every older entry is gone; then the
//!   chain's `checkpoint` file (first id still kept, chain value before it) takes over.
//! - `marks`: how far entries and segments are known to be synced, written after each
//!   group commit without a sync of its own (two slots under a CRC, so a torn write leaves
//!   the older one): a lower bound that recovery uses to tell damage (before it) from a torn
//!   tail (after it), and where its chain walk starts.
//!
//! The segments stay the truth: an index file that is missing or fails its CRC is rebuilt
//! from its segment when the archive opens.

use crate::segment::{self, Record, SegFiles, SegId};
use crate::{ArchiveError, Entry, Page, Query, Recovered};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// An open run is written out at this many entries...
pub(crate) const RUN_ENTRIES: usize = 8192;
/// ...or once its records span this many bytes of the segment.
pub(crate) const RUN_BYTES: u64 = 64 * 1024 * 1024;
/// Postings blocks are cut after this many bytes (a term's list is never split).
const BLOCK: usize = 4096;
const IDX_MAGIC: &[u8; 4] = b"SLIX";
const IDX_VERSION: u32 = 1;
/// The trailer: metadata offset u64, length u32, CRC u32, magic.
const TRAILER: usize = 20;
const MARKS_SLOT: u64 = 64 * 1024;

/// Where a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub seg: SegId,
    pub offset: u64,
    pub len: u32,
}

/// An entry as a run indexes it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Row {
    pub id: u64,
    pub created_ms: u64,
    pub offset: u64,
    pub len: u32,
    /// Index into the run's namespaces.
    pub ns: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    pub id: u64,
    pub created_ms: u64,
    pub entry_hash: [u8; 32],
    pub chain: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct BlockRef {
    first: Vec<u8>,
    offset: u64,
    len: u32,
    crc: u32,
}

#[derive(Serialize, Deserialize)]
struct RunMeta {
    version: u32,
    seg: SegId,
    number: u32,
    start: u64,
    end: u64,
    namespaces: Vec<String>,
    rows: Vec<Row>,
    last_chain: [u8; 32],
    /// Sorted hashes of the queue-id terms ([`qid_hash`]), for the retry check.
    qids: Vec<u64>,
    blocks: Vec<BlockRef>,
}

enum Postings {
    Mem(HashMap<Vec<u8>, Vec<u64>>),
    File {
        file: File,
        blocks: Vec<BlockRef>,
        qids: Vec<u64>,
    },
}

/// A stretch of one segment, indexed.
pub(crate) struct Run {
    seg: SegId,
    number: u32,
    /// The segment offsets its records cover.
    start: u64,
    end: u64,
    namespaces: Vec<String>,
    /// In id order.
    rows: Vec<Row>,
    /// The chain value after the last row (so the head is known without reading it).
    last_chain: [u8; 32],
    postings: Postings,
}

/// Search term kinds (the first byte of a term key).
pub(crate) mod terms {
    pub const QUEUE_ID: u8 = b'q';
    pub const MESSAGE_ID: u8 = b'm';
    pub const SENDER: u8 = b's';
    pub const SENDER_DOMAIN: u8 = b'S';
    pub const RECIPIENT: u8 = b'r';
    pub const RECIPIENT_DOMAIN: u8 = b'R';
    pub const WORD: u8 = b'w';
}

/// Lower-case words of 2 to 40 characters, each once, at most 64.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        let n = w.chars().count();
        if !(2..=40).contains(&n) {
            continue;
        }
        let w = w.to_lowercase();
        if !out.contains(&w) {
            out.push(w);
            if out.len() == 64 {
                break;
            }
        }
    }
    out
}

fn message_id_term(v: &str) -> String {
    v.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// An address term and its domain term, or `@domain` alone.
fn address_terms(v: &str, kind: u8, domain_kind: u8) -> Vec<(u8, String)> {
    let v = v.trim().to_lowercase();
    if let Some(domain) = v.strip_prefix('@') {
        return vec![(domain_kind, domain.to_string())];
    }
    let mut out = vec![(kind, v.clone())];
    if let Some((_, d)) = v.rsplit_once('@') {
        out.push((domain_kind, d.to_string()));
    }
    out
}

fn key(kind: u8, term: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(term.len() + 1);
    k.push(kind);
    k.extend_from_slice(term.as_bytes());
    k
}

/// The term keys an entry is found by.
fn entry_keys(e: &Entry) -> Vec<Vec<u8>> {
    use crate::keys;
    let mut t: Vec<Vec<u8>> = Vec::new();
    for (k, v) in &e.attributes {
        match k.as_str() {
            keys::QUEUE_ID => t.push(key(terms::QUEUE_ID, v)),
            keys::MESSAGE_ID => t.push(key(terms::MESSAGE_ID, &message_id_term(v))),
            keys::SENDER if !v.is_empty() => t.extend(
                address_terms(v, terms::SENDER, terms::SENDER_DOMAIN)
                    .iter()
                    .map(|(k, v)| key(*k, v)),
            ),
            keys::RECIPIENT => t.extend(
                address_terms(v, terms::RECIPIENT, terms::RECIPIENT_DOMAIN)
                    .iter()
                    .map(|(k, v)| key(*k, v)),
            ),
            keys::SUBJECT => t.extend(words(v).iter().map(|w| key(terms::WORD, w))),
            _ => {}
        }
    }
    t.sort();
    t.dedup();
    t
}

/// A stable 64-bit hash of a queue-id term key.
fn qid_hash(key: &[u8]) -> u64 {
    let d = Sha256::digest(key);
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn corrupt(what: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Corrupt(what.to_string())
}

impl Run {
    fn new(seg: SegId, number: u32, start: u64) -> Run {
        Run {
            seg,
            number,
            start,
            end: start,
            namespaces: Vec::new(),
            rows: Vec::new(),
            last_chain: [0; 32],
            postings: Postings::Mem(HashMap::new()),
        }
    }

    fn add(&mut self, record: &Record, offset: u64, len: u32) {
        let e = &record.entry;
        self.last_chain = record.chain;
        let ns = match self.namespaces.iter().position(|n| *n == e.namespace) {
            Some(i) => i,
            None => {
                self.namespaces.push(e.namespace.clone());
                self.namespaces.len() - 1
            }
        } as u32;
        self.rows.push(Row {
            id: e.id,
            created_ms: e.created_ms,
            offset,
            len,
            ns,
        });
        self.end = offset + u64::from(len);
        if let Postings::Mem(m) = &mut self.postings {
            for k in entry_keys(e) {
                m.entry(k).or_default().push(e.id);
            }
        }
    }

    fn full(&self) -> bool {
        self.rows.len() >= RUN_ENTRIES || self.end - self.start >= RUN_BYTES
    }

    fn row(&self, id: u64) -> Option<&Row> {
        self.rows
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|i| &self.rows[i])
    }

    fn slot(&self, r: &Row) -> Slot {
        Slot {
            seg: self.seg,
            offset: r.offset,
            len: r.len,
        }
    }

    fn namespace(&self, r: &Row) -> &str {
        &self.namespaces[r.ns as usize]
    }

    fn file_name(&self) -> String {
        run_file_name(self.seg, self.number)
    }

    /// The ids filed under a term key, ascending.
    fn ids(&self, key: &[u8]) -> Result<Vec<u64>, ArchiveError> {
        match &self.postings {
            Postings::Mem(m) => Ok(m.get(key).cloned().unwrap_or_default()),
            Postings::File { file, blocks, .. } => {
                let i = blocks.partition_point(|b| b.first.as_slice() <= key);
                if i == 0 {
                    return Ok(Vec::new());
                }
                let b = &blocks[i - 1];
                let mut buf = vec![0u8; b.len as usize];
                file.read_exact_at(&mut buf, b.offset)?;
                if crc32fast::hash(&buf) != b.crc {
                    return Err(corrupt(format!(
                        "index run {} damaged at offset {}",
                        self.file_name(),
                        b.offset
                    )));
                }
                let mut rest = &buf[..];
                while !rest.is_empty() {
                    let ((k, deltas), tail): ((&[u8], Vec<u64>), _) =
                        postcard::take_from_bytes(rest)
                            .map_err(|e| corrupt(format!("index run {}: {e}", self.file_name())))?;
                    if k == key {
                        let mut id = 0u64;
                        return Ok(deltas
                            .into_iter()
                            .map(|d| {
                                id += d;
                                id
                            })
                            .collect());
                    }
                    if k > key {
                        break;
                    }
                    rest = tail;
                }
                Ok(Vec::new())
            }
        }
    }

    /// The bytes of this (memory) run's index file.
    fn encode(&self) -> Vec<u8> {
        let Postings::Mem(map) = &self.postings else {
            unreachable!("only memory runs are written")
        };
        let mut keys: Vec<&Vec<u8>> = map.keys().collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len() * 24 + self.rows.len() * 40);
        out.extend_from_slice(IDX_MAGIC);
        out.extend_from_slice(&IDX_VERSION.to_le_bytes());
        let mut blocks: Vec<BlockRef> = Vec::new();
        let mut qids = Vec::new();
        let mut block_start = out.len();
        let mut first: Option<&[u8]> = None;
        let finish = |out: &Vec<u8>, start: usize, first: &[u8], blocks: &mut Vec<BlockRef>| {
            blocks.push(BlockRef {
                first: first.to_vec(),
                offset: start as u64,
                len: (out.len() - start) as u32,
                crc: crc32fast::hash(&out[start..]),
            });
        };
        for k in keys {
            if k.first() == Some(&terms::QUEUE_ID) {
                qids.push(qid_hash(k));
            }
            let mut prev = 0u64;
            let deltas: Vec<u64> = map[k]
                .iter()
                .map(|&id| {
                    let d = id - prev;
                    prev = id;
                    d
                })
                .collect();
            first.get_or_insert(k);
            out.extend(postcard::to_allocvec(&(k.as_slice(), deltas)).expect("postings serialize"));
            if out.len() - block_start >= BLOCK {
                finish(&out, block_start, first.take().expect("set"), &mut blocks);
                block_start = out.len();
            }
        }
        if let Some(f) = first {
            finish(&out, block_start, f, &mut blocks);
        }
        qids.sort_unstable();
        let meta = RunMeta {
            version: IDX_VERSION,
            seg: self.seg,
            number: self.number,
            start: self.start,
            end: self.end,
            namespaces: self.namespaces.clone(),
            rows: self.rows.clone(),
            last_chain: self.last_chain,
            qids,
            blocks,
        };
        let meta_offset = out.len() as u64;
        let bytes = postcard::to_allocvec(&meta).expect("run metadata serializes");
        out.extend_from_slice(&bytes);
        out.extend_from_slice(&meta_offset.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        out.extend_from_slice(IDX_MAGIC);
        out
    }

    /// Reads a run file's metadata (postings stay on disk).
    fn load(path: &Path) -> Result<Run, ArchiveError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let bad = |why: &str| corrupt(format!("index run {}: {why}", path.display()));
        if len < (8 + TRAILER) as u64 {
            return Err(bad("too short"));
        }
        let mut t = [0u8; TRAILER];
        file.read_exact_at(&mut t, len - TRAILER as u64)?;
        if &t[16..] != IDX_MAGIC {
            return Err(bad("no trailer"));
        }
        let meta_offset = u64::from_le_bytes(t[..8].try_into().expect("8"));
        let meta_len = u32::from_le_bytes(t[8..12].try_into().expect("4"));
        let crc = u32::from_le_bytes(t[12..16].try_into().expect("4"));
        if meta_offset + u64::from(meta_len) + TRAILER as u64 != len {
            return Err(bad("bad trailer"));
        }
        let mut bytes = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut bytes, meta_offset)?;
        if crc32fast::hash(&bytes) != crc {
            return Err(bad("metadata CRC mismatch"));
        }
        let meta: RunMeta = postcard::from_bytes(&bytes).map_err(|e| bad(&e.to_string()))?;
        if meta.version != IDX_VERSION {
            return Err(bad("unknown version"));
        }
        Ok(Run {
            seg: meta.seg,
            number: meta.number,
            start: meta.start,
            end: meta.end,
            namespaces: meta.namespaces,
            rows: meta.rows,
            last_chain: meta.last_chain,
            postings: Postings::File {
                file,
                blocks: meta.blocks,
                qids: meta.qids,
            },
        })
    }
}

fn run_file_name(seg: SegId, number: u32) -> String {
    format!("{}.{number:04}.idx", seg.stem())
}

fn tomb_file_name(seg: SegId) -> String {
    format!("{}.tomb", seg.stem())
}

/// `<segment stem>.<k>.idx` → (segment, k).
fn parse_run_file_name(name: &str) -> Option<(SegId, u32)> {
    let stem = name.strip_suffix(".idx")?;
    let (seg, n) = stem.rsplit_once('.')?;
    Some((SegId::parse(&format!("{seg}.seg"))?, n.parse().ok()?))
}

/// A tombstone file: where it is and the ids it holds.
#[derive(Clone, Copy)]
struct TombFile {
    seg: SegId,
    lo: u64,
    hi: u64,
}

/// Writes a segment's tombstones (durably) to `dir`.
pub(crate) fn write_tombs(dir: &Path, seg: SegId, t: &[Tombstone]) -> Result<(), ArchiveError> {
    let body = postcard::to_allocvec(t).expect("tombstones serialize");
    let mut out = crc32fast::hash(&body).to_le_bytes().to_vec();
    out.extend(body);
    sluice_core::durable::write_atomic(&dir.join(tomb_file_name(seg)), &out, 0o600)?;
    Ok(())
}

/// Writes the archive's chain checkpoint (durably) to `root`.
pub(crate) fn write_checkpoint(
    root: &Path,
    first: u64,
    chain: [u8; 32],
) -> Result<Checkpoint, ArchiveError> {
    let cp = Checkpoint { first, chain };
    sluice_core::durable::write_atomic(
        &root.join("checkpoint"),
        &postcard::to_allocvec(&cp).expect("checkpoint serializes"),
        0o600,
    )?;
    Ok(cp)
}

fn decode_tombs(path: &Path) -> Result<Vec<Tombstone>, ArchiveError> {
    let bytes = std::fs::read(path)?;
    let bad = || corrupt(format!("tombstones {} damaged", path.display()));
    if bytes.len() < 4 {
        return Err(bad());
    }
    let crc = u32::from_le_bytes(bytes[..4].try_into().expect("4"));
    if crc32fast::hash(&bytes[4..]) != crc {
        return Err(bad());
    }
    postcard::from_bytes(&bytes[4..]).map_err(|_| bad())
}

/// The chain before the first entry still kept.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    first: u64,
    chain: [u8; 32],
}

impl Default for Checkpoint {
    fn default() -> Checkpoint {
        Checkpoint {
            first: 1,
            chain: [0; 32],
        }
    }
}

/// How far entries and open segments are known to be synced.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Marks {
    seq: u64,
    synced_id: u64,
    segs: Vec<(SegId, u64)>,
}

struct MarksFile {
    file: File,
    marks: Marks,
}

impl MarksFile {
    fn open(path: &Path) -> Result<MarksFile, ArchiveError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let mut best: Option<Marks> = None;
        for slot in 0..2u64 {
            let mut head = [0u8; 8];
            if file.read_exact_at(&mut head, slot * MARKS_SLOT).is_err() {
                continue;
            }
            let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as u64;
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
            if len == 0 || len > MARKS_SLOT - 8 {
                continue;
            }
            let mut body = vec![0u8; len as usize];
            if file
                .read_exact_at(&mut body, slot * MARKS_SLOT + 8)
                .is_err()
                || crc32fast::hash(&body) != crc
            {
                continue;
            }
            if let Ok(m) = postcard::from_bytes::<Marks>(&body)
                && best.as_ref().is_none_or(|b| m.seq > b.seq)
            {
                best = Some(m);
            }
        }
        Ok(MarksFile {
            file,
            marks: best.unwrap_or_default(),
        })
    }

    /// Writes the marks to the slot the last write did not use (no sync: a lower bound).
    fn write(&mut self) -> Result<(), ArchiveError> {
        self.marks.seq += 1;
        let body = postcard::to_allocvec(&self.marks).expect("marks serialize");
        if body.len() as u64 > MARKS_SLOT - 8 {
            // Too many open segments to record: recovery works from older marks.
            return Ok(());
        }
        let mut buf = Vec::with_capacity(body.len() + 8);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        self.file
            .write_all_at(&buf, (self.marks.seq % 2) * MARKS_SLOT)?;
        Ok(())
    }
}

struct State {
    /// Runs no longer appended to (written to files, or being written).
    runs: Vec<Arc<Run>>,
    /// The run each segment written since the archive opened is appending to.
    open: HashMap<SegId, Run>,
    tombs: Vec<TombFile>,
    checkpoint: Checkpoint,
    /// Every file-backed run's queue-id hashes, sorted: a retried stage's check is one
    /// binary search, not one per run.
    qids: Vec<u64>,
}

impl State {
    /// Rebuilds [`State::qids`] from the runs.
    fn rebuild_qids(&mut self) {
        let mut all: Vec<u64> = Vec::new();
        for run in &self.runs {
            if let Postings::File { qids, .. } = &run.postings {
                all.extend_from_slice(qids);
            }
        }
        all.sort_unstable();
        self.qids = all;
    }

    /// Adds a run's (sorted) queue-id hashes to [`State::qids`]: the stable sort finds
    /// the two sorted runs and merges them in linear time.
    fn merge_qids(&mut self, more: &[u64]) {
        self.qids.extend_from_slice(more);
        self.qids.sort();
    }

    fn all(&self) -> impl Iterator<Item = &Run> + '_ {
        self.runs.iter().map(|r| &**r).chain(self.open.values())
    }

    fn find(&self, id: u64) -> Option<(&Run, &Row)> {
        self.all().find_map(|run| run.row(id).map(|r| (run, r)))
    }
}

pub(crate) struct Index {
    /// The segments folder, where runs and tombstones live too.
    dir: PathBuf,
    /// The archive folder (`checkpoint`, `marks`).
    root: PathBuf,
    state: Arc<RwLock<State>>,
    marks: Mutex<MarksFile>,
}

/// A record read back, with where it is.
pub(crate) struct Stored {
    pub record: Record,
    pub body: Vec<u8>,
}

/// One item of the chain in id order, for verify.
pub(crate) enum Link {
    Live(u64, Slot),
    Tombstone(Box<Tombstone>),
}

impl Index {
    /// Opens the index in `root` for the segments in `root/segments`, bringing it in line
    /// with them (see [`Index::recover`]).
    pub fn open(root: &Path) -> Result<(Index, Recovered), ArchiveError> {
        let dir = root.join("segments");
        let marks = MarksFile::open(&root.join("marks"))?;
        let index = Index {
            dir,
            root: root.to_path_buf(),
            state: Arc::new(RwLock::new(State {
                runs: Vec::new(),
                open: HashMap::new(),
                tombs: Vec::new(),
                checkpoint: Checkpoint::default(),
                qids: Vec::new(),
            })),
            marks: Mutex::new(marks),
        };
        let recovered = index.recover()?;
        Ok((index, recovered))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("archive index")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("archive index")
    }

    /// Indexes a record appended to `slot`. Returns a run that is full and should be
    /// written out ([`Index::spawn_write`]).
    pub fn insert(&self, record: &Record, slot: Slot) -> Option<Arc<Run>> {
        let mut s = self.write();
        if !s.open.contains_key(&slot.seg) {
            let number = s
                .runs
                .iter()
                .filter(|r| r.seg == slot.seg)
                .map(|r| r.number + 1)
                .max()
                .unwrap_or(0);
            s.open
                .insert(slot.seg, Run::new(slot.seg, number, slot.offset));
        }
        let run = s.open.get_mut(&slot.seg).expect("inserted above");
        run.add(record, slot.offset, slot.len);
        if run.full() {
            return seal(&mut s, slot.seg);
        }
        None
    }

    /// Stops appending to a segment's run (its segment is left for a new one); returns it
    /// to be written out.
    pub fn seal(&self, seg: SegId) -> Option<Arc<Run>> {
        seal(&mut self.write(), seg)
    }

    /// Writes a sealed run's file in the background and swaps it in.
    pub fn spawn_write(&self, run: Arc<Run>) {
        let (dir, state) = (self.dir.clone(), self.state.clone());
        std::thread::Builder::new()
            .name("archive-index".into())
            .spawn(move || {
                if let Err(e) = write_run(&dir, &state, &run) {
                    tracing::error!(error = %e, run = %run.file_name(), "cannot write an archive index run; it is rebuilt at the next open");
                }
            })
            .expect("spawn the archive index writer");
    }

    /// Writes every sealed or open run that has no file yet (at close).
    pub fn write_all(&self) -> Result<(), ArchiveError> {
        let pending: Vec<Arc<Run>> = {
            let mut s = self.write();
            let segs: Vec<SegId> = s.open.keys().copied().collect();
            for seg in segs {
                seal(&mut s, seg);
            }
            s.runs
                .iter()
                .filter(|r| matches!(r.postings, Postings::Mem(_)))
                .cloned()
                .collect()
        };
        for run in pending {
            write_run(&self.dir, &self.state, &run)?;
        }
        Ok(())
    }

    /// Records how far ids and segments are synced (see the module doc).
    pub fn mark_synced(&self, id: u64, lens: &[(SegId, u64)]) -> Result<(), ArchiveError> {
        // Segments whose newest records no run file covers yet.
        let open: Vec<SegId> = {
            let s = self.read();
            s.open
                .keys()
                .copied()
                .chain(
                    s.runs
                        .iter()
                        .filter(|r| matches!(r.postings, Postings::Mem(_)))
                        .map(|r| r.seg),
                )
                .collect()
        };
        let mut m = self.marks.lock().expect("archive marks");
        m.marks.synced_id = m.marks.synced_id.max(id);
        for (seg, len) in lens {
            match m.marks.segs.iter_mut().find(|(s, _)| s == seg) {
                Some((_, l)) => *l = (*l).max(*len),
                None => m.marks.segs.push((*seg, *len)),
            }
        }
        m.marks
            .segs
            .retain(|(s, _)| open.contains(s) || lens.iter().any(|(l, _)| l == s));
        m.write()
    }

    /// Where entry `id` is, if it is live.
    pub fn locate(&self, id: u64) -> Option<Slot> {
        let s = self.read();
        s.find(id).map(|(run, row)| run.slot(row))
    }

    /// Reads the record at a slot.
    pub fn read_record(&self, slot: Slot) -> Result<Stored, ArchiveError> {
        let file = File::open(self.dir.join(slot.seg.file_name()))?;
        let (record, body) = segment::read_at(&file, slot.offset, slot.len)?;
        Ok(Stored { record, body })
    }

    /// Reads entries' records, checking each is the entry its row says.
    fn entries(&self, slots: &[(u64, Slot)]) -> Result<Vec<Entry>, ArchiveError> {
        let mut files = SegFiles::new(&self.dir);
        let mut out = Vec::with_capacity(slots.len());
        for &(id, slot) in slots {
            // A damaged record is left out (and logged); `verify` reports it.
            match files.read(slot.seg, slot.offset, slot.len) {
                Ok((record, _)) if record.entry.id == id => out.push(record.entry),
                Ok((record, _)) => tracing::error!(
                    id,
                    found = record.entry.id,
                    "archive entry's place holds another entry; run `sluice archive verify`"
                ),
                Err(e) => {
                    tracing::error!(id, error = %e, "archive entry unreadable; run `sluice archive verify`")
                }
            }
        }
        Ok(out)
    }

    /// The newest live entry of a namespace stored under a queue id (a retried stage).
    pub fn by_queue_id(&self, ns: &str, queue_id: &str) -> Result<Option<Entry>, ArchiveError> {
        let k = key(terms::QUEUE_ID, queue_id);
        let hash = qid_hash(&k);
        let mut best: Option<(u64, Slot)> = None;
        {
            let s = self.read();
            let in_files = s.qids.binary_search(&hash).is_ok();
            for run in s.all() {
                let maybe = match &run.postings {
                    Postings::Mem(m) => m.contains_key(&k),
                    Postings::File { qids, .. } => in_files && qids.binary_search(&hash).is_ok(),
                };
                if !maybe {
                    continue;
                }
                for id in run.ids(&k)? {
                    if let Some(row) = run.row(id)
                        && run.namespace(row) == ns
                        && best.is_none_or(|(b, _)| id > b)
                    {
                        best = Some((id, run.slot(row)));
                    }
                }
            }
        }
        Ok(match best {
            Some(b) => self.entries(&[b])?.pop(),
            None => None,
        })
    }

    /// The smallest live id whose entry was created at or after `ms`.
    fn first_id_from(s: &State, ms: u64) -> Option<u64> {
        s.all()
            .filter_map(|run| {
                let i = run.rows.partition_point(|r| r.created_ms < ms);
                run.rows.get(i).map(|r| r.id)
            })
            .min()
    }

    pub fn search(&self, q: &Query) -> Result<Page, ArchiveError> {
        let limit = match q.limit {
            0 => 50,
            n => n.min(1000),
        };
        let empty = || Page {
            entries: Vec::new(),
            next: None,
        };
        let mut criteria: Vec<Vec<u8>> = Vec::new();
        if let Some(m) = &q.message_id {
            criteria.push(key(terms::MESSAGE_ID, &message_id_term(m)));
        }
        if let Some(v) = &q.queue_id {
            criteria.push(key(terms::QUEUE_ID, v.trim()));
        }
        if let Some(v) = &q.recipient {
            let (k, t) = address_terms(v, terms::RECIPIENT, terms::RECIPIENT_DOMAIN).remove(0);
            criteria.push(key(k, &t));
        }
        if let Some(v) = &q.sender {
            let (k, t) = address_terms(v, terms::SENDER, terms::SENDER_DOMAIN).remove(0);
            criteria.push(key(k, &t));
        }
        if let Some(s) = &q.subject {
            // Words shorter than 2 characters are not indexed, so they do not narrow.
            criteria.extend(words(s).iter().map(|w| key(terms::WORD, w)));
        }
        let s = self.read();
        // The id range [lo, hi).
        let mut lo = 0u64;
        let mut hi = q.before.unwrap_or(u64::MAX);
        if let Some(since) = q.since {
            match Self::first_id_from(&s, since.saturating_mul(1000)) {
                Some(id) => lo = id,
                None => return Ok(empty()),
            }
        }
        if let Some(until) = q.until
            && let Some(id) = Self::first_id_from(&s, until.saturating_mul(1000))
        {
            hi = hi.min(id);
        }
        if lo >= hi {
            return Ok(empty());
        }
        let in_namespace = |run: &Run, row: &Row| {
            q.namespace
                .as_deref()
                .is_none_or(|ns| run.namespace(row) == ns)
        };
        // Newest first: (id, slot) of up to limit + 1 matches.
        let mut found: Vec<(u64, Slot)> = Vec::new();
        if criteria.is_empty() {
            // Every run's rows in the range, newest first, merged.
            let mut cursors: Vec<(&Run, usize)> = s
                .all()
                .map(|run| (run, run.rows.partition_point(|r| r.id < hi)))
                .collect();
            while found.len() <= limit {
                let mut best: Option<usize> = None;
                for (i, (run, at)) in cursors.iter().enumerate() {
                    if *at > 0 {
                        let id = run.rows[at - 1].id;
                        if id >= lo
                            && best.is_none_or(|b| id > cursors[b].0.rows[cursors[b].1 - 1].id)
                        {
                            best = Some(i);
                        }
                    }
                }
                let Some(b) = best else { break };
                let (run, at) = &mut cursors[b];
                *at -= 1;
                let row = &run.rows[*at];
                if in_namespace(run, row) {
                    found.push((row.id, run.slot(row)));
                }
            }
        } else {
            // Each criterion's ids in the range; the shortest list first, then intersect.
            let mut lists: Vec<Vec<u64>> = Vec::with_capacity(criteria.len());
            for k in &criteria {
                let mut ids: Vec<u64> = Vec::new();
                for run in s.all() {
                    let (Some(first), Some(last)) = (run.rows.first(), run.rows.last()) else {
                        continue;
                    };
                    if last.id < lo || first.id >= hi {
                        continue;
                    }
                    ids.extend(run.ids(k)?.into_iter().filter(|&id| id >= lo && id < hi));
                }
                if ids.is_empty() {
                    return Ok(empty());
                }
                ids.sort_unstable();
                lists.push(ids);
            }
            lists.sort_by_key(Vec::len);
            let (first, rest) = lists.split_first().expect("at least one criterion");
            for &id in first.iter().rev() {
                if rest.iter().all(|l| l.binary_search(&id).is_ok())
                    && let Some((run, row)) = s.find(id)
                    && in_namespace(run, row)
                {
                    found.push((id, run.slot(row)));
                    if found.len() > limit {
                        break;
                    }
                }
            }
        }
        drop(s);
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(id, _)| *id)
        } else {
            None
        };
        Ok(Page {
            entries: self.entries(&found)?,
            next,
        })
    }

    pub fn list(
        &self,
        ns: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, ArchiveError> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut found: Vec<(u64, Slot)> = Vec::new();
        {
            let s = self.read();
            for run in s.all() {
                let start = run.rows.partition_point(|r| r.id < from);
                found.extend(
                    run.rows[start..]
                        .iter()
                        .filter(|r| ns.is_none_or(|ns| run.namespace(r) == ns))
                        .take(limit)
                        .map(|r| (r.id, run.slot(r))),
                );
            }
        }
        found.sort_unstable_by_key(|(id, _)| *id);
        found.truncate(limit);
        self.entries(&found)
    }

    /// Purges a segment: its entries become tombstones (a file written before anything is
    /// removed), then its runs and the segment itself go. Returns how many entries went.
    pub fn purge_segment(&self, seg: SegId) -> Result<usize, ArchiveError> {
        let runs: Vec<Arc<Run>> = {
            let mut s = self.write();
            seal(&mut s, seg);
            let (gone, kept): (Vec<_>, Vec<_>) = s.runs.drain(..).partition(|r| r.seg == seg);
            s.runs = kept;
            s.rebuild_qids();
            gone
        };
        let mut tombs = Vec::new();
        let seg_path = self.dir.join(seg.file_name());
        if !runs.is_empty() {
            let file = File::open(&seg_path)?;
            for run in &runs {
                for row in &run.rows {
                    let (record, _) = segment::read_at(&file, row.offset, row.len)?;
                    tombs.push(Tombstone {
                        id: row.id,
                        created_ms: row.created_ms,
                        entry_hash: record.entry.hash(),
                        chain: record.chain,
                    });
                }
            }
        }
        tombs.sort_by_key(|t| t.id);
        let n = tombs.len();
        if let (Some(lo), Some(hi)) = (tombs.first().map(|t| t.id), tombs.last().map(|t| t.id)) {
            write_tombs(&self.dir, seg, &tombs)?;
            self.write().tombs.push(TombFile { seg, lo, hi });
        }
        remove_segment_files(&self.dir, seg)?;
        Ok(n)
    }

    /// Folds the tombstones older than every live entry into the checkpoint; `next` is the
    /// id the next entry will get.
    pub fn compact_tombstones(&self, next: u64) -> Result<(), ArchiveError> {
        let (first_live, doomed, checkpoint) = {
            let s = self.read();
            let first_live = s
                .all()
                .filter_map(|r| r.rows.first().map(|r| r.id))
                .min()
                .unwrap_or(next);
            let doomed: Vec<SegId> = s
                .tombs
                .iter()
                .filter(|t| t.hi < first_live)
                .map(|t| t.seg)
                .collect();
            (first_live, doomed, s.checkpoint)
        };
        if first_live <= checkpoint.first {
            return Ok(());
        }
        // The chain value of the entry just before the first live one.
        let before = first_live - 1;
        let mut chain = None;
        for t in self.tomb_files() {
            if (t.lo..=t.hi).contains(&before) {
                chain = decode_tombs(&self.dir.join(tomb_file_name(t.seg)))?
                    .iter()
                    .find(|x| x.id == before)
                    .map(|x| x.chain);
            }
        }
        let Some(chain) = chain else {
            // Not among the tombstones (a damaged file): keep the checkpoint as it is.
            return Ok(());
        };
        let cp = write_checkpoint(&self.root, first_live, chain)?;
        {
            let mut s = self.write();
            s.checkpoint = cp;
            s.tombs.retain(|t| !doomed.contains(&t.seg));
        }
        for seg in doomed {
            remove_if_there(&self.dir.join(tomb_file_name(seg)))?;
        }
        sluice_core::durable::sync_dir(&self.dir)?;
        Ok(())
    }

    fn tomb_files(&self) -> Vec<TombFile> {
        self.read().tombs.clone()
    }

    /// The checkpoint and every live entry and tombstone after it, in id order.
    pub fn chain(&self) -> Result<(u64, [u8; 32], Vec<Link>), ArchiveError> {
        let (cp, mut links) = {
            let s = self.read();
            let links: Vec<Link> = s
                .all()
                .flat_map(|run| run.rows.iter().map(|r| Link::Live(r.id, run.slot(r))))
                .collect();
            (s.checkpoint, links)
        };
        for t in self.tomb_files() {
            match decode_tombs(&self.dir.join(tomb_file_name(t.seg))) {
                Ok(ts) => links.extend(
                    ts.into_iter()
                        .filter(|x| x.id >= cp.first)
                        .map(|t| Link::Tombstone(Box::new(t))),
                ),
                Err(e) => tracing::error!(error = %e, "archive tombstones unreadable"),
            }
        }
        // Live entries are never older than the checkpoint: it moves up to the oldest one.
        links.sort_by_key(link_id);
        Ok((cp.first, cp.chain, links))
    }

    /// The last entry's id and chain value.
    pub fn head(&self) -> Result<Option<(u64, [u8; 32])>, ArchiveError> {
        Ok(self.last()?.map(|(id, chain, _)| (id, chain)))
    }

    /// The last entry or tombstone: id, chain value, creation time; or, when there is
    /// none, the entry before the checkpoint (creation time unknown: 0).
    fn last(&self) -> Result<Option<(u64, [u8; 32], u64)>, ArchiveError> {
        let (live, tomb, cp) = {
            let s = self.read();
            let live = s
                .all()
                .filter_map(|run| {
                    run.rows
                        .last()
                        .map(|r| (r.id, run.last_chain, r.created_ms))
                })
                .max_by_key(|(id, _, _)| *id);
            let tomb = s.tombs.iter().map(|t| (t.hi, t.seg)).max();
            (live, tomb, s.checkpoint)
        };
        if let Some((hi, seg)) = tomb
            && live.is_none_or(|(id, _, _)| hi > id)
        {
            let ts = decode_tombs(&self.dir.join(tomb_file_name(seg)))?;
            if let Some(t) = ts.iter().find(|t| t.id == hi) {
                return Ok(Some((t.id, t.chain, t.created_ms)));
            }
        }
        if live.is_some() {
            return Ok(live);
        }
        Ok((cp.first > 1).then_some((cp.first - 1, cp.chain, 0)))
    }

    /// Brings the index in line with the segments after a restart or a crash: run files
    /// that are damaged or not contiguous are dropped, records after a segment's last run
    /// are indexed (and written as a run), a torn tail is cut off, damage before the synced
    /// end is skipped (left for `verify` to report), and entries after a gap in the chain
    /// past the last synced id are dropped (none was acknowledged).
    fn recover(&self) -> Result<Recovered, ArchiveError> {
        let checkpoint = match std::fs::read(self.root.join("checkpoint")) {
            Ok(b) => postcard::from_bytes(&b).map_err(|_| corrupt("archive checkpoint damaged"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(e) => return Err(e.into()),
        };
        let (marks_id, marks) = {
            let m = self.marks.lock().expect("archive marks");
            (m.marks.synced_id, m.marks.clone())
        };
        let mut attempts = 0;
        loop {
            let mut segs: Vec<SegId> = Vec::new();
            let mut run_files: HashMap<SegId, Vec<u32>> = HashMap::new();
            let mut tomb_segs: Vec<SegId> = Vec::new();
            for e in std::fs::read_dir(&self.dir)? {
                let name = e?.file_name().to_string_lossy().into_owned();
                if let Some(seg) = SegId::parse(&name) {
                    segs.push(seg);
                } else if let Some((seg, n)) = parse_run_file_name(&name) {
                    run_files.entry(seg).or_default().push(n);
                } else if let Some(stem) = name.strip_suffix(".tomb")
                    && let Some(seg) = SegId::parse(&format!("{stem}.seg"))
                {
                    tomb_segs.push(seg);
                } else if name.starts_with('.') && name.ends_with(".tmp") {
                    // An index or tombstone file whose writing a crash cut short.
                    remove_if_there(&self.dir.join(&name))?;
                }
            }
            segs.sort();
            let mut tombs = Vec::new();
            let mut known: HashMap<u64, Hashes> = HashMap::new();
            for seg in &tomb_segs {
                // A purge cut short: the tombstones are written, the segment goes.
                if segs.contains(seg) {
                    remove_segment_files(&self.dir, *seg)?;
                    segs.retain(|s| s != seg);
                }
                match decode_tombs(&self.dir.join(tomb_file_name(*seg))) {
                    Ok(ts) if !ts.is_empty() => {
                        for t in &ts {
                            known.insert(t.id, (t.entry_hash, t.chain));
                        }
                        tombs.push(TombFile {
                            seg: *seg,
                            lo: ts[0].id,
                            hi: ts[ts.len() - 1].id,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "archive tombstones unreadable; `sluice archive verify` will report the gap")
                    }
                }
            }
            // Run files of segments that are gone.
            for (seg, ns) in &run_files {
                if !segs.contains(seg) {
                    for n in ns {
                        remove_if_there(&self.dir.join(run_file_name(*seg, *n)))?;
                    }
                }
            }
            let mut runs: Vec<Arc<Run>> = Vec::new();
            let mut fresh: Vec<Run> = Vec::new();
            for &seg in &segs {
                let path = self.dir.join(seg.file_name());
                let file_len = std::fs::metadata(&path)?.len();
                let mut numbers = run_files.remove(&seg).unwrap_or_default();
                numbers.sort_unstable();
                let mut end = 0u64;
                let mut next_number = 0u32;
                let mut valid = true;
                for n in numbers {
                    let p = self.dir.join(run_file_name(seg, n));
                    let run = if valid {
                        match Run::load(&p) {
                            Ok(r)
                                if r.seg == seg
                                    && r.number == n
                                    && r.start == end
                                    && r.end <= file_len =>
                            {
                                Some(r)
                            }
                            Ok(_) => None,
                            Err(e) => {
                                tracing::warn!(error = %e, "archive index run rebuilt from its segment");
                                None
                            }
                        }
                    } else {
                        None
                    };
                    match run {
                        Some(r) => {
                            end = r.end;
                            next_number = n + 1;
                            runs.push(Arc::new(r));
                        }
                        None => {
                            valid = false;
                            remove_if_there(&p)?;
                        }
                    }
                }
                let synced = marks
                    .segs
                    .iter()
                    .find(|(s, _)| *s == seg)
                    .map_or(0, |(_, l)| *l)
                    .max(end);
                let scan = segment::scan(&path, end, synced)?;
                for (from, to) in &scan.damaged {
                    tracing::error!(segment = %seg.file_name(), from, to, "archive segment damaged before its synced end; run `sluice archive verify`");
                }
                if scan.end < file_len && scan.end >= synced {
                    tracing::warn!(segment = %seg.file_name(), valid_end = scan.end, file_len, "archive segment has a torn tail; cutting it off");
                    truncate(&path, scan.end)?;
                }
                if !scan.found.is_empty() {
                    let mut run = Run::new(seg, next_number, end);
                    for f in &scan.found {
                        known.insert(f.record.entry.id, (f.record.entry.hash(), f.record.chain));
                        run.add(&f.record, f.offset, f.len);
                    }
                    fresh.push(run);
                }
            }
            // The chain after the last synced id must have no gap.
            let all_rows = || {
                runs.iter()
                    .map(|r| &**r)
                    .chain(fresh.iter())
                    .flat_map(|run| run.rows.iter().map(move |r| (r.id, run.seg, *r)))
            };
            let mut after: Vec<(u64, Option<(SegId, Row)>)> = all_rows()
                .filter(|(id, _, _)| *id > marks_id)
                .map(|(id, seg, r)| (id, Some((seg, r))))
                .collect();
            after.extend(
                known
                    .keys()
                    .filter(|id| **id > marks_id)
                    .map(|id| (*id, None)),
            );
            after.sort_by_key(|(id, _)| *id);
            after.dedup_by_key(|(id, _)| *id);
            let mut files = SegFiles::new(&self.dir);
            let mut link = |id: u64, at: Option<(SegId, Row)>| -> Option<Hashes> {
                if let Some(k) = known.get(&id) {
                    return Some(*k);
                }
                let (seg, r) = at?;
                files
                    .read(seg, r.offset, r.len)
                    .ok()
                    .map(|(rec, _)| (rec.entry.hash(), rec.chain))
            };
            let start = if marks_id >= checkpoint.first {
                let at = all_rows()
                    .find(|(id, _, _)| *id == marks_id)
                    .map(|(_, s, r)| (s, r));
                let start = link(marks_id, at).map(|(_, c)| (c, marks_id + 1));
                if start.is_none() {
                    tracing::warn!(
                        id = marks_id,
                        "archive: the last synced entry is unreadable; the chain after it is not checked at open"
                    );
                }
                start
            } else {
                Some((checkpoint.chain, checkpoint.first))
            };
            let mut drop_from = None;
            if let Some((mut prev, mut expect)) = start {
                for (id, at) in &after {
                    if *id < expect {
                        continue;
                    }
                    match link(*id, *at) {
                        Some((hash, chain))
                            if *id == expect && crate::chain(&prev, &hash) == chain =>
                        {
                            prev = chain;
                            expect = id + 1;
                        }
                        _ => {
                            drop_from = Some(*id);
                            break;
                        }
                    }
                }
            }
            if let Some(from) = drop_from
                && attempts < 3
            {
                attempts += 1;
                let mut cut: HashMap<SegId, u64> = HashMap::new();
                for (id, seg, r) in all_rows() {
                    if id >= from {
                        tracing::warn!(
                            id,
                            "archive entry after a gap in the chain; dropping it (never acknowledged)"
                        );
                        let c = cut.entry(seg).or_insert(r.offset);
                        *c = (*c).min(r.offset);
                    }
                }
                for (seg, at) in cut {
                    truncate(&self.dir.join(seg.file_name()), at)?;
                    for r in runs.iter().filter(|r| r.seg == seg && r.end > at) {
                        remove_if_there(&self.dir.join(r.file_name()))?;
                    }
                }
                // Again, from the files as they now are.
                continue;
            }
            // Recovered stretches are written as runs now: their segments get no new
            // records (a new segment is started for new mail).
            {
                let mut s = self.write();
                s.runs = runs;
                s.tombs = tombs;
                s.checkpoint = checkpoint;
                s.rebuild_qids();
                for run in fresh {
                    let seg = run.seg;
                    s.open.insert(seg, run);
                    seal(&mut s, seg);
                }
            }
            self.write_all()?;
            return self.recovered();
        }
    }

    /// Where numbering goes on, from the index as it is.
    fn recovered(&self) -> Result<Recovered, ArchiveError> {
        let cp = self.read().checkpoint;
        Ok(match self.last()? {
            Some((id, head, last_ms)) => Recovered {
                next: id + 1,
                head,
                last_ms,
            },
            None => Recovered {
                next: cp.first,
                head: cp.chain,
                last_ms: 0,
            },
        })
    }

    /// Drops an entry's row (tests: an entry removed from the index).
    #[cfg(test)]
    pub fn drop_row(&self, id: u64) {
        let mut s = self.write();
        for run in s.runs.iter_mut() {
            if run.row(id).is_some() {
                let mut r = Run::new(run.seg, run.number, run.start);
                r.end = run.end;
                r.namespaces = run.namespaces.clone();
                r.rows = run.rows.iter().filter(|r| r.id != id).copied().collect();
                r.last_chain = run.last_chain;
                *run = Arc::new(r);
            }
        }
        for run in s.open.values_mut() {
            run.rows.retain(|r| r.id != id);
        }
    }

    /// Sets the marks as a crash would have left them (tests).
    #[cfg(test)]
    pub fn reset_marks(&self, id: u64, segs: &[(SegId, u64)]) {
        let mut m = self.marks.lock().expect("archive marks");
        m.marks.synced_id = id;
        m.marks.segs = segs.to_vec();
        m.write().unwrap();
        m.write().unwrap();
    }

    /// How many runs are backed by files (tests).
    #[cfg(test)]
    pub fn run_files(&self) -> usize {
        self.read()
            .runs
            .iter()
            .filter(|r| matches!(r.postings, Postings::File { .. }))
            .count()
    }
}

/// An entry's hash and its chain value.
type Hashes = ([u8; 32], [u8; 32]);

fn link_id(l: &Link) -> u64 {
    match l {
        Link::Live(id, _) => *id,
        Link::Tombstone(t) => t.id,
    }
}

/// Moves a segment's open run to the sealed runs; returns it if it has rows.
fn seal(s: &mut State, seg: SegId) -> Option<Arc<Run>> {
    let run = s.open.remove(&seg)?;
    if run.rows.is_empty() {
        return None;
    }
    let run = Arc::new(run);
    s.runs.push(run.clone());
    Some(run)
}

/// Writes a sealed memory run's file (after syncing its segment) and swaps the file-backed
/// run in.
fn write_run(dir: &Path, state: &RwLock<State>, run: &Arc<Run>) -> Result<(), ArchiveError> {
    if !matches!(run.postings, Postings::Mem(_)) {
        return Ok(());
    }
    File::open(dir.join(run.seg.file_name()))?.sync_data()?;
    let path = dir.join(run.file_name());
    sluice_core::durable::write_atomic(&path, &run.encode(), 0o600)?;
    let loaded = Arc::new(Run::load(&path)?);
    let mut s = state.write().expect("archive index");
    match s.runs.iter_mut().find(|r| Arc::ptr_eq(r, run)) {
        Some(r) => {
            *r = loaded.clone();
            if let Postings::File { qids, .. } = &loaded.postings {
                s.merge_qids(qids);
            }
        }
        // Purged meanwhile.
        None => {
            drop(s);
            remove_if_there(&path)?;
        }
    }
    Ok(())
}

fn remove_if_there(path: &Path) -> Result<(), ArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a segment and its run files.
fn remove_segment_files(dir: &Path, seg: SegId) -> Result<(), ArchiveError> {
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if parse_run_file_name(&name).is_some_and(|(s, _)| s == seg) {
            remove_if_there(&dir.join(&name))?;
        }
    }
    remove_if_there(&dir.join(seg.file_name()))?;
    sluice_core::durable::sync_dir(dir)?;
    Ok(())
}

fn truncate(path: &Path, len: u64) -> Result<(), ArchiveError> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()?;
    Ok(())
}

/// Writes `data` at the end of `file` (tests: a torn tail).
#[cfg(test)]
pub(crate) fn append(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
}
