//! The `sluice` command: runs the MTA and manages its configuration, queue and users.
//!
//! # Layout
//! - `main.rs`: the command line (clap) and `serve`.
//! - `queue_cmd.rs`: `sluice queue list|show|retry|delete`.

mod queue_cmd;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sluice_config::{EMBEDDED_DEFAULT, EMBEDDED_NAME, Settings};
use sluice_core::{Fixed, PassThrough};
use sluice_queue::{Queue, SledQueue};
use sluice_smtp::{ServerContext, Users};
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice mail transfer agent")]
struct Cli {
    /// Configuration file; without it, the embedded default (listeners on 127.0.0.1:2525
    /// and :2587, data in ./data).
    #[arg(long, short, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the MTA.
    Serve,
    /// Checks the configuration and reports every problem.
    CheckConfig,
    /// Inspects and changes the queue (stop the server first: the queue is locked).
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

fn load(config: Option<&Path>) -> Result<Settings> {
    Ok(match config {
        Some(path) => sluice_config::load(path)?,
        None => sluice_config::load_str(EMBEDDED_DEFAULT, EMBEDDED_NAME)?,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let settings = load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(settings)),
        Command::CheckConfig => {
            println!(
                "configuration OK: {} listener(s), {} route(s)",
                settings.listeners.len(),
                settings.routes.len()
            );
            Ok(())
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
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let queue = SledQueue::open(&settings.queue_dir()).with_context(|| {
        format!(
            "cannot open the queue in {} (is another sluice running?)",
            settings.queue_dir().display()
        )
    })?;
    let queue: Arc<dyn Queue> = Arc::new(queue);
    let tls = sluice_smtp::tls::server_config(
        settings.tls_cert.as_ref(),
        &settings.tls_dir(),
        &settings.hostname,
    )
    .context("TLS certificate")?;
    let pipelines: Arc<dyn sluice_core::Pipelines> = Arc::new(Fixed(Arc::new(PassThrough)));
    let (queued_tx, queued_rx) = tokio::sync::mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(ServerContext {
        settings: settings.clone(),
        queue: queue.clone(),
        pipelines: pipelines.clone(),
        tls: Some(tls),
        users: Arc::new(Users::new(&settings.users_file)),
        queued: queued_tx,
    });

    let mut tasks = tokio::task::JoinSet::new();
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
    let engine = sluice_delivery::Engine::new(settings.clone(), queue.clone(), pipelines);
    tasks.spawn(engine.run(queued_rx, shutdown_rx.clone()));
    drop(ctx);

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    while tasks.join_next().await.is_some() {}
    queue.sync().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
