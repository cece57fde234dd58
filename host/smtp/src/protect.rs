//! Built-in protection at connect: addresses banned after too many failed AUTH attempts
//! (what Fail2Ban does, without log scraping), and connection rates per client address and
//! per network (/24 for IPv4, /64 for IPv6). Bans outlive a restart when the guard has a
//! file ([`Guard::persistent`]: the server's `<data_dir>/bans.json`, written by
//! [`Guard::save`] within a second of a change); failure counts and rates live in memory.

use sluice_config::ProtectionSettings;
use sluice_queue::now_secs as unix_now;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Banned after failed AUTH attempts, for this much longer.
    Banned(Duration),
    /// Over the per-address connection rate.
    AddressRate,
    /// Over the per-network connection rate.
    NetworkRate,
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Banned(_) => "banned",
            Refusal::AddressRate => "address_rate",
            Refusal::NetworkRate => "network_rate",
        }
    }

    /// The reply the client gets before the connection is closed.
    pub fn reply(&self) -> String {
        match self {
            Refusal::Banned(left) => format!(
                "421 4.7.1 Too many failed authentications from your address; try again in {} s\r\n",
                left.as_secs().max(1)
            ),
            Refusal::AddressRate => {
                "421 4.7.0 Too many connections from your address; try again later\r\n".into()
            }
            Refusal::NetworkRate => {
                "421 4.7.0 Too many connections from your network; try again later\r\n".into()
            }
        }
    }
}

/// Connections counted in the current one-minute window.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

#[derive(Default)]
struct State {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
    bans: HashMap<IpAddr, Instant>,
    per_address: HashMap<IpAddr, Window>,
    per_network: HashMap<IpAddr, Window>,
}

/// Entries kept before expired ones are swept (a flood from many addresses stays bounded).
const SWEEP_AT: usize = 50_000;
const MINUTE: Duration = Duration::from_secs(60);

pub struct Guard {
    cfg: ProtectionSettings,
    state: Mutex<State>,
    /// Where bans are kept across restarts.
    file: Option<PathBuf>,
    /// Bans changed since the last save.
    dirty: AtomicBool,
    /// One save at a time (the periodic saver and the one at shutdown share a temp file).
    saving: Mutex<()>,
}

/// The network an address belongs to for rate limiting: /24 or /64.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

impl Guard {
    pub fn new(cfg: ProtectionSettings) -> Guard {
        Guard {
            cfg,
            state: Mutex::new(State::default()),
            file: None,
            dirty: AtomicBool::new(false),
            saving: Mutex::new(()),
        }
    }

    /// A guard whose bans are kept in `file` (JSON: address → unix seconds the ban ends):
    /// the unexpired ones are loaded now; [`Guard::save`] writes changes. An unreadable
    /// file is logged and replaced at the next change.
    pub fn persistent(cfg: ProtectionSettings, file: PathBuf) -> Guard {
        let mut g = Guard::new(cfg);
        match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<BTreeMap<IpAddr, u64>>(&bytes) {
                Ok(saved) => {
                    let (now, now_unix) = (Instant::now(), unix_now());
                    let mut s = g.state();
                    for (ip, until) in saved.into_iter().filter(|(_, u)| *u > now_unix) {
                        s.bans
                            .insert(ip, now + Duration::from_secs(until - now_unix));
                    }
                    if !s.bans.is_empty() {
                        tracing::info!(bans = s.bans.len(), file = %file.display(), "bans restored");
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "ban list unreadable; starting without it")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the ban list; starting without it")
            }
        }
        g.file = Some(file);
        g
    }

