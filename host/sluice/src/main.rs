//! The `sluice` command: runs the MTA and manages its configuration, queue and users.
//!
//! # Layout
//! - `main.rs`: the command line (clap) and `serve`.
//! - `queue_cmd.rs`: `sluice queue list|show|retry|delete`.
//! - `archive_cmd.rs`: `sluice archive search|show|raw|verify`.
//! - `events_cmd.rs`: `sluice events` and `sluice queue history` (the event history).
//! - `trace.rs`: `sluice trace`, one message through a policy offline.

mod api_client;
mod archive_cmd;
mod dmarc_cmd;
mod events_cmd;
mod queue_cmd;
mod spam_cmd;
mod suppression_cmd;
mod trace;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sluice_config::{EMBEDDED_DEFAULT, EMBEDDED_NAME, Settings};
use sluice_core::{Fixed, PassThrough};
use sluice_plugin::WasmPipeline;
use sluice_queue::{Queue, SledQueue};
use sluice_smtp::{ServerContext, Users};
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice mail transfer agent")]
struct Cli {
    /// Configuration file; without it, the embedded default (listeners on 127.0.0.1:2525
    /// and :2587, data in ./data).
    #[arg(long, short, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on standard error: `human`, or `json` (one object per line, for log
    /// shippers).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the MTA.
    Serve,
    /// Checks the configuration and reports every problem.
    CheckConfig,
    /// Inspects and changes the queue (directly with the server stopped, through its API
    /// while it runs).
    Queue {
        #[command(subcommand)]
        command: queue_cmd::QueueCommand,
    },
    /// Manages SMTP AUTH users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Prints the embedded default configuration.
    DefaultConfig,
    /// Runs one message through a policy offline and shows what each step did.
    Trace(trace::TraceArgs),
    /// Tells the running server to reload its policies (same as SIGHUP).
    Reload,
    /// Manages the admin API's keys (the running server sees changes at once).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// A stream's suppression list (the `suppression` plugin's entries).
    Suppression {
        #[command(subcommand)]
        command: suppression_cmd::SuppressionCommand,
    },
    /// Recent events from the history (kept `[delivery] event_history`, default 45 days),
    /// newest first: time, kind, queue id, recipient, reply, remote MTA (TAB separated).
    Events(events_cmd::EventsArgs),
    /// The message archive: search, show, raw message, verify the hash chain.
    Archive {
        #[command(subcommand)]
        command: archive_cmd::ArchiveCommand,
    },
    /// Quarantined messages: list, show, release (deliver), delete.
    Quarantine {
        #[command(subcommand)]
        command: queue_cmd::QuarantineCommand,
    },
    /// DMARC aggregate reports received (the `dmarc-reports` plugin's store): summary per
    /// domain and day, list, show.
    Dmarc {
        #[command(subcommand)]
        command: dmarc_cmd::DmarcCommand,
    },
    /// Addresses banned after failed AUTH attempts (running server, through its API).
    Ban {
        #[command(subcommand)]
        command: BanCommand,
    },
    /// Builds and evaluates spam models for the `spam-score` plugin.
    Spam {
        #[command(subcommand)]
        command: spam_cmd::SpamCommand,
    },
    /// Runs a policy's data stage over many messages and prints, per message, its path,
    /// score and verdict (TAB separated).
    Score(spam_cmd::ScoreArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Adds a user or changes their password. The password is read from standard input.
    Add { name: String },
    /// Removes a user.
    Remove { name: String },
    /// Lists user names.
    List,
}

#[derive(Subcommand)]
enum BanCommand {
    /// Banned addresses and the time each ban has left.
    List,
    /// Lets an address in again.
    Lift { address: std::net::IpAddr },
}

fn ban(settings: &Settings, command: BanCommand) -> Result<()> {
    let api = api_client::ApiClient::new(settings)?;
    match command {
        BanCommand::List => {
            let bans = api.call("GET", "/bans")?;
            for b in bans.as_array().into_iter().flatten() {
                println!(
                    "{}  {} s left",
                    b["address"].as_str().unwrap_or(""),
                    b["seconds_left"]
                );
            }
        }
        BanCommand::Lift { address } => {
            api.call("DELETE", &format!("/bans/{address}"))?;
            println!("{address} may connect again");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Creates a key and prints it (only this once).
    Create {
        #[arg(long)]
        name: String,
        /// read (GET requests only) or admin.
        #[arg(long, default_value = "read")]
        scope: sluice_http::keys::Scope,
    },
    /// Lists keys (id, name, scope, expiry; never the secrets).
    List,
    /// Replaces a key with a new one; the old one keeps working for the grace period.
    Rotate {
        id: String,
        /// How long the old key keeps working, in seconds.
        #[arg(long, default_value_t = 86_400)]
        grace: u64,
    },
    /// Removes a key at once.
    Revoke { id: String },
}

fn api_key(settings: &Settings, command: ApiKeyCommand) -> Result<()> {
    use sluice_http::keys;
    let path = settings.api_keys_file();
    match command {
        ApiKeyCommand::Create { name, scope } => {
            let (k, token) = keys::create(&path, &name, scope)?;
            println!(
                "created key {} ({:?}); it is shown only now:\n{token}",
                k.id, k.scope
            );
        }
        ApiKeyCommand::List => {
            for k in keys::list(&path)? {
                println!(
                    "{}  {:<6}  {}{}",
                    k.id,
                    format!("{:?}", k.scope).to_lowercase(),
                    k.name,
                    k.expires
                        .map(|e| format!("  (expires at unix time {e})"))
                        .unwrap_or_default()
                );
            }
        }
        ApiKeyCommand::Rotate { id, grace } => {
            let (k, token) = keys::rotate(&path, &id, grace)?;
            println!(
                "key {id} works for {grace} more seconds; its replacement {} is shown only now:\n{token}",
                k.id
            );
        }
        ApiKeyCommand::Revoke { id } => {
            keys::revoke(&path, &id)?;
            println!("key {id} revoked");
        }
    }
    Ok(())
}

use sluice_http::api::BoxFuture;

/// The admin API's view of the running server.
struct ServerControl {
    wasm: Option<Arc<WasmPipeline>>,
    engine: sluice_delivery::engine::Control,
    guard: Arc<sluice_smtp::protect::Guard>,
}

impl sluice_http::api::Control for ServerControl {
    fn policies(&self) -> Vec<sluice_http::api::PolicyInfo> {
        use sluice_http::api::{PolicyInfo, StepInfo};
        let Some(w) = &self.wasm else {
            return Vec::new();
        };
        w.snapshot()
            .set
            .chains
            .iter()
            .map(|c| PolicyInfo {
                name: c.name.clone(),
                listeners: c.conditions.listeners.clone(),
                steps: c
                    .steps
                    .iter()
                    .map(|s| {
                        let mut stages: Vec<String> = s
                            .stages
                            .iter()
                            .map(|st| sluice_plugin::chain::stage_name(*st).to_string())
                            .collect();
                        stages.sort();
                        StepInfo {
                            name: s.name.to_string(),
                            plugin: s.plugin.to_string(),
                            stages,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    fn reload(&self) -> BoxFuture<'_, Result<usize, Vec<String>>> {
        Box::pin(async move {
            match &self.wasm {
                None => Err(vec!["no policies are configured".to_string()]),
                Some(w) => match w.reload().await {
                    Ok(n) => {
                        tracing::info!(chains = n, "policies reloaded (API)");
                        Ok(n)
                    }
                    Err(problems) => Err(problems.iter().map(ToString::to_string).collect()),
                },
            }
        })
    }

    fn retry(&self, id: String) -> BoxFuture<'_, sluice_http::api::QueueAction> {
        Box::pin(self.queue_command(sluice_delivery::engine::Command::Retry(id)))
    }

    fn delete(&self, id: String) -> BoxFuture<'_, sluice_http::api::QueueAction> {
        Box::pin(self.queue_command(sluice_delivery::engine::Command::Delete(id)))
    }

    fn release(&self, id: String) -> BoxFuture<'_, sluice_http::api::QueueAction> {
        Box::pin(self.queue_command(sluice_delivery::engine::Command::Release(id)))
    }

    fn bans(&self) -> Vec<sluice_http::api::Ban> {
        self.guard
            .bans()
            .into_iter()
            .map(|(ip, left)| sluice_http::api::Ban {
                address: ip.to_string(),
                seconds_left: left.as_secs().max(1),
            })
            .collect()
    }

    fn lift_ban(&self, ip: std::net::IpAddr) -> bool {
        self.guard.lift(ip)
    }
}

impl ServerControl {
    async fn queue_command(
        &self,
        command: sluice_delivery::engine::Command,
    ) -> sluice_http::api::QueueAction {
        use sluice_delivery::engine::Answer;
        use sluice_http::api::QueueAction;
        match self.engine.send(command).await {
            Some(Answer::Done) => QueueAction::Done,
            Some(Answer::NotFound) => QueueAction::NotFound,
            Some(Answer::Conflict(e)) => QueueAction::Conflict(e),
            Some(Answer::Failed(e)) => QueueAction::Failed(e),
            None => QueueAction::Unavailable,
        }
    }
}

/// The admin key `sluice queue` uses while the server runs, in `<data_dir>/cli.key` (mode
/// 0600: whoever can read it could open the queue itself). A new one each start; the
/// previous one is revoked.
fn local_cli_key(settings: &Settings) -> Result<()> {
    use sluice_http::keys;
    let path = settings.api_keys_file();
    let file = settings.data_dir.join("cli.key");
    if let Ok(old) = std::fs::read_to_string(&file)
        && let Some(id) = old
            .trim()
            .strip_prefix("sluice_")
            .and_then(|r| r.split('_').next())
    {
        let _ = keys::revoke(&path, id);
    }
    let (_, token) = keys::create(&path, "local cli (sluice queue)", keys::Scope::Admin)?;
    sluice_core::durable::write_atomic(&file, token.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

fn load(config: Option<&Path>) -> Result<Settings> {
    Ok(match config {
        Some(path) => sluice_config::load(path)?,
        None => sluice_config::load_str(EMBEDDED_DEFAULT, EMBEDDED_NAME)?,
    })
}

/// mimalloc: under load the server allocates from many threads at once (sessions, plugin
/// stores, delivery), where glibc's allocator spends its time in arena locks and
/// consolidation (see bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc settings for a server that may hold a large queue: arena memory committed as
/// it is used, freed pages given back at once. With 1M queued records this keeps the peak
/// RSS about 50 MB lower (see bench/RESULTS.md, backlog) for a few percent of relay
/// throughput at most. mimalloc reads them from the environment when the process starts,
/// before `main`, so they are set and the process re-executes itself once; a value the
/// operator set is kept.
const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ("MIMALLOC_PURGE_DELAY", "0"),
];

fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    const MARK: &str = "SLUICE_ALLOCATOR_TUNED";
    if std::env::var_os(MARK).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env(MARK, "1");
    for (k, v) in ALLOCATOR_ENV {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    // Only returns on failure (the binary replaced meanwhile...): run untuned then.
    let _ = cmd.exec();
}

fn main() -> Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    if let Command::Trace(args) = cli.command {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(trace::run(args));
    }
    if let Command::Score(args) = cli.command {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(spam_cmd::score(args));
    }
    if let Command::Spam { command } = cli.command {
        return spam_cmd::run(command);
    }
    let settings = load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(settings)),
        Command::CheckConfig => {
            let chains = match &settings.policies {
                Some(path) => tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(load_policies(&settings, path, None))?
                    .snapshot()
                    .set
                    .chains
                    .len(),
                None => 0,
            };
            println!(
                "configuration OK: {} listener(s), {} route(s), {} policy chain(s)",
                settings.listeners.len(),
                settings.routes.len(),
                chains
            );
            Ok(())
        }
        Command::Reload => reload(&settings),
        Command::ApiKey { command } => api_key(&settings, command),
        Command::Ban { command } => ban(&settings, command),
        Command::Suppression { command } => suppression_cmd::run(&settings, command),
        Command::Archive { command } => archive_cmd::run(&settings, command),
        Command::Events(args) => events_cmd::run(&settings, args),
        Command::Dmarc { command } => dmarc_cmd::run(&settings, command),
        Command::Quarantine { command } => queue_cmd::quarantine(&settings, command),
        Command::Trace(_) | Command::Score(_) | Command::Spam { .. } => {
            unreachable!("handled above")
        }
        Command::Queue { command } => queue_cmd::run(&settings, command),
        Command::User { command } => user(&settings, command),
        Command::DefaultConfig => {
            print!("{EMBEDDED_DEFAULT}");
            Ok(())
        }
    }
}

fn user(settings: &Settings, command: UserCommand) -> Result<()> {
    let path = &settings.users_file;
    match command {
        UserCommand::Add { name } => {
            let mut password = String::new();
            std::io::stdin().lock().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("no password on standard input");
            }
            Users::add(path, &name, password)?;
            println!("user {name} saved in {}", path.display());
        }
        UserCommand::Remove { name } => {
            if !Users::remove(path, &name)? {
                bail!("no user {name} in {}", path.display());
            }
            println!("user {name} removed");
        }
        UserCommand::List => {
            for name in Users::read(path)?.keys() {
                println!("{name}");
            }
        }
    }
    Ok(())
}

async fn serve(settings: Settings) -> Result<()> {
    let settings = Arc::new(settings);
    sluice_core::durable::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let queue = SledQueue::open(&settings.queue_dir()).with_context(|| {
        format!(
            "cannot open the queue in {} (is another sluice running?)",
            settings.queue_dir().display()
        )
    })?;
    queue.set_min_free(settings.queue_min_free);
    queue.set_commit_interval(settings.queue_commit_interval);
    let outbox = queue.outbox();
    let history = if settings.delivery.event_history.is_zero() {
        None
    } else {
        let dir = settings.history_dir();
        let h = sluice_queue::History::open(&dir, settings.delivery.event_history)
            .with_context(|| format!("cannot open the event history in {}", dir.display()))?;
        spawn_history_purger(h.clone());
        Some(h)
    };
    if let Some(h) = &history {
        outbox.set_history(h.clone());
    }
    let queue: Arc<dyn Queue> = Arc::new(queue);
    let tls = sluice_smtp::tls::server_config(
        settings.tls_cert.as_ref(),
        &settings.tls_dir(),
        &settings.hostname,
    )
    .context("TLS certificate")?;
    // The plugin stores: for the policies' steps, and for the admin API (suppressions).
    let stores = if settings.policies.is_some() || settings.http_bind.is_some() {
        let dir = settings.data_dir.join("stores");
        let stores = sluice_store::SledStores::open(&dir)
            .with_context(|| format!("cannot open the plugin stores in {}", dir.display()))?;
        let dir = settings.data_dir.join("archive");
        let archive = Arc::new(
            sluice_archive::Archive::open(&dir)
                .with_context(|| format!("cannot open the archive in {}", dir.display()))?,
        );
        spawn_purger(stores.clone(), archive.clone());
        Some((stores, archive))
    } else {
        None
    };
    let wasm = match (&settings.policies, &stores) {
        (Some(path), Some((stores, archive))) => {
            let services = sluice_plugin::step::Services {
                kv: stores.kv.clone(),
                blobs: archive.clone(),
                events: Arc::new(outbox.clone()),
                tracking: settings.tracking.as_ref().map(|t| {
                    Arc::new(sluice_plugin::step::Tracking {
                        keys: sluice_track::Keys::new(&t.key, &t.previous_keys),
                        base_url: t.base_url.clone(),
                        retention: t.retention,
                    })
                }),
                http: sluice_plugin::http_client::HttpClient::with_roots(
                    &settings.plugin_http_roots,
                )
                .context("[plugins] http_ca")?,
                // The archive's writes ride the queue's group commit (one fdatasync cycle
                // for both) instead of syncing on their own.
                blob_commit: queue.add_commit_hook(archive.clone()).then(|| {
                    let queue = queue.clone();
                    let commit: sluice_plugin::step::Commit = Arc::new(move || {
                        let queue = queue.clone();
                        Box::pin(async move {
                            // Under load, the next enqueue's flush; after 2 ms, its own.
                            queue
                                .sync_soon(std::time::Duration::from_millis(2))
                                .await
                                .map_err(|e| e.to_string())
                        })
                    });
                    commit
                }),
            };
            Some(load_policies(&settings, path, Some(services)).await?)
        }
        _ => None,
    };
    let pipelines: Arc<dyn sluice_core::Pipelines> = match &wasm {
        Some(w) => w.clone(),
        None => Arc::new(Fixed(Arc::new(PassThrough))),
    };
    let pid_file = settings.data_dir.join("sluice.pid");
    std::fs::write(&pid_file, std::process::id().to_string())
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    let (queued_tx, queued_rx) = sluice_queue::handoff(1024);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let readiness = Arc::new(sluice_http::Readiness {
        queue: queue.clone(),
        listeners_bound: AtomicBool::new(false),
        // Policies, when configured, were loaded above.
        policies_loaded: AtomicBool::new(true),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let (engine_control, engine_control_rx) = sluice_delivery::engine::control();
    spawn_queue_census(
        queue.clone(),
        engine_control.clone(),
        settings.delivery.quarantine_retention,
    );
    let guard = Arc::new(sluice_smtp::protect::Guard::persistent(
        settings.protection.clone(),
        settings.data_dir.join("bans.json"),
    ));
    spawn_ban_saver(guard.clone());
    if let Some(bind) = settings.http_bind {
        local_cli_key(&settings)?;
        let api = Arc::new(sluice_http::api::ApiState {
            queue: queue.clone(),
            kv: stores.as_ref().expect("opened with [http]").0.kv.clone(),
            archive: stores.as_ref().expect("opened with [http]").1.clone(),
            history: history.clone(),
            verify: Default::default(),
            keys: Arc::new(sluice_http::keys::KeyStore::new(settings.api_keys_file())),
            control: Arc::new(ServerControl {
                wasm: wasm.clone(),
                engine: engine_control.clone(),
                guard: guard.clone(),
            }),
        });
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("HTTP listener: cannot bind {bind}"))?;
        tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
        let (stores, _) = stores.as_ref().expect("opened with [http]");
        let tracking = settings.tracking.as_ref().map(|t| {
            Arc::new(sluice_http::track::TrackState {
                keys: sluice_track::Keys::new(&t.key, &t.previous_keys),
                kv: stores.kv.clone(),
                events: Arc::new(outbox.clone()),
            })
        });
        tasks.spawn(sluice_http::serve(
            listener,
            readiness.clone(),
            sluice_http::Services {
                api: Some(api),
                tracking,
            },
            shutdown_rx.clone(),
        ));
    }
    let ctx = Arc::new(ServerContext {
        settings: settings.clone(),
        queue: queue.clone(),
        pipelines: pipelines.clone(),
        tls: Some(tls),
        users: Arc::new(Users::new(&settings.users_file)),
        queued: queued_tx,
        guard: guard.clone(),
        auth: verifier(&settings)?,
    });

    // The queue is scanned before any listener accepts: a message accepted during the
    // scan would otherwise be scheduled twice.
    let engine = sluice_delivery::Engine::with_signer(
        settings.clone(),
        queue.clone(),
        pipelines.clone(),
        Some(Arc::new(dkim_signer(&settings)?)),
    );
    let schedule = {
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.load()).await?
    };
    for l in &settings.listeners {
        let listener = tokio::net::TcpListener::bind(l.bind)
            .await
            .with_context(|| format!("listener {}: cannot bind {}", l.name, l.bind))?;
        tracing::info!(listener = %l.name, addr = %listener.local_addr()?, role = l.role.as_str(), "listening");
        tasks.spawn(sluice_smtp::serve_listener(
            listener,
            l.clone(),
            ctx.clone(),
            shutdown_rx.clone(),
        ));
    }
    readiness.listeners_bound.store(true, Ordering::Relaxed);
    tasks.spawn(sluice_delivery::events::dispatch(
        outbox,
        pipelines.clone(),
        settings.clone(),
        shutdown_rx.clone(),
    ));
    drop(engine_control);
    tasks.spawn(engine.run(schedule, queued_rx, engine_control_rx, shutdown_rx.clone()));
    drop(ctx);

    wait_for_signal(wasm).await?;
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&pid_file);
    let _ = shutdown_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let g = guard.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || g.save()).await? {
        tracing::error!(error = %e, "cannot save the ban list");
    }
    queue.sync().await?;
    if let Some(h) = history {
        tokio::task::spawn_blocking(move || h.close()).await?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; reloads the policies on SIGHUP meanwhile.
async fn wait_for_signal(wasm: Option<Arc<WasmPipeline>>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match &wasm {
                None => tracing::info!("SIGHUP: no policies configured, nothing to reload"),
                Some(w) => match w.reload().await {
                    Ok(chains) => tracing::info!(chains, "policies reloaded"),
                    Err(problems) => {
                        for p in &problems {
                            tracing::error!(problem = %p, "policy reload refused; the running policies stay");
                        }
                    }
                },
            },
        }
    }
}

