//! `sluice dmarc`: the DMARC aggregate reports the `dmarc-reports` plugin stored, summed per
//! domain and day, listed, or one shown with its records. With the server stopped it opens
//! the plugin stores directly; while it runs, it goes through the admin API.

use crate::api_client::{Access, ApiClient, local_or_api};
use crate::archive_cmd::time;
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use sluice_config::Settings;
use sluice_http::dmarc::{self, Filter, ReportDetail, ReportPage, Summary};
use sluice_store::KvStore;

#[derive(Args, Clone)]
pub struct FilterArgs {
    /// Only reports about this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Reports whose period begins at or after this time (unix seconds, RFC 3339 or
    /// YYYY-MM-DD).
    #[arg(long)]
    since: Option<String>,
    /// Reports whose period begins at or before this time.
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter> {
        let f = Filter {
            domain: self.domain.as_ref().map(|d| d.trim().to_lowercase()),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
        };
        if let Err(m) = f.check() {
            bail!("{m}");
        }
        Ok(f)
    }

    fn params(f: &Filter) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(d) = &f.domain {
            p.push(("domain", d.clone()));
        }
        if let Some(s) = f.since {
            p.push(("since", s.to_string()));
        }
        if let Some(u) = f.until {
            p.push(("until", u.to_string()));
        }
        p
    }
}

#[derive(Subcommand)]
pub enum DmarcCommand {
    /// Per domain and day (UTC, the reported periods' beginning): reports, messages, DMARC
    /// pass and fail, aligned DKIM and SPF passes, quarantined and rejected, reporters.
    Report {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print the JSON the API answers instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The reports: id, domain, period, reporter, messages, DMARC failures.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// One report with its records (per source address: count, disposition, DKIM, SPF).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(settings: &Settings, command: DmarcCommand) -> Result<()> {
    let dir = settings.data_dir.join("stores");
    let access = local_or_api(settings, "the plugin stores", &dir, || {
        sluice_store::SledStores::open(&dir)
    })?;
    let src = match &access {
        Access::Local(stores) => Source::Local(&*stores.kv),
        Access::Api(a) => Source::Api(a),
    };
    match command {
        DmarcCommand::Report { filter, json } => {
            let f = filter.filter()?;
            let s: Summary = match src {
                Source::Local(kv) => dmarc::summary(kv, &f)?,
                Source::Api(api) => serde_json::from_value(
                    api.get_with("/dmarc/summary", &FilterArgs::params(&f))?,
                )?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_summary(&s);
            }
        }
        DmarcCommand::List { filter, limit } => {
            let f = filter.filter()?;
            let mut after: Option<String> = None;
            let mut left = limit as usize;
            while left > 0 {
                let page = fetch_page(&src, &f, after.as_deref(), left)?;
                left -= page.reports.len();
                for r in &page.reports {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        r.id,
                        r.domain,
                        sluice_dmarc::day(r.begin),
                        r.reporter,
                        r.totals.messages,
                        r.totals.dmarc_fail()
                    );
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        DmarcCommand::Show { id, json } => {
            if !sluice_dmarc::valid_id(&id) {
                bail!(
                    "`{id}` is not a report id (16 lowercase hex digits, from `sluice dmarc list`)"
                );
            }
            let d: ReportDetail = match src {
                Source::Local(kv) => match dmarc::get(kv, &id)? {
                    Some(d) => d,
                    None => bail!("no DMARC report {id}"),
                },
                Source::Api(api) => {
                    serde_json::from_value(api.call("GET", &format!("/dmarc/reports/{id}"))?)?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_report(&d);
            }
        }
    }
    Ok(())
}

/// Where the reports are read: the stores themselves, or the running server's API.
enum Source<'a> {
    Local(&'a dyn KvStore),
    Api(&'a ApiClient),
}

fn fetch_page(
    src: &Source<'_>,
    f: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<ReportPage> {
    let limit = limit.min(1000);
    Ok(match src {
        Source::Local(kv) => dmarc::list(*kv, f, after, limit)?,
        Source::Api(api) => {
            let mut p = FilterArgs::params(f);
            p.push(("limit", limit.to_string()));
            if let Some(a) = after {
                p.push(("after", a.to_string()));
            }
            serde_json::from_value(api.get_with("/dmarc/reports", &p)?)?
        }
    })
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn print_summary(s: &Summary) {
    if s.days.is_empty() {
        println!("no DMARC reports");
        return;
    }
    let w = s
        .days
        .iter()
        .map(|d| d.domain.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:w$}  {:10}  {:>7}  {:>9}  {:>9}  {:>9}  {:>6}  {:>9}  {:>9}  {:>9}  {:>9}  reporters",
        "domain",
        "day",
        "reports",
        "messages",
        "pass",
        "fail",
        "fail%",
        "dkim",
        "spf",
        "quarant.",
        "rejected"
    );
    for d in &s.days {
        println!(
            "{:w$}  {:10}  {:>7}  {:>9}  {:>9}  {:>9}  {:>6}  {:>9}  {:>9}  {:>9}  {:>9}  {}",
            d.domain,
            d.day,
            d.reports,
            d.messages,
            d.dmarc_pass,
            d.dmarc_fail,
            percent(d.dmarc_fail, d.messages),
            d.dkim_aligned,
            d.spf_aligned,
            d.quarantined,
            d.rejected,
            d.reporters.join(", ")
        );
    }
}

fn print_report(d: &ReportDetail) {
    let r = &d.report;
    println!("id:        {}", r.id);
    println!("reporter:  {} <{}>", r.reporter, r.reporter_email);
    println!("report id: {}", r.report_id);
    println!("domain:    {}", r.domain);
    println!(
        "period:    {} .. {}",
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.begin)
        ),
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.end)
        )
    );
    let p = &r.policy;
    println!(
        "policy:    p={}{}{}",
        p.p,
        p.sp.as_ref()
            .map(|s| format!(" sp={s}"))
            .unwrap_or_default(),
        p.pct.map(|s| format!(" pct={s}")).unwrap_or_default()
    );
    println!(
        "messages:  {} ({} failing DMARC, {} quarantined, {} rejected) from {} sources",
        r.totals.messages,
        r.totals.dmarc_fail(),
        r.totals.quarantined,
        r.totals.rejected,
        r.totals.sources
    );
    if r.skipped > 0 {
        println!("skipped:   {} unreadable records", r.skipped);
    }
    println!();
    println!("source\tcount\tdisposition\tdkim\tspf\theader_from\tdkim results\tspf results");
    for rec in &d.records {
        let results = |v: &[sluice_dmarc::AuthResult]| {
            v.iter()
                .map(|a| format!("{}={}", a.domain, a.result))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            rec.source_ip,
            rec.count,
            rec.disposition,
            rec.dkim,
            rec.spf,
            rec.header_from,
            results(&rec.dkim_results),
            results(&rec.spf_results)
        );
    }
}
