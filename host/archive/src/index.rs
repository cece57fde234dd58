//! The archive's index: one sled tree, keys by first byte:
//! - `e<id>`: an entry (metadata, place, chain value) or its tombstone once purged;
//! - `t<kind><term>\0<id>`: search postings (kinds in [`terms`]);
//! - `g<segment><id>`: the entries of a segment, for purging;
//! - `s...`: state: `sc` the checkpoint (first id still indexed and the chain value before
//!   it), `sl<segment>` how far a segment is indexed, `ss<segment>` and `sw` how far
//!   segments and ids are known to be synced.
//!
//! Ids are big-endian so keys sort by id. Writes are plain inserts in an order whose every
//! prefix is consistent (ARCHITECTURE.md, "sled batches only where two keys must appear
//! together").

use crate::segment::{self, Record, SegId};
use crate::{ArchiveError, Entry, Page, Query, Recovered};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Slot {
    pub seg: SegId,
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    pub created_ms: u64,
    pub entry_hash: [u8; 32],
    pub chain: [u8; 32],
}

#[derive(Serialize)]
struct LiveRef<'a> {
    entry: &'a Entry,
    slot: Slot,
    chain: [u8; 32],
}

#[derive(Deserialize)]
struct LiveOwned {
    entry: Entry,
    slot: Slot,
    chain: [u8; 32],
}

pub(crate) enum Stored {
    Live(Entry, Slot, [u8; 32]),
    Tombstone(Tombstone),
}

impl Stored {
    fn created_ms(&self) -> u64 {
        match self {
            Stored::Live(e, _, _) => e.created_ms,
            Stored::Tombstone(t) => t.created_ms,
        }
    }

    fn chain(&self) -> [u8; 32] {
        match self {
            Stored::Live(_, _, c) => *c,
            Stored::Tombstone(t) => t.chain,
        }
    }
}

const LIVE: u8 = 1;
const TOMB: u8 = 2;

