//! The stage points where the plugin chain runs, and what it may answer.
//!
//! The SMTP session calls `connect`, `ehlo`, `mail`, `rcpt` and `data`; delivery calls
//! `queued` once after the 250 (until it stops deferring), `delivery` before each attempt and
//! `render` per recipient; the event dispatcher calls `event` for every event on the bus.
//! [`PassThrough`] answers `Continue` everywhere.

use crate::{Envelope, Recipient, Reply, SessionInfo};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A stage a policy step can subscribe to. The same list is in the WIT contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Connect,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Queued,
    Delivery,
    Render,
    Event,
}

/// What a stage decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next step, or the host's default when none is left.
    Continue,
    /// Accept now and skip the remaining steps of this stage.
    Accept,
    /// Refuse permanently with this reply.
    Reject(Reply),
    /// Refuse for now with this reply.
    Defer(Reply),
    /// Accept but hold the message for an operator, with a reason.
    Quarantine(String),
    /// Accept and drop silently.
    Discard,
}

/// What an event is about. The same list is in the WIT contract, where `Other` keeps new
/// kinds from breaking compiled plugins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Queued,
    Delivered,
    Deferred,
    Bounced,
    Rejected,
    Quarantined,
    Opened,
    Clicked,
    Unsubscribed,
    Complained,
    Other(String),
}

impl EventKind {
    /// The kind's name as in the WIT contract and the event JSON (`other` kinds by their own
    /// name).
    pub fn name(&self) -> &str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Rejected => "rejected",
            EventKind::Quarantined => "quarantined",
            EventKind::Opened => "opened",
            EventKind::Clicked => "clicked",
            EventKind::Unsubscribed => "unsubscribed",
            EventKind::Complained => "complained",
            EventKind::Other(s) => s,
        }
    }
}

/// One event on the host's durable bus: a delivery result, a tracking hit, a bounce, a
/// complaint, or what a plugin emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique and sortable by time; receivers de-duplicate on it.
    pub id: String,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub kind: EventKind,
    pub queue_id: Option<String>,
    /// The message's `Message-ID` header, when known.
    pub message_id: Option<String>,
    pub sender: String,
    pub recipient: Option<String>,
    pub reply: Option<Reply>,
    /// The message's metadata and what the event's source added.
    pub attributes: Vec<(String, String)>,
    /// The listener of the session the message came from: chains with a `listeners`
    /// condition match events of that listener's mail only.
    pub listener: Option<String>,
    /// Whether that session was authenticated (`None` for events without a session, which
    /// only chains without an `authenticated` condition see).
    pub authenticated: Option<bool>,
}

impl Event {
    /// A new event of `kind` now, with a fresh id and nothing else set.
    pub fn new(kind: EventKind, sender: impl Into<String>) -> Event {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Event {
            id: event_id(time_ms),
            time_ms,
            kind,
            queue_id: None,
            message_id: None,
            sender: sender.into(),
            recipient: None,
            reply: None,
            attributes: Vec::new(),
            listener: None,
            authenticated: None,
        }
    }

    /// Sets the session facts chains select on.
    pub fn with_session(mut self, session: Option<&SessionInfo>) -> Event {
        if let Some(s) = session {
            self.listener = Some(s.listener.clone());
            self.authenticated = Some(s.auth_user.is_some());
        }
        self
    }
}

/// `E` + 13 hex digits of milliseconds + 16 hex digits of a per-process random start plus
/// a counter: unique, and sortable by time and, within a millisecond of one process, by
/// creation (a message's per-recipient events keep the envelope's order).
fn event_id(time_ms: u64) -> String {
    format!("E{time_ms:013X}{:016X}", sequence())
}

fn sequence() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<u64> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; 62 random bits leave room to count.
    let start = *START.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            >> 2
    });
    start + N.fetch_add(1, Ordering::Relaxed)
}

/// What an event step made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// Done with it (whatever the verdict, unless it was a defer).
    Ack,
    /// Try again later (a step answered `defer`, or failed with `on_error = "tempfail"`).
    Retry(Reply),
}

