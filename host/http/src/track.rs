//! The tracking endpoints, for links the link-tracking plugin made with `tracking-url`:
//! `/c/<token>` redirects (302) to the link's original URL, `/o/<token>` answers a 1×1 GIF
//! that is never cached, `/u/<token>` shows a confirmation page on GET and unsubscribes on
//! POST (the RFC 8058 one-click POST a mail client sends, or the page's button). Each hit
//! (HEAD requests aside) becomes an `clicked`, `opened` or `unsubscribed` event on the
//! durable bus with the client's address and user agent. A token that does not verify under
//! the server's keys, or is of another kind, gets 404.

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_core::{Event, EventKind, EventSink};
use sluice_store::KvStore;
use sluice_track::{CONTEXT_NAMESPACE, Context, Keys, Kind, Token};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the endpoints need.
pub struct TrackState {
    pub keys: Keys,
    /// Where the host keeps tracked messages' contexts.
    pub kv: Arc<dyn KvStore>,
    /// The durable event bus (the outbox).
    pub events: Arc<dyn EventSink>,
}

/// The routes.
pub fn router(state: Arc<TrackState>) -> Router {
    Router::new()
        .route("/c/{token}", get(click))
        .route("/o/{token}", get(open))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .with_state(state)
}

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

const NO_CACHE: &str = "no-cache, no-store, must-revalidate, private";

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, NO_CACHE)],
        "Unknown or expired link.\n",
    )
        .into_response()
}

async fn click(
    State(s): State<Arc<TrackState>>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    let Some(t) = s.keys.verify(&token, Kind::Click) else {
        return not_found();
    };
    let Some(location) = t.url.as_deref().and_then(|u| HeaderValue::from_str(u).ok()) else {
        return not_found();
    };
    if request.method() != Method::HEAD {
        let (ip, ua) = client(&request);
        // A lost click is not worth failing the redirect for: it is logged.
        let _ = publish(&s, &t, EventKind::Clicked, ip, ua).await;
    }
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE)),
            // The token names the recipient: it must not reach the destination site.
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
    )
        .into_response()
}

async fn open(
    State(s): State<Arc<TrackState>>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    let Some(t) = s.keys.verify(&token, Kind::Open) else {
        return not_found();
    };
    if request.method() != Method::HEAD {
        let (ip, ua) = client(&request);
        let _ = publish(&s, &t, EventKind::Opened, ip, ua).await;
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, NO_CACHE),
            (header::PRAGMA, "no-cache"),
            (header::EXPIRES, "0"),
        ],
        PIXEL,
    )
        .into_response()
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><meta name=\"robots\" content=\"noindex\"><title>{title}</title></head>\n<body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">\n<h1>{title}</h1>\n{body}\n</body></html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, NO_CACHE),
        ],
        html,
    )
        .into_response()
}

/// GET: a page with a button, so that link scanners following the URL unsubscribe nobody.
async fn unsubscribe_page(State(s): State<Arc<TrackState>>, Path(token): Path<String>) -> Response {
    let Some(t) = s.keys.verify(&token, Kind::Unsubscribe) else {
        return not_found();
    };
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop sending mail to <b>{}</b>?</p>\n<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
            escape(&t.recipient)
        ),
    )
}

/// POST: the one-click unsubscribe (RFC 8058) or the page's button.
async fn unsubscribe(
    State(s): State<Arc<TrackState>>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    let Some(t) = s.keys.verify(&token, Kind::Unsubscribe) else {
        return not_found();
    };
    let (ip, ua) = client(&request);
    match publish(&s, &t, EventKind::Unsubscribed, ip, ua).await {
        Ok(()) => page(
            StatusCode::OK,
            "Unsubscribed",
            &format!(
                "<p><b>{}</b> will get no more of this mail.</p>",
                escape(&t.recipient)
            ),
        ),
        // The unsubscribe must not be lost: the client (or the person) tries again.
        Err(()) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "<p>Your request could not be recorded just now. Please try again in a few minutes.</p>",
        ),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Longest user agent kept in an event.
const MAX_USER_AGENT: usize = 256;

/// The event of a hit, with the message's context when the host still has it.
fn event(
    s: &TrackState,
    t: &Token,
    kind: EventKind,
    ip: Option<String>,
    ua: Option<String>,
) -> Event {
    let context: Option<Context> =
        s.kv.get(CONTEXT_NAMESPACE, &t.queue_id)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok());
    let context = context.unwrap_or_default();
    let mut e = Event::new(kind, context.sender);
    e.queue_id = Some(t.queue_id.clone());
    e.message_id = context.message_id;
    e.recipient = Some(t.recipient.clone());
    e.attributes = context.attributes;
    if let Some(url) = &t.url {
        e.attributes.push(("url".into(), url.clone()));
        e.attributes.push(("link".into(), t.link.to_string()));
    }
    if let Some(ip) = ip {
        e.attributes.push(("client_ip".into(), ip));
    }
    if let Some(ua) = ua {
        e.attributes.push(("user_agent".into(), ua));
    }
    e.listener = t.listener.clone();
    e.authenticated = Some(t.authenticated);
    e
}

/// The client's address and user agent.
fn client(request: &Request) -> (Option<String>, Option<String>) {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let ua = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(MAX_USER_AGENT).collect::<String>());
    (ip, ua)
}

/// Puts the hit's event on the bus.
async fn publish(
    s: &Arc<TrackState>,
    t: &Token,
    kind: EventKind,
    ip: Option<String>,
    ua: Option<String>,
) -> Result<(), ()> {
    let s = s.clone();
    let t = t.clone();
    let result = tokio::task::spawn_blocking(move || {
        let e = event(&s, &t, kind, ip, ua);
        s.events.publish(e)
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "tracking: the event could not be recorded");
            Err(())
        }
        Err(e) => {
            tracing::error!(error = %e, "tracking: the event task failed");
            Err(())
        }
    }
}
