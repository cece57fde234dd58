//! The inbound ESMTP server: listeners, sessions, STARTTLS and AUTH.
//!
//! A [`Session`](session::Session) is generic over its stream so tests can drive it without
//! sockets. It keeps three kinds of state apart: the protocol state (which receiver is
//! reading: commands, DATA, BDAT or a SASL exchange), the envelope being built, and the
//! listener's settings. It calls the [`Pipeline`](sluice_core::Pipeline) at each stage and
//! answers `250` to end-of-data only after [`Queue::enqueue`](sluice_queue::Queue) returned,
//! that is once the message is on disk.
//!
//! # Layout
//! - [`server`]: accept loop, connection limit, graceful shutdown.
//! - [`session`]: one file per SMTP phase (`ehlo`, `mail`, `rcpt`, `data`, `auth`).
//! - [`tls`]: the certificate (from config, or self-signed and kept in the data folder).
//! - [`users`]: the AUTH users file of argon2id hashes.

pub mod protect;
pub mod server;
pub mod session;
pub mod tls;
pub mod users;

pub use server::{ServerContext, serve_listener};
pub use users::Users;
