//! Sluice's TOML configuration in three steps: serde structs that mirror the file
//! ([`file`]), a [`compile`] pass that checks everything and collects *all* problems at
//! once, and the runtime [`Settings`] the other crates use. The SMTP session and delivery
//! never read TOML.
//!
//! Every problem names the file, the line and the key.
//!
//! # Layout
//! - [`file`]: the schema, with a doc comment on every field; defaults are written once,
//!   in the `Default` impls.
//! - [`settings`]: runtime types.
//! - [`compile`]: file structs → settings, with validation.
//! - [`error`]: problems with their location.

pub mod compile;
pub mod error;
pub mod file;
pub mod settings;

pub use compile::{load, load_str};
pub use error::{ConfigError, Problem};
pub use settings::*;

/// The configuration `sluice serve` runs when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/sluice.toml");

/// Name used in messages about the embedded default.
pub const EMBEDDED_NAME: &str = "<embedded default>";
