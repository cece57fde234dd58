//! The event history's endpoints: recent events (by kind, recipient, time) under
//! `/api/v1/events`, and one message's whole story (every event and delivery attempt with
//! the remote replies) under `/api/v1/queue/{id}/history`.

// The `utoipa::path` macros expand to qualified paths.
#![allow(unused_qualifications)]

use crate::api::{ApiState, Attribute, ErrorBody, blocking, error, page_limit};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sluice_core::Event;
use sluice_queue::EventQuery;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// One recorded event.
#[derive(Serialize, ToSchema)]
pub struct EventInfo {
    /// Unique, sortable by time.
    pub id: String,
    /// Unix milliseconds.
    pub time: u64,
    /// `queued`, `delivered`, `deferred`, `bounced`, `rejected`, `quarantined`, `opened`,
    /// `clicked`, `unsubscribed`, `complained`, or a plugin's own kind.
    pub kind: String,
    pub queue_id: Option<String>,
    pub message_id: Option<String>,
    pub sender: String,
    pub recipient: Option<String>,
    /// The SMTP reply: the remote server's for delivery attempts, ours for refusals.
    pub reply: Option<String>,
    /// The listener of the session the message came from.
    pub listener: Option<String>,
    pub authenticated: Option<bool>,
    /// The message's metadata and what the event's source added (`remote_mta`,
    /// `bounce_type`, `reason`, `url`, `user_agent`, ...).
    pub attributes: Vec<Attribute>,
}

impl From<Event> for EventInfo {
    fn from(e: Event) -> EventInfo {
        EventInfo {
            kind: e.kind.name().to_string(),
            id: e.id,
            time: e.time_ms,
            queue_id: e.queue_id,
            message_id: e.message_id,
            sender: e.sender,
            recipient: e.recipient,
            reply: e.reply.map(|r| r.to_string()),
            listener: e.listener,
            authenticated: e.authenticated,
            attributes: Attribute::list(e.attributes),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<EventInfo>,
    /// Pass as `before` for the next page; absent on the last.
    pub next: Option<String>,
}

impl From<sluice_queue::EventPage> for EventPage {
    fn from(p: sluice_queue::EventPage) -> EventPage {
        EventPage {
            events: p.events.into_iter().map(EventInfo::from).collect(),
            next: p.next,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// An event kind (`bounced`, `delivered`, ...).
    #[param(max_length = 64)]
    pub kind: Option<String>,
    /// A recipient address (any case).
    #[param(max_length = 320)]
    pub recipient: Option<String>,
    /// From this time (unix seconds).
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Events older than this event id (the `next` of the previous page).
    #[param(max_length = 64)]
    pub before: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Recent events, newest first; every given criterion must match.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    security(("api_key" = [])),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(crate) async fn events(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = match page_limit(q.limit, 50) {
        Ok(l) => l,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let too_long = |name: &str, v: &Option<String>, max: usize| {
        v.as_ref()
            .filter(|v| v.chars().count() > max)
            .map(|_| format!("{name} is longer than {max} characters"))
    };
    if let Some(m) = too_long("kind", &q.kind, 64)
        .or_else(|| too_long("recipient", &q.recipient, 320))
        .or_else(|| too_long("before", &q.before, 64))
    {
        return error(StatusCode::BAD_REQUEST, m);
    }
    let since_ms = match q.since {
        Some(n) if n < 0 => return error(StatusCode::BAD_REQUEST, "since must not be negative"),
        Some(n) => Some((n as u64).saturating_mul(1000)),
        None => None,
    };
    let query = EventQuery {
        kind: q.kind,
        recipient: q.recipient,
        since_ms,
        before: q.before,
        limit,
    };
    let history = s.history.clone();
    let search = move || match history {
        Some(h) => h.search(&query),
        None => Ok(sluice_queue::EventPage::default()),
    };
    match blocking(search).await {
        Ok(page) => Json(EventPage::from(page)).into_response(),
        Err(r) => r,
    }
}

#[derive(Serialize, ToSchema)]
pub struct MessageHistory {
    pub queue_id: String,
    /// Whether the message is still in the queue (it leaves once every recipient is done).
    pub in_queue: bool,
    /// Every recorded event of the message, oldest first: queued, each delivery attempt
    /// (deferred, delivered, bounced) with the remote reply, opens, clicks, complaints.
    pub events: Vec<EventInfo>,
}

/// One message's history: the audit trail of what happened to it, recipient by recipient.
#[utoipa::path(get, path = "/api/v1/queue/{id}/history", tag = "events",
    params(("id" = String, Path, description = "Queue id")),
    security(("api_key" = [])),
    responses((status = 200, body = MessageHistory), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub(crate) async fn message_history(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (queue, history) = (s.queue.clone(), s.history.clone());
    let qid = id.clone();
    let r = blocking(move || {
        let events = match history {
            Some(h) => h.of_message(&qid)?,
            None => Vec::new(),
        };
        let in_queue = queue.get(&qid)?.is_some();
        Ok::<_, sluice_queue::QueueError>((events, in_queue))
    })
    .await;
    match r {
        Ok((events, in_queue)) if in_queue || !events.is_empty() => Json(MessageHistory {
            queue_id: id,
            in_queue,
            events: events.into_iter().map(EventInfo::from).collect(),
        })
        .into_response(),
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            format!("no message {id} in the queue or the event history"),
        ),
        Err(r) => r,
    }
}
