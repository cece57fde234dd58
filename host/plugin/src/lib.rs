//! The plugin runtime: every message runs through chains of sandboxed WebAssembly
//! components declared in TOML policies. This is the only crate that imports wasmtime.
//!
//! # Layout
//! - [`bindings`]: host-side bindings generated from `wit/sluice-plugin.wit`.
//! - [`runtime`]: the engine (pooling allocator with a fallback, epoch ticker), the on-disk
//!   cache of compiled components, and loading a plugin into an `InstancePre`.
//! - [`policy`]: the policy files (`policies/*.toml`): schema and compilation, with every
//!   problem reported with file, line and key.
//! - [`policy_tests`]: the `[[test]]` cases of policy files, run before policies go live.
//! - [`step`]: the per-call store state: limits, grants, and the host functions.
//! - [`message`]: the message resource plugins read, parsed once and lazily.
//! - [`handlers`]: calling a handler with export indices resolved and type-checked once.
//! - [`chain`]: running one stage through a chain's steps, with containment (`on_error`)
//!   and score thresholds.
//! - [`edits`]: applying plugin edits to the message and envelope, once, as valid MIME.
//! - [`pipeline`]: [`WasmPipeline`], the `sluice_core::Pipeline` the host calls, with
//!   atomic hot reload.
//!
//! *Invariant*: a plugin failure (trap, timeout, memory exhaustion, oversized or malformed
//! result, ungranted call) affects only that message and that step; the step's `on_error`
//! decides what the message gets.

pub mod bindings;
pub mod chain;
pub mod edits;
pub mod handlers;
pub mod http_client;
pub mod message;
pub mod pipeline;
pub mod policy;
pub mod policy_tests;
pub mod runtime;
pub mod step;

pub use pipeline::WasmPipeline;
pub use policy::{PolicySet, load_policies};
pub use runtime::Runtime;
