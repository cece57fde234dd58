//! Network plumbing shared by the SMTP server and the delivery client: a stream that can
//! switch to TLS in the middle of a session, and the client TLS configurations.
//!
//! # Layout
//! - [`stream`]: [`MaybeTls`], plain or TLS (client or server side).
//! - [`client_tls`]: rustls client configs for opportunistic and verified TLS.

pub mod client_tls;
pub mod stream;

pub use stream::MaybeTls;
