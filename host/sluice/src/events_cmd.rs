//! `sluice events` (recent events from the history, by kind, recipient and time) and
//! `sluice queue history`. With the server stopped they open the event history
//! (`<data_dir>/history`) directly; while it runs (redb holds a lock) they go through the
//! admin API. Both print the same.

use crate::api_client::{Access, ApiClient, local_or_api};
use anyhow::{Context, Result};
use clap::Args;
use sluice_config::Settings;
use sluice_http::events::EventInfo;
use sluice_queue::{EventQuery, History, Queue, SledQueue};
use std::sync::Arc;

#[derive(Args)]
pub struct EventsArgs {
    /// An event kind: queued, delivered, deferred, bounced, rejected, quarantined, opened,
    /// clicked, unsubscribed, complained, or a plugin's own.
    #[arg(long)]
    kind: Option<String>,
    /// A recipient address (any case).
    #[arg(long)]
    recipient: Option<String>,
    /// From this time: unix seconds, RFC 3339 or YYYY-MM-DD.
    #[arg(long)]
    since: Option<String>,
    /// Older than this event id (paging).
    #[arg(long)]
    before: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print the JSON the API answers instead of lines.
    #[arg(long)]
    json: bool,
}

/// The event history when the server is stopped, else `None` (use the API).
fn open_history(settings: &Settings) -> Result<Option<Arc<History>>> {
    let dir = settings.history_dir();
    let open = || History::open(&dir, settings.delivery.event_history);
    Ok(
        match local_or_api(settings, "the event history", &dir, open)? {
            Access::Local(h) => Some(h),
            Access::Api(_) => None,
        },
    )
}

pub fn run(settings: &Settings, a: EventsArgs) -> Result<()> {
    let since = crate::archive_cmd::time("since", &a.since)?;
    let limit = a.limit;
    if !settings.history_dir().exists() {
        anyhow::bail!(
            "no event history in {} yet",
            settings.history_dir().display()
        );
    }
    let page = match open_history(settings)? {
        Some(history) => {
            let page = history.search(&EventQuery {
                kind: a.kind.clone(),
                recipient: a.recipient.clone(),
                since_ms: since.map(|s| s.saturating_mul(1000)),
                before: a.before.clone(),
                limit: limit as usize,
            })?;
            serde_json::to_value(sluice_http::events::EventPage::from(page))?
        }
        None => {
            let mut params: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("kind", &a.kind),
                ("recipient", &a.recipient),
                ("before", &a.before),
            ] {
                if let Some(v) = v {
                    params.push((k, v.clone()));
                }
            }
            if let Some(s) = since {
                params.push(("since", s.to_string()));
            }
            ApiClient::new(settings)?.get_with("/events", &params)?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    for e in page["events"].as_array().into_iter().flatten() {
        println!("{}", line(e));
    }
    if let Some(next) = page["next"].as_str() {
        eprintln!("more: --before {next}");
    }
    Ok(())
}

/// `sluice queue history ID` with the server stopped: every event of one message, oldest
/// first.
pub fn history_offline(settings: &Settings, queue: &SledQueue, id: &str) -> Result<()> {
    // The queue opened here, so the server is stopped: the history opens here too.
    let dir = settings.history_dir();
    let events = match dir.exists() {
        true => History::open(&dir, settings.delivery.event_history)
            .with_context(|| format!("cannot open the event history in {}", dir.display()))?
            .of_message(id)?,
        false => Vec::new(),
    };
    if events.is_empty() && queue.get(id)?.is_none() {
        anyhow::bail!("no message {id} in the queue or the event history");
    }
    for e in events {
        println!("{}", line(&serde_json::to_value(EventInfo::from(e))?));
    }
    Ok(())
}

/// `sluice queue history ID` through the API of the running server.
pub fn history_online(api: &ApiClient, id: &str) -> Result<()> {
    let h = api.call("GET", &format!("/queue/{id}/history"))?;
    for e in h["events"].as_array().into_iter().flatten() {
        println!("{}", line(e));
    }
    Ok(())
}

/// time, kind, queue id, recipient, reply, remote MTA (TAB separated, one line).
fn line(e: &serde_json::Value) -> String {
    let time = e["time"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let remote = e["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == "remote_mta")
        .and_then(|a| a["value"].as_str())
        .unwrap_or("");
    let field = |k: &str| crate::archive_cmd::clean(e[k].as_str().unwrap_or(""));
    format!(
        "{time}\t{}\t{}\t{}\t{}\t{remote}",
        field("kind"),
        field("queue_id"),
        field("recipient"),
        field("reply"),
    )
}
