//! What a store holds during one call into one step: WASI with no ambient authority, the
//! resource table, memory limits, and the step's grants, which every host call checks.

use crate::bindings::host::{self, Level};
use crate::message::{MessageData, MessageHandle};
use sluice_core::{Event, EventSink};
use sluice_store::{BlobStore, KvLimits, KvStore, StoreError};
use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Capabilities granted to one step by its policy. Nothing is granted by default.
#[derive(Clone, Default)]
pub struct Grants {
    /// Key-value namespace, when granted, and its quotas.
    pub kv: Option<String>,
    pub kv_limits: KvLimits,
    pub events: bool,
    /// Blob store namespace (`store-message`), when granted.
    pub blobs: Option<String>,
    /// May add or remove recipients and change the sender.
    pub envelope: bool,
    /// Addresses the step may open TCP connections to (wasi:sockets). Nothing else, no
    /// name lookups, no listening, no UDP.
    pub tcp: Vec<std::net::SocketAddr>,
    /// Origins (`scheme://host[:port]`, lowercase) the step may send HTTP requests to
    /// (wasi:http).
    pub http: Vec<String>,
    /// Read-only data files by the name the policy gave them.
    pub data: std::collections::HashMap<String, DataFile>,
    /// May ask for signed tracking URLs (`tracking-url`).
    pub tracking: bool,
}

/// A read-only data file, loaded once and shared by every instance of every step that
/// names it.
#[derive(Clone)]
pub struct DataFile {
    pub sha256: String,
    pub bytes: Arc<[u8]>,
}

/// The `data` resource handed to plugins.
pub struct DataHandle(pub Arc<[u8]>);

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
    /// The step's wall-clock limit: no request timeout a guest sets may exceed it.
    max_wait: std::time::Duration,
    /// Requests sent in this call.
    sent: usize,
    client: crate::http_client::HttpClient,
}

/// Host resources (messages, data handles, WASI streams, sockets, HTTP fields) one store
/// may hold at once.
pub const MAX_RESOURCES: usize = 10_000;

/// HTTP requests, and TCP connections, one call may open.
pub const MAX_CONNECTIONS: usize = 16;

/// Whether an address is reachable on the public internet: not loopback, private, link
/// local, shared, documentation, benchmarking, reserved, multicast or unspecified.
pub fn is_global(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b))
        }
    }
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
        self.sent += 1;
        if self.sent > MAX_CONNECTIONS {
            tracing::warn!(plugin = %self.plugin, step = %self.step, "HTTP request limit of {MAX_CONNECTIONS} per call reached");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let cap = |t: Option<std::time::Duration>| {
            Some(t.map_or(self.max_wait, |t| t.min(self.max_wait)))
        };
        let o = options.unwrap_or_default();
        let options = Some(wasmtime_wasi_http::RequestOptions {
            connect_timeout: cap(o.connect_timeout),
            first_byte_timeout: cap(o.first_byte_timeout),
            between_bytes_timeout: cap(o.between_bytes_timeout),
        });
        // The pool drives connections itself: the request's I/O future has nothing to wait for.
        drop(fut);
        // A grant by name reaches only public addresses (DNS rebinding must not turn a grant
        // into a way to the host's own network): the pool's resolver checks the answer it
        // connects to (`http_client::PublicOnly`) and the request is denied otherwise.
        let client = self.client.clone();
        let (plugin, step) = (self.plugin.clone(), self.step.clone());
        Box::new(async move {
            let response = client.send(request, options).await;
            if matches!(response, Err(wasmtime_wasi_http::Error::HttpRequestDenied)) {
                tracing::warn!(%plugin, %step, %origin, "HTTP request refused: the granted name does not resolve to public addresses only");
            }
            sent(response)
        })
    }
}

/// A response as `send_request` returns it, with an I/O future that is already done.
fn sent(
    response: Result<http::Response<wasmtime_wasi_http::WasiBody>, wasmtime_wasi_http::Error>,
) -> Result<(http::Response<wasmtime_wasi_http::WasiBody>, IoFuture), wasmtime_wasi_http::Error> {
    response.map(|r| (r, Box::new(async { Ok(()) }) as IoFuture))
}

