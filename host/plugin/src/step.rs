//! What a store holds during one call into one step: WASI with no ambient authority, the
//! resource table, memory limits, and the step's grants, which every host call checks.

use crate::bindings::host::{self, Level};
use crate::message::{MessageData, MessageHandle};
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Capabilities granted to one step by its policy. Nothing is granted by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Key-value namespace, when granted.
    pub kv: Option<String>,
    pub events: bool,
    /// Addresses the step may open TCP connections to (wasi:sockets). Nothing else, no
    /// name lookups, no listening, no UDP.
    pub tcp: Vec<std::net::SocketAddr>,
    /// Origins (`scheme://host[:port]`, lowercase) the step may send HTTP requests to
    /// (wasi:http).
    pub http: Vec<String>,
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type SendFuture = Box<
    dyn Future<
            Output = Result<
                (http::Response<wasmtime_wasi_http::WasiBody>, IoFuture),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

/// wasi:http hooks that let requests through only to granted origins.
pub struct HttpGrant {
    origins: Vec<String>,
    plugin: Arc<str>,
    step: Arc<str>,
}

impl wasmtime_wasi_http::WasiHttpHooks for HttpGrant {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: IoFuture,
    ) -> SendFuture {
        let uri = request.uri();
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("").to_ascii_lowercase(),
            uri.authority()
                .map(|a| a.as_str().to_ascii_lowercase())
                .unwrap_or_default()
        );
        if !self.origins.contains(&origin) {
            tracing::warn!(plugin = %self.plugin, step = %self.step, %origin, "HTTP request to an origin not granted");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let mut default = DefaultHooks;
        wasmtime_wasi_http::WasiHttpHooks::send_request(&mut default, request, options, fut)
    }
}

/// The library's own hooks (its default request sending).
struct DefaultHooks;

impl wasmtime_wasi_http::WasiHttpHooks for DefaultHooks {}

/// Shared services the host functions reach.
pub trait Services: Send + Sync {
    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn kv_set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), String>;
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), String>;
    fn emit(&self, plugin: &str, name: &str, payload: &str) -> Result<(), String>;
}

/// The server's services: key-value in a sled database of its own (not the queue's),
/// events logged until the event pipeline exists.
pub struct SledServices {
    db: sled::Db,
}

impl SledServices {
    pub fn open(dir: &std::path::Path) -> Result<SledServices, sled::Error> {
        Ok(SledServices {
            db: sled::open(dir)?,
        })
    }

    fn key(ns: &str, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(ns.len() + key.len() + 1);
        k.extend_from_slice(ns.as_bytes());
        k.push(0);
        k.extend_from_slice(key.as_bytes());
        k
    }
}

impl Services for SledServices {
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.db
            .get(Self::key(ns, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| e.to_string())
    }