fn ekey(id: u64) -> [u8; 9] {
    let mut k = [b'e'; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn id_of(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len() - 8..].try_into().expect("8 bytes");
    u64::from_be_bytes(tail)
}

fn term_prefix(kind: u8, term: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(term.len() + 11);
    k.push(b't');
    k.push(kind);
    k.extend(term.bytes().filter(|&b| b != 0));
    k.push(0);
    k
}

fn gkey(seg: SegId, id: u64) -> Vec<u8> {
    [&b"g"[..], &seg.key(), &id.to_be_bytes()].concat()
}

fn skey(name: &[u8], seg: SegId) -> Vec<u8> {
    [name, &seg.key()].concat()
}

fn encode_live(entry: &Entry, slot: Slot, chain: [u8; 32]) -> Vec<u8> {
    let mut v = vec![LIVE];
    v.extend(
        postcard::to_allocvec(&LiveRef { entry, slot, chain }).expect("index entries serialize"),
    );
    v
}

fn decode(v: &[u8]) -> Result<Stored, ArchiveError> {
    let bad = |e: postcard::Error| ArchiveError::Corrupt(format!("index entry: {e}"));
    match v.split_first() {
        Some((&LIVE, rest)) => {
            let l: LiveOwned = postcard::from_bytes(rest).map_err(bad)?;
            Ok(Stored::Live(l.entry, l.slot, l.chain))
        }
        Some((&TOMB, rest)) => Ok(Stored::Tombstone(postcard::from_bytes(rest).map_err(bad)?)),
        _ => Err(ArchiveError::Corrupt("unknown index entry".into())),
    }
}

/// Search term kinds.
pub(crate) mod terms {
    pub const NAMESPACE: u8 = b'n';
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

fn entry_terms(e: &Entry) -> Vec<(u8, String)> {
    use crate::keys;
    let mut t = vec![(terms::NAMESPACE, e.namespace.clone())];
    for (k, v) in &e.attributes {
        match k.as_str() {
            keys::QUEUE_ID => t.push((terms::QUEUE_ID, v.clone())),
            keys::MESSAGE_ID => t.push((terms::MESSAGE_ID, message_id_term(v))),
            keys::SENDER if !v.is_empty() => {
                t.extend(address_terms(v, terms::SENDER, terms::SENDER_DOMAIN))
            }
            keys::RECIPIENT => {
                t.extend(address_terms(v, terms::RECIPIENT, terms::RECIPIENT_DOMAIN))
            }
            keys::SUBJECT => t.extend(words(v).into_iter().map(|w| (terms::WORD, w))),
            _ => {}
        }
    }
    t.sort();
    t.dedup();
    t
}

pub(crate) struct Index {
    db: sled::Db,
    tree: sled::Tree,
}

impl Index {
    pub fn open(dir: &Path) -> Result<Index, ArchiveError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(1000))
            .cache_capacity(128 * 1024 * 1024)
            .open()?;
        let tree = db.open_tree("archive")?;
        Ok(Index { db, tree })
    }

    pub fn flush(&self) -> Result<(), ArchiveError> {
        self.db.flush()?;
        Ok(())
    }

    /// Indexes a record; `seg_len` is its segment's length after it.
    ///
    /// Plain inserts, the segment's indexed length last, not a batch (ARCHITECTURE.md, "sled
    /// batches only where two keys must appear together"). sled recovers a prefix of its
    /// log, so after a crash the indexed length never covers a record whose keys are
    /// missing; a record indexed only in part is indexed again from its segment (the same
    /// keys) when the archive opens.
    pub fn insert(&self, record: &Record, slot: Slot, seg_len: u64) -> Result<(), ArchiveError> {
        let e = &record.entry;
        self.tree
            .insert(&ekey(e.id)[..], encode_live(e, slot, record.chain))?;
        for (kind, term) in entry_terms(e) {
            let mut k = term_prefix(kind, &term);
            k.extend_from_slice(&e.id.to_be_bytes());
            self.tree.insert(k, &[][..])?;
        }
        self.tree.insert(gkey(slot.seg, e.id), &[][..])?;
        self.tree
            .insert(skey(b"sl", slot.seg), &seg_len.to_be_bytes()[..])?;
        Ok(())
    }

    /// Removes every key of a live entry.
    pub(crate) fn remove_live(&self, entry: &Entry, slot: Slot) -> Result<(), ArchiveError> {
        let mut b = sled::Batch::default();
        b.remove(&ekey(entry.id)[..]);
        for (kind, term) in entry_terms(entry) {
            let mut k = term_prefix(kind, &term);
            k.extend_from_slice(&entry.id.to_be_bytes());
            b.remove(k);
        }
        b.remove(gkey(slot.seg, entry.id));
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// Forgets how far a segment is indexed (as a lost index update would).
    #[cfg(test)]
    pub fn forget_indexed(&self, seg: SegId) -> Result<(), ArchiveError> {
        self.tree.remove(skey(b"sl", seg))?;
        self.flush()
    }

    /// Records how far segments and ids are synced. Plain inserts, not a batch: these are
    /// lower bounds that [`Index::recover`] only trusts as far as they go, so any prefix of
    /// the writes (an older value) is safe.
    pub fn mark_synced(&self, id: u64, lens: &[(SegId, u64)]) -> Result<(), ArchiveError> {
        for (seg, len) in lens {
            self.tree
                .insert(skey(b"ss", *seg), &len.to_be_bytes()[..])?;
        }
        self.tree.insert(&b"sw"[..], &id.to_be_bytes()[..])?;
        Ok(())
    }

    fn state_u64(&self, key: &[u8]) -> Result<Option<u64>, ArchiveError> {
        Ok(self
            .tree
            .get(key)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
    }

    pub(crate) fn stored(&self, id: u64) -> Result<Option<Stored>, ArchiveError> {
        self.tree.get(ekey(id))?.map(|v| decode(&v)).transpose()
    }

    pub fn live(&self, id: u64) -> Result<Option<(Entry, Slot)>, ArchiveError> {
        Ok(match self.stored(id)? {
            Some(Stored::Live(e, slot, _)) => Some((e, slot)),
            _ => None,
        })
    }

    /// Every indexed entry and tombstone in id order.
    pub fn all(&self) -> impl Iterator<Item = Result<(u64, Stored), ArchiveError>> + '_ {
        self.tree.scan_prefix(b"e").map(|item| {
            let (k, v) = item?;
            Ok((id_of(&k), decode(&v)?))
        })
    }

    /// The first id still indexed and the chain value before it.
    pub fn checkpoint(&self) -> Result<([u8; 32], Option<u64>), ArchiveError> {
        let (chain, _) = self.checkpoint_raw()?;
        let first = match self.tree.scan_prefix(b"e").next() {
            Some(item) => Some(id_of(&item?.0)),
            None => None,
        };
        Ok((chain, first))
    }

    fn checkpoint_raw(&self) -> Result<([u8; 32], u64), ArchiveError> {
        Ok(match self.tree.get(b"sc")? {
            Some(v) if v.len() == 40 => (
                v[8..].try_into().expect("32 bytes"),
                u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            ),
            _ => ([0; 32], 1),
        })
    }

    /// The last entry's id and chain value.
    pub fn head(&self) -> Result<Option<(u64, [u8; 32])>, ArchiveError> {
        if let Some(item) = self.tree.scan_prefix(b"e").next_back() {
            let (k, v) = item?;
            return Ok(Some((id_of(&k), decode(&v)?.chain())));
        }
        let (chain, first) = self.checkpoint_raw()?;
        Ok((first > 1).then_some((first - 1, chain)))
    }

    pub fn by_queue_id(&self, ns: &str, queue_id: &str) -> Result<Option<Entry>, ArchiveError> {
        for item in self
            .tree
            .scan_prefix(term_prefix(terms::QUEUE_ID, queue_id))
            .rev()
        {
            let (k, _) = item?;
            if let Some((e, _)) = self.live(id_of(&k))?
                && e.namespace == ns
            {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// The smallest id whose entry was created at or after `ms` (`None`: none was).
    fn first_id_from(&self, ms: u64) -> Result<Option<u64>, ArchiveError> {
        // The first entry (or tombstone) at or after `id`: its id and creation time.
        let at_or_after = |id: u64| -> Result<Option<(u64, u64)>, ArchiveError> {
            match self.tree.range(ekey(id).to_vec()..vec![b'f']).next() {
                Some(item) => {
                    let (k, v) = item?;
                    Ok(Some((id_of(&k), decode(&v)?.created_ms())))
                }
                None => Ok(None),
            }
        };
        let Some((first, first_ms)) = at_or_after(0)? else {
            return Ok(None);
        };
        if first_ms >= ms {
            return Ok(Some(first));
        }
        let Some((last, _)) = self.head()? else {
            return Ok(None);
        };
        if at_or_after(last)?.is_none_or(|(_, created)| created < ms) {
            return Ok(None);
        }
        // Creation times grow with ids: find the smallest x where the entry at or after x
        // is recent enough (false at `lo`, true at `hi`).
        let (mut lo, mut hi) = (first, last);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match at_or_after(mid)? {
                Some((_, created)) if created >= ms => hi = mid,
                _ => lo = mid,
            }
        }
        Ok(at_or_after(hi)?.map(|(id, _)| id))
    }

    pub fn search(&self, q: &Query) -> Result<Page, ArchiveError> {
        let limit = match q.limit {
            0 => 50,
            n => n.min(1000),
        };
        // The id range [lo, hi).
        let mut lo = 0u64;
        let mut hi = u64::MAX;
        if let Some(before) = q.before {
            hi = before;
        }
        if let Some(since) = q.since {
            match self.first_id_from(since.saturating_mul(1000))? {
                Some(id) => lo = id,
                None => {
                    return Ok(Page {
                        entries: Vec::new(),
                        next: None,
                    });
                }
            }
        }
        if let Some(until) = q.until
            && let Some(id) = self.first_id_from(until.saturating_mul(1000))?
        {
            hi = hi.min(id);
        }
        if lo >= hi {
            return Ok(Page {
                entries: Vec::new(),
                next: None,
            });
        }
        let mut criteria: Vec<(u8, String)> = Vec::new();
        if let Some(m) = &q.message_id {
            criteria.push((terms::MESSAGE_ID, message_id_term(m)));
        }
        if let Some(v) = &q.queue_id {
            criteria.push((terms::QUEUE_ID, v.trim().to_string()));
        }
        if let Some(v) = &q.recipient {
            criteria.push(address_terms(v, terms::RECIPIENT, terms::RECIPIENT_DOMAIN).remove(0));
        }
        if let Some(v) = &q.sender {
            criteria.push(address_terms(v, terms::SENDER, terms::SENDER_DOMAIN).remove(0));
        }
        if let Some(s) = &q.subject {
            // Words shorter than 2 characters are not indexed, so they do not narrow.
            let mut ws = words(s);
            // The longest word first: likely the rarest.
            ws.sort_by_key(|w| std::cmp::Reverse(w.len()));
            criteria.extend(ws.into_iter().map(|w| (terms::WORD, w)));
        }
        if let Some(ns) = &q.namespace {
            criteria.push((terms::NAMESPACE, ns.clone()));
        }
        if criteria.len() > 1 {
            // Drive by the shortest posting list in the id range (counted up to a bound),
            // check the others per candidate.
            let mut best = (usize::MAX, 0);
            for (i, (kind, term)) in criteria.iter().enumerate() {
                let prefix = term_prefix(*kind, term);
                let key = |id: u64| [&prefix[..], &id.to_be_bytes()].concat();
                let n = self.tree.range(key(lo)..key(hi)).take(4096).count();
                if n < best.0 {
                    best = (n, i);
                }
            }
            criteria.swap(0, best.1);
        }
        let mut entries = Vec::new();
        let mut next = None;
        let mut consider = |id: u64, entries: &mut Vec<Entry>| -> Result<bool, ArchiveError> {
            for (kind, term) in criteria.iter().skip(1) {
                let mut k = term_prefix(*kind, term);
                k.extend_from_slice(&id.to_be_bytes());
                if !self.tree.contains_key(k)? {
                    return Ok(true);
                }
            }
            if let Some((e, _)) = self.live(id)? {
                if entries.len() == limit {
                    next = Some(entries.last().map_or(id, |e: &Entry| e.id));
                    return Ok(false);
                }
                entries.push(e);
            }
            Ok(true)
        };
        match criteria.first() {
            Some((kind, term)) => {
                let prefix = term_prefix(*kind, term);
                let key = |id: u64| [&prefix[..], &id.to_be_bytes()].concat();
                for item in self.tree.range(key(lo)..key(hi)).rev() {
                    if !consider(id_of(&item?.0), &mut entries)? {
                        break;
                    }
                }
            }
            None => {
                let hi_key = if hi == u64::MAX {
                    vec![b'f']
                } else {
                    ekey(hi).to_vec()
                };
                for item in self.tree.range(ekey(lo).to_vec()..hi_key).rev() {
                    if !consider(id_of(&item?.0), &mut entries)? {
                        break;
                    }
                }
            }
        }
        Ok(Page { entries, next })
    }

    pub fn list(
        &self,
        ns: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, ArchiveError> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::new();
        let ids: Box<dyn Iterator<Item = Result<u64, ArchiveError>>> = match ns {
            Some(ns) => {
                let prefix = term_prefix(terms::NAMESPACE, ns);
                let start = [&prefix[..], &from.to_be_bytes()].concat();
                let mut end = prefix.clone();
                *end.last_mut().expect("prefix ends with 0") = 1;
                Box::new(
                    self.tree
                        .range(start..end)
                        .map(|i| i.map(|(k, _)| id_of(&k)).map_err(Into::into)),
                )
            }
            None => Box::new(
                self.tree
                    .range(ekey(from).to_vec()..vec![b'f'])
                    .map(|i| i.map(|(k, _)| id_of(&k)).map_err(Into::into)),
            ),
        };
        for id in ids {
            if out.len() >= limit {
                break;
            }
            if let Some((e, _)) = self.live(id?)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The segments entries are indexed in.
    pub fn segments(&self) -> Result<Vec<SegId>, ArchiveError> {
        let mut out = Vec::new();
        let mut from = b"g".to_vec();
        while let Some(item) = self.tree.range(from.clone()..b"h".to_vec()).next() {
            let (k, _) = item?;
            let seg = seg_of_gkey(&k);
            out.push(seg);
            from = [&b"g"[..], &seg.key(), &[0xff; 9][..]].concat();
        }
        Ok(out)
    }

    /// Replaces a segment's entries with tombstones; returns how many.
    pub fn tombstone_segment(&self, seg: SegId) -> Result<usize, ArchiveError> {
        let prefix = [&b"g"[..], &seg.key()].concat();
        let mut n = 0;
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = id_of(&k);
            let mut b = sled::Batch::default();
            b.remove(k);
            if let Some(Stored::Live(e, _, chain)) = self.stored(id)? {
                for (kind, term) in entry_terms(&e) {
                    let mut t = term_prefix(kind, &term);
                    t.extend_from_slice(&id.to_be_bytes());
                    b.remove(t);
                }
                let t = Tombstone {
                    created_ms: e.created_ms,
                    entry_hash: e.hash(),
                    chain,
                };
                let mut v = vec![TOMB];
                v.extend(postcard::to_allocvec(&t).expect("tombstones serialize"));
                b.insert(&ekey(id)[..], v);
                n += 1;
            }
            self.tree.apply_batch(b)?;
        }
        let mut b = sled::Batch::default();
        b.remove(skey(b"sl", seg));
        b.remove(skey(b"ss", seg));
        self.tree.apply_batch(b)?;
        Ok(n)
    }

    /// Folds the tombstones at the start of the chain into the checkpoint.
    pub fn compact_tombstones(&self) -> Result<(), ArchiveError> {
        let mut b = sled::Batch::default();
        let mut checkpoint = None;
        for item in self.tree.scan_prefix(b"e") {
            let (k, v) = item?;
            match decode(&v)? {
                Stored::Tombstone(t) => {
                    checkpoint = Some((id_of(&k) + 1, t.chain));
                    b.remove(k);
                }
                Stored::Live(..) => break,
            }
        }
        if let Some((first, chain)) = checkpoint {
            b.insert(&b"sc"[..], [&first.to_be_bytes()[..], &chain[..]].concat());
            self.tree.apply_batch(b)?;
        }
        Ok(())
    }

    /// Brings the index in line with the segments after a restart or a crash: records it
    /// lacks are indexed, entries whose record is missing or torn are dropped (with every
    /// later one, so the chain has no gap: none of them was acknowledged), torn tails are
    /// cut off.
    pub fn recover(&self, segments: &Path) -> Result<Recovered, ArchiveError> {
        let mut on_disk = Vec::new();
        for e in std::fs::read_dir(segments)? {
            let name = e?.file_name();
            if let Some(seg) = SegId::parse(&name.to_string_lossy()) {
                on_disk.push(seg);
            }
        }
        on_disk.sort();
        for seg in &on_disk {
            let path = segments.join(seg.file_name());
            let indexed = self.state_u64(&skey(b"sl", *seg))?.unwrap_or(0);
            let synced = self.state_u64(&skey(b"ss", *seg))?.unwrap_or(0);
            let start = indexed.min(synced);
            let (found, valid_end) = segment::scan(&path, start)?;
            for f in &found {
                let slot = Slot {
                    seg: *seg,
                    offset: f.offset,
                    len: f.len,
                };
                let known = matches!(self.stored(f.record.entry.id)?,
                    Some(Stored::Live(ref e, s, c)) if s == slot && c == f.record.chain && *e == f.record.entry);
                if !known {
                    self.insert(&f.record, slot, f.offset + u64::from(f.len))?;
                }
            }
            let file_len = std::fs::metadata(&path)?.len();
            if valid_end < synced.min(file_len) {
                // Damage where the disk had confirmed the data: not a torn write. Leave it
                // for `verify` to report rather than cut acknowledged entries away.
                tracing::error!(segment = %seg.file_name(), offset = valid_end, "archive segment damaged before its synced end; run `sluice archive verify`");
                continue;
            }
            if valid_end < file_len {
                tracing::warn!(segment = %seg.file_name(), valid_end, file_len, "archive segment has a torn tail; cutting it off");
                truncate(&path, valid_end)?;
            }
            // Index entries past the valid end: their record never reached the disk.
            let prefix = [&b"g"[..], &seg.key()].concat();
            for item in self.tree.scan_prefix(&prefix).rev() {
                let (k, _) = item?;
                match self.live(id_of(&k))? {
                    Some((e, slot)) if slot.offset >= valid_end => {
                        tracing::warn!(
                            id = e.id,
                            "archive entry lost before it was synced; dropping it"
                        );
                        self.remove_live(&e, slot)?;
                    }
                    _ => break,
                }
            }
            self.tree
                .insert(skey(b"sl", *seg), &valid_end.to_be_bytes()[..])?;
        }
        // The chain after the last synced id must have no gap.
        let synced = self.state_u64(b"sw")?.unwrap_or(0);
        let (mut prev, mut expect) = match self.stored(synced)? {
            Some(s) => (s.chain(), synced + 1),
            None => {
                let (chain, first) = self.checkpoint_raw()?;
                // Whatever is indexed before the checkpoint's first id starts the walk.
                (chain, first)
            }
        };
        let mut drop_from: Option<u64> = None;
        for item in self.tree.range(ekey(expect).to_vec()..vec![b'f']) {
            let (k, v) = item?;
            let id = id_of(&k);
            let s = decode(&v)?;
            let hash = match &s {
                Stored::Live(e, _, _) => e.hash(),
                Stored::Tombstone(t) => t.entry_hash,
            };
            if id != expect || crate::chain(&prev, &hash) != s.chain() {
                drop_from = Some(id);
                break;
            }
            prev = s.chain();
            expect = id + 1;
        }
        if let Some(from) = drop_from {
            let mut cut: std::collections::HashMap<SegId, u64> = Default::default();
            let doomed: Vec<(Entry, Slot)> = self
                .tree
                .range(ekey(from).to_vec()..vec![b'f'])
                .filter_map(|i| i.ok())
                .filter_map(|(_, v)| match decode(&v) {
                    Ok(Stored::Live(e, slot, _)) => Some((e, slot)),
                    _ => None,
                })
                .collect();
            for (e, slot) in doomed {
                tracing::warn!(
                    id = e.id,
                    "archive entry after a gap in the chain; dropping it (never acknowledged)"
                );
                let c = cut.entry(slot.seg).or_insert(slot.offset);
                *c = (*c).min(slot.offset);
                self.remove_live(&e, slot)?;
            }
            for (seg, at) in cut {
                truncate(&segments.join(seg.file_name()), at)?;
                self.tree.insert(skey(b"sl", seg), &at.to_be_bytes()[..])?;
                self.tree.insert(skey(b"ss", seg), &at.to_be_bytes()[..])?;
            }
        }
        self.flush()?;
        let (next, head, last_ms) = match self.tree.scan_prefix(b"e").next_back() {
            Some(item) => {
                let (k, v) = item?;
                let s = decode(&v)?;
                (id_of(&k) + 1, s.chain(), s.created_ms())
            }
            None => {
                let (chain, first) = self.checkpoint_raw()?;
                (first, chain, 0)
            }
        };
        Ok(Recovered {
            next,
            head,
            last_ms,
        })
    }
}

fn seg_of_gkey(k: &[u8]) -> SegId {
    SegId {
        day: u32::from_be_bytes(k[1..5].try_into().expect("4 bytes")),
        n: u32::from_be_bytes(k[5..9].try_into().expect("4 bytes")),
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), ArchiveError> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()?;
    Ok(())
}
