//! DMARC aggregate reports (RFC 7489 appendix C, and DMARCbis's namespaced form): the
//! report model, how the `dmarc-reports` plugin keeps reports in its key-value namespace,
//! and the summary per domain and day that `sluice dmarc report` and the admin API show.
//!
//! With the `parse` feature (the plugin's build, wasm32-wasip2): reading a report from the
//! attachment the receivers send, plain XML, gzip (`.xml.gz`) or zip (`.zip`).
//!
//! # Storage (namespace [`NAMESPACE`])
//! - `d/<domain>/<begin, 10 digits>/<id>`: a [`Stored`] report (JSON): who sent it, the
//!   period, the published policy and the [`Totals`]; listed in domain, then time order.
//! - `c/<id>/<n, 5 digits>`: the report's records, a JSON array per chunk of at most
//!   [`CHUNK_BYTES`] (the namespace's default value limit is 64 KiB).
//! - `i/<id>`: the `d/` key of report `id`, to find it by id.
//!
//! `id` is 16 hex digits of the SHA-256 of the reporter (name and address), report id and
//! domain, so a report sent
//! twice is stored once. Chunks are written first and the index last: a listed report has
//! its records. Every key carries the policy's retention as its TTL.

#[cfg(feature = "parse")]
mod parse;

#[cfg(feature = "parse")]
pub use parse::{MAX_XML, ParseError, extract, parse_xml};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// The key-value namespace the plugin must be granted (the host's API reads it).
pub const NAMESPACE: &str = "dmarc";

/// Largest chunk of records, in bytes of JSON.
pub const CHUNK_BYTES: usize = 48 * 1024;

/// The policy the domain published, as the reporter saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Policy {
    /// `none`, `quarantine` or `reject`.
    pub p: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pct: Option<u8>,
    /// Alignment modes, `r` or `s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adkim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspf: Option<String>,
}

/// One raw DKIM or SPF result of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthResult {
    pub domain: String,
    /// `pass`, `fail`, `none`, `neutral`, `temperror`, ...
    pub result: String,
    /// The DKIM selector, or the SPF scope (`mfrom`, `helo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// One row: messages from one source address with the same results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Record {
    pub source_ip: String,
    pub count: u64,
    /// What the receiver did: `none`, `quarantine`, `reject`.
    pub disposition: String,
    /// DMARC's view (aligned): `pass` or `fail`.
    pub dkim: String,
    pub spf: String,
    /// Why the receiver overrode the policy (`forwarded`, `local_policy`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub header_from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_to: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dkim_results: Vec<AuthResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spf_results: Vec<AuthResult>,
}

impl Record {
    /// DMARC passes when aligned DKIM or aligned SPF passes.
    pub fn dmarc_pass(&self) -> bool {
        self.dkim == "pass" || self.spf == "pass"
    }
}

/// A parsed aggregate report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `org_name`: `google.com`, `Yahoo`, `Enterprise Outlook`, ...
    pub reporter: String,
    pub reporter_email: String,
    pub report_id: String,
    /// Unix seconds.
    pub begin: u64,
    pub end: u64,
    /// The published policy's domain, lowercase.
    pub domain: String,
    pub policy: Policy,
    pub records: Vec<Record>,
    /// Records left out because they could not be read (no source address, no count).
    pub skipped: u32,
}

/// Sums over a report's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Totals {
    pub messages: u64,
    pub dmarc_pass: u64,
    /// Messages whose aligned DKIM passed.
    pub dkim_aligned: u64,
    /// Messages whose aligned SPF passed.
    pub spf_aligned: u64,
    /// Messages the receiver quarantined or rejected.
    pub quarantined: u64,
    pub rejected: u64,
    /// Distinct source addresses.
    pub sources: u64,
}

impl Totals {
    pub fn dmarc_fail(&self) -> u64 {
        self.messages - self.dmarc_pass
    }
}

/// What is kept of a report besides its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stored {
    pub id: String,
    pub reporter: String,
    pub reporter_email: String,
    pub report_id: String,
    /// Unix seconds.
    pub begin: u64,
    pub end: u64,
    pub domain: String,
    pub policy: Policy,
    pub totals: Totals,
    /// Chunks of records (`c/<id>/<n>`).
    pub chunks: u32,
    pub skipped: u32,
    /// When it arrived, unix seconds.
    pub received: u64,
}