    fn kv_set(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.db
            .insert(Self::key(ns, key), value)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn kv_delete(&self, ns: &str, key: &str) -> Result<(), String> {
        self.db
            .remove(Self::key(ns, key))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn emit(&self, plugin: &str, name: &str, payload: &str) -> Result<(), String> {
        tracing::info!(plugin, event = name, payload, "plugin event");
        Ok(())
    }
}

/// Services for runs without a server (trace, check-config): key-value in memory, events
/// logged.
#[derive(Default)]
pub struct MemoryServices {
    kv: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<u8>>>,
}

impl Services for MemoryServices {
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let kv = self.kv.lock().unwrap_or_else(|e| e.into_inner());
        Ok(kv.get(&(ns.to_string(), key.to_string())).cloned())
    }

    fn kv_set(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let mut kv = self.kv.lock().unwrap_or_else(|e| e.into_inner());
        kv.insert((ns.to_string(), key.to_string()), value.to_vec());
        Ok(())
    }

    fn kv_delete(&self, ns: &str, key: &str) -> Result<(), String> {
        let mut kv = self.kv.lock().unwrap_or_else(|e| e.into_inner());
        kv.remove(&(ns.to_string(), key.to_string()));
        Ok(())
    }

    fn emit(&self, plugin: &str, name: &str, payload: &str) -> Result<(), String> {
        tracing::info!(plugin, event = name, payload, "plugin event");
        Ok(())
    }
}

pub struct StepState {
    pub wasi: WasiCtx,
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    pub http_hooks: HttpGrant,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub plugin: Arc<str>,
    pub step: Arc<str>,
    pub grants: Arc<Grants>,
    pub services: Arc<dyn Services>,
    /// The step's config as JSON.
    pub config: Arc<str>,
}

impl StepState {
    pub fn new(
        plugin: Arc<str>,
        step: Arc<str>,
        grants: Arc<Grants>,
        services: Arc<dyn Services>,
        config: Arc<str>,
        memory_bytes: usize,
    ) -> StepState {
        // No preopened folders, no environment, no arguments, no network, no inherited
        // stdio: a plugin computes, and reaches out only through granted host calls.
        let mut wasi = WasiCtx::builder();
        wasi.allow_blocking_current_thread(false);
        if !grants.tcp.is_empty() {
            let allowed = grants.tcp.clone();
            wasi.allow_tcp(true).socket_addr_check(move |addr, usage| {
                use wasmtime_wasi::sockets::SocketAddrUse;
                let ok = match usage {
                    SocketAddrUse::TcpConnect => allowed.contains(&addr),
                    // Connecting binds implicitly to an ephemeral local port; nothing else
                    // may be bound.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        // A debugging aid for plugin authors: the plugin's stderr (panics, Python
        // tracebacks) in the server's.
        if std::env::var_os("SLUICE_PLUGIN_STDERR").is_some() {
            wasi.inherit_stderr();
        }
        let wasi = wasi.build();
        StepState {
            wasi,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks: HttpGrant {
                origins: grants.http.clone(),
                plugin: plugin.clone(),
                step: step.clone(),
            },
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            plugin,
            step,
            grants,
            services,
            config,
        }
    }

    pub fn message(&self, m: &Resource<MessageHandle>) -> Option<Arc<MessageData>> {
        self.table.get(m).ok().map(|h| h.0.clone())
    }

    fn deny(&mut self, what: &str) -> host::Error {
        let why = format!("capability `{what}` is not granted to step {}", self.step);
        tracing::warn!(plugin = %self.plugin, step = %self.step, "{why}");
        host::Error::Denied(why)
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for StepState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.http_hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl host::Host for StepState {
    fn log(&mut self, level: Level, message: String) {
        let (plugin, step) = (&*self.plugin, &*self.step);
        let message: String = message.chars().take(4096).collect();
        match level {
            Level::Error => tracing::error!(plugin, step, "{message}"),
            Level::Warn => tracing::warn!(plugin, step, "{message}"),
            Level::Info => tracing::info!(plugin, step, "{message}"),
            Level::Debug => tracing::debug!(plugin, step, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.config.to_string()
    }

    fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>, host::Error> {
        let Some(ns) = self.grants.kv.clone() else {
            return Err(self.deny("kv"));
        };
        self.services.kv_get(&ns, &key).map_err(host::Error::Failed)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), host::Error> {
        let Some(ns) = self.grants.kv.clone() else {
            return Err(self.deny("kv"));
        };
        self.services
            .kv_set(&ns, &key, &value)
            .map_err(host::Error::Failed)
    }

    fn kv_delete(&mut self, key: String) -> Result<(), host::Error> {
        let Some(ns) = self.grants.kv.clone() else {
            return Err(self.deny("kv"));
        };
        self.services
            .kv_delete(&ns, &key)
            .map_err(host::Error::Failed)
    }

    fn emit(&mut self, name: String, payload: String) -> Result<(), host::Error> {
        if !self.grants.events {
            return Err(self.deny("events"));
        }
        self.services
            .emit(&self.plugin, &name, &payload)
            .map_err(host::Error::Failed)
    }
}
