//! Policy files: `policies/*.toml`, each with `[[pipeline]]` chains of `[[pipeline.step]]`.
//!
//! A step's shared keys (`plugin`, `sha256`, `stages`, `on_error`, limits, `capabilities`)
//! are checked here; its `config` table goes untouched (as JSON) to the plugin's
//! `configure`, whose error is reported with the policy file, line and step.

use crate::chain::{Chain, Conditions, OnError, Step, Thresholds, WarmPool};
use crate::runtime::{LoadError, MAX_MEMORY, Runtime, TICK};
use crate::step::{DataFile, Grants, Services};
use serde::Deserialize;
use sluice_config::error::{Problem, locate};
use sluice_core::Stage;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Chains, tried in order (files in name order); the first whose conditions hold runs.
    #[serde(default)]
    pub pipeline: Vec<PipelineFile>,
    /// Test cases run against the policies before they go live (`check-config`, start,
    /// reload): a change that breaks one is refused.
    #[serde(default)]
    pub test: Vec<TestFile>,
}

/// One policy test case: a message through the SMTP stages and `data`, and what must come
/// out of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Shown when the case fails.
    pub name: String,
    /// The message file, relative to the policy file (LF or CRLF line ends).
    pub message: String,
    /// Envelope sender.
    #[serde(default = "default_test_from")]
    pub from: String,
    /// Envelope recipients.
    #[serde(default = "default_test_to")]
    pub to: Vec<String>,
    /// Listener the message arrives on.
    #[serde(default = "default_test_listener")]
    pub listener: String,
    /// Authenticated user, if any.
    pub auth: Option<String>,
    /// The verdict: `accept` (continue or accept), `reject`, `defer`, `quarantine` or
    /// `discard`.
    pub expect: String,
    /// The summed score must be at least this.
    pub score_min: Option<f64>,
    /// The summed score must be at most this.
    pub score_max: Option<f64>,
    /// Headers the chain must have added (or set).
    #[serde(default)]
    pub headers_added: Vec<String>,
    /// Headers the chain must have removed.
    #[serde(default)]
    pub headers_removed: Vec<String>,
}