async fn load_policies(
    settings: &Settings,
    path: &Path,
    services: Option<sluice_plugin::step::Services>,
) -> Result<Arc<WasmPipeline>> {
    let runtime = sluice_plugin::Runtime::new(Some(&settings.data_dir.join("plugin-cache")))?;
    match WasmPipeline::load(runtime, path, services).await {
        Ok(p) => Ok(p),
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            bail!(
                "{} problem(s) in the policies\n{}",
                problems.len(),
                list.join("\n")
            )
        }
    }
}

/// Counts queued messages by state into `sluice_queue_messages`: a scan every 15 s, or
/// 20 times as long as the last scan took (a large backlog is not scanned back to back).
/// The same scan finds quarantined messages older than `retention` (not zero), which the
/// delivery engine then deletes (so that a release at the same moment wins).
fn spawn_queue_census(
    queue: Arc<dyn Queue>,
    engine: sluice_delivery::engine::Control,
    retention: std::time::Duration,
) {
    tokio::spawn(async move {
        loop {
            let q = queue.clone();
            let started = std::time::Instant::now();
            let cutoff = (!retention.is_zero())
                .then(|| sluice_queue::now_secs().saturating_sub(retention.as_secs()));
            let mut expired = Vec::new();
            let counted = tokio::task::spawn_blocking(move || {
                let (mut pending, mut deferred, mut quarantined) = (0i64, 0i64, 0i64);
                q.for_each(&mut |m| {
                    if m.quarantine.is_some() {
                        quarantined += 1;
                        if cutoff.is_some_and(|c| sluice_delivery::engine::quarantined_at(&m) < c) {
                            expired.push(m.id.clone());
                        }
                    } else if m.has_pending() {
                        pending += 1;
                    } else if m.has_deferred() {
                        deferred += 1;
                    }
                })
                .map(|()| {
                    (
                        [
                            ("pending", pending),
                            ("deferred", deferred),
                            ("quarantined", quarantined),
                        ],
                        expired,
                    )
                })
            })
            .await;
            match counted {
                Ok(Ok((counts, expired))) => {
                    let g = &sluice_metrics::global().queue_messages;
                    for (state, n) in counts {
                        g.with_label_values(&[state]).set(n);
                    }
                    let mut purged = 0;
                    for id in expired {
                        use sluice_delivery::engine::{Answer, Command};
                        match engine.send(Command::Expire(id.clone())).await {
                            Some(Answer::Done) => purged += 1,
                            // Released or deleted meanwhile.
                            Some(Answer::Conflict(_) | Answer::NotFound) => {}
                            Some(Answer::Failed(e)) => {
                                tracing::error!(%id, error = %e, "cannot delete an expired quarantined message")
                            }
                            None => break,
                        }
                    }
                    if purged > 0 {
                        sluice_metrics::global()
                            .purged
                            .with_label_values(&["quarantine"])
                            .inc_by(purged);
                        g.with_label_values(&["quarantined"]).sub(purged as i64);
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot count the queue"),
                Err(e) => tracing::error!(error = %e, "queue census task failed"),
            }
            let wait = (started.elapsed() * 20).max(std::time::Duration::from_secs(15));
            tokio::time::sleep(wait).await;
        }
    });
}

/// Runs `job` every `period` off the async workers; a failure is logged as `what` failed
/// and the next period tries again.
fn spawn_periodic(
    period: std::time::Duration,
    what: &'static str,
    job: impl Fn() -> Result<()> + Send + Sync + 'static,
) {
    let job = Arc::new(job);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let j = job.clone();
            match tokio::task::spawn_blocking(move || j()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "{what} failed"),
                Err(e) => tracing::error!(error = %e, "{what}: task failed"),
            }
        }
    });
}

