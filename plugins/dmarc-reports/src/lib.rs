//! DMARC aggregate reports by mail (RFC 7489 section 7.2): messages to the report address
//! (`rua=mailto:dmarc-rua@example.com` in the domain's DMARC record) are read at the `data`
//! stage: every attachment that is a report (plain XML, gzip or zip, whatever its declared
//! type) is parsed by `sluice-dmarc` and stored in the key-value namespace `dmarc` (the step
//! must be granted exactly that one: `sluice dmarc` and `/api/v1/dmarc` read it) with the
//! configured retention. The report mail is then dropped (`discard`), or kept for delivery
//! with `keep = true`.
//!
//! Mail to the report address that holds no report is refused with `550 5.6.0` and the
//! reason (`not_a_report = "deliver"` lets it through). A report for a domain outside
//! `domains` (when set) is not stored. A report sent twice is stored once. A store failure
//! answers `451 4.3.0`: the reporter sends it again later.
//!
//! ```toml
//! [[pipeline.step]]
//! name = "dmarc-reports"
//! plugin = "dmarc_reports.wasm"
//! stages = ["data"]
//! on_error = "tempfail"
//! [pipeline.step.capabilities]
//! kv = "dmarc"
//! [pipeline.step.config]
//! addresses = ["dmarc-rua@example.com"]   # empty: every recipient of the chain
//! domains = ["example.com"]               # empty: reports about any domain
//! retention_days = 400
//! ```

use serde::Deserialize;
use sluice_dmarc::{ParseError, Report, keys};
use sluice_plugin_sdk::{Filter, Message, Outcome, Stage, Verdict, export_filter, host};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum NotAReport {
    #[default]
    Reject,
    Deliver,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default = "default_retention")]
    retention_days: u32,
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    not_a_report: NotAReport,
}

fn default_retention() -> u32 {
    400
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
}

/// The largest attachment read (compressed reports are far smaller than their XML).
const MAX_ATTACHMENT: u64 = 32 << 20;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A part that may hold a report: receivers label them inconsistently, so any leaf that is
/// not text meant for people, or whose name says so.
fn candidate(p: &sluice_plugin_sdk::Part) -> bool {
    let t = p.content_type.as_str();
    let named = p.filename.as_deref().is_some_and(|f| {
        let f = f.to_ascii_lowercase();
        f.ends_with(".xml") || f.ends_with(".gz") || f.ends_with(".zip")
    });
    p.size > 0
        && !t.starts_with("multipart/")
        && t != "message/rfc822"
        && (named
            || matches!(
                t,
                "application/gzip"
                    | "application/x-gzip"
                    | "application/zip"
                    | "application/x-zip"
                    | "application/x-zip-compressed"
                    | "application/octet-stream"
                    | "application/xml"
                    | "text/xml"
            ))
}

