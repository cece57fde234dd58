//! The wasmtime engine and loading plugins.
//!
//! One engine for the process: the pooling allocator with explicit limits (falling back to
//! on-demand allocation when the address space cannot be reserved), epoch interruption
//! driven by a ticker thread, and compiled components cached on disk under the SHA-256 of
//! the component and a hash of the engine's compatibility settings.

use crate::bindings::PluginPre;
use crate::step::StepState;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// One epoch tick; CPU deadlines are whole numbers of ticks.
pub const TICK: Duration = Duration::from_millis(5);

/// Largest linear memory a step may ask for (its policy limit is checked against this).
pub const MAX_MEMORY: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {path} has sha256 {actual}, but the policy requires {expected}")]
    Digest {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("plugin {path} is not a usable component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "plugin {path} was built for {found}, but this host speaks {expected}: rebuild it against wit/sluice-plugin.wit"
    )]
    Version {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
}

/// The contract version this host implements.
pub const CONTRACT: &str = "sluice:plugin@0.2.0";

/// A read-only data file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has sha256 {actual}, but the policy requires {expected}")]
    Digest {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("plugin runtime: {0}")]
pub struct EngineError(pub String);

pub struct Runtime {
    engine: Engine,
    linker: Linker<StepState>,
    cache_dir: Option<PathBuf>,
    /// Data files by sha256, so that a reload does not read a big model again and every
    /// step naming the same file shares one copy.
    data: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<[u8]>>>,
}

impl Runtime {
    /// Builds the engine; `cache_dir` keeps compiled components between runs.
    pub fn new(cache_dir: Option<&Path>) -> Result<Arc<Runtime>, EngineError> {
        let e = |e: wasmtime::Error| EngineError(format!("{e:#}"));
        let engine = match Engine::new(&config(true)) {
            Ok(engine) => engine,
            Err(err) => {
                tracing::warn!(error = %err, "pooling allocator unavailable; using on-demand allocation");
                Engine::new(&config(false)).map_err(e)?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(e)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(e)?;
        crate::bindings::Plugin::add_to_linker::<StepState, wasmtime::component::HasSelf<StepState>>(
            &mut linker,
            |s| s,
        )
        .map_err(e)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|err| EngineError(err.to_string()))?;
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|err| EngineError(format!("{}: {err}", dir.display())))?;
        }
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.map(Path::to_path_buf),
            data: Default::default(),
        }))
    }

    /// A read-only data file, checked against its digest; shared while any step holds it.
    pub fn data_file(&self, path: &Path, sha256: &str) -> Result<Arc<[u8]>, DataError> {
        let want = sha256.to_ascii_lowercase();
        if let Some(bytes) = self
            .data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&want)
            .and_then(std::sync::Weak::upgrade)
        {
            return Ok(bytes);
        }
        let bytes = std::fs::read(path).map_err(|source| DataError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != want {
            return Err(DataError::Digest {
                path: path.to_path_buf(),
                expected: sha256.to_string(),
                actual,
            });
        }
        let bytes: Arc<[u8]> = bytes.into();
        let mut cache = self.data.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert(want, Arc::downgrade(&bytes));
        Ok(bytes)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads a plugin, checks its digest, compiles it (or loads the cached compilation) and
    /// links it.
    pub fn load(&self, path: &Path, sha256: &str) -> Result<Loaded, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(sha256) {
            return Err(LoadError::Digest {
                path: path.to_path_buf(),
                expected: sha256.to_string(),
                actual,
            });
        }
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let component = self.component(&bytes, &actual).map_err(invalid)?;
        self.check_version(path, &component)?;
        let pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        Ok(Loaded {
            pre: PluginPre::new(pre).map_err(invalid)?,
            reusable: declares_reusable(&bytes),
        })
    }

    /// Refuses a component that exports another version of the `filter` interface.
    fn check_version(&self, path: &Path, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        let mut found = None;
        for (name, _) in ty.exports(&self.engine) {
            if let Some(version) = name.strip_prefix("sluice:plugin/filter") {
                let version = version.trim_start_matches('@');
                let package = format!("sluice:plugin@{version}");
                if package == CONTRACT {
                    return Ok(());
                }
                found = Some(package);
            }
        }
        Err(LoadError::Version {
            path: path.to_path_buf(),
            found: found.unwrap_or_else(|| "no sluice:plugin/filter export".into()),
            expected: CONTRACT,
        })
    }

    fn component(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<Component> {
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes);
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let file = dir.join(format!("{digest}-{:016x}.cwasm", h.finish()));
        if file.exists() {
            match deserialize(&self.engine, &file) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %file.display(), error = %e, "recompiling: cached component unusable")
                }
            }
        }
        let compiled = self.engine.precompile_component(bytes)?;
        // Whole or absent after a power cut: a torn file would be mapped as code.
        sluice_core::durable::write_atomic(&file, &compiled, 0o644)?;
        deserialize(&self.engine, &file)
    }
}

/// Loads a precompiled component from the cache folder.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `precompile_component` of an engine with the same
    // compatibility hash (it is in the name), into the data folder Sluice owns. Wasmtime
    // checks the header and engine settings again; the remaining risk is someone with
    // write access to the data folder, who could equally replace the binary.
    unsafe { Component::deserialize_file(engine, file) }
}

/// A plugin ready to instantiate.
pub struct Loaded {
    pub pre: PluginPre<StepState>,
    /// The component declares it keeps nothing between calls ([`REUSABLE_SECTION`]).
    pub reusable: bool,
}

/// The custom section by which a component declares that an instance may serve several
/// messages (the Rust SDK's `export_filter!(T, reusable)` writes it into the core module).
pub const REUSABLE_SECTION: &str = "sluice:reusable";

/// Whether the component, or a core module in it, has a [`REUSABLE_SECTION`].
fn declares_reusable(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(bytes).any(
        |p| matches!(p, Ok(wasmparser::Payload::CustomSection(c)) if c.name() == REUSABLE_SECTION),
    )
}

fn config(pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.max_wasm_stack(512 * 1024);
    // For profiling plugins' compiled code with `perf`: `/tmp/perf-<pid>.map` names it.
    if std::env::var_os("SLUICE_WASM_PERFMAP").is_some_and(|v| v == "1") {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(1000);
        p.total_core_instances(2000);
        p.total_memories(1000);
        p.total_tables(2000);
        p.max_memory_size(MAX_MEMORY);
        p.max_memories_per_module(2);
        p.total_stacks(1000);
        // Reset the first pages of a slot with memset instead of returning them to the
        // kernel (madvise, with TLB shootdowns on every core): compiled plugins with a
        // small stack touch little memory at the bottom of theirs.
        p.linear_memory_keep_resident(256 << 10);
        p.table_keep_resident(64 << 10);
        p.async_stack_keep_resident(128 << 10);
        p.decommit_batch_size(16);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}
