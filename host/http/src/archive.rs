//! The archive's endpoints under `/api/v1/archive`: search, one entry's metadata, its raw
//! message as `.eml`, and the tamper check.

// The `utoipa::path` macros expand to qualified paths.
#![allow(unused_qualifications)]

use crate::api::{ApiState, Attribute, ErrorBody, blocking, error, page_limit};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sluice_archive::{Entry, keys};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// One archived message.
#[derive(Serialize, ToSchema)]
pub struct ArchiveEntry {
    pub id: u64,
    /// The blob namespace the policy step stored it in.
    pub namespace: String,
    /// Unix seconds when it was archived.
    pub created: u64,
    /// Unix seconds from which it may be purged.
    pub expires: u64,
    pub size: u64,
    /// Hex SHA-256 of the raw message.
    pub sha256: String,
    pub queue_id: Option<String>,
    pub message_id: Option<String>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub subject: Option<String>,
    /// Everything recorded: session, authentication results, metadata, the policy
    /// step's own attributes.
    pub attributes: Vec<Attribute>,
}

impl From<Entry> for ArchiveEntry {
    fn from(e: Entry) -> ArchiveEntry {
        let one = |k: &str| e.value(k).map(str::to_string);
        ArchiveEntry {
            id: e.id,
            namespace: e.namespace.clone(),
            created: e.created_ms / 1000,
            expires: e.expires,
            size: e.size,
            sha256: hex::encode(e.sha256),
            queue_id: one(keys::QUEUE_ID),
            message_id: one(keys::MESSAGE_ID),
            sender: one(keys::SENDER),
            recipients: e.values(keys::RECIPIENT).map(str::to_string).collect(),
            subject: one(keys::SUBJECT),
            attributes: Attribute::list(e.attributes),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ArchivePage {
    /// Newest first.
    pub entries: Vec<ArchiveEntry>,
    /// Pass as `before` for the next page; absent on the last.
    pub next: Option<u64>,
}

impl From<sluice_archive::Page> for ArchivePage {
    fn from(p: sluice_archive::Page) -> ArchivePage {
        ArchivePage {
            entries: p.entries.into_iter().map(ArchiveEntry::from).collect(),
            next: p.next,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArchiveQuery {
    /// Envelope sender, or `@domain`.
    pub sender: Option<String>,
    /// A recipient, or `@domain`.
    pub recipient: Option<String>,
    /// Words that must all appear in the subject.
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub queue_id: Option<String>,
    pub namespace: Option<String>,
    /// From this time (unix seconds).
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Before this time (unix seconds).
    #[param(minimum = 0)]
    pub until: Option<i64>,
    /// Entries older than this id (the `next` of the previous page).
    #[param(minimum = 0)]
    pub before: Option<i64>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Searches archived messages, newest first; every given criterion must match.
#[utoipa::path(get, path = "/api/v1/archive", tag = "archive", params(ArchiveQuery),
    security(("api_key" = [])),
    responses((status = 200, body = ArchivePage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(crate) async fn archive_search(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<ArchiveQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = match page_limit(q.limit, 50) {
        Ok(l) => l,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let unsigned = |name: &str, v: Option<i64>| match v {
        Some(n) if n < 0 => Err(format!("{name} must not be negative")),
        v => Ok(v.map(|n| n as u64)),
    };
    let (since, until, before) = match (
        unsigned("since", q.since),
        unsigned("until", q.until),
        unsigned("before", q.before),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(m), _, _) | (_, Err(m), _) | (_, _, Err(m)) => {
            return error(StatusCode::BAD_REQUEST, m);
        }
    };
    let query = sluice_archive::Query {
        namespace: q.namespace,
        sender: q.sender,
        recipient: q.recipient,
        subject: q.subject,
        message_id: q.message_id,
        queue_id: q.queue_id,
        since,
        until,
        before,
        limit,
    };
    let archive = s.archive.clone();
    match blocking(move || archive.search(&query)).await {
        Ok(page) => Json(ArchivePage::from(page)).into_response(),
        Err(r) => r,
    }
}

/// The entry id in the path, or the error answer's status and message.
fn id_of(id: Result<Path<String>, PathRejection>) -> Result<u64, (StatusCode, String)> {
    match id {
        Ok(Path(id)) => id
            .parse::<u64>()
            .map_err(|_| (StatusCode::NOT_FOUND, format!("no archived message {id}"))),
        Err(e) => Err((StatusCode::BAD_REQUEST, e.body_text())),
    }
}

/// One archived message's metadata.
#[utoipa::path(get, path = "/api/v1/archive/{id}", tag = "archive",
    params(("id" = String, Path, description = "Archive entry id")),
    security(("api_key" = [])),
    responses((status = 200, body = ArchiveEntry), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(crate) async fn archive_show(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match id_of(id) {
        Ok(id) => id,
        Err((status, m)) => return error(status, m),
    };
    let archive = s.archive.clone();
    match blocking(move || archive.entry(id)).await {
        Ok(Some(e)) => Json(ArchiveEntry::from(e)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no archived message {id}")),
        Err(r) => r,
    }
}

/// The raw message as stored (`message/rfc822`, an `.eml` download), checked against its
/// SHA-256 first.
#[utoipa::path(get, path = "/api/v1/archive/{id}/raw", tag = "archive",
    params(("id" = String, Path, description = "Archive entry id")),
    security(("api_key" = [])),
    responses((status = 200, content_type = "message/rfc822", body = String),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub(crate) async fn archive_raw(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match id_of(id) {
        Ok(id) => id,
        Err((status, m)) => return error(status, m),
    };
    let archive = s.archive.clone();
    match blocking(move || archive.get(id)).await {
        Ok(Some((_, raw))) => (
            [
                (header::CONTENT_TYPE, "message/rfc822".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}.eml\""),
                ),
            ],
            raw,
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no archived message {id}")),
        Err(r) => r,
    }
}

/// What `verify` found.
#[derive(Clone, Serialize, ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    /// Entries whose message and metadata were checked.
    pub messages: u64,
    /// Purged entries whose link in the chain was checked.
    pub tombstones: u64,
    pub bytes: u64,
    /// The last entry's id; record it with `head_chain` to detect a truncated archive.
    pub head_id: Option<u64>,
    /// Hex chain value after the last entry.
    pub head_chain: Option<String>,
    pub problems: Vec<String>,
}

impl From<sluice_archive::Verification> for VerifyReport {
    fn from(v: sluice_archive::Verification) -> VerifyReport {
        VerifyReport {
            ok: v.problems.is_empty(),
            messages: v.messages,
            tombstones: v.tombstones,
            bytes: v.bytes,
            head_id: v.head.as_ref().map(|h| h.0),
            head_chain: v.head.map(|h| h.1),
            problems: v.problems,
        }
    }
}

/// The archive verification running in the background, or the last one's outcome.
#[derive(Default)]
pub struct VerifyJobs(std::sync::Mutex<Option<VerifyStatus>>);

impl VerifyJobs {
    fn get(&self) -> Option<VerifyStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, status: VerifyStatus) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }
}

/// Where a verification is.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyState {
    Running,
    /// Finished; the report says what was found.
    Done,
    /// The archive could not be read through; the error says why.
    Failed,
}

/// A verification: running, done (with its report) or failed (with the error).
#[derive(Clone, Serialize, ToSchema)]
pub struct VerifyStatus {
    pub state: VerifyState,
    /// Unix seconds.
    pub started: u64,
    pub finished: Option<u64>,
    /// When `done`: what was found (`ok` false with `problems` when something is wrong).
    pub report: Option<VerifyReport>,
    /// When `failed`: why the archive could not be read through.
    pub error: Option<String>,
}

/// Starts checking the archive's hash chain and every stored message in the background
/// (it reads the whole archive: minutes for a large one); poll `GET` for the outcome. A
/// verification already running is not started twice: its status is returned.
#[utoipa::path(post, path = "/api/v1/archive/verify", tag = "archive",
    security(("api_key" = [])),
    responses((status = 202, body = VerifyStatus), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn archive_verify(State(s): State<Arc<ApiState>>) -> Response {
    let status = {
        let mut job = s.verify.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = job.as_ref().filter(|j| j.state == VerifyState::Running) {
            return (StatusCode::ACCEPTED, Json(running.clone())).into_response();
        }
        let status = VerifyStatus {
            state: VerifyState::Running,
            started: sluice_queue::now_secs(),
            finished: None,
            report: None,
            error: None,
        };
        *job = Some(status.clone());
        status
    };
    let state = s.clone();
    let started = status.started;
    tokio::spawn(async move {
        let archive = state.archive.clone();
        let outcome = tokio::task::spawn_blocking(move || archive.verify()).await;
        let (report, error) = match outcome {
            Ok(Ok(v)) => (Some(VerifyReport::from(v)), None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(e) = &error {
            tracing::error!(error = %e, "archive verification failed");
        }
        state.verify.set(VerifyStatus {
            state: if error.is_some() {
                VerifyState::Failed
            } else {
                VerifyState::Done
            },
            started,
            finished: Some(sluice_queue::now_secs()),
            report,
            error,
        });
    });
    (StatusCode::ACCEPTED, Json(status)).into_response()
}

/// The running verification, or the last one's outcome.
#[utoipa::path(get, path = "/api/v1/archive/verify", tag = "archive",
    security(("api_key" = [])),
    responses((status = 200, body = VerifyStatus), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn archive_verify_status(State(s): State<Arc<ApiState>>) -> Response {
    match s.verify.get() {
        Some(status) => Json(status).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no verification started since the server started: POST to start one",
        ),
    }
}
