//! Types shared by every host crate: the envelope, SMTP replies, session facts and the
//! [`Pipeline`] interface through which the SMTP session, the queue and delivery call the
//! plugin chain.
//!
//! Nothing here does network I/O; [`durable`] holds the one helper for files that must survive
//! a power cut. The crate is small so that everything can depend on it.
//!
//! # Layout
//! - [`envelope`]: sender, recipients and DSN parameters (RFC 3461).
//! - [`reply`]: an SMTP reply with its enhanced status code.
//! - [`pipeline`]: the stages, verdicts and the `Pipeline` trait with a pass-through impl.
//! - [`durable`]: atomic, fsynced file replacement and durable folder creation.

pub mod durable;
pub mod envelope;
pub mod pipeline;
pub mod reply;

pub use envelope::{Envelope, Notify, Recipient, Ret, SessionInfo};
pub use pipeline::{
    Event, EventKind, EventOutcome, EventSink, Fixed, MessageRef, PassThrough, Pipeline, Pipelines,
    Rendered, Stage, Variant, Verdict,
};
pub use reply::Reply;

/// Metadata keys the host writes (`sluice.` is reserved: plugins cannot set it).
pub mod meta {
    /// Prefix of every host key.
    pub const RESERVED_PREFIX: &str = "sluice.";
    /// Authentication results of received mail (RFC 8601 result names).
    pub const SPF: &str = "sluice.auth.spf";
    pub const DKIM: &str = "sluice.auth.dkim";
    pub const DMARC: &str = "sluice.auth.dmarc";
    pub const ARC: &str = "sluice.auth.arc";
    /// What the From: domain's DMARC policy asks for this failing message: `reject` or
    /// `quarantine` (absent otherwise); a policy with `dmarc = "enforce"` applies it.
    pub const DMARC_ACTION: &str = "sluice.auth.dmarc-action";
    /// The From: domain DMARC evaluated.
    pub const DMARC_DOMAIN: &str = "sluice.auth.dmarc-domain";
    /// Milliseconds from the end of DATA to the data stage's verdict (authentication
    /// checks and the policy's data steps).
    pub const DATA_MS: &str = "sluice.timing.data-ms";
    /// Unix seconds a message was quarantined at delivery or at the queued stage (mail
    /// quarantined on arrival counts from its arrival); its retention runs from then.
    pub const QUARANTINED_AT: &str = "sluice.quarantined-at";
    /// A message to one of our VERP return paths (`[verp]`): the queue id of the message
    /// it answers, and that message's recipient the return path was made for (when still
    /// known: the queue or the event history).
    pub const VERP_QUEUE_ID: &str = "sluice.verp.queue-id";
    pub const VERP_RECIPIENT: &str = "sluice.verp.recipient";
}

/// The domain part of an address (after the last `@`), lowercased; empty for the null path.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}
