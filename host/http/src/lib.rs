//! The HTTP listener: `/healthz` (the process is alive), `/readyz` (queue open, listeners
//! bound, policies loaded), `/metrics` (Prometheus text format) and the admin API under
//! `/api/v1` ([`api`], with the API keys of [`keys`]; the archive's endpoints in [`archive`], the event history's in [`events`]), and the tracking endpoints
//! `/c/`, `/o/`, `/u/` ([`track`]) when `[tracking]` is configured.

pub mod api;
pub mod archive;
pub mod dmarc;
pub mod events;
pub mod keys;
pub mod suppress;
pub mod track;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use sluice_queue::Queue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// What `/readyz` checks, set by the server as it starts.
pub struct Readiness {
    pub queue: Arc<dyn Queue>,
    /// Every SMTP listener is bound.
    pub listeners_bound: AtomicBool,
    /// The policies (if any) are loaded.
    pub policies_loaded: AtomicBool,
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
    queue: &'static str,
    listeners: &'static str,
    policies: &'static str,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    let queue = match r.queue.has_room(0) {
        Ok(()) => "ok",
        Err(e) if e.is_no_space() => "disk full",
        Err(_) => "unavailable",
    };
    let listeners = if r.listeners_bound.load(Ordering::Relaxed) {
        "ok"
    } else {
        "starting"
    };
    let policies = if r.policies_loaded.load(Ordering::Relaxed) {
        "ok"
    } else {
        "loading"
    };
    let ready = queue == "ok" && listeners == "ok" && policies == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Ready {
            ready,
            queue,
            listeners,
            policies,
        }),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        sluice_metrics::global().render(),
    )
}

/// What the listener serves besides health and metrics.
#[derive(Default)]
pub struct Services {
    pub api: Option<Arc<api::ApiState>>,
    pub tracking: Option<Arc<track::TrackState>>,
}

/// The routes.
pub fn router(readiness: Arc<Readiness>, services: Services) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness);
    if let Some(state) = services.api {
        r = r.merge(api::router(state));
    }
    if let Some(state) = services.tracking {
        r = r.merge(track::router(state));
    }
    r
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Arc<Readiness>,
    services: Services,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let app =
        router(readiness, services).into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "HTTP listener failed");
    }
}
