//! Outbound delivery: the scheduler that walks the queue, routes per recipient domain
//! (MX, smarthost or local Maildir), the SMTP client, retries with exponential backoff and
//! RFC 3464 delivery status notifications.
//!
//! # Layout
//! - [`engine`]: the scheduler, connection pools per destination, outcomes and retries.
//! - [`client`]: one outbound SMTP connection (STARTTLS, PIPELINING, DSN parameters).
//! - [`mx`]: next-hop resolution (MX records, implicit MX, null MX).
//! - [`maildir`]: local delivery.
//! - [`dsn`]: building bounce, delay and success reports.
//! - [`events`]: the event dispatcher over the outbox, with retries.
//!
//! *Invariant*: a message leaves the queue only when every recipient has a final status
//! (delivered, or failed with its DSN queued). Delivery is at least once: a crash between a
//! next hop's 250 and the queue update causes a second delivery after restart.

pub mod client;
pub mod dsn;
pub mod engine;
pub mod events;
pub mod maildir;
pub mod mx;

pub use engine::Engine;

use sluice_core::Reply;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop took responsibility (or the message is in the mailbox).
    Delivered {
        reply: Reply,
        remote: Option<String>,
        /// The next hop supports DSN and got our DSN parameters: reports are its job now.
        dsn_passed_on: bool,
        /// Delivered to a mailbox here (`delivered`), not relayed (`relayed`).
        final_delivery: bool,
    },
    Deferred {
        reply: Reply,
        remote: Option<String>,
    },
    Failed {
        reply: Reply,
        remote: Option<String>,
    },
}

impl Outcome {
    /// `Failed` for a permanent (5xx) reply, `Deferred` otherwise.
    pub fn not_delivered(reply: Reply, remote: Option<String>) -> Outcome {
        if reply.is_permanent() {
            Outcome::Failed { reply, remote }
        } else {
            Outcome::Deferred { reply, remote }
        }
    }

    /// The same not-delivered outcome for each recipient index.
    pub fn for_all(idx: &[usize], reply: &Reply, remote: &Option<String>) -> Vec<(usize, Outcome)> {
        idx.iter()
            .map(|&i| (i, Outcome::not_delivered(reply.clone(), remote.clone())))
            .collect()
    }
}