/// Shared services the host functions reach: the stores behind traits (sled by default)
/// and the event bus.
#[derive(Clone)]
pub struct Services {
    pub kv: Arc<dyn KvStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub events: Arc<dyn EventSink>,
    /// The server's `[tracking]`, when configured.
    pub tracking: Option<Arc<Tracking>>,
    /// Outgoing `wasi:http` requests, with kept-alive connections.
    pub http: crate::http_client::HttpClient,
    /// When set, `blobs` syncs with the queue's group commit (it is the queue's
    /// `CommitHook`): a stored message is written with `put_unsynced` and made durable by
    /// this commit, instead of an `fdatasync` of the blob store's own.
    pub blob_commit: Option<Commit>,
}

/// Runs a group commit (the queue's) and returns once it is done.
pub type Commit = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

/// What `tracking-url` needs: the signing keys, the public base URL, and how long a
/// tracked message's context is kept (in `kv`, namespace [`sluice_track::CONTEXT_NAMESPACE`]).
pub struct Tracking {
    pub keys: sluice_track::Keys,
    /// Without a trailing `/`.
    pub base_url: String,
    pub retention: std::time::Duration,
}

impl Services {
    /// Services for runs without a server (`sluice trace`, `check-config`, tests): stores
    /// in memory, events kept in memory.
    pub fn in_memory() -> (Services, Arc<CollectedEvents>) {
        let events = Arc::new(CollectedEvents::default());
        let m = sluice_store::MemoryStores::default();
        (
            Services {
                kv: m.kv,
                blobs: m.blobs,
                events: events.clone(),
                tracking: None,
                http: Default::default(),
                blob_commit: None,
            },
            events,
        )
    }
}

/// An event sink that keeps what it gets, for `sluice trace` and tests.
#[derive(Default)]
pub struct CollectedEvents {
    events: std::sync::Mutex<Vec<Event>>,
}

impl CollectedEvents {
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl EventSink for CollectedEvents {
    fn publish(&self, event: Event) -> Result<(), String> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(())
    }
}

/// Per-call limits on what a plugin may push through host calls besides its result.
pub const MAX_LOG_LINES: u32 = 100;
pub const MAX_LOG_LINE: usize = 4096;
pub const MAX_EVENTS_PER_CALL: u32 = 1000;
pub const MAX_EVENT_SIZE: usize = 64 * 1024;
pub const MAX_BLOBS_PER_CALL: u32 = 4;

/// Most elements a table may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The step's memory limit over all of its linear memories together (a component has
/// several core instances, each may have a memory), and bounded tables.
pub struct Limits {
    memory_cap: usize,
    memory_total: usize,
    /// The last growth counted, taken back if it failed.
    last_grow: usize,
}

impl Limits {
    /// The bytes of linear memory the store's instances hold now.
    pub fn memory_total(&self) -> usize {
        self.memory_total
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_add(desired.saturating_sub(current));
        if total > self.memory_cap {
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB reached",
                self.memory_cap >> 20
            )));
        }
        self.memory_total = total;
        self.last_grow = desired.saturating_sub(current);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_total = self.memory_total.saturating_sub(self.last_grow);
        self.last_grow = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::msg(format!(
                "table limit of {MAX_TABLE_ELEMENTS} elements reached"
            )));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

pub struct StepState {
    /// Built at the first WASI call: most steps never make one, and building it (clocks,
    /// random generators, socket checks) is a measurable part of a no-op step.
    wasi: Option<WasiCtx>,
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    pub http_hooks: HttpGrant,
    pub table: ResourceTable,
    pub limits: Limits,
    /// Epoch ticks of CPU the current call may still use.
    pub cpu_ticks_left: u64,
    pub plugin: Arc<str>,
    pub step: Arc<str>,
    pub grants: Arc<Grants>,
    pub services: Services,
    /// The step's config as JSON.
    pub config: Arc<str>,
    /// The message of the current call, for `emit` defaults and `store-message`.
    pub current: Option<Arc<MessageData>>,
    logged: u32,
    emitted: u32,
    stored: u32,
    /// The current message's tracking context is stored.
    tracked: bool,
    /// TCP connects in this call (checked by `socket_addr_check`).
    tcp_connects: Arc<std::sync::atomic::AtomicUsize>,
}