/// Where the host and plugins put events. Publishing is durable no later than the queue's
/// next flush, and ordered with the queue's own writes.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: Event) -> Result<(), String>;
}

/// One queued message as the later stages see it.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    pub id: &'a str,
    /// `None` for mail the host made itself (DSNs).
    pub session: Option<&'a SessionInfo>,
    pub envelope: &'a Envelope,
    pub body: &'a std::sync::Arc<Vec<u8>>,
}

/// One variant of a message after per-recipient rendering: the recipients (indexes into
/// the list given) that share it, and its bytes.
#[derive(Debug, Clone)]
pub struct Variant {
    pub recipients: Vec<usize>,
    pub body: std::sync::Arc<Vec<u8>>,
}

/// The result of per-recipient rendering: the variants, and the recipients whose render
/// step failed with what its `on_error` made of it (`Defer` or `Reject`).
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub variants: Vec<Variant>,
    pub failed: Vec<(usize, Verdict)>,
}

/// The plugin chain as the host sees it. Every method defaults to `Continue`.
#[async_trait]
pub trait Pipeline: Send + Sync {
    async fn connect(&self, _session: &SessionInfo) -> Verdict {
        Verdict::Continue
    }

    async fn ehlo(&self, _session: &SessionInfo) -> Verdict {
        Verdict::Continue
    }

    async fn mail(&self, _session: &SessionInfo, _envelope: &Envelope) -> Verdict {
        Verdict::Continue
    }

    /// A `Quarantine` holds that recipient with its message; `Discard` accepts and drops it.
    async fn rcpt(
        &self,
        _session: &SessionInfo,
        _envelope: &Envelope,
        _recipient: &Recipient,
    ) -> Verdict {
        Verdict::Continue
    }

    /// Before the 250, with the queue id the message will have: may edit the envelope
    /// (metadata included) and the message in place.
    async fn data(
        &self,
        _id: &str,
        _session: &SessionInfo,
        _envelope: &mut Envelope,
        _message: &mut Vec<u8>,
    ) -> Verdict {
        Verdict::Continue
    }

    /// Whether any chain has `event` steps: when none has, the host does not put its own
    /// events (queued, delivered, ...) on the bus.
    fn wants_events(&self) -> bool {
        false
    }

    /// Whether a message with this session and envelope has `queued` steps to run; when it
    /// has, delivery waits for them.
    fn wants_queued(&self, _session: Option<&SessionInfo>, _envelope: &Envelope) -> bool {
        false
    }

    /// After the message is durable, off the SMTP path, before delivery; run again (at
    /// least once, across restarts) until it answers something other than `Defer`. Only
    /// metadata edits are allowed: `meta` receives the message's metadata as the stage left
    /// it (starting from `message.envelope.meta`).
    async fn queued(&self, _message: MessageRef<'_>, _meta: &mut Vec<(String, String)>) -> Verdict {
        Verdict::Continue
    }

    /// Before each delivery attempt of one message to the given recipients.
    async fn delivery(&self, _message: MessageRef<'_>, _recipients: &[Recipient]) -> Verdict {
        Verdict::Continue
    }

    /// Per-recipient rendering at delivery. `None` when no step renders: every recipient
    /// gets the body as queued.
    async fn render(
        &self,
        _message: MessageRef<'_>,
        _recipients: &[Recipient],
    ) -> Option<Rendered> {
        None
    }

    async fn event(&self, _event: &Event) -> EventOutcome {
        EventOutcome::Ack
    }
}

/// The chain with no steps.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Pipeline for PassThrough {}

/// Where sessions and delivery get the pipeline from. A session takes one snapshot when it
/// starts and keeps it to its end, so a reload never changes the chain under a session.
pub trait Pipelines: Send + Sync {
    fn current(&self) -> std::sync::Arc<dyn Pipeline>;
}

/// Always the same pipeline.
pub struct Fixed(pub std::sync::Arc<dyn Pipeline>);

impl Pipelines for Fixed {
    fn current(&self) -> std::sync::Arc<dyn Pipeline> {
        self.0.clone()
    }
}
