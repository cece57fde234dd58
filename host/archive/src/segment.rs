//! Segment files: append-only, one per purge day (and a new one every [`MAX_SEGMENT`]
//! bytes), named `<purge day YYYYMMDD>-<n>.seg`. A record is
//! `"SLAR" | header length u32 | body length u32 | CRC-32 of header and body | header | body`
//! (little endian), the header a postcard [`Record`], the body the zstd-compressed message.
//! Segments are the archive's truth: the index can be rebuilt from them.

use crate::{ArchiveError, Entry};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"SLAR";
const FRAME: usize = 16;
/// A segment that grew past this gets a successor.
pub(crate) const MAX_SEGMENT: u64 = 256 * 1024 * 1024;
/// Larger headers or bodies are not records (a damaged length).
const MAX_PART: u32 = 256 * 1024 * 1024;

/// Which segment: its purge day (days since the Unix epoch) and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegId {
    pub day: u32,
    pub n: u32,
}

impl SegId {
    pub fn file_name(self) -> String {
        format!("{}.seg", self.stem())
    }

    /// The file name without `.seg`: `<purge day YYYYMMDD>-<n>`.
    pub fn stem(self) -> String {
        let date = chrono::DateTime::from_timestamp(i64::from(self.day) * 86400, 0)
            .map(|d| d.format("%Y%m%d").to_string())
            .unwrap_or_else(|| "00000000".into());
        format!("{date}-{:04}", self.n)
    }

    pub fn parse(name: &str) -> Option<SegId> {
        let stem = name.strip_suffix(".seg")?;
        let (date, n) = stem.split_once('-')?;
        let date = chrono::NaiveDate::parse_from_str(date, "%Y%m%d").ok()?;
        let day = date
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp()
            .checked_div(86400)?;
        Some(SegId {
            day: u32::try_from(day).ok()?,
            n: n.parse().ok()?,
        })
    }

    /// Sorts by day then number, as index keys.
    pub fn key(self) -> [u8; 8] {
        let mut k = [0u8; 8];
        k[..4].copy_from_slice(&self.day.to_be_bytes());
        k[4..].copy_from_slice(&self.n.to_be_bytes());
        k
    }
}

/// A record's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub entry: Entry,
    /// The hash chain after this entry.
    pub chain: [u8; 32],
}

/// The bytes of one record.
pub(crate) fn encode(record: &Record, body: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    let header = postcard::to_allocvec(record).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.update(body);
    let mut out = Vec::with_capacity(FRAME + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Ok(out)
}

/// Segment files opened once each for a series of reads.
pub(crate) struct SegFiles<'a> {
    dir: &'a Path,
    open: std::collections::HashMap<SegId, File>,
}

impl<'a> SegFiles<'a> {
    pub fn new(dir: &'a Path) -> SegFiles<'a> {
        SegFiles {
            dir,
            open: std::collections::HashMap::new(),
        }
    }

    /// The record of `len` bytes at `offset` of segment `seg` (see [`read_at`]).
    pub fn read(
        &mut self,
        seg: SegId,
        offset: u64,
        len: u32,
    ) -> Result<(Record, Vec<u8>), ArchiveError> {
        let file = match self.open.entry(seg) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(File::open(self.dir.join(seg.file_name()))?)
            }
        };
        read_at(file, offset, len)
    }
}

/// Reads the record of `len` bytes at `offset`: its header and compressed body.
pub(crate) fn read_at(
    file: &File,
    offset: u64,
    len: u32,
) -> Result<(Record, Vec<u8>), ArchiveError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    match decode(&buf) {
        Some((record, body, used)) if used == buf.len() => Ok((record, body.to_vec())),
        _ => Err(ArchiveError::Corrupt(format!(
            "no valid record of {len} bytes at offset {offset}"
        ))),
    }
}

/// The record at the start of `buf`, its body and its length; `None` if `buf` holds no whole
/// valid record there (a torn or damaged tail).
fn decode(buf: &[u8]) -> Option<(Record, &[u8], usize)> {
    if buf.len() < FRAME || &buf[..4] != MAGIC {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let (hl, bl, crc) = (word(4), word(8), word(12));
    if hl > MAX_PART || bl > MAX_PART {
        return None;
    }
    let end = FRAME + hl as usize + bl as usize;
    if buf.len() < end {
        return None;
    }
    let (header, body) = buf[FRAME..end].split_at(hl as usize);
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(body);
    if h.finalize() != crc {
        return None;
    }
    let record = postcard::from_bytes::<Record>(header).ok()?;
    Some((record, body, end))
}

/// A record found by [`scan`]: where it is and its header.
pub(crate) struct Found {
    pub offset: u64,
    pub len: u32,
    pub record: Record,
}

/// What [`scan`] found.
pub(crate) struct Scan {
    pub found: Vec<Found>,
    /// Where the valid records end: a tail after it is torn if this is at or past the
    /// synced length.
    pub end: u64,
    /// Damaged stretches before the synced length that were skipped.
    pub damaged: Vec<(u64, u64)>,
}

/// The valid records of a segment from `start` (a record boundary). Before `synced` (the
/// length known to have been on disk) an invalid record is damage, not a torn write: the
/// scan looks for the next valid record and goes on from there.
pub(crate) fn scan(path: &Path, start: u64, synced: u64) -> Result<Scan, ArchiveError> {
    let mut file = File::open(path)?;
    let mut data = Vec::new();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))?;
    file.read_to_end(&mut data)?;
    let mut found = Vec::new();
    let mut damaged = Vec::new();
    let mut at = 0usize;
    let mut end = start;
    while at < data.len() {
        if let Some((record, _, used)) = decode(&data[at..]) {
            found.push(Found {
                offset: start + at as u64,
                len: used as u32,
                record,
            });
            at += used;
            end = start + at as u64;
            continue;
        }
        if start + (at as u64) >= synced {
            break;
        }
        // Damage: the next offset where a whole valid record starts.
        let next = (at + 1..data.len().saturating_sub(FRAME - 1))
            .find(|&i| data[i..].starts_with(MAGIC) && decode(&data[i..]).is_some());
        match next {
            Some(i) => {
                damaged.push((start + at as u64, start + i as u64));
                at = i;
            }
            None => {
                damaged.push((start + at as u64, start + data.len() as u64));
                // Nothing valid after it: leave the damaged tail in place for `verify`.
                end = start + data.len() as u64;
                break;
            }
        }
    }
    Ok(Scan {
        found,
        end,
        damaged,
    })
}