impl Report {
    /// 16 hex digits naming the report: the same report sent twice has the same id.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.reporter_email,
            &self.reporter,
            &self.report_id,
            &self.domain,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut sources = std::collections::BTreeSet::new();
        for r in &self.records {
            t.messages += r.count;
            if r.dmarc_pass() {
                t.dmarc_pass += r.count;
            }
            if r.dkim == "pass" {
                t.dkim_aligned += r.count;
            }
            if r.spf == "pass" {
                t.spf_aligned += r.count;
            }
            match r.disposition.as_str() {
                "quarantine" => t.quarantined += r.count,
                "reject" => t.rejected += r.count,
                _ => {}
            }
            sources.insert(r.source_ip.as_str());
        }
        t.sources = sources.len() as u64;
        t
    }

    /// The records as JSON chunks of at most [`CHUNK_BYTES`] (a single larger record alone).
    pub fn chunks(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = b"[".to_vec();
        for r in &self.records {
            let one = serde_json::to_vec(r).expect("a record serialises");
            if cur.len() > 1 && cur.len() + one.len() + 2 > CHUNK_BYTES {
                cur.push(b']');
                out.push(std::mem::replace(&mut cur, b"[".to_vec()));
            }
            if cur.len() > 1 {
                cur.push(b',');
            }
            cur.extend_from_slice(&one);
        }
        if cur.len() > 1 || out.is_empty() {
            cur.push(b']');
            out.push(cur);
        }
        out
    }

    /// What is stored under the `d/` key (`id` is [`Report::id`]), with `chunks` chunks of
    /// records.
    pub fn stored(&self, id: String, chunks: u32, received: u64) -> Stored {
        Stored {
            id,
            reporter: self.reporter.clone(),
            reporter_email: self.reporter_email.clone(),
            report_id: self.report_id.clone(),
            begin: self.begin,
            end: self.end,
            domain: self.domain.clone(),
            policy: self.policy.clone(),
            totals: self.totals(),
            chunks,
            skipped: self.skipped,
            received,
        }
    }
}

/// The namespace's keys.
pub mod keys {
    /// A report's main entry.
    pub fn report(domain: &str, begin: u64, id: &str) -> String {
        format!("d/{domain}/{begin:010}/{id}")
    }

    /// Prefix of every report, or of one domain's.
    pub fn reports(domain: Option<&str>) -> String {
        match domain {
            Some(d) => format!("d/{d}/"),
            None => "d/".into(),
        }
    }

    /// The scan cursor that starts a domain's listing at reports beginning at `since`.
    pub fn since(domain: &str, since: u64) -> String {
        format!("d/{domain}/{since:010}")
    }

    pub fn index(id: &str) -> String {
        format!("i/{id}")
    }

    pub fn chunk(id: &str, n: u32) -> String {
        format!("c/{id}/{n:05}")
    }
}

/// A domain as the plugin stores it: lowercase letters, digits, `-`, `_` and dots, 1 to 253
/// bytes (no `/`, so keys stay unambiguous).
pub fn valid_domain(d: &str) -> bool {
    (1..=253).contains(&d.len())
        && d.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// A report id as [`Report::id`] makes them.
pub fn valid_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The latest period time a report may name (the year 2286: ten digits, as the keys store it).
pub const MAX_TIME: u64 = 9_999_999_999;

/// The UTC day of a unix time, `YYYY-MM-DD` (times past [`MAX_TIME`] count as it).
pub fn day(unix: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.min(MAX_TIME));
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// Reports of one domain whose period begins on one UTC day, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DaySummary {
    pub domain: String,
    /// `YYYY-MM-DD` (UTC), the day the reported periods begin.
    pub day: String,
    pub reports: u64,
    /// The reporters' names, sorted.
    pub reporters: Vec<String>,
    pub messages: u64,
    pub dmarc_pass: u64,
    pub dmarc_fail: u64,
    pub dkim_aligned: u64,
    pub spf_aligned: u64,
    pub quarantined: u64,
    pub rejected: u64,
}

/// The summary per domain and day (domain, then day order).
pub fn summarise<'a>(reports: impl IntoIterator<Item = &'a Stored>) -> Vec<DaySummary> {
    let mut s = Summariser::default();
    for r in reports {
        s.add(r);
    }
    s.finish()
}

/// [`summarise`] a report at a time, so that a long range never has to be held whole.
#[derive(Default)]
pub struct Summariser {
    days: BTreeMap<(String, String), DaySummary>,
}

impl Summariser {
    pub fn add(&mut self, r: &Stored) {
        let day = day(r.begin);
        let s = self
            .days
            .entry((r.domain.clone(), day.clone()))
            .or_insert_with(|| DaySummary {
                domain: r.domain.clone(),
                day,
                ..DaySummary::default()
            });
        s.reports += 1;
        if let Err(i) = s.reporters.binary_search(&r.reporter) {
            s.reporters.insert(i, r.reporter.clone());
        }
        let t = &r.totals;
        s.messages += t.messages;
        s.dmarc_pass += t.dmarc_pass;
        s.dmarc_fail += t.dmarc_fail();
        s.dkim_aligned += t.dkim_aligned;
        s.spf_aligned += t.spf_aligned;
        s.quarantined += t.quarantined;
        s.rejected += t.rejected;
    }

