//! Archives every message of the chain it is in: the host stores the raw message it already
//! holds (the plugin never copies it) in the server's archive (compressed segments, a search
//! index, a hash chain; `sluice archive`, `/api/v1/archive`), kept `retention_days`.
//!
//! The host records the message's facts itself (queue id, Message-ID, envelope, subject,
//! date, session, TLS, size, metadata: authentication results, the data stage's processing
//! time, `forward.*` from `webhook-forward`); this step adds the direction, the stage, and
//! the values of chosen headers (the spam and virus verdicts earlier steps added). It sets
//! the metadata `archive.id` to the entry's id, so events link to the archive.
//!
//! At the `queued` stage (recommended) mail is archived after its 250, with the host's
//! durable retries. If the archive cannot store a message the step fails and its
//! `on_error` decides: `tempfail` (the default) defers the stage and delivery waits, `skip`
//! lets the message go on unarchived (logged). A retried stage does not store a message
//! twice.
//!
//! ```toml
//! [[pipeline.step]]
//! name = "archive"
//! plugin = "archive.wasm"
//! stages = ["queued"]
//! [pipeline.step.capabilities]
//! blobs = "inbound"            # the archive namespace
//! [pipeline.step.config]
//! retention_days = 45          # 7 to 365
//! direction = "inbound"        # default: inbound on mx listeners, outbound otherwise
//! headers = ["X-Spam-Score", "X-Spam-Status", "X-Virus-Scanned"]
//! ```

use serde::Deserialize;
use sluice_plugin_sdk::{Attribute, Filter, Message, Outcome, Stage, export_filter, host};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_retention")]
    retention_days: u32,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default = "default_headers")]
    headers: Vec<String>,
}

fn default_retention() -> u32 {
    45
}

fn default_headers() -> Vec<String> {
    ["X-Spam-Score", "X-Spam-Status", "X-Virus-Scanned"]
        .map(String::from)
        .to_vec()
}

impl Config {
    fn check(&self) -> Result<(), String> {
        if !(7..=365).contains(&self.retention_days) {
            return Err(format!(
                "retention_days: between 7 and 365, not {}",
                self.retention_days
            ));
        }
        if let Some(d) = &self.direction
            && !matches!(d.as_str(), "inbound" | "outbound")
        {
            return Err(format!("direction: `inbound` or `outbound`, not `{d}`"));
        }
        if self.headers.len() > 32 {
            return Err("headers: at most 32".into());
        }
        if let Some(h) = self
            .headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(format!("headers: `{h}` is not a header name"));
        }
        Ok(())
    }
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
}

fn attribute(key: &str, value: &str) -> Attribute {
    Attribute {
        key: key.into(),
        value: value.into(),
    }
}

fn archive(message: &Message, stage: &str) -> Outcome {
    let c = config();
    let direction = c.direction.clone().unwrap_or_else(|| {
        if message.session().role == "mx" {
            "inbound".into()
        } else {
            "outbound".into()
        }
    });
    let mut attributes = vec![
        attribute("direction", &direction),
        attribute("stage", stage),
    ];
    for name in &c.headers {
        for v in message.header(name) {
            attributes.push(attribute(
                &format!("header.{}", name.to_ascii_lowercase()),
                v.trim(),
            ));
        }
    }
    match host::store_message(message, &attributes, c.retention_days) {
        Ok(id) => Outcome::cont().set_meta("archive.id", &id),
        // The archive failed: the step's on_error decides.
        Err(e) => panic!("archive unavailable: {e:?}"),
    }
}

struct Archive;

impl Filter for Archive {
    const STAGES: &'static [Stage] = &[Stage::Data, Stage::Queued];

    fn configure(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        c.check()
    }

    fn on_data(message: &Message) -> Outcome {
        archive(message, "data")
    }

    fn on_queued(message: &Message) -> Outcome {
        archive(message, "queued")
    }
}

export_filter!(Archive, reusable);
