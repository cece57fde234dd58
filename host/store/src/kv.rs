//! Key-value: namespaced keys with optional expiry, atomic counters, ordered prefix scans
//! with paging, and per-namespace quotas on key size, value size and total size.

use crate::{StoreError, now_secs};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Quotas of one namespace, from the policy step that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    pub max_key: usize,
    pub max_value: usize,
    /// Keys plus values of the namespace, in bytes.
    pub max_total: u64,
}

impl Default for KvLimits {
    fn default() -> KvLimits {
        KvLimits {
            max_key: 512,
            max_value: 64 * 1024,
            max_total: 64 * 1024 * 1024,
        }
    }
}

/// A page of a prefix scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvPage {
    pub entries: Vec<(String, Vec<u8>)>,
    /// The last key of this page when more may follow.
    pub next: Option<String>,
}

/// The most entries one scan returns.
pub const MAX_SCAN: usize = 1000;

pub trait KvStore: Send + Sync {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(ns, k)).collect()
    }
    fn set(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<(), StoreError>;
    /// Sets the key, atomically, unless it holds a live value (an expired one counts as
    /// absent); true when it stored `value`.
    fn set_if_absent(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<bool, StoreError>;
    /// True when the key was there (and not expired).
    fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError>;
    /// Adds `delta` atomically; an absent or expired key counts as 0 and gets `ttl`.
    fn incr(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<i64, StoreError>;
    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, StoreError>;
    /// Removes expired entries; returns how many.
    fn purge_expired(&self) -> Result<usize, StoreError>;
}

/// The full key and the stored form (expiry, value) of an entry, after the size checks.
fn stored(
    ns: &str,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
    limits: &KvLimits,
) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    check_sizes(key, value.len(), limits)?;
    Ok((full_key(ns, key), encode(expiry(ttl), value)))
}

fn check_sizes(key: &str, value_len: usize, limits: &KvLimits) -> Result<(), StoreError> {
    if key.len() > limits.max_key {
        return Err(StoreError::Quota(format!(
            "key of {} bytes, limit {}",
            key.len(),
            limits.max_key
        )));
    }
    if value_len > limits.max_value {
        return Err(StoreError::Quota(format!(
            "value of {value_len} bytes, limit {}",
            limits.max_value
        )));
    }
    Ok(())
}

fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| now_secs().saturating_add(t.as_secs().max(1)))
}

/// A stored value: expiry (unix seconds, 0 for never) then the bytes.
fn encode(expires: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// The value when it is present and alive.
fn live(stored: &[u8], now: u64) -> Option<&[u8]> {
    let (exp, value) = stored.split_at_checked(8)?;
    let exp = u64::from_le_bytes(exp.try_into().ok()?);
    (exp == 0 || exp > now).then_some(value)
}

fn over_quota(ns: &str, limits: &KvLimits) -> StoreError {
    StoreError::Quota(format!(
        "namespace {ns} would exceed {} bytes",
        limits.max_total
    ))
}

/// A counter after adding `delta` to the stored value `old` (absent or expired: 0, and
/// the TTL applies): the bytes to store and the new value.
fn bump(old: Option<&[u8]>, now: u64, ttl: Option<Duration>, delta: i64) -> (Vec<u8>, i64) {
    let (exp, cur) = match old.and_then(|o| live(o, now).map(|v| (o, v))) {
        Some((o, v)) => (
            u64::from_le_bytes(o[..8].try_into().unwrap_or([0; 8])),
            counter(Some(v)),
        ),
        None => (expiry(ttl), 0),
    };
    let value = cur.wrapping_add(delta);
    (encode(exp, &value.to_le_bytes()), value)
}

fn counter(v: Option<&[u8]>) -> i64 {
    v.and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
        .unwrap_or(0)
}

fn full_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + key.len() + 1);
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The sled implementation: tree `kv` with `<ns>\0<key>` keys, tree `kv_usage` with each
/// namespace's total size.
pub struct SledKv {
    tree: sled::Tree,
    usage: sled::Tree,
}

