//! Test plugins, built by `build.rs` from `plugins/` for wasm32-wasip2, with their paths and
//! SHA-256 digests for policies written by tests.

/// A built plugin.
#[derive(Debug, Clone, Copy)]
pub struct Plugin {
    pub path: &'static str,
    pub sha256: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
