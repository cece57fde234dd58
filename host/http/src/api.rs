//! The admin API under `/api/v1`: bearer API keys ([`crate::keys`]) with scopes (`read`:
//! GET only; `admin`: everything), JSON errors with a message for every failure, and the
//! OpenAPI document generated from these handlers at `/api/v1/openapi.json`.

// The `utoipa::path` macros expand to qualified paths.
#![allow(unused_qualifications)]

use crate::keys::{KeyStore, Refusal, Scope};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sluice_queue::{MessageMeta, Queue, Status};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// A boxed future borrowing the [`Control`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the API asks of the running server beyond the queue store.
pub trait Control: Send + Sync {
    /// The loaded policy chains.
    fn policies(&self) -> Vec<PolicyInfo>;
    /// Reloads the policies; the number of chains, or the problems (the running ones stay).
    fn reload(&self) -> BoxFuture<'_, Result<usize, Vec<String>>>;
    /// Makes a queued message's deferred recipients due now.
    fn retry(&self, id: String) -> BoxFuture<'_, QueueAction>;
    /// Deletes a queued message without notice to the sender.
    fn delete(&self, id: String) -> BoxFuture<'_, QueueAction>;
    /// Delivers a quarantined message after all.
    fn release(&self, id: String) -> BoxFuture<'_, QueueAction>;
    /// Addresses banned after failed AUTH attempts.
    fn bans(&self) -> Vec<Ban>;
    /// Lifts a ban; false when the address was not banned.
    fn lift_ban(&self, ip: std::net::IpAddr) -> bool;
}

/// A client address banned at connect.
#[derive(Serialize, ToSchema)]
pub struct Ban {
    pub address: String,
    pub seconds_left: u64,
}

/// What became of a retry or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueAction {
    Done,
    NotFound,
    /// The delivery engine is not running (shutting down).
    Unavailable,
    /// The request does not apply to the message as it is.
    Conflict(String),
    /// The queue store failed.
    Failed(String),
}

pub struct ApiState {
    pub queue: Arc<dyn Queue>,
    /// The plugin stores' key-value side (suppressions, DMARC reports).
    pub kv: Arc<dyn sluice_store::KvStore>,
    pub keys: Arc<KeyStore>,
    pub control: Arc<dyn Control>,
    /// The message archive (capability `blobs`).
    pub archive: Arc<sluice_archive::Archive>,
    /// The event history (`None` with `event_history = "0s"`: no events to show).
    pub history: Option<Arc<sluice_queue::History>>,
    /// The archive verification in the background.
    pub verify: crate::archive::VerifyJobs,
}

/// Every error: an HTTP status and this body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// Runs blocking store work off the async threads; a failure (or a panic) is a 500 with
/// its message.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Response>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// A list endpoint's page size: `default` when the query gives none; outside 1–1000, the
/// message for a 400.
pub(crate) fn page_limit(given: Option<u32>, default: u32) -> Result<usize, &'static str> {
    match given.unwrap_or(default) {
        n @ 1..=1000 => Ok(n as usize),
        _ => Err("limit must be between 1 and 1000"),
    }
}