fn covered(domains: &[String], domain: &str) -> bool {
    domains.is_empty()
        || domains.iter().any(|d| {
            domain == d
                || domain
                    .strip_suffix(d.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
}

enum Stored {
    New(Box<sluice_dmarc::Stored>),
    Duplicate(String),
}

/// Chunks first, then the report, then its index entry: a listed report has its records,
/// and a report is known (duplicate) only once it is complete.
fn store(r: &Report, ttl: u64) -> Result<Stored, host::Error> {
    let id = r.id();
    if host::kv_get(&keys::index(&id))?.is_some() {
        return Ok(Stored::Duplicate(id));
    }
    let chunks = r.chunks();
    for (n, c) in chunks.iter().enumerate() {
        host::kv_set(&keys::chunk(&id, n as u32), c, Some(ttl))?;
    }
    let key = keys::report(&r.domain, r.begin, &id);
    let stored = r.stored(id, chunks.len() as u32, now());
    let value = serde_json::to_vec(&stored).expect("serialises");
    host::kv_set(&key, &value, Some(ttl))?;
    host::kv_set(&keys::index(&stored.id), key.as_bytes(), Some(ttl))?;
    Ok(Stored::New(Box::new(stored)))
}

struct DmarcReports;

impl Filter for DmarcReports {
    const STAGES: &'static [Stage] = &[Stage::Data];

    fn configure(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        if !(1..=3650).contains(&c.retention_days) {
            return Err(format!(
                "retention_days = {}: must be 1 to 3650",
                c.retention_days
            ));
        }
        if let Some(a) = c.addresses.iter().find(|a| !a.contains('@')) {
            return Err(format!("addresses: `{a}` is not an e-mail address"));
        }
        if let Some(d) = c
            .domains
            .iter()
            .find(|d| !sluice_dmarc::valid_domain(&d.to_ascii_lowercase()))
        {
            return Err(format!("domains: `{d}` is not a domain name"));
        }
        Ok(())
    }

    fn on_data(message: &Message) -> Outcome {
        let c = config();
        let addresses: Vec<String> = c.addresses.iter().map(|a| a.to_lowercase()).collect();
        let domains: Vec<String> = c.domains.iter().map(|d| d.to_lowercase()).collect();
        let recipients = message.envelope().recipients;
        let for_reports =
            |r: &String| addresses.is_empty() || addresses.contains(&r.to_lowercase());
        if !recipients.iter().any(for_reports) {
            return Outcome::cont();
        }
        let only_reports = recipients.iter().all(for_reports);

        let mut reports = Vec::new();
        let mut problem: Option<String> = None;
        for p in message.parts().iter().filter(|p| candidate(p)) {
            if p.size > MAX_ATTACHMENT {
                problem.get_or_insert(format!("attachment of {} bytes is too large", p.size));
                continue;
            }
            let content = sluice_plugin_sdk::read_part(message, p.id);
            match sluice_dmarc::extract(&content).and_then(|xml| sluice_dmarc::parse_xml(&xml)) {
                Ok(r) if covered(&domains, &r.domain) => reports.push(r),
                Ok(r) => {
                    problem
                        .get_or_insert(format!("report about {}, not a domain of ours", r.domain));
                }
                // A text or image part labelled octet-stream: keep looking.
                Err(ParseError::NotAnAttachment) => {}
                Err(e) => {
                    problem.get_or_insert(e.to_string());
                }
            }
        }
        if reports.is_empty() {
            let why = problem.unwrap_or_else(|| "no report attachment".into());
            host::log(host::Level::Info, &format!("no DMARC report stored: {why}"));
            return if only_reports && c.not_a_report == NotAReport::Reject {
                Outcome::reject(
                    550,
                    "5.6.0",
                    &format!("no DMARC aggregate report found: {why}"),
                )
            } else {
                Outcome::cont()
            };
        }

        let ttl = u64::from(c.retention_days) * 86_400;
        let mut new = 0;
        for r in &reports {
            match store(r, ttl) {
                Ok(Stored::New(s)) => {
                    new += 1;
                    let t = s.totals;
                    host::log(
                        host::Level::Info,
                        &format!(
                            "DMARC report {} from {} for {}: {} records, {} messages, {} failing DMARC",
                            s.id,
                            r.reporter,
                            r.domain,
                            r.records.len(),
                            t.messages,
                            t.dmarc_fail()
                        ),
                    );
                }
                Ok(Stored::Duplicate(id)) => host::log(
                    host::Level::Info,
                    &format!("DMARC report {id} from {} already stored", r.reporter),
                ),
                Err(e) => {
                    host::log(
                        host::Level::Error,
                        &format!("DMARC report not stored: {e:?}"),
                    );
                    return Outcome::defer(451, "4.3.0", "report not stored, try again later");
                }
            }
        }
        let out = Outcome::cont().set_meta("dmarc.reports", &new.to_string());
        if only_reports && !c.keep {
            out.verdict(Verdict::Discard)
        } else {
            out
        }
    }
}

export_filter!(DmarcReports, reusable);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_cover_their_subdomains_only() {
        let ours = vec!["example.com".to_string()];
        assert!(covered(&ours, "example.com"));
        assert!(covered(&ours, "mail.example.com"));
        assert!(!covered(&ours, "badexample.com"));
        assert!(!covered(&ours, "example.org"));
        assert!(covered(&[], "anything.test"));
    }

    fn part(content_type: &str, filename: Option<&str>, size: u64) -> sluice_plugin_sdk::Part {
        sluice_plugin_sdk::Part {
            id: 1,
            parent: Some(0),
            content_type: content_type.into(),
            disposition: Some("attachment".into()),
            filename: filename.map(str::to_string),
            charset: None,
            size,
        }
    }

    #[test]
    fn report_parts_are_found_by_type_or_name() {
        assert!(candidate(&part("application/gzip", None, 10)));
        assert!(candidate(&part("application/zip", None, 10)));
        assert!(candidate(&part("text/xml", None, 10)));
        assert!(candidate(&part("application/octet-stream", None, 10)));
        assert!(candidate(&part(
            "application/x-unknown",
            Some("r.XML.GZ"),
            10
        )));
        assert!(!candidate(&part("text/plain", Some("readme.txt"), 10)));
        assert!(!candidate(&part("multipart/mixed", None, 0)));
        assert!(!candidate(&part("application/gzip", None, 0)));
    }
}