fn default_test_from() -> String {
    "sender@example.com".into()
}
fn default_test_to() -> Vec<String> {
    vec!["rcpt@example.net".into()]
}
fn default_test_listener() -> String {
    "mx".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Name used in logs, traces and metrics.
    pub name: String,
    /// Listener names this chain applies to; empty means all.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// `true`: only authenticated sessions; `false`: only unauthenticated; absent: both.
    pub authenticated: Option<bool>,
    /// Sender domains this chain applies to; empty means all. A chain with this condition
    /// is not chosen before MAIL FROM.
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Recipient domains (any recipient matching); empty means all. A chain with this
    /// condition is not chosen before the first RCPT TO.
    #[serde(default)]
    pub recipient_domains: Vec<String>,
    /// What the summed score of the `data` stage leads to.
    #[serde(default)]
    pub thresholds: ThresholdsFile,
    /// DMARC failures of received mail (the host's checks, `[authentication]` in the
    /// server configuration): `monitor` records them only; `enforce` applies the From:
    /// domain's policy: `p=reject` gets `550 5.7.1` before any step runs, `p=quarantine`
    /// holds the message (honouring `pct`).
    #[serde(default)]
    pub dmarc: DmarcMode,
    /// The steps, in order.
    #[serde(default)]
    pub step: Vec<StepFile>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcMode {
    #[default]
    Monitor,
    Enforce,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsFile {
    /// Score at or above which the message is rejected (`550 5.7.1`).
    pub reject: Option<f64>,
    /// Score at or above which the message is quarantined.
    pub quarantine: Option<f64>,
    /// Score at or above which `X-Sluice-Score` and `X-Sluice-Symbols` are added.
    pub add_header: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    /// Name used in logs and traces.
    pub name: String,
    /// Path of the component, relative to the policy file.
    pub plugin: String,
    /// SHA-256 of the component file (hex); a different file is refused.
    pub sha256: String,
    /// Stages this step runs at; empty means every stage the plugin handles.
    #[serde(default)]
    pub stages: Vec<String>,
    /// When the plugin fails: `tempfail` (451 4.3.0), `skip` or `reject` (554 5.7.0).
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// Linear memory limit in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: usize,
    /// Wall-clock limit of one call in milliseconds, time spent in host calls (HTTP, TCP,
    /// sleeps) included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// CPU time a call may spend running WebAssembly, in milliseconds; defaults to
    /// `timeout_ms`.
    pub cpu_ms: Option<u64>,
    /// Largest result (edits, symbols) in KiB.
    #[serde(default = "default_max_output_kb")]
    pub max_output_kb: usize,
    /// `fresh`: a new instance for every call, nothing carried between messages.
    /// `warm`: reuse up to `warm_pool` live instances, each for at most `recycle_after`
    /// messages. Unset: warm when the component declares it keeps nothing between calls
    /// (the `sluice:reusable` section), fresh otherwise.
    pub instances: Option<String>,
    /// Warm instances kept, when the step runs warm (set, or declared by the plugin); must be
    /// greater than 0 then, like `recycle_after`.
    #[serde(default = "default_warm_pool")]
    pub warm_pool: usize,
    /// Messages a warm instance handles before it is replaced.
    #[serde(default = "default_recycle_after")]
    pub recycle_after: usize,
    /// Capabilities; none by default.
    #[serde(default)]
    pub capabilities: CapabilitiesFile,
    /// Read-only data files (`open-data`): name → path (relative to the policy file) and
    /// sha256. Loaded once and shared; a file with another digest is refused.
    #[serde(default)]
    pub data: std::collections::BTreeMap<String, DataEntryFile>,
    /// The plugin's own settings, passed to its `configure` as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_on_error() -> String {
    "tempfail".into()
}
/// The instance mode of a step, logged with why: a plugin's own declaration changes how
/// far its state may carry, so an operator sees it at every load.
fn instances<'a>(step: &str, plugin: &Path, set: Option<&'a str>, reusable: bool) -> &'a str {
    let (mode, why) = match (set, reusable) {
        (Some(m), _) => (m, "set by the policy"),
        (None, true) => (
            "warm",
            "declared reusable by the plugin (`instances = \"fresh\"` overrides)",
        ),
        (None, false) => ("fresh", "default"),
    };
    tracing::info!(step, plugin = %plugin.display(), instances = mode, "{why}");
    mode
}