/// Saves the ban list every second when it changed (saving is a no-op otherwise), so a
/// crash loses at most a second of bans.
fn spawn_ban_saver(guard: Arc<sluice_smtp::protect::Guard>) {
    spawn_periodic(
        std::time::Duration::from_secs(1),
        "saving the ban list",
        move || Ok(guard.save()?),
    );
}

/// Drops events older than the history's retention every few minutes.
fn spawn_history_purger(history: Arc<sluice_queue::History>) {
    spawn_periodic(
        std::time::Duration::from_secs(300),
        "purging the event history",
        move || {
            let n = history.purge_expired(sluice_queue::now_secs() * 1000)?;
            if n > 0 {
                sluice_metrics::global()
                    .purged
                    .with_label_values(&["events"])
                    .inc_by(n as u64);
                tracing::info!(events = n, "event history purged");
            }
            Ok(())
        },
    );
}

/// Removes expired key-value entries and archived messages every few minutes, off the async
/// workers.
fn spawn_purger(stores: sluice_store::SledStores, archive: Arc<sluice_archive::Archive>) {
    use sluice_store::{BlobStore, KvStore};
    let purged = |store: &'static str, n: usize| -> Result<()> {
        if n > 0 {
            sluice_metrics::global()
                .purged
                .with_label_values(&[store])
                .inc_by(n as u64);
            tracing::info!(store, entries = n, "expired plugin data purged");
        }
        Ok(())
    };
    spawn_periodic(
        std::time::Duration::from_secs(300),
        "purging expired key-value entries",
        move || purged("kv", stores.kv.purge_expired()?),
    );
    spawn_periodic(
        std::time::Duration::from_secs(300),
        "purging expired archived messages",
        move || purged("archive", archive.purge_expired()?),
    );
}

