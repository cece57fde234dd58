//! Accept loop for one listener, with its connection limit and graceful shutdown.

use crate::session::Session;
use crate::users::Users;
use sluice_config::{ListenerSettings, Settings};
use sluice_core::Pipelines;
use sluice_queue::Queue;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// What every session of every listener shares.
pub struct ServerContext {
    pub settings: Arc<Settings>,
    pub queue: Arc<dyn Queue>,
    /// The session takes a snapshot at connect and keeps it.
    pub pipelines: Arc<dyn Pipelines>,
    /// `None` when STARTTLS cannot be offered.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Arc<Users>,
    /// Newly queued messages, for the delivery scheduler.
    pub queued: sluice_queue::Handoff,
    /// Bans after failed AUTH and connection rates, checked at connect.
    pub guard: Arc<crate::protect::Guard>,
    /// SPF/DKIM/ARC/DMARC checks of mail received on `mx` listeners from unauthenticated
    /// clients; `None` when `[authentication]` is not configured.
    pub auth: Option<Arc<sluice_auth::Verifier>>,
}

/// Serves one listener until `shutdown` turns true, then waits for its sessions to end.
/// Idle sessions are told `421 4.3.2` at once; a session inside DATA finishes first.
pub async fn serve_listener(
    listener: TcpListener,
    settings: ListenerSettings,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => {
                sluice_metrics::global()
                    .smtp_connections
                    .with_label_values(&[settings.name.as_str()])
                    .inc();
                a
            }
            Err(e) => {
                tracing::warn!(listener = %settings.name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(refusal) = ctx.guard.admit(peer.ip()) {
            sluice_metrics::global()
                .connections_refused
                .with_label_values(&[settings.name.as_str(), refusal.label()])
                .inc();
            tracing::info!(listener = %settings.name, %peer, reason = refusal.label(), "connection refused");
            sessions.spawn(async move {
                let _ = stream.write_all(refusal.reply().as_bytes()).await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(listener = %settings.name, %peer, "connection limit reached");
            sessions.spawn(async move {
                let _ = stream
                    .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let (ctx, settings, shutdown) = (ctx.clone(), settings.clone(), shutdown.clone());
        sessions.spawn(async move {
            let session = Session::new(stream, peer.ip(), ctx, settings, shutdown);
            session.run().await;
            drop(permit);
        });
    }
    tracing::debug!(listener = %settings.name, sessions = sessions.len(), "listener stopping");
    while sessions.join_next().await.is_some() {}
    tracing::debug!(listener = %settings.name, "listener stopped");
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
