//! Sluice's spam classifier, shared by the host (`sluice spam train`, `sluice spam cv`) and
//! the `spam-score` WebAssembly plugin so that both see a message the same way.
//!
//! - [`features`]: what is learned from a message: hashed tokens of the subject, sender,
//!   body text, URLs and HTML structure, plus named heuristics ([`View`] is the message as
//!   the plugin contract exposes it). Headers that describe how one mailbox collected its
//!   mail (`Received`, `To`, list headers, `X-Spam-*`, ...) are never read.
//! - [`model`]: the model file (a hashed logistic regression: header, then one `f32` weight
//!   per bucket) and scoring against weights read from it.
//! - [`train`]: the trainer (AdaGrad logistic regression) and cross-validation helpers.
//!
//! No dependencies and no I/O: the plugin reads the model through the contract's read-only
//! data, the host from a file.

pub mod features;
pub mod model;
pub mod train;

pub use features::{Features, View, extract};
pub use model::{Model, ModelError, ModelHeader, Scored};