fn reload(settings: &Settings) -> Result<()> {
    let pid_file = settings.data_dir.join("sluice.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("no running server ({} is missing)", pid_file.display()))?;
    let pid = pid.trim();
    let status = std::process::Command::new("kill")
        .args(["-HUP", pid])
        .status()?;
    if !status.success() {
        bail!("cannot signal process {pid}");
    }
    println!("asked process {pid} to reload its policies; its log says how it went");
    Ok(())
}

/// The checks of received mail, when `[authentication]` is configured.
fn verifier(settings: &Settings) -> Result<Option<Arc<sluice_auth::Verifier>>> {
    let Some(a) = &settings.authentication else {
        return Ok(None);
    };
    let v = sluice_auth::Verifier::new(
        &settings.delivery.nameservers,
        &a.authserv_id,
        &settings.hostname,
        a.timeout,
    )
    .context("authentication checks")?;
    Ok(Some(Arc::new(v)))
}

/// The DKIM keys of `[[dkim]]`, loaded once at start.
fn dkim_signer(settings: &Settings) -> Result<sluice_auth::Signer> {
    let mut keys = Vec::new();
    for (i, k) in settings.dkim.iter().enumerate() {
        let pem = std::fs::read(&k.key)
            .with_context(|| format!("dkim[{i}].key: cannot read {}", k.key.display()))?;
        let key = sluice_auth::SignKey::from_pem(&k.domain, &k.selector, &pem, &k.headers)
            .with_context(|| format!("dkim[{i}].key: {}", k.key.display()))?;
        tracing::info!(domain = %k.domain, selector = %k.selector, algorithm = key.algorithm(), "DKIM key loaded");
        keys.push(key);
    }
    Ok(sluice_auth::Signer::new(keys))
}
