//! `sluice suppression`: a stream's suppression list (the `suppression` plugin's entries).
//! With the server stopped it opens the plugin stores directly; while it runs (sled holds a
//! lock) it goes through the admin API.

use crate::api_client::{Access, ApiClient, local_or_api};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sluice_config::Settings;
use sluice_http::suppress::{self, Origin, Reason};

#[derive(Subcommand)]
pub enum SuppressionCommand {
    /// Suppressed addresses of a stream: address, reason, origin, time.
    List {
        #[arg(long, default_value = "outbound")]
        stream: String,
    },
    /// Suppresses an address (reason manual, origin admin).
    Add {
        address: String,
        #[arg(long, default_value = "outbound")]
        stream: String,
    },
    /// Lets an address receive mail again.
    Remove {
        address: String,
        #[arg(long, default_value = "outbound")]
        stream: String,
    },
    /// The stream's list as CSV on standard output.
    Export {
        #[arg(long, default_value = "outbound")]
        stream: String,
    },
}

fn checked(stream: &str, address: Option<&str>) -> Result<Option<String>> {
    if !suppress::valid_stream(stream) {
        bail!("`{stream}` is not a stream name (1 to 64 of a-z, 0-9, - and _)");
    }
    address
        .map(|a| {
            suppress::normalize_address(a)
                .with_context(|| format!("`{a}` is not an e-mail address"))
        })
        .transpose()
}

pub fn run(settings: &Settings, command: SuppressionCommand) -> Result<()> {
    let dir = settings.data_dir.join("stores");
    match local_or_api(settings, "the plugin stores", &dir, || {
        sluice_store::SledStores::open(&dir)
    })? {
        Access::Local(stores) => offline(&*stores.kv, command),
        Access::Api(api) => online(&api, command),
    }
}

fn offline(kv: &dyn sluice_store::KvStore, command: SuppressionCommand) -> Result<()> {
    match command {
        SuppressionCommand::List { stream } => {
            checked(&stream, None)?;
            let mut after: Option<String> = None;
            loop {
                let (entries, next) = suppress::list(kv, &stream, after.as_deref(), 1000)?;
                for e in entries {
                    println!(
                        "{}  {}  {}  {}",
                        e.address,
                        e.reason.as_str(),
                        e.origin.as_str(),
                        e.time
                    );
                }
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(()),
                }
            }
        }
        SuppressionCommand::Add { address, stream } => {
            let a = checked(&stream, Some(&address))?.expect("checked");
            suppress::add(kv, &stream, &a, Reason::Manual, Origin::Admin)?;
            println!("{a} suppressed on {stream}");
            Ok(())
        }
        SuppressionCommand::Remove { address, stream } => {
            let a = checked(&stream, Some(&address))?.expect("checked");
            if !suppress::remove(kv, &stream, &a)? {
                bail!("{a} is not suppressed on {stream}");
            }
            println!("{a} removed from {stream}");
            Ok(())
        }
        SuppressionCommand::Export { stream } => {
            checked(&stream, None)?;
            print!("{}", suppress::export_csv(kv, &stream)?);
            Ok(())
        }
    }
}

fn online(api: &ApiClient, command: SuppressionCommand) -> Result<()> {
    match command {
        SuppressionCommand::List { stream } => {
            checked(&stream, None)?;
            let mut after: Option<String> = None;
            loop {
                let q = match &after {
                    Some(a) => format!("/suppressions/{stream}?limit=1000&after={a}"),
                    None => format!("/suppressions/{stream}?limit=1000"),
                };
                let page = api.call("GET", &q)?;
                for e in page["entries"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  {}  {}",
                        e["address"].as_str().unwrap_or(""),
                        e["reason"].as_str().unwrap_or(""),
                        e["origin"].as_str().unwrap_or(""),
                        e["time"]
                    );
                }
                match page["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => return Ok(()),
                }
            }
        }
        SuppressionCommand::Add { address, stream } => {
            let a = checked(&stream, Some(&address))?.expect("checked");
            api.call(
                "PUT",
                &format!("/suppressions/{stream}/{a}?reason=manual&origin=admin"),
            )?;
            println!("{a} suppressed on {stream}");
            Ok(())
        }
        SuppressionCommand::Remove { address, stream } => {
            let a = checked(&stream, Some(&address))?.expect("checked");
            api.call("DELETE", &format!("/suppressions/{stream}/{a}"))?;
            println!("{a} removed from {stream}");
            Ok(())
        }
        SuppressionCommand::Export { stream } => {
            checked(&stream, None)?;
            print!(
                "{}",
                api.text("GET", &format!("/suppressions/{stream}/export"))?
            );
            Ok(())
        }
    }
}