    /// The summaries by domain, then day.
    pub fn finish(self) -> Vec<DaySummary> {
        self.days.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ip: &str, count: u64, dkim: &str, spf: &str, disposition: &str) -> Record {
        Record {
            source_ip: ip.into(),
            count,
            disposition: disposition.into(),
            dkim: dkim.into(),
            spf: spf.into(),
            reasons: vec![],
            header_from: "example.com".into(),
            envelope_from: None,
            envelope_to: None,
            dkim_results: vec![],
            spf_results: vec![],
        }
    }

    fn report(reporter: &str, id: &str, begin: u64, records: Vec<Record>) -> Report {
        Report {
            reporter: reporter.into(),
            reporter_email: format!("noreply@{reporter}"),
            report_id: id.into(),
            begin,
            end: begin + 86_399,
            domain: "example.com".into(),
            policy: Policy {
                p: "none".into(),
                ..Policy::default()
            },
            records,
            skipped: 0,
        }
    }

    #[test]
    fn totals_count_messages_not_rows() {
        let r = report(
            "google.com",
            "1",
            0,
            vec![
                record("192.0.2.1", 10, "pass", "fail", "none"),
                record("192.0.2.1", 3, "fail", "pass", "none"),
                record("198.51.100.7", 5, "fail", "fail", "quarantine"),
                record("198.51.100.8", 2, "fail", "fail", "reject"),
            ],
        );
        let t = r.totals();
        assert_eq!(
            t,
            Totals {
                messages: 20,
                dmarc_pass: 13,
                dkim_aligned: 10,
                spf_aligned: 3,
                quarantined: 5,
                rejected: 2,
                sources: 3,
            }
        );
        assert_eq!(t.dmarc_fail(), 7);
    }

    #[test]
    fn ids_name_reporter_report_and_domain() {
        let a = report("google.com", "1", 0, vec![]);
        let mut b = a.clone();
        b.records
            .push(record("192.0.2.1", 1, "pass", "pass", "none"));
        assert_eq!(a.id(), b.id(), "same report, same id");
        assert!(valid_id(&a.id()), "{}", a.id());
        let mut c = a.clone();
        c.report_id = "2".into();
        assert_ne!(a.id(), c.id());
        let mut d = a.clone();
        d.domain = "example.org".into();
        assert_ne!(a.id(), d.id());
    }

    #[test]
    fn chunks_hold_every_record_within_the_bound() {
        let records: Vec<Record> = (0..3000)
            .map(|i| {
                record(
                    &format!("10.0.{}.{}", i / 256, i % 256),
                    1,
                    "pass",
                    "pass",
                    "none",
                )
            })
            .collect();
        let r = report("google.com", "1", 0, records.clone());
        let chunks = r.chunks();
        assert!(chunks.len() > 1, "3000 records fit in one chunk?");
        let mut back = Vec::new();
        for c in &chunks {
            assert!(c.len() <= CHUNK_BYTES, "chunk of {} bytes", c.len());
            back.extend(serde_json::from_slice::<Vec<Record>>(c).unwrap());
        }
        assert_eq!(back, records);
        let empty = report("google.com", "1", 0, vec![]).chunks();
        assert_eq!(empty, vec![b"[]".to_vec()]);
    }

    #[test]
    fn summary_is_per_domain_and_utc_day() {
        let day1 = 1_700_006_400; // 2023-11-15T00:00:00Z
        let reports = [
            report(
                "google.com",
                "1",
                day1,
                vec![record("192.0.2.1", 10, "pass", "pass", "none")],
            ),
            report(
                "Yahoo",
                "a",
                day1 + 3600,
                vec![record("192.0.2.9", 4, "fail", "fail", "reject")],
            ),
            report(
                "google.com",
                "2",
                day1 + 86_400,
                vec![record("192.0.2.1", 1, "fail", "fail", "none")],
            ),
        ];
        let stored: Vec<Stored> = reports.iter().map(|r| r.stored(r.id(), 1, 0)).collect();
        let s = summarise(&stored);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].day, "2023-11-15");
        assert_eq!(s[0].reports, 2);
        assert_eq!(
            s[0].reporters,
            vec!["Yahoo".to_string(), "google.com".into()]
        );
        assert_eq!(
            (s[0].messages, s[0].dmarc_pass, s[0].dmarc_fail),
            (14, 10, 4)
        );
        assert_eq!(s[0].rejected, 4);
        assert_eq!(s[1].day, "2023-11-16");
        assert_eq!((s[1].messages, s[1].dmarc_fail), (1, 1));
    }

    #[test]
    fn keys_sort_by_domain_then_time() {
        let a = keys::report("example.com", 99, "00");
        let b = keys::report("example.com", 100, "00");
        assert!(a < b);
        assert!(keys::since("example.com", 100) < b);
        assert!(keys::since("example.com", 100) > a);
        assert!(valid_domain("mail-1.example.com"));
        assert!(!valid_domain("Example.com"));
        assert!(!valid_domain("a/b"));
        assert!(!valid_domain(""));
    }
}
