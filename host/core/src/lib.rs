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

/// The domain part of an address (after the last `@`), lowercased; empty for the null path.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}