    /// Writes the bans to the guard's file (atomically, synced) when they changed since the
    /// last save; nothing without a file. Blocking: call it off the async workers.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let _one = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let now_unix = unix_now();
        let snapshot: BTreeMap<IpAddr, u64> = self
            .bans()
            .into_iter()
            .map(|(ip, left)| (ip, now_unix + left.as_secs() + 1))
            .collect();
        let bytes = serde_json::to_vec_pretty(&snapshot).expect("bans serialise");
        sluice_core::durable::write_atomic(file, &bytes, 0o600).inspect_err(|_| {
            self.dirty.store(true, Ordering::SeqCst);
        })
    }

    fn changed(&self) {
        if self.file.is_some() {
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a new connection from `ip` may proceed; counts it when it may.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut s = self.state();
        if let Some(&until) = s.bans.get(&ip) {
            if until > now {
                return Err(Refusal::Banned(until - now));
            }
            s.bans.remove(&ip);
            self.changed();
            tracing::info!(client = %ip, "ban expired");
        }
        if s.per_address.len() + s.per_network.len() > SWEEP_AT {
            s.per_address.retain(|_, w| now - w.start < MINUTE);
            s.per_network.retain(|_, w| now - w.start < MINUTE);
        }
        let check = |map: &mut HashMap<IpAddr, Window>, key: IpAddr, limit: u32| {
            if limit == 0 {
                return true;
            }
            let w = map.entry(key).or_insert(Window {
                start: now,
                count: 0,
            });
            if now - w.start >= MINUTE {
                *w = Window {
                    start: now,
                    count: 0,
                };
            }
            if w.count >= limit {
                return false;
            }
            w.count += 1;
            true
        };
        let State {
            per_address,
            per_network,
            ..
        } = &mut *s;
        if !check(per_address, ip, self.cfg.connections_per_minute) {
            return Err(Refusal::AddressRate);
        }
        if !check(
            per_network,
            network(ip),
            self.cfg.network_connections_per_minute,
        ) {
            return Err(Refusal::NetworkRate);
        }
        Ok(())
    }

    /// Records a failed AUTH; returns true when it bans the address.
    pub fn auth_failed(&self, ip: IpAddr) -> bool {
        if self.cfg.auth_failures == 0 || self.cfg.ban_for.is_zero() {
            return false;
        }
        let now = Instant::now();
        let mut s = self.state();
        if s.failures.len() > SWEEP_AT {
            let window = self.cfg.auth_window;
            s.failures
                .retain(|_, f| f.back().is_some_and(|t| now - *t < window));
        }
        let f = s.failures.entry(ip).or_default();
        f.push_back(now);
        while f.front().is_some_and(|t| now - *t >= self.cfg.auth_window) {
            f.pop_front();
        }
        if f.len() < self.cfg.auth_failures as usize {
            return false;
        }
        s.failures.remove(&ip);
        s.bans.insert(ip, now + self.cfg.ban_for);
        self.changed();
        tracing::warn!(client = %ip, ban_for = ?self.cfg.ban_for, "address banned after failed authentications");
        true
    }

    /// Banned addresses and how long each ban has left.
    pub fn bans(&self) -> Vec<(IpAddr, Duration)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .state()
            .bans
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(ip, until)| (*ip, *until - now))
            .collect();
        v.sort();
        v
    }

    /// Lifts a ban; false when the address was not banned.
    pub fn lift(&self, ip: IpAddr) -> bool {
        let mut s = self.state();
        s.failures.remove(&ip);
        let lifted = s.bans.remove(&ip).is_some_and(|u| u > Instant::now());
        if lifted {
            self.changed();
            tracing::info!(client = %ip, "ban lifted by the operator");
        }
        lifted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(auth_failures: u32, per_ip: u32, per_net: u32) -> Guard {
        Guard::new(ProtectionSettings {
            auth_failures,
            auth_window: Duration::from_secs(600),
            ban_for: Duration::from_secs(3600),
            connections_per_minute: per_ip,
            network_connections_per_minute: per_net,
        })
    }

    #[test]
    fn failures_ban_and_lift() {
        let g = guard(3, 0, 0);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!g.auth_failed(ip) && !g.auth_failed(ip));
        assert!(g.admit(ip).is_ok());
        assert!(g.auth_failed(ip));
        assert!(matches!(g.admit(ip), Err(Refusal::Banned(_))));
        assert!(g.admit("192.0.2.8".parse().unwrap()).is_ok());
        assert_eq!(g.bans().len(), 1);
        assert!(g.lift(ip));
        assert!(g.admit(ip).is_ok());
        assert!(!g.lift(ip));
    }

    #[test]
    fn rates_per_address_and_network() {
        let g = guard(0, 2, 3);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(g.admit(a).is_ok() && g.admit(a).is_ok());
        assert_eq!(g.admit(a), Err(Refusal::AddressRate));
        assert!(g.admit(b).is_ok());
        assert_eq!(g.admit(b), Err(Refusal::NetworkRate));
        assert!(g.admit("203.0.113.9".parse().unwrap()).is_ok());
        assert!(!g.auth_failed(a), "banning is off with auth_failures = 0");
    }
}