impl SledKv {
    pub(crate) fn new(db: &sled::Db) -> Result<SledKv, StoreError> {
        Ok(SledKv {
            tree: db.open_tree("kv")?,
            usage: db.open_tree("kv_usage")?,
        })
    }

    fn usage(&self, ns: &str) -> Result<u64, StoreError> {
        Ok(self
            .usage
            .get(ns.as_bytes())?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0))
    }

    fn add_usage(&self, ns: &str, delta: i64) -> Result<(), StoreError> {
        if delta == 0 {
            return Ok(());
        }
        self.usage.update_and_fetch(ns.as_bytes(), |old| {
            let old = old
                .and_then(|v| v.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            Some(old.saturating_add_signed(delta).to_le_bytes().to_vec())
        })?;
        Ok(())
    }

    /// Whether `grow` more bytes would take `ns` past its total (no reading of the usage
    /// for a namespace without one).
    fn over_quota(&self, ns: &str, grow: u64, limits: &KvLimits) -> Result<bool, StoreError> {
        Ok(limits.max_total != u64::MAX && self.usage(ns)?.saturating_add(grow) > limits.max_total)
    }

    fn size(k: &[u8], v: Option<&[u8]>) -> i64 {
        v.map_or(0, |v| (k.len() + v.len()) as i64)
    }
}