impl StepState {
    pub fn new(
        plugin: Arc<str>,
        step: Arc<str>,
        grants: Arc<Grants>,
        services: Services,
        config: Arc<str>,
        memory_bytes: usize,
        wall_timeout: std::time::Duration,
    ) -> StepState {
        let tcp_connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        StepState {
            wasi: None,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks: HttpGrant {
                origins: grants.http.clone(),
                plugin: plugin.clone(),
                step: step.clone(),
                max_wait: wall_timeout,
                sent: 0,
                client: services.http.clone(),
            },
            table: {
                let mut t = ResourceTable::new();
                t.set_max_capacity(MAX_RESOURCES);
                t
            },
            limits: Limits {
                memory_cap: memory_bytes,
                memory_total: 0,
                last_grow: 0,
            },
            cpu_ticks_left: 0,
            plugin,
            step,
            grants,
            services,
            config,
            current: None,
            logged: 0,
            emitted: 0,
            stored: 0,
            tracked: false,
            tcp_connects,
        }
    }

    /// Resets the per-call counters (a warm instance starts a new call).
    pub fn begin_call(&mut self, message: Option<Arc<MessageData>>) {
        self.current = message;
        self.logged = 0;
        self.emitted = 0;
        self.stored = 0;
        self.tracked = false;
        self.http_hooks.sent = 0;
        self.tcp_connects
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps the message's context for the events of its tracked links, once per call.
    fn remember_tracked(
        &mut self,
        tracking: &Tracking,
        message: &MessageData,
    ) -> Result<(), host::Error> {
        if self.tracked {
            return Ok(());
        }
        let context = sluice_track::Context {
            message_id: message.message_id(),
            sender: message.envelope.sender.clone(),
            attributes: message.envelope.meta.clone(),
        };
        let value = serde_json::to_vec(&context).map_err(|e| host::Error::Failed(e.to_string()))?;
        // Once per message: the first recipient's render stores it, the others find it.
        self.services
            .kv
            .set_if_absent(
                sluice_track::CONTEXT_NAMESPACE,
                &message.queue_id,
                &value,
                Some(tracking.retention),
                &KvLimits {
                    max_total: u64::MAX,
                    ..Default::default()
                },
            )
            .map_err(store_error)?;
        self.tracked = true;
        Ok(())
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

/// The WASI context of one store: no preopened folders, no environment, no arguments, no
/// network but the step's TCP grants, no inherited stdio. A plugin computes, and reaches
/// out only through granted host calls.
fn wasi_ctx(grants: &Grants, tcp_connects: &Arc<std::sync::atomic::AtomicUsize>) -> WasiCtx {
    let mut wasi = WasiCtx::builder();
    wasi.allow_blocking_current_thread(false);
    if !grants.tcp.is_empty() {
        let allowed = grants.tcp.clone();
        let connects = tcp_connects.clone();
        wasi.allow_tcp(true).socket_addr_check(move |addr, usage| {
            use wasmtime_wasi::sockets::SocketAddrUse;
            let ok = match usage {
                // Listed addresses only, and at most MAX_CONNECTIONS per call.
                SocketAddrUse::TcpConnect => {
                    allowed.contains(&addr)
                        && connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            < MAX_CONNECTIONS
                }
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
    static STDERR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *STDERR.get_or_init(|| std::env::var_os("SLUICE_PLUGIN_STDERR").is_some()) {
        wasi.inherit_stderr();
    }
    wasi.build()
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (grants, connects) = (&self.grants, &self.tcp_connects);
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| wasi_ctx(grants, connects)),
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

fn store_error(e: StoreError) -> host::Error {
    match e {
        StoreError::Quota(q) => host::Error::Quota(q),
        StoreError::Failed(f) => host::Error::Failed(f),
    }
}

fn ttl(seconds: Option<u64>) -> Option<std::time::Duration> {
    seconds.map(std::time::Duration::from_secs)
}

impl StepState {
    fn kv_ns(&mut self) -> Result<String, host::Error> {
        match self.grants.kv.clone() {
            Some(ns) => Ok(ns),
            None => Err(self.deny("kv")),
        }
    }
}

/// HMAC-SHA256 of `data` keyed with `key`.
fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, data).as_ref().to_vec()
}

impl host::Host for StepState {
    fn log(&mut self, level: Level, message: String) {
        self.logged += 1;
        if self.logged > MAX_LOG_LINES {
            if self.logged == MAX_LOG_LINES + 1 {
                tracing::warn!(plugin = %self.plugin, step = %self.step, "plugin log limit reached for this call");
            }
            return;
        }
        let (plugin, step) = (&*self.plugin, &*self.step);
        let message: String = message
            .chars()
            .take(MAX_LOG_LINE)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
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

    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        // Host CPU the guest's epoch budget does not see: charged here, roughly (SHA-256
        // runs at more than 1.5 GB/s with the SHA instructions, a tick is 5 ms).
        let ticks = (data.len() >> 23) as u64;
        self.cpu_ticks_left = self.cpu_ticks_left.saturating_sub(ticks);
        hmac_sha256(&key, &data)
    }

    fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>, host::Error> {
        let ns = self.kv_ns()?;
        self.services.kv.get(&ns, &key).map_err(store_error)
    }

    fn kv_get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, host::Error> {
        let ns = self.kv_ns()?;
        if keys.len() > sluice_store::kv::MAX_SCAN {
            return Err(host::Error::Quota(format!(
                "at most {} keys per call",
                sluice_store::kv::MAX_SCAN
            )));
        }
        self.services.kv.get_many(&ns, &keys).map_err(store_error)
    }

    fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u64>,
    ) -> Result<(), host::Error> {
        let ns = self.kv_ns()?;
        self.services
            .kv
            .set(&ns, &key, &value, ttl(ttl_seconds), &self.grants.kv_limits)
            .map_err(store_error)
    }

    fn kv_delete(&mut self, key: String) -> Result<bool, host::Error> {
        let ns = self.kv_ns()?;
        self.services.kv.delete(&ns, &key).map_err(store_error)
    }

    fn kv_incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_seconds: Option<u64>,
    ) -> Result<i64, host::Error> {
        let ns = self.kv_ns()?;
        self.services
            .kv
            .incr(&ns, &key, delta, ttl(ttl_seconds), &self.grants.kv_limits)
            .map_err(store_error)
    }

    fn kv_scan(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<host::KvPage, host::Error> {
        let ns = self.kv_ns()?;
        let page = self
            .services
            .kv
            .scan(&ns, &prefix, after.as_deref(), limit as usize)
            .map_err(store_error)?;
        Ok(host::KvPage {
            entries: page
                .entries
                .into_iter()
                .map(|(key, value)| host::KvEntry { key, value })
                .collect(),
            next: page.next,
        })
    }

    fn open_data(&mut self, name: String) -> Result<Resource<DataHandle>, host::Error> {
        let Some(file) = self.grants.data.get(&name) else {
            return Err(self.deny(&format!("data `{name}`")));
        };
        let handle = DataHandle(file.bytes.clone());
        self.table
            .push(handle)
            .map_err(|e| host::Error::Failed(e.to_string()))
    }

    fn emit(&mut self, e: host::NewEvent) -> Result<String, host::Error> {
        if !self.grants.events {
            return Err(self.deny("events"));
        }
        self.emitted += 1;
        if self.emitted > MAX_EVENTS_PER_CALL {
            return Err(host::Error::Quota(format!(
                "at most {MAX_EVENTS_PER_CALL} events per call"
            )));
        }
        let size: usize = e
            .attributes
            .iter()
            .map(|a| a.key.len() + a.value.len())
            .sum::<usize>()
            + [&e.queue_id, &e.message_id, &e.sender, &e.recipient]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum::<usize>();
        if size > MAX_EVENT_SIZE {
            return Err(host::Error::Quota(format!(
                "event of {size} bytes, limit {MAX_EVENT_SIZE}"
            )));
        }
        let event = crate::pipeline::event_from_wit(e, self.current.as_deref());
        let id = event.id.clone();
        self.services
            .events
            .publish(event)
            .map_err(host::Error::Failed)?;
        Ok(id)
    }

    fn tracking_url(
        &mut self,
        kind: host::TrackKind,
        recipient: String,
        link: u32,
        url: Option<String>,
    ) -> Result<String, host::Error> {
        if !self.grants.tracking {
            return Err(self.deny("tracking"));
        }
        let Some(tracking) = self.services.tracking.clone() else {
            return Err(host::Error::Failed(
                "the server has no [tracking] configuration".into(),
            ));
        };
        let Some(message) = self.current.clone() else {
            return Err(host::Error::Failed("no message in this call".into()));
        };
        let kind = match kind {
            host::TrackKind::Click => sluice_track::Kind::Click,
            host::TrackKind::Open => sluice_track::Kind::Open,
            host::TrackKind::Unsubscribe => sluice_track::Kind::Unsubscribe,
        };
        let token = sluice_track::Token {
            kind,
            queue_id: message.queue_id.clone(),
            recipient,
            link,
            url,
            listener: message.session.as_ref().map(|s| s.listener.clone()),
            authenticated: message
                .session
                .as_ref()
                .is_some_and(|s| s.auth_user.is_some()),
        };
        let text = tracking
            .keys
            .sign(&token)
            .map_err(|e| host::Error::Failed(e.to_string()))?;
        self.remember_tracked(&tracking, &message)?;
        Ok(format!("{}/{}/{text}", tracking.base_url, kind.path()))
    }

    async fn store_message(
        &mut self,
        m: Resource<MessageHandle>,
        attributes: Vec<crate::bindings::types::Attribute>,
        retention_days: u32,
    ) -> Result<String, host::Error> {
        let Some(ns) = self.grants.blobs.clone() else {
            return Err(self.deny("blobs"));
        };
        self.stored += 1;
        if self.stored > MAX_BLOBS_PER_CALL {
            return Err(host::Error::Quota(format!(
                "at most {MAX_BLOBS_PER_CALL} messages stored per call"
            )));
        }
        let Some(message) = self.message(&m) else {
            return Err(host::Error::Failed("no such message".into()));
        };
        let size: usize = attributes.iter().map(|a| a.key.len() + a.value.len()).sum();
        if size > MAX_EVENT_SIZE {
            return Err(host::Error::Quota(format!(
                "attributes of {size} bytes, limit {MAX_EVENT_SIZE}"
            )));
        }
        if let Some(a) = attributes
            .iter()
            .find(|a| sluice_store::blob::keys::is_host_key(&a.key))
        {
            return Err(host::Error::Failed(format!(
                "attribute `{}` is set by the host",
                a.key
            )));
        }
        let mut all = stored_attributes(&message);
        all.extend(attributes.into_iter().map(|a| (a.key, a.value)));
        let retention =
            std::time::Duration::from_secs(u64::from(retention_days.clamp(1, 3650)) * 86400);
        let blobs = self.services.blobs.clone();
        if let Some(commit) = self.services.blob_commit.clone() {
            // Written here (compressing a large message off the async workers), made durable
            // by the queue's next group commit.
            let id = off_the_workers(message.raw.len(), || {
                blobs.put_unsynced(&ns, &message.raw, all, retention)
            })
            .map_err(store_error)?;
            commit().await.map_err(host::Error::Failed)?;
            blobs.confirm(&id).map_err(store_error)?;
            return Ok(id);
        }
        // The store syncs to disk: a blocking thread waits, not an async worker.
        tokio::task::spawn_blocking(move || blobs.put(&ns, &message.raw, all, retention))
            .await
            .map_err(|e| host::Error::Failed(e.to_string()))?
            .map_err(store_error)
    }
}

/// Runs `f` with `block_in_place` for a body of 256 KiB or more on a multi-threaded runtime
/// (compressing it takes milliseconds), inline otherwise.
fn off_the_workers<T>(len: usize, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi = Handle::try_current()
        .map(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
        .unwrap_or(false);
    if len >= 256 * 1024 && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// What the host records with every stored message (`sluice_store::blob::keys`).
fn stored_attributes(m: &MessageData) -> Vec<(String, String)> {
    use sluice_store::blob::keys;
    let mut a: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: &str| a.push((k.to_string(), v.to_string()));
    let parsed = m.head();
    put(keys::QUEUE_ID, &m.queue_id);
    if let Some(id) = parsed.message_id() {
        put(keys::MESSAGE_ID, id);
    }
    put(keys::SENDER, &m.envelope.sender);
    for r in &m.envelope.recipients {
        put(keys::RECIPIENT, &r.address);
    }
    if let Some(subject) = parsed.subject() {
        put(keys::SUBJECT, subject);
    }
    if let Some(date) = parsed.date() {
        put(keys::DATE, &date.to_rfc3339());
    }
    put(keys::SIZE, &m.raw.len().to_string());
    if let Some(s) = &m.session {
        put(keys::LISTENER, &s.listener);
        put(keys::CLIENT_IP, &s.client_ip.to_string());
        if let Some(h) = &s.helo {
            put(keys::HELO, h);
        }
        if let Some(t) = &s.tls {
            put(keys::TLS, t);
        }
        if let Some(u) = &s.auth_user {
            put(keys::AUTH_USER, u);
        }
    }
    for (k, v) in &m.envelope.meta {
        put(&format!("{}{k}", keys::META_PREFIX), v);
    }
    a
}

impl host::HostData for StepState {
    fn size(&mut self, d: Resource<DataHandle>) -> u64 {
        self.table.get(&d).map_or(0, |h| h.0.len() as u64)
    }

    fn read(&mut self, d: Resource<DataHandle>, offset: u64, len: u32) -> Vec<u8> {
        let Ok(h) = self.table.get(&d) else {
            return Vec::new();
        };
        let b = &h.0;
        let start = (offset as usize).min(b.len());
        let end = start.saturating_add(len as usize).min(b.len());
        b[start..end].to_vec()
    }

    fn read_many(&mut self, d: Resource<DataHandle>, offsets: Vec<u64>, len: u32) -> Vec<u8> {
        let Ok(h) = self.table.get(&d) else {
            return Vec::new();
        };
        let b = &h.0;
        let len = len as usize;
        if len == 0 {
            return Vec::new();
        }
        // Whole slots only, at most 16 MiB.
        let slots = offsets.len().min((16 << 20) / len);
        let mut out = vec![0u8; slots * len];
        for (slot, &off) in out.chunks_exact_mut(len).zip(&offsets) {
            let start = (off as usize).min(b.len());
            let end = start.saturating_add(len).min(b.len());
            slot[..end - start].copy_from_slice(&b[start..end]);
        }
        out
    }

    fn drop(&mut self, d: Resource<DataHandle>) -> wasmtime::Result<()> {
        self.table.delete(d)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_sha256_matches_an_independent_computation() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'k3y-k3y-k3y-k3y!'
        assert_eq!(
            hex::encode(super::hmac_sha256(
                b"k3y-k3y-k3y-k3y!",
                b"1700000000.{\"a\":1}"
            )),
            "d62f7503cca968563b8fd420cebe0b09ce114d40ce8849187755dd2104fc71b1"
        );
    }
}