/// One queued message in a listing.
#[derive(Serialize, ToSchema)]
pub struct QueueItem {
    pub id: String,
    pub sender: String,
    pub size: u64,
    /// Unix seconds of the 250.
    pub received_at: u64,
    pub recipients: u32,
    /// Recipients not yet delivered or failed.
    pub pending: u32,
    /// Why the policy holds it, when it does.
    pub quarantine: Option<String>,
    /// Unix seconds of the next attempt, when one is scheduled.
    pub next_attempt: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct QueuePage {
    pub messages: Vec<QueueItem>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RecipientInfo {
    pub address: String,
    /// pending, deferred, delivered or failed.
    pub status: String,
    pub next_attempt: Option<u64>,
    pub attempts: u32,
    pub last_reply: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Attribute {
    pub key: String,
    pub value: String,
}

impl Attribute {
    /// Key-value pairs as the API shows them.
    pub fn list(pairs: Vec<(String, String)>) -> Vec<Attribute> {
        pairs
            .into_iter()
            .map(|(key, value)| Attribute { key, value })
            .collect()
    }
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub listener: String,
    pub client_ip: String,
    pub helo: Option<String>,
    pub tls: Option<String>,
    pub auth_user: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageDetail {
    pub id: String,
    pub sender: String,
    pub size: u64,
    pub received_at: u64,
    pub envid: Option<String>,
    pub quarantine: Option<String>,
    pub recipients: Vec<RecipientInfo>,
    /// Metadata plugins set (`set-meta`).
    pub meta: Vec<Attribute>,
    /// The session it arrived in; absent for mail the server made (DSNs).
    pub session: Option<SessionView>,
}

#[derive(Serialize, ToSchema)]
pub struct StepInfo {
    pub name: String,
    pub plugin: String,
    pub stages: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PolicyInfo {
    pub name: String,
    /// Listeners the chain applies to (all when empty).
    pub listeners: Vec<String>,
    pub steps: Vec<StepInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct Reloaded {
    pub chains: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Done {
    pub id: String,
    pub done: bool,
}

/// Which messages a listing shows.
#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateFilter {
    #[default]
    All,
    /// Some recipient not yet tried.
    Pending,
    /// Some recipient waiting for a retry.
    Deferred,
    Quarantined,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    #[serde(default)]
    pub state: Option<StateFilter>,
    /// Exact envelope sender (case-insensitive).
    pub sender: Option<String>,
    /// A recipient address (case-insensitive).
    pub recipient: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Messages after this id (the `next` of the previous page).
    pub after: Option<String>,
}

fn status_name(s: &Status) -> (&'static str, Option<u64>) {
    match s {
        Status::Pending => ("pending", None),
        Status::Deferred { next_attempt } => ("deferred", Some(*next_attempt)),
        Status::Delivered => ("delivered", None),
        Status::Failed => ("failed", None),
    }
}

fn item(m: &MessageMeta) -> QueueItem {
    QueueItem {
        id: m.id.clone(),
        sender: m.sender.clone(),
        size: m.size as u64,
        received_at: m.received_at,
        recipients: m.recipients.len() as u32,
        pending: m.recipients.iter().filter(|r| !r.status.is_final()).count() as u32,
        quarantine: m.quarantine.clone(),
        next_attempt: m.next_due(),
    }
}

fn matches(m: &MessageMeta, q: &QueueQuery) -> bool {
    let state = match q.state.unwrap_or_default() {
        StateFilter::All => true,
        StateFilter::Pending => m.has_pending(),
        StateFilter::Deferred => m.has_deferred(),
        StateFilter::Quarantined => m.quarantine.is_some(),
    };
    state
        && q.sender
            .as_ref()
            .is_none_or(|s| m.sender.eq_ignore_ascii_case(s))
        && q.recipient.as_ref().is_none_or(|r| {
            m.recipients
                .iter()
                .any(|x| x.recipient.address.eq_ignore_ascii_case(r))
        })
}

/// Lists queued messages, oldest id first, with filters and paging.
#[utoipa::path(get, path = "/api/v1/queue", tag = "queue", params(QueueQuery),
    security(("api_key" = [])),
    responses((status = 200, body = QueuePage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn queue_list(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<QueueQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = match page_limit(q.limit, 100) {
        Ok(l) => l,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let queue = s.queue.clone();
    let result = blocking(move || {
        let mut page = Vec::new();
        let mut more = false;
        queue
            .for_each(&mut |m| {
                if more
                    || q.after
                        .as_ref()
                        .is_some_and(|a| m.id.as_str() <= a.as_str())
                {
                    return;
                }
                if matches(&m, &q) {
                    if page.len() == limit {
                        more = true;
                    } else {
                        page.push(item(&m));
                    }
                }
            })
            .map(|()| (page, more))
    })
    .await;
    match result {
        Ok((messages, more)) => {
            let next = more
                .then(|| messages.last().map(|m| m.id.clone()))
                .flatten();
            Json(QueuePage { messages, next }).into_response()
        }
        Err(r) => r,
    }
}

/// One queued message: envelope, per-recipient state with the last remote reply, metadata.
#[utoipa::path(get, path = "/api/v1/queue/{id}", tag = "queue",
    params(("id" = String, Path, description = "Queue id")),
    security(("api_key" = [])),
    responses((status = 200, body = MessageDetail), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn queue_show(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match s.queue.get(&id) {
        Ok(Some(m)) => Json(MessageDetail {
            id: m.id.clone(),
            sender: m.sender.clone(),
            size: m.size as u64,
            received_at: m.received_at,
            envid: m.envid.clone(),
            quarantine: m.quarantine.clone(),
            recipients: m
                .recipients
                .iter()
                .map(|r| {
                    let (status, next_attempt) = status_name(&r.status);
                    RecipientInfo {
                        address: r.recipient.address.clone(),
                        status: status.into(),
                        next_attempt,
                        attempts: r.attempts,
                        last_reply: r.last_reply.as_ref().map(ToString::to_string),
                    }
                })
                .collect(),
            meta: Attribute::list(m.meta.clone()),
            session: m.session.as_ref().map(|s| SessionView {
                listener: s.listener.clone(),
                client_ip: s.client_ip.to_string(),
                helo: s.helo.clone(),
                tls: s.tls.clone(),
                auth_user: s.auth_user.clone(),
            }),
        })
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no message {id} in the queue"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn action(id: String, a: QueueAction) -> Response {
    match a {
        QueueAction::Failed(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        QueueAction::Conflict(e) => error(StatusCode::CONFLICT, e),
        QueueAction::Done => Json(Done { id, done: true }).into_response(),
        QueueAction::NotFound => error(
            StatusCode::NOT_FOUND,
            format!("no message {id} in the queue"),
        ),
        QueueAction::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the delivery engine is not running",
        ),
    }
}

/// Makes the message's deferred recipients due now.
#[utoipa::path(post, path = "/api/v1/queue/{id}/retry", tag = "queue",
    params(("id" = String, Path, description = "Queue id")),
    security(("api_key" = [])),
    responses((status = 200, body = Done), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn queue_retry(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let a = s.control.retry(id.clone()).await;
    action(id, a)
}

/// Releases a quarantined message: it is delivered, and a hold by the delivery stage is not
/// applied to it again. 409 when it is not quarantined.
#[utoipa::path(post, path = "/api/v1/queue/{id}/release", tag = "queue",
    params(("id" = String, Path, description = "Queue id")),
    security(("api_key" = [])),
    responses((status = 200, body = Done), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn queue_release(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let a = s.control.release(id.clone()).await;
    action(id, a)
}

/// Deletes the message without any notice to its sender.
#[utoipa::path(delete, path = "/api/v1/queue/{id}", tag = "queue",
    params(("id" = String, Path, description = "Queue id")),
    security(("api_key" = [])),
    responses((status = 200, body = Done), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn queue_delete(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let a = s.control.delete(id.clone()).await;
    action(id, a)
}

/// The loaded policy chains and their steps.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
    security(("api_key" = [])),
    responses((status = 200, body = Vec<PolicyInfo>), (status = 401, body = ErrorBody)))]
async fn policies(State(s): State<Arc<ApiState>>) -> Response {
    Json(s.control.policies()).into_response()
}

/// Reloads the policies from disk (like SIGHUP); on any problem the running ones stay and
/// the answer is 409 with the problems.
#[utoipa::path(post, path = "/api/v1/policies/reload", tag = "policies",
    security(("api_key" = [])),
    responses((status = 200, body = Reloaded), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reload(State(s): State<Arc<ApiState>>) -> Response {
    match s.control.reload().await {
        Ok(chains) => Json(Reloaded {
            chains: chains as u64,
        })
        .into_response(),
        Err(problems) => error(
            StatusCode::CONFLICT,
            format!(
                "reload refused, the running policies stay: {}",
                problems.join("; ")
            ),
        ),
    }
}

/// Client addresses banned after too many failed AUTH attempts.
#[utoipa::path(get, path = "/api/v1/bans", tag = "protection",
    security(("api_key" = [])),
    responses((status = 200, body = Vec<Ban>), (status = 401, body = ErrorBody)))]
async fn bans(State(s): State<Arc<ApiState>>) -> Response {
    Json(s.control.bans()).into_response()
}

/// Lifts the ban of one address.
#[utoipa::path(delete, path = "/api/v1/bans/{address}", tag = "protection",
    params(("address" = String, Path, description = "IPv4 or IPv6 address")),
    security(("api_key" = [])),
    responses((status = 200, body = Done), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn lift_ban(
    State(s): State<Arc<ApiState>>,
    address: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(address) = match address {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // Not an address: no such ban either (a resource that does not exist).
    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("`{address}` is not an IP address, so not banned"),
        );
    };
    if s.control.lift_ban(ip) {
        Json(Done {
            id: address,
            done: true,
        })
        .into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("{address} is not banned"))
    }
}

use crate::suppress::{self, Origin, Reason, Suppression};

#[derive(Serialize, ToSchema)]
pub struct SuppressionPage {
    pub entries: Vec<Suppression>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Entries after this address (the `next` of the previous page).
    pub after: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AddQuery {
    /// Default `manual`.
    pub reason: Option<Reason>,
    /// Default `customer`.
    pub origin: Option<Origin>,
}

/// The stream and address of a path, checked; the message of a 400 otherwise.
fn stream_address(
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), String> {
    let Path((stream, address)) = p.map_err(|e| e.body_text())?;
    let stream = checked_stream(stream)?;
    let Some(address) = suppress::normalize_address(&address) else {
        return Err(format!("`{address}` is not an e-mail address"));
    };
    Ok((stream, address))
}

fn stream_only(p: Result<Path<String>, PathRejection>) -> Result<String, String> {
    let Path(stream) = p.map_err(|e| e.body_text())?;
    checked_stream(stream)
}

fn checked_stream(stream: String) -> Result<String, String> {
    if suppress::valid_stream(&stream) {
        Ok(stream)
    } else {
        Err(format!(
            "`{stream}` is not a stream name (1 to 64 of a-z, 0-9, - and _)"
        ))
    }
}

/// A stream's suppressed addresses, in address order.
#[utoipa::path(get, path = "/api/v1/suppressions/{stream}", tag = "suppressions",
    params(("stream" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"), PageQuery),
    security(("api_key" = [])),
    responses((status = 200, body = SuppressionPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn suppressions(
    State(s): State<Arc<ApiState>>,
    stream: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let stream = match stream_only(stream) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = match page_limit(q.limit, 100) {
        Ok(l) => l,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let kv = s.kv.clone();
    let r = blocking(move || suppress::list(&*kv, &stream, q.after.as_deref(), limit)).await;
    match r {
        Ok((entries, next)) => Json(SuppressionPage { entries, next }).into_response(),
        Err(r) => r,
    }
}

/// A stream's suppressions as CSV: `address,reason,origin,time`.
#[utoipa::path(get, path = "/api/v1/suppressions/{stream}/export", tag = "suppressions",
    params(("stream" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    security(("api_key" = [])),
    responses((status = 200, content_type = "text/csv", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn suppressions_csv(
    State(s): State<Arc<ApiState>>,
    stream: Result<Path<String>, PathRejection>,
) -> Response {
    let stream = match stream_only(stream) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let kv = s.kv.clone();
    match blocking(move || suppress::export_csv(&*kv, &stream)).await {
        Ok(csv) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response(),
        Err(r) => r,
    }
}

/// Suppresses an address on a stream (replacing an entry already there).
#[utoipa::path(put, path = "/api/v1/suppressions/{stream}/{address}", tag = "suppressions",
    params(("stream" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("address" = String, Path, pattern = "^[A-Za-z0-9.!#$%&'*+=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,189}$"), AddQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Suppression), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
async fn suppress_add(
    State(s): State<Arc<ApiState>>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<AddQuery>, QueryRejection>,
) -> Response {
    let (stream, address) = match stream_address(p) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (reason, origin) = (
        q.reason.unwrap_or(Reason::Manual),
        q.origin.unwrap_or(Origin::Customer),
    );
    let kv = s.kv.clone();
    match blocking(move || suppress::add(&*kv, &stream, &address, reason, origin)).await {
        Ok(e) => Json(e).into_response(),
        Err(r) => r,
    }
}

/// Lets an address receive mail on a stream again.
#[utoipa::path(delete, path = "/api/v1/suppressions/{stream}/{address}", tag = "suppressions",
    params(("stream" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("address" = String, Path, pattern = "^[A-Za-z0-9.!#$%&'*+=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,189}$")),
    security(("api_key" = [])),
    responses((status = 200, body = Done), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn suppress_remove(
    State(s): State<Arc<ApiState>>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let (stream, address) = match stream_address(p) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let kv = s.kv.clone();
    let a = address.clone();
    match blocking(move || suppress::remove(&*kv, &stream, &a)).await {
        Ok(true) => Json(Done {
            id: address,
            done: true,
        })
        .into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("{address} is not suppressed"),
        ),
        Err(r) => r,
    }
}

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `sluice api-key create`: `sluice_<id>_<secret>`",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice admin API", description = "Operate a running Sluice: queue, events and message history, policies, bans, suppressions, archive, DMARC reports. Every error is JSON `{\"error\": message}`; 401 without a valid key, 403 when the key's scope does not allow the request."),
    paths(queue_list, queue_show, queue_retry, queue_release, queue_delete, policies, reload, bans, lift_ban,
        suppressions, suppressions_csv, suppress_add, suppress_remove,
        crate::archive::archive_search, crate::archive::archive_show, crate::archive::archive_raw,
        crate::archive::archive_verify, crate::archive::archive_verify_status, crate::events::events, crate::events::message_history,
        crate::dmarc::reports, crate::dmarc::report, crate::dmarc::day_summary),
    components(schemas(StateFilter, Reason, Origin)),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// The OpenAPI document (JSON).
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// Checks the bearer key and its scope.
async fn authorize(State(s): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return unauthorized("an API key is required: Authorization: Bearer <key>");
    };
    let keys = s.keys.clone();
    let token = token.to_string();
    let checked = tokio::task::spawn_blocking(move || keys.check(&token)).await;
    let key = match checked {
        Ok(Ok(k)) => k,
        Ok(Err(Refusal::Expired)) => return unauthorized("this API key has expired"),
        Ok(Err(_)) => return unauthorized("invalid API key"),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if key.scope == Scope::Read && !reading {
        return error(
            StatusCode::FORBIDDEN,
            format!("key {} has the read scope; this needs admin", key.id),
        );
    }
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sluice\""),
    );
    r
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such API endpoint")
}

/// `/api/v1/...`: the OpenAPI document is public, everything else needs a key.
pub fn router(state: Arc<ApiState>) -> Router {
    let protected = Router::new()
        .route("/api/v1/queue", get(queue_list))
        .route("/api/v1/queue/{id}", get(queue_show).delete(queue_delete))
        .route("/api/v1/queue/{id}/retry", post(queue_retry))
        .route("/api/v1/queue/{id}/release", post(queue_release))
        .route(
            "/api/v1/queue/{id}/history",
            get(crate::events::message_history),
        )
        .route("/api/v1/events", get(crate::events::events))
        .route("/api/v1/policies", get(policies))
        .route("/api/v1/policies/reload", post(reload))
        .route("/api/v1/bans", get(bans))
        .route("/api/v1/bans/{address}", axum::routing::delete(lift_ban))
        .route("/api/v1/suppressions/{stream}", get(suppressions))
        .route(
            "/api/v1/suppressions/{stream}/export",
            get(suppressions_csv),
        )
        .route(
            "/api/v1/suppressions/{stream}/{address}",
            axum::routing::put(suppress_add).delete(suppress_remove),
        )
        .route("/api/v1/archive", get(crate::archive::archive_search))
        .route(
            "/api/v1/archive/verify",
            post(crate::archive::archive_verify).get(crate::archive::archive_verify_status),
        )
        .route("/api/v1/archive/{id}", get(crate::archive::archive_show))
        .route("/api/v1/archive/{id}/raw", get(crate::archive::archive_raw))
        .route("/api/v1/dmarc/reports", get(crate::dmarc::reports))
        .route("/api/v1/dmarc/reports/{id}", get(crate::dmarc::report))
        .route("/api/v1/dmarc/summary", get(crate::dmarc::day_summary))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state);
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .merge(protected)
        .fallback(not_found)
}