impl KvStore for SledKv {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = now_secs();
        Ok(self
            .tree
            .get(full_key(ns, key))?
            .and_then(|v| live(&v, now).map(<[u8]>::to_vec)))
    }

    fn set(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<(), StoreError> {
        let (k, new) = stored(ns, key, value, ttl, limits)?;
        let old_len = self.tree.get(&k)?.map_or(0, |v| v.len());
        let grow = (k.len() + new.len()) as i64
            - if old_len > 0 {
                (k.len() + old_len) as i64
            } else {
                0
            };
        if grow > 0 && self.over_quota(ns, grow as u64, limits)? {
            return Err(over_quota(ns, limits));
        }
        let old = self.tree.insert(&k, new.as_slice())?;
        self.add_usage(
            ns,
            Self::size(&k, Some(&new)) - Self::size(&k, old.as_deref()),
        )
    }

    fn set_if_absent(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<bool, StoreError> {
        let (k, new) = stored(ns, key, value, ttl, limits)?;
        // What the key holds: read first only when a quota needs the size it frees.
        let mut current: Option<sled::IVec> = if limits.max_total == u64::MAX {
            None
        } else {
            self.tree.get(&k)?
        };
        loop {
            if current
                .as_ref()
                .is_some_and(|c| live(c, now_secs()).is_some())
            {
                return Ok(false);
            }
            // Absent, or an expired value that this replaces.
            let grow = Self::size(&k, Some(&new)) - Self::size(&k, current.as_deref());
            if grow > 0 && self.over_quota(ns, grow as u64, limits)? {
                return Err(over_quota(ns, limits));
            }
            match self
                .tree
                .compare_and_swap(&k, current.as_ref(), Some(new.as_slice()))?
            {
                Ok(()) => {
                    self.add_usage(ns, grow)?;
                    return Ok(true);
                }
                Err(e) => current = e.current,
            }
        }
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let k = full_key(ns, key);
        let old = self.tree.remove(&k)?;
        self.add_usage(ns, -Self::size(&k, old.as_deref()))?;
        Ok(old.is_some_and(|v| live(&v, now_secs()).is_some()))
    }

    fn incr(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<i64, StoreError> {
        check_sizes(key, 8, limits)?;
        let k = full_key(ns, key);
        let now = now_secs();
        if self.tree.get(&k)?.is_none()
            && self.usage(ns)?.saturating_add((k.len() + 16) as u64) > limits.max_total
        {
            return Err(over_quota(ns, limits));
        }
        let mut result = 0;
        let old = self.tree.fetch_and_update(&k, |old| {
            let (new, value) = bump(old, now, ttl, delta);
            result = value;
            Some(new)
        })?;
        // A counter is 16 bytes stored; whatever was there before (an expired value of
        // another size included) is replaced.
        self.add_usage(ns, (k.len() + 16) as i64 - Self::size(&k, old.as_deref()))?;
        Ok(result)
    }

    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, StoreError> {
        let limit = limit.clamp(1, MAX_SCAN);
        let now = now_secs();
        let base = full_key(ns, "");
        let start = match after {
            Some(a) if a >= prefix => {
                let mut s = full_key(ns, a);
                s.push(0);
                s
            }
            _ => full_key(ns, prefix),
        };
        let mut page = KvPage::default();
        let wanted = full_key(ns, prefix);
        for item in self.tree.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&wanted) {
                break;
            }
            let Some(value) = live(&v, now) else { continue };
            if page.entries.len() == limit {
                page.next = page.entries.last().map(|e| e.0.clone());
                break;
            }
            let key = String::from_utf8_lossy(&k[base.len()..]).into_owned();
            page.entries.push((key, value.to_vec()));
        }
        Ok(page)
    }

    fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_secs();
        let mut n = 0;
        for item in self.tree.iter() {
            let (k, v) = item?;
            if live(&v, now).is_none() {
                let ns_end = k.iter().position(|&b| b == 0).unwrap_or(0);
                let ns = String::from_utf8_lossy(&k[..ns_end]).into_owned();
                if self
                    .tree
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                    .is_ok()
                {
                    self.add_usage(&ns, -Self::size(&k, Some(&v)))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// In memory, for runs without a server.
#[derive(Default)]
pub struct MemoryKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `new` at `k` (full key of `ns`) unless the namespace's total would pass its
    /// quota.
    fn put(
        map: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        ns: &str,
        k: Vec<u8>,
        new: Vec<u8>,
        limits: &KvLimits,
    ) -> Result<(), StoreError> {
        let old = map.get(&k).map_or(0, |v| (k.len() + v.len()) as u64);
        if Self::total(map, ns) - old + (k.len() + new.len()) as u64 > limits.max_total {
            return Err(over_quota(ns, limits));
        }
        map.insert(k, new);
        Ok(())
    }

    fn total(map: &BTreeMap<Vec<u8>, Vec<u8>>, ns: &str) -> u64 {
        let base = full_key(ns, "");
        map.range(base.clone()..)
            .take_while(|(k, _)| k.starts_with(&base))
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

impl KvStore for MemoryKv {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = now_secs();
        Ok(self
            .map()
            .get(&full_key(ns, key))
            .and_then(|v| live(v, now).map(<[u8]>::to_vec)))
    }

    fn set(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<(), StoreError> {
        let (k, new) = stored(ns, key, value, ttl, limits)?;
        Self::put(&mut self.map(), ns, k, new, limits)
    }

    fn set_if_absent(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<bool, StoreError> {
        let (k, new) = stored(ns, key, value, ttl, limits)?;
        let mut map = self.map();
        if map.get(&k).is_some_and(|v| live(v, now_secs()).is_some()) {
            return Ok(false);
        }
        Self::put(&mut map, ns, k, new, limits)?;
        Ok(true)
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let old = self.map().remove(&full_key(ns, key));
        Ok(old.is_some_and(|v| live(&v, now_secs()).is_some()))
    }

    fn incr(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        limits: &KvLimits,
    ) -> Result<i64, StoreError> {
        check_sizes(key, 8, limits)?;
        let k = full_key(ns, key);
        let now = now_secs();
        let mut map = self.map();
        if !map.contains_key(&k) && Self::total(&map, ns) + (k.len() + 16) as u64 > limits.max_total
        {
            return Err(over_quota(ns, limits));
        }
        let (new, result) = bump(map.get(&k).map(Vec::as_slice), now, ttl, delta);
        map.insert(k, new);
        Ok(result)
    }

    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, StoreError> {
        let limit = limit.clamp(1, MAX_SCAN);
        let now = now_secs();
        let base = full_key(ns, "");
        let wanted = full_key(ns, prefix);
        let map = self.map();
        let mut page = KvPage::default();
        for (k, v) in map.range(wanted.clone()..) {
            if !k.starts_with(&wanted) {
                break;
            }
            let key = String::from_utf8_lossy(&k[base.len()..]).into_owned();
            if after.is_some_and(|a| key.as_str() <= a) {
                continue;
            }
            let Some(value) = live(v, now) else { continue };
            if page.entries.len() == limit {
                page.next = page.entries.last().map(|e| e.0.clone());
                break;
            }
            page.entries.push((key, value.to_vec()));
        }
        Ok(page)
    }

    fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_secs();
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, v| live(v, now).is_some());
        Ok(before - map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(kv: &dyn KvStore) {
        let l = KvLimits {
            max_key: 16,
            max_value: 32,
            max_total: 200,
        };
        kv.set("a", "k1", b"one", None, &l).unwrap();
        kv.set("b", "k1", b"other namespace", None, &l).unwrap();
        assert_eq!(kv.get("a", "k1").unwrap().as_deref(), Some(&b"one"[..]));
        assert!(matches!(
            kv.set("a", "k2", &[0; 33], None, &l),
            Err(StoreError::Quota(_))
        ));
        assert!(matches!(
            kv.set("a", &"k".repeat(17), b"", None, &l),
            Err(StoreError::Quota(_))
        ));
        for i in 0..5 {
            kv.set("a", &format!("p/{i}"), b"v", None, &l).unwrap();
        }
        let p1 = kv.scan("a", "p/", None, 2).unwrap();
        assert_eq!(
            p1.entries.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["p/0", "p/1"]
        );
        let p2 = kv.scan("a", "p/", p1.next.as_deref(), 10).unwrap();
        assert_eq!(p2.entries.len(), 3);
        assert_eq!(p2.next, None);
        assert_eq!(kv.incr("a", "n", 5, None, &l).unwrap(), 5);
        assert_eq!(kv.incr("a", "n", -2, None, &l).unwrap(), 3);
        kv.set("a", "gone", b"x", Some(Duration::from_secs(1)), &l)
            .unwrap();
        assert!(kv.set_if_absent("a", "once", b"first", None, &l).unwrap());
        assert!(!kv.set_if_absent("a", "once", b"second", None, &l).unwrap());
        assert_eq!(kv.get("a", "once").unwrap().as_deref(), Some(&b"first"[..]));
        assert!(
            kv.set_if_absent("a", "brief", b"old", Some(Duration::from_secs(1)), &l)
                .unwrap()
        );
        assert!(kv.get("a", "gone").unwrap().is_some());
        assert_eq!(
            kv.get_many("a", &["k1".into(), "nope".into()]).unwrap(),
            vec![Some(b"one".to_vec()), None]
        );
        assert!(kv.delete("a", "k1").unwrap());
        assert!(!kv.delete("a", "k1").unwrap());
        // The namespace's total is bounded.
        let mut refused = false;
        for i in 0..20 {
            if let Err(StoreError::Quota(_)) = kv.set("a", &format!("f{i}"), &[1; 30], None, &l) {
                refused = true;
                break;
            }
        }
        assert!(refused, "the total quota must stop the namespace growing");
        let counters_refused = (0..50).any(|i| {
            matches!(
                kv.incr("a", &format!("c{i}"), 1, None, &l),
                Err(StoreError::Quota(_))
            )
        });
        assert!(counters_refused, "counters count against the quota too");
        assert!(kv.set("b", "k2", b"b is unaffected", None, &l).is_ok());
        std::thread::sleep(Duration::from_millis(2100));
        assert!(kv.get("a", "gone").unwrap().is_none(), "expired");
        // An expired value counts as absent.
        assert!(kv.set_if_absent("a", "brief", b"new", None, &l).unwrap());
        assert_eq!(kv.get("a", "brief").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(kv.purge_expired().unwrap(), 1);
    }

    #[test]
    fn memory_kv() {
        exercise(&MemoryKv::default());
    }

    #[test]
    fn sled_kv_and_its_usage_accounting() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::SledStores::open(dir.path()).unwrap();
        exercise(s.kv.as_ref());
        // Deleting everything brings the namespace's usage back to zero.
        let page = s.kv.scan("a", "", None, 1000).unwrap();
        for (k, _) in page.entries {
            s.kv.delete("a", &k).unwrap();
        }
        assert_eq!(s.kv.usage("a").unwrap(), 0);
    }
}