fn default_warm_pool() -> usize {
    16
}
fn default_recycle_after() -> usize {
    100
}
fn default_memory_mb() -> usize {
    64
}
fn default_timeout_ms() -> u64 {
    200
}
fn default_max_output_kb() -> usize {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataEntryFile {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesFile {
    /// Key-value namespace the step may use.
    pub kv: Option<String>,
    /// Quotas of that namespace.
    #[serde(default)]
    pub kv_limits: KvLimitsFile,
    /// May emit events.
    #[serde(default)]
    pub events: bool,
    /// Blob store namespace the step may store messages in (`store-message`).
    pub blobs: Option<String>,
    /// May add or remove recipients and change the sender (`data` stage).
    #[serde(default)]
    pub envelope: bool,
    /// Addresses (`ip:port`) the step may connect to over TCP, such as a clamd. Loopback
    /// and private addresses are reachable only when listed here.
    #[serde(default)]
    pub tcp: Vec<String>,
    /// Origins (`https://api.example.com`, `http://127.0.0.1:8080`) the step may send HTTP
    /// requests to. Loopback and private addresses are reachable only when listed here.
    #[serde(default)]
    pub http: Vec<String>,
    /// May ask the host for signed tracking URLs (`tracking-url`; needs `[tracking]` in the
    /// server configuration).
    #[serde(default)]
    pub tracking: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvLimitsFile {
    /// Longest key in bytes.
    pub max_key_bytes: usize,
    /// Largest value in bytes.
    pub max_value_bytes: usize,
    /// Keys plus values of the namespace, in MiB.
    pub max_total_mb: u64,
}

impl Default for KvLimitsFile {
    fn default() -> Self {
        let d = sluice_store::KvLimits::default();
        KvLimitsFile {
            max_key_bytes: d.max_key,
            max_value_bytes: d.max_value,
            max_total_mb: d.max_total >> 20,
        }
    }
}

/// Every chain of every policy file, compiled and loaded.
pub struct PolicySet {
    pub chains: Vec<Arc<Chain>>,
    /// Policy files this set was built from.
    pub files: Vec<PathBuf>,
    /// Test cases with the file and the line they come from.
    pub tests: Vec<PolicyTest>,
}

impl PolicySet {
    /// The first chain whose conditions hold with what is known.
    pub fn chain(
        &self,
        session: Option<&sluice_core::SessionInfo>,
        sender: Option<&str>,
        recipients: Option<&[String]>,
    ) -> Option<&Arc<Chain>> {
        let listener = session.map_or("", |s| s.listener.as_str());
        let auth = session.map(|s| s.auth_user.is_some());
        self.chains
            .iter()
            .find(|c| c.matches(listener, auth, sender, recipients))
    }
}

/// A test case and where it was written.
#[derive(Debug, Clone)]
pub struct PolicyTest {
    pub case: TestFile,
    pub file: PathBuf,
    /// Its index in the file's `[[test]]` list.
    pub index: usize,
    pub line: usize,
}

pub fn parse_stage(s: &str) -> Option<Stage> {
    Some(match s {
        "connect" => Stage::Connect,
        "ehlo" => Stage::Ehlo,
        "mail" => Stage::Mail,
        "rcpt" => Stage::Rcpt,
        "data" => Stage::Data,
        "queued" => Stage::Queued,
        "delivery" => Stage::Delivery,
        "render" => Stage::Render,
        "event" => Stage::Event,
        _ => return None,
    })
}

/// Loads `*.toml` in a folder (or one file), compiling every plugin and calling every
/// `configure`. All problems are returned at once.
pub async fn load_policies(
    runtime: &Arc<Runtime>,
    path: &Path,
    services: Option<Services>,
) -> Result<PolicySet, Vec<Problem>> {
    let services = services.unwrap_or_else(|| Services::in_memory().0);
    let mut files: Vec<PathBuf> = if path.is_dir() {
        match std::fs::read_dir(path) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                return Err(vec![problem(path, 0, "", format!("cannot read: {e}"))]);
            }
        }
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    let mut problems = Vec::new();
    let mut chains = Vec::new();
    let mut tests = Vec::new();
    for file in &files {
        match load_file(runtime, file, &services).await {
            Ok((mut c, mut t)) => {
                chains.append(&mut c);
                tests.append(&mut t);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let set = PolicySet {
        chains,
        files,
        tests,
    };
    let failed = crate::policy_tests::run(&set).await;
    if failed.is_empty() {
        Ok(set)
    } else {
        Err(failed)
    }
}

fn problem(file: &Path, line: usize, key: &str, message: impl Into<String>) -> Problem {
    Problem {
        file: file.display().to_string(),
        line,
        key: key.to_string(),
        message: message.into(),
    }
}

async fn load_file(
    runtime: &Arc<Runtime>,
    file: &Path,
    services: &Services,
) -> Result<(Vec<Arc<Chain>>, Vec<PolicyTest>), Vec<Problem>> {
    let source = std::fs::read_to_string(file)
        .map_err(|e| vec![problem(file, 0, "", format!("cannot read: {e}"))])?;
    let parsed: PolicyFile = toml::from_str(&source).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| sluice_config::error::line_of(&source, s.start));
        vec![problem(file, line, "", e.message().trim())]
    })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let mut chains = Vec::new();
    for (pi, p) in parsed.pipeline.iter().enumerate() {
        let mut steps = Vec::new();
        let mut names = HashSet::new();
        for (si, s) in p.step.iter().enumerate() {
            let key = |field: &str| format!("pipeline[{pi}].step[{si}].{field}");
            let mut report = |field: &str, msg: String| {
                let k = key(field);
                problems.push(problem(file, locate(&source, &k), &k, msg));
            };
            if !names.insert(s.name.clone()) {
                report(
                    "name",
                    format!("step name `{}` is used twice in this pipeline", s.name),
                );
            }
            let on_error = match s.on_error.as_str() {
                "tempfail" => OnError::Tempfail,
                "skip" => OnError::Skip,
                "reject" => OnError::Reject,
                other => {
                    report(
                        "on_error",
                        format!("unknown on_error `{other}`: expected tempfail, skip or reject"),
                    );
                    OnError::Tempfail
                }
            };
            let mut stages = HashSet::new();
            for st in &s.stages {
                match parse_stage(st) {
                    Some(x) => {
                        stages.insert(x);
                    }
                    None => report("stages", format!("unknown stage `{st}`")),
                }
            }
            if s.memory_mb == 0 || s.memory_mb * 1024 * 1024 > MAX_MEMORY {
                report(
                    "memory_mb",
                    format!("must be between 1 and {}", MAX_MEMORY >> 20),
                );
            }
            if s.timeout_ms == 0 {
                report("timeout_ms", "must be greater than 0".into());
            }
            if s.cpu_ms == Some(0) {
                report("cpu_ms", "must be greater than 0".into());
            }
            let mut data = std::collections::HashMap::new();
            for (name, d) in &s.data {
                match runtime.data_file(&dir.join(&d.path), &d.sha256) {
                    Ok(bytes) => {
                        data.insert(
                            name.clone(),
                            DataFile {
                                sha256: d.sha256.to_ascii_lowercase(),
                                bytes,
                            },
                        );
                    }
                    Err(e) => report("data", format!("{name}: {e}")),
                }
            }
            let plugin_path = dir.join(&s.plugin);
            let crate::runtime::Loaded { pre, reusable } =
                match runtime.load(&plugin_path, &s.sha256) {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        let field = match e {
                            LoadError::Digest { .. } => "sha256",
                            _ => "plugin",
                        };
                        report(field, e.to_string());
                        continue;
                    }
                };
            let plugin_name: Arc<str> = plugin_path
                .file_stem()
                .map_or("plugin".into(), |n| n.to_string_lossy().into());
            if let Some(ns) = &s.capabilities.kv
                && ns.starts_with(sluice_core::meta::RESERVED_PREFIX)
            {
                report(
                    "capabilities",
                    format!("kv: `{ns}`: namespaces starting with `sluice.` are the host's"),
                );
            }
            let mut tcp = Vec::new();
            for (i, a) in s.capabilities.tcp.iter().enumerate() {
                match a.parse::<std::net::SocketAddr>() {
                    Ok(addr) => tcp.push(addr),
                    Err(_) => report(
                        "capabilities",
                        format!(
                            "tcp[{i}]: `{a}` is not an ip:port address (names are not resolved)"
                        ),
                    ),
                }
            }
            let mut http = Vec::new();
            for (i, o) in s.capabilities.http.iter().enumerate() {
                match o.parse::<http::Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http" | "https"))
                            && u.authority().is_some()
                            && u.path_and_query().is_none_or(|p| p.as_str() == "/") =>
                    {
                        http.push(format!(
                            "{}://{}",
                            u.scheme_str().unwrap_or_default(),
                            u.authority()
                                .map(|a| a.as_str().to_ascii_lowercase())
                                .unwrap_or_default()
                        ));
                    }
                    _ => report(
                        "capabilities",
                        format!(
                            "http[{i}]: `{o}` is not an origin such as https://api.example.com"
                        ),
                    ),
                }
            }
            let c = &s.capabilities;
            let grants = Arc::new(Grants {
                kv: c.kv.clone(),
                kv_limits: sluice_store::KvLimits {
                    max_key: c.kv_limits.max_key_bytes,
                    max_value: c.kv_limits.max_value_bytes,
                    max_total: c.kv_limits.max_total_mb.saturating_mul(1 << 20),
                },
                events: c.events,
                blobs: c.blobs.clone(),
                envelope: c.envelope,
                tcp,
                http,
                data,
                tracking: c.tracking,
            });
            let handlers = match crate::handlers::Handlers::new(pre.instance_pre().component()) {
                Ok(h) => h,
                Err(e) => {
                    report("plugin", format!("{}: {e}", plugin_path.display()));
                    continue;
                }
            };
            let mut step = Step {
                name: s.name.clone().into(),
                plugin: plugin_name,
                pre,
                handlers,
                stages,
                on_error,
                memory: s.memory_mb * 1024 * 1024,
                deadline_ticks: s
                    .cpu_ms
                    .unwrap_or(s.timeout_ms)
                    .div_ceil(TICK.as_millis() as u64)
                    .max(1)
                    + 1,
                wall_timeout: std::time::Duration::from_millis(s.timeout_ms),
                max_output: s.max_output_kb * 1024,
                grants,
                config: config_json(&s.config).into(),
                // Warm by default when the component declares it keeps nothing between
                // calls; otherwise fresh unless the policy asks for warm.
                warm: match instances(&s.name, &plugin_path, s.instances.as_deref(), reusable) {
                    "fresh" => None,
                    "warm" if s.warm_pool > 0 && s.recycle_after > 0 => {
                        Some(WarmPool::new(s.warm_pool, s.recycle_after))
                    }
                    "warm" => {
                        report(
                            "warm_pool",
                            "warm_pool and recycle_after must be greater than 0".into(),
                        );
                        None
                    }
                    other => {
                        report(
                            "instances",
                            format!("unknown `{other}`: expected fresh or warm"),
                        );
                        None
                    }
                },
                metrics: Default::default(),
            };
            let config = step.config.clone();
            match configure(runtime, &step, services, &config).await {
                Ok(declared) => {
                    if step.stages.is_empty() {
                        step.stages = declared;
                    } else {
                        for st in step.stages.iter().filter(|x| !declared.contains(x)) {
                            report("stages", format!("the plugin does not handle stage {st:?}"));
                        }
                    }
                }
                Err(e) => report("config", format!("plugin refused its configuration: {e}")),
            }
            steps.push(step);
        }
        let t = &p.thresholds;
        chains.push(Arc::new(Chain {
            name: p.name.clone(),
            conditions: Conditions {
                listeners: p.listeners.clone(),
                authenticated: p.authenticated,
                sender_domains: p
                    .sender_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                recipient_domains: p
                    .recipient_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
            },
            steps,
            thresholds: Thresholds {
                reject: t.reject,
                quarantine: t.quarantine,
                add_header: t.add_header,
            },
            dmarc: p.dmarc,
            runtime: runtime.clone(),
            services: services.clone(),
        }));
    }
    let mut tests = Vec::new();
    for (i, t) in parsed.test.iter().enumerate() {
        let key = format!("test[{i}]");
        let line = locate(&source, &key);
        if !matches!(
            t.expect.as_str(),
            "accept" | "reject" | "defer" | "quarantine" | "discard"
        ) {
            let k = format!("{key}.expect");
            problems.push(problem(
                file,
                locate(&source, &k),
                &k,
                format!(
                    "unknown verdict `{}`: expected accept, reject, defer, quarantine or discard",
                    t.expect
                ),
            ));
        }
        let mut case = t.clone();
        case.message = dir.join(&t.message).display().to_string();
        tests.push(PolicyTest {
            case,
            file: file.to_path_buf(),
            index: i,
            line,
        });
    }
    if problems.is_empty() {
        Ok((chains, tests))
    } else {
        Err(problems)
    }
}

/// Calls `stages` and `configure` on a fresh instance.
async fn configure(
    runtime: &Runtime,
    step: &Step,
    services: &Services,
    config: &str,
) -> Result<HashSet<Stage>, String> {
    let mut store = step.store(runtime, services, false);
    let instance = step
        .pre
        .instance_pre()
        .instantiate_async(&mut store)
        .await
        .map_err(|e| format!("{e:#}"))?;
    step.handlers
        .check(&mut store, &instance)
        .map_err(|e| format!("{e:#}"))?;
    let plugin =
        crate::bindings::Plugin::new(&mut store, &instance).map_err(|e| format!("{e:#}"))?;
    let f = plugin.sluice_plugin_filter();
    let declared = f
        .call_stages(&mut store)
        .await
        .map_err(|e| format!("{e:#}"))?;
    f.call_configure(&mut store, config)
        .await
        .map_err(|e| format!("{e:#}"))??;
    Ok(declared
        .into_iter()
        .map(crate::chain::from_wit_stage)
        .collect())
}

/// A TOML table as JSON text, for `configure`.
fn config_json(t: &toml::Table) -> String {
    serde_json::to_string(t).unwrap_or_else(|_| "{}".into())
}
