//! The stage points where the plugin chain runs, and what it may answer.
//!
//! The SMTP session calls `connect`, `ehlo`, `mail`, `rcpt` and `data`; the queue calls
//! `queued` after the 250; delivery calls `delivery` before each attempt and `event` with every
//! outcome. [`PassThrough`] answers `Continue` everywhere.

use crate::{Envelope, Recipient, Reply, SessionInfo};
use async_trait::async_trait;

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

/// A delivery outcome reported to the `event` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Delivered,
    Deferred,
    Bounced,
}

/// One event: what happened to one recipient of one message.
#[derive(Debug, Clone)]
pub struct DeliveryEvent {
    pub kind: EventKind,
    pub message_id: String,
    pub sender: String,
    pub recipient: String,
    pub reply: Reply,
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

    async fn rcpt(
        &self,
        _session: &SessionInfo,
        _envelope: &Envelope,
        _recipient: &Recipient,
    ) -> Verdict {
        Verdict::Continue
    }

    /// Before the 250: may edit the envelope and the message in place.
    async fn data(
        &self,
        _session: &SessionInfo,
        _envelope: &mut Envelope,
        _message: &mut Vec<u8>,
    ) -> Verdict {
        Verdict::Continue
    }

    /// After the message is durable, off the SMTP path. `session` is `None` for mail the
    /// host made itself (DSNs).
    async fn queued(
        &self,
        _id: &str,
        _session: Option<&SessionInfo>,
        _envelope: &Envelope,
        _message: &[u8],
    ) {
    }

    /// Before each delivery attempt of one message to the given recipients.
    async fn delivery(
        &self,
        _id: &str,
        _session: Option<&SessionInfo>,
        _envelope: &Envelope,
        _message: &[u8],
        _recipients: &[Recipient],
    ) -> Verdict {
        Verdict::Continue
    }

    async fn event(&self, _event: &DeliveryEvent) {}
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
