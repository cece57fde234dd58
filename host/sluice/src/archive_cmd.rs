//! `sluice archive`: search the message archive, show an entry, write out its raw message,
//! check the hash chain. With the server stopped it opens the archive directly; while it
//! runs (sled holds a lock) it goes through the admin API. Both print the same.

use crate::api_client::{Access, ApiClient, local_or_api};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sluice_config::Settings;
use sluice_http::archive::{ArchiveEntry, ArchivePage, VerifyReport};
use std::io::Write;

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// Archived messages matching every given criterion, newest first: id, time, sender,
    /// recipients, subject (TAB separated).
    Search(SearchArgs),
    /// One entry's metadata, one `key: value` per line.
    Show { id: u64 },
    /// One entry's raw message (checked against its SHA-256), to standard output or a file.
    Raw {
        id: u64,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// Checks the hash chain and every stored message; exits with status 1 on a problem.
    Verify,
}

#[derive(Args)]
pub struct SearchArgs {
    /// Envelope sender, or `@domain`.
    #[arg(long)]
    sender: Option<String>,
    /// A recipient, or `@domain`.
    #[arg(long)]
    recipient: Option<String>,
    /// Words that must all be in the subject.
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long)]
    queue_id: Option<String>,
    /// The blob namespace the policy stored into.
    #[arg(long)]
    namespace: Option<String>,
    /// From this time: unix seconds, RFC 3339 or YYYY-MM-DD.
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms).
    #[arg(long)]
    until: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Older than this id (paging).
    #[arg(long)]
    before: Option<u64>,
    /// Print the JSON the API answers instead of lines.
    #[arg(long)]
    json: bool,
}

pub fn run(settings: &Settings, command: ArchiveCommand) -> Result<()> {
    let dir = settings.data_dir.join("archive");
    if !dir.exists() {
        bail!("no archive in {} yet", dir.display());
    }
    match local_or_api(settings, "the archive", &dir, || {
        sluice_archive::Archive::open(&dir)
    })? {
        Access::Local(archive) => offline(&archive, command),
        Access::Api(api) => online(&api, command),
    }
}

pub(crate) fn time(name: &str, v: &Option<String>) -> Result<Option<u64>> {
    v.as_ref()
        .map(|s| {
            sluice_archive::parse_time(s).with_context(|| {
                format!("--{name}: `{s}` is not unix seconds, RFC 3339 or YYYY-MM-DD")
            })
        })
        .transpose()
}

fn offline(archive: &sluice_archive::Archive, command: ArchiveCommand) -> Result<()> {
    match command {
        ArchiveCommand::Search(a) => {
            let page = archive.search(&sluice_archive::Query {
                namespace: a.namespace.clone(),
                sender: a.sender.clone(),
                recipient: a.recipient.clone(),
                subject: a.subject.clone(),
                message_id: a.message_id.clone(),
                queue_id: a.queue_id.clone(),
                since: time("since", &a.since)?,
                until: time("until", &a.until)?,
                before: a.before,
                limit: a.limit as usize,
            })?;
            print_page(&serde_json::to_value(ArchivePage::from(page))?, a.json)
        }
        ArchiveCommand::Show { id } => match archive.entry(id)? {
            Some(e) => print_entry(&serde_json::to_value(ArchiveEntry::from(e))?),
            None => bail!("no archived message {id}"),
        },
        ArchiveCommand::Raw { id, output } => match archive.get(id)? {
            Some((_, raw)) => write_raw(&raw, output),
            None => bail!("no archived message {id}"),
        },
        ArchiveCommand::Verify => print_verification(&serde_json::to_value(VerifyReport::from(
            archive.verify()?,
        ))?),
    }
}

fn online(api: &ApiClient, command: ArchiveCommand) -> Result<()> {
    match command {
        ArchiveCommand::Search(a) => {
            let mut params: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
            for (k, v) in [
                ("sender", &a.sender),
                ("recipient", &a.recipient),
                ("subject", &a.subject),
                ("message_id", &a.message_id),
                ("queue_id", &a.queue_id),
                ("namespace", &a.namespace),
            ] {
                if let Some(v) = v {
                    params.push((k, v.clone()));
                }
            }
            for (k, v) in [
                ("since", time("since", &a.since)?),
                ("until", time("until", &a.until)?),
            ] {
                if let Some(v) = v {
                    params.push((k, v.to_string()));
                }
            }
            if let Some(b) = a.before {
                params.push(("before", b.to_string()));
            }
            print_page(&api.get_with("/archive", &params)?, a.json)
        }
        ArchiveCommand::Show { id } => print_entry(&api.call("GET", &format!("/archive/{id}"))?),
        ArchiveCommand::Raw { id, output } => {
            write_raw(&api.bytes("GET", &format!("/archive/{id}/raw"))?, output)
        }
        ArchiveCommand::Verify => {
            // The server verifies in the background; wait for its outcome.
            let mut status = api.call("POST", "/archive/verify")?;
            while status["state"] == "running" {
                std::thread::sleep(std::time::Duration::from_millis(500));
                status = api.call("GET", "/archive/verify")?;
            }
            match status["state"].as_str() {
                Some("done") => print_verification(&status["report"]),
                _ => bail!(
                    "the verification failed: {}",
                    status["error"].as_str().unwrap_or("no reason given")
                ),
            }
        }
    }
}

fn print_page(page: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(page)?);
        return Ok(());
    }
    for e in page["entries"].as_array().into_iter().flatten() {
        let created = e["created"]
            .as_i64()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let recipients: Vec<&str> = e["recipients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        println!(
            "{}\t{created}\t{}\t{}\t{}",
            e["id"],
            e["sender"].as_str().unwrap_or(""),
            recipients.join(","),
            clean(e["subject"].as_str().unwrap_or(""))
        );
    }
    if let Some(next) = page["next"].as_u64() {
        eprintln!("more: --before {next}");
    }
    Ok(())
}

/// One line whatever the subject holds.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn print_entry(e: &serde_json::Value) -> Result<()> {
    for k in ["id", "namespace", "created", "expires", "size", "sha256"] {
        let v = &e[k];
        println!(
            "{k}: {}",
            v.as_str().map_or_else(|| v.to_string(), str::to_string)
        );
    }
    for a in e["attributes"].as_array().into_iter().flatten() {
        println!(
            "{}: {}",
            a["key"].as_str().unwrap_or(""),
            clean(a["value"].as_str().unwrap_or(""))
        );
    }
    Ok(())
}

fn write_raw(raw: &[u8], output: Option<std::path::PathBuf>) -> Result<()> {
    match output {
        Some(path) => {
            std::fs::write(&path, raw).with_context(|| format!("cannot write {}", path.display()))
        }
        None => Ok(std::io::stdout().lock().write_all(raw)?),
    }
}

fn print_verification(v: &serde_json::Value) -> Result<()> {
    for p in v["problems"].as_array().into_iter().flatten() {
        println!("problem: {}", p.as_str().unwrap_or(""));
    }
    println!(
        "{} messages ({} bytes) and {} purged entries checked",
        v["messages"], v["bytes"], v["tombstones"]
    );
    if let (Some(id), Some(chain)) = (v["head_id"].as_u64(), v["head_chain"].as_str()) {
        println!("head: entry {id}, chain {chain}");
    }
    if v["ok"].as_bool() != Some(true) {
        bail!("the archive failed verification");
    }
    println!("ok");
    Ok(())
}
