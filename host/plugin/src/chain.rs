//! Running one stage through a chain's steps.
//!
//! A call runs in a fresh instance from the step's `InstancePre` in a new store (no state
//! carried between messages), or in a warm one from the step's [`WarmPool`] when the
//! component declares it keeps no state or the policy asks for warm instances; either way
//! with the step's memory limit, CPU deadline and wall-clock timeout. Steps run in order;
//! the first verdict other than `continue` ends the stage. Scores add up, and the chain's thresholds turn the sum into an action at the `data`
//! stage. A step's edits are checked (stage, capability, form) and applied right after it,
//! so the next step sees the message as this one left it.

use crate::bindings::{PluginPre, types as wit};
use crate::edits::{Allowed, EditError};
use crate::handlers::Handlers;
use crate::message::{MessageData, MessageHandle};
use crate::runtime::Runtime;
use crate::step::{Grants, Services, StepState};
use sluice_core::{Reply, Stage, Verdict};
use sluice_metrics::{CounterSeries, HistogramSeries};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime::component::Instance;

/// What a step's failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// `451 4.3.0`: the client tries again later.
    Tempfail,
    /// The step is ignored for this message.
    Skip,
    /// `554 5.7.0`.
    Reject,
}

pub struct Step {
    pub name: Arc<str>,
    pub plugin: Arc<str>,
    pub pre: PluginPre<StepState>,
    /// The handlers' export indices, type-checked at load.
    pub handlers: Handlers,
    pub stages: HashSet<Stage>,
    pub on_error: OnError,
    pub memory: usize,
    pub deadline_ticks: u64,
    /// Wall-clock limit of one call, host calls (sleeps, HTTP, TCP) included.
    pub wall_timeout: Duration,
    pub max_output: usize,
    pub grants: Arc<Grants>,
    /// The step's `config` table as JSON.
    pub config: Arc<str>,
    /// Warm instances (the component declares it keeps no state, or the policy asks for
    /// them); otherwise a fresh one per call.
    pub warm: Option<WarmPool>,
    /// The step's metric series, looked up at first use.
    pub metrics: StepMetrics,
}

/// One step's series of the per-call metrics. A lookup by labels hashes them and takes
/// the metric's lock, on every call of every step otherwise; a series is created at its
/// first use, so stages and verdicts a step never has do not appear.
#[derive(Default)]
pub struct StepMetrics {
    calls: [OnceLock<HistogramSeries>; 9],
    verdicts: [OnceLock<CounterSeries>; 6],
    instances: OnceLock<CounterSeries>,
}

impl StepMetrics {
    fn call_seconds(&self, chain: &str, step: &str, stage: Stage) -> &HistogramSeries {
        self.calls[stage as usize].get_or_init(|| {
            sluice_metrics::global()
                .plugin_call_seconds
                .with_label_values(&[chain, step, stage_name(stage)])
        })
    }

    fn instances(&self, chain: &str, step: &str) -> &CounterSeries {
        self.instances.get_or_init(|| {
            sluice_metrics::global()
                .plugin_instances
                .with_label_values(&[chain, step])
        })
    }

    fn verdicts(&self, chain: &str, step: &str, verdict: &Verdict) -> &CounterSeries {
        let i = match verdict {
            Verdict::Continue => 0,
            Verdict::Accept => 1,
            Verdict::Reject(_) => 2,
            Verdict::Defer(_) => 3,
            Verdict::Discard => 4,
            Verdict::Quarantine(_) => 5,
        };
        self.verdicts[i].get_or_init(|| {
            sluice_metrics::global()
                .plugin_verdicts
                .with_label_values(&[chain, step, verdict_name(verdict)])
        })
    }
}

impl Step {
    /// A store for one call. `offline` (policy tests) takes the network grants away.
    pub fn store(&self, runtime: &Runtime, services: &Services, offline: bool) -> Store<StepState> {
        let grants = if offline {
            Arc::new(Grants {
                tcp: Vec::new(),
                http: Vec::new(),
                ..(*self.grants).clone()
            })
        } else {
            self.grants.clone()
        };
        let state = StepState::new(
            self.plugin.clone(),
            self.name.clone(),
            grants,
            services.clone(),
            self.config.clone(),
            self.memory,
            self.wall_timeout,
        );
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Every epoch tick the guest runs through costs one tick of its CPU budget and
        // yields to the executor, so a spinning guest never holds a worker thread for long.
        store.data_mut().cpu_ticks_left = self.deadline_ticks;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            if s.cpu_ticks_left == 0 {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            s.cpu_ticks_left -= 1;
            Ok(wasmtime::UpdateDeadline::Yield(1))
        });
        store
    }
}

#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub listeners: Vec<String>,
    pub authenticated: Option<bool>,
    pub sender_domains: Vec<String>,
    pub recipient_domains: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    pub reject: Option<f64>,
    pub quarantine: Option<f64>,
    pub add_header: Option<f64>,
}

pub struct Chain {
    pub name: String,
    pub conditions: Conditions,
    pub steps: Vec<Step>,
    pub thresholds: Thresholds,
    pub dmarc: crate::policy::DmarcMode,
    pub runtime: Arc<Runtime>,
    pub services: Services,
}

/// The input of one stage.
pub enum StageInput {
    Connect(wit::SessionInfo),
    Ehlo(wit::SessionInfo),
    Mail(wit::SessionInfo, wit::Envelope),
    Rcpt(wit::SessionInfo, wit::Envelope, String),
    Data(Arc<MessageData>),
    Queued(Arc<MessageData>),
    Delivery(Arc<MessageData>, Vec<String>),
    Render(Arc<MessageData>, String),
    Event(wit::Event),
}

impl StageInput {
    pub fn stage(&self) -> Stage {
        match self {
            StageInput::Connect(_) => Stage::Connect,
            StageInput::Ehlo(_) => Stage::Ehlo,
            StageInput::Mail(..) => Stage::Mail,
            StageInput::Rcpt(..) => Stage::Rcpt,
            StageInput::Data(_) => Stage::Data,
            StageInput::Queued(_) => Stage::Queued,
            StageInput::Delivery(..) => Stage::Delivery,
            StageInput::Render(..) => Stage::Render,
            StageInput::Event(_) => Stage::Event,
        }
    }

    /// The message this stage is about, when it is about one.
    pub fn message(&self) -> Option<&Arc<MessageData>> {
        match self {
            StageInput::Data(m)
            | StageInput::Queued(m)
            | StageInput::Delivery(m, _)
            | StageInput::Render(m, _) => Some(m),
            _ => None,
        }
    }

    fn message_mut(&mut self) -> Option<&mut Arc<MessageData>> {
        match self {
            StageInput::Data(m)
            | StageInput::Queued(m)
            | StageInput::Delivery(m, _)
            | StageInput::Render(m, _) => Some(m),
            _ => None,
        }
    }
}

/// The stage's name as in the WIT contract.
pub fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Connect => "connect",
        Stage::Ehlo => "ehlo",
        Stage::Mail => "mail",
        Stage::Rcpt => "rcpt",
        Stage::Data => "data",
        Stage::Queued => "queued",
        Stage::Delivery => "delivery",
        Stage::Render => "render",
        Stage::Event => "event",
    }
}

fn allowed_edits(s: Stage) -> Allowed {
    match s {
        Stage::Data => Allowed::All,
        Stage::Queued => Allowed::Meta,
        Stage::Render => Allowed::Content,
        _ => Allowed::Nothing,
    }
}

/// What one step did, for logs and `sluice trace`.
#[derive(Debug, Clone)]
pub struct StepTrace {
    pub step: String,
    pub verdict: Verdict,
    pub symbols: Vec<wit::Symbol>,
    pub edits: Vec<wit::Edit>,
    pub elapsed: Duration,
    /// The failure and what `on_error` made of it.
    pub error: Option<String>,
}

/// The result of a stage.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub verdict: Verdict,
    pub score: f64,
    /// Every step's symbols.
    pub symbols: Vec<wit::Symbol>,
    /// The edits the host made after the steps (the score headers of the chain's
    /// thresholds); each step's own edits are in its trace.
    pub edits: Vec<wit::Edit>,
    pub trace: Vec<StepTrace>,
}

/// Why a step call failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("CPU deadline exceeded")]
    Timeout,
    #[error("wall-clock timeout exceeded ({0:?})")]
    WallTimeout(Duration),
    #[error("edits refused: {0}")]
    Edit(#[from] EditError),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("result too large: {0} bytes, limit {1}")]
    Oversized(usize, usize),
    #[error("{0} symbols, limit {MAX_SYMBOLS}")]
    TooManySymbols(usize),
}

impl StepError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StepError::Timeout => "timeout",
            StepError::WallTimeout(_) => "wall_timeout",
            StepError::Edit(_) => "edit",
            StepError::Trap(t) if t.contains("memory") => "memory",
            StepError::Trap(_) => "trap",
            StepError::Oversized(..) => "oversized",
            StepError::TooManySymbols(_) => "symbols",
        }
    }
}

/// A verdict's name, as a metric label.
fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Continue => "continue",
        Verdict::Accept => "accept",
        Verdict::Reject(_) => "reject",
        Verdict::Defer(_) => "defer",
        Verdict::Discard => "discard",
        Verdict::Quarantine(_) => "quarantine",
    }
}

impl Chain {
    /// Whether this chain applies, given what is known at this point of the session.
    pub fn matches(
        &self,
        listener: &str,
        authenticated: Option<bool>,
        sender: Option<&str>,
        recipients: Option<&[String]>,
    ) -> bool {
        let c = &self.conditions;
        if !c.listeners.is_empty() && !c.listeners.iter().any(|l| l == listener) {
            return false;
        }
        // A chain for (un)authenticated sessions never matches what has no session.
        if c.authenticated.is_some() && c.authenticated != authenticated {
            return false;
        }
        if !c.sender_domains.is_empty() {
            let Some(sender) = sender else { return false };
            if !c.sender_domains.contains(&sluice_core::domain_of(sender)) {
                return false;
            }
        }
        if !c.recipient_domains.is_empty() {
            let Some(rcpts) = recipients else {
                return false;
            };
            if !rcpts
                .iter()
                .any(|r| c.recipient_domains.contains(&sluice_core::domain_of(r)))
            {
                return false;
            }
        }
        true
    }

    /// Whether any step runs at this stage.
    pub fn has_stage(&self, stage: Stage) -> bool {
        self.steps.iter().any(|s| s.stages.contains(&stage))
    }

    /// Runs every step subscribed to the input's stage. For stages about a message, the
    /// input's message is replaced by each step's edited version, so that it holds the
    /// result when the stage ends.
    pub async fn run(&self, input: &mut StageInput) -> StageResult {
        self.run_with(input, None).await
    }

    /// [`Chain::run`] with other services (stores and event bus) than the chain's, no warm
    /// instance and no network grants: policy tests run this way, so they never touch live
    /// state or reach out.
    pub async fn run_with(
        &self,
        input: &mut StageInput,
        services: Option<&Services>,
    ) -> StageResult {
        let stage = input.stage();
        let mut result = StageResult {
            verdict: Verdict::Continue,
            score: 0.0,
            symbols: Vec::new(),
            edits: Vec::new(),
            trace: Vec::new(),
        };
        for step in self.steps.iter().filter(|s| s.stages.contains(&stage)) {
            let start = Instant::now();
            let outcome = match self.call(step, input, services).await {
                Ok((o, warm)) => self.apply_edits(step, input, &o.edits).map(|()| {
                    // Only an instance whose whole call succeeded, edits included, is
                    // kept for the next message.
                    if let (Some(w), Some(pool)) = (warm, &step.warm) {
                        pool.put(w);
                    }
                    o
                }),
                Err(e) => Err(e),
            };
            let elapsed = start.elapsed();
            step.metrics
                .call_seconds(&self.name, &step.name, stage)
                .observe(elapsed.as_secs_f64());
            if let Err(e) = &outcome {
                sluice_metrics::global()
                    .plugin_errors
                    .with_label_values(&[&self.name, &*step.name, e.kind()])
                    .inc();
            }
            let (verdict, trace) = match outcome {
                Ok(o) => {
                    let verdict = to_verdict(&o.verdict);
                    for s in &o.symbols {
                        if s.score.is_finite() {
                            result.score += s.score;
                        }
                    }
                    result.symbols.extend(o.symbols.iter().cloned());
                    // The step's edits are applied already; the trace keeps them (they can
                    // be whole replaced parts: moved, not copied).
                    let trace = StepTrace {
                        step: step.name.to_string(),
                        verdict: verdict.clone(),
                        symbols: o.symbols,
                        edits: o.edits,
                        elapsed,
                        error: None,
                    };
                    (verdict, trace)
                }
                Err(e) => {
                    tracing::warn!(
                        chain = %self.name, step = %step.name, plugin = %step.plugin,
                        ?stage, error = %e, on_error = ?step.on_error, "plugin step failed"
                    );
                    let verdict = match step.on_error {
                        OnError::Skip => Verdict::Continue,
                        OnError::Tempfail => Verdict::Defer(Reply::new(
                            451,
                            "4.3.0",
                            format!("Temporary failure in policy step {}", step.name),
                        )),
                        OnError::Reject => Verdict::Reject(Reply::new(
                            554,
                            "5.7.0",
                            format!("Message refused by policy step {}", step.name),
                        )),
                    };
                    let trace = StepTrace {
                        step: step.name.to_string(),
                        verdict: verdict.clone(),
                        symbols: Vec::new(),
                        edits: Vec::new(),
                        elapsed,
                        error: Some(e.to_string()),
                    };
                    (verdict, trace)
                }
            };
            step.metrics
                .verdicts(&self.name, &step.name, &verdict)
                .inc();
            result.trace.push(trace);
            if verdict != Verdict::Continue {
                result.verdict = verdict;
                return result;
            }
        }
        if stage == Stage::Data {
            sluice_metrics::global()
                .message_score
                .with_label_values(&[&self.name])
                .observe(result.score);
            self.apply_thresholds(&mut result);
            // Host-made headers from well-formed values: applying them cannot fail.
            let _ = edit_message(input, &result.edits);
        }
        result
    }

    /// Checks a step's edits and applies them to the input's message.
    fn apply_edits(
        &self,
        step: &Step,
        input: &mut StageInput,
        edits: &[wit::Edit],
    ) -> Result<(), StepError> {
        if edits.is_empty() {
            return Ok(());
        }
        let stage = input.stage();
        crate::edits::check(
            edits,
            allowed_edits(stage),
            stage_name(stage),
            step.grants.envelope,
        )?;
        Ok(edit_message(input, edits)?)
    }

    fn apply_thresholds(&self, r: &mut StageResult) {
        let t = &self.thresholds;
        // Formatted only when a threshold needs it: most messages pass none.
        let names = |r: &StageResult| {
            r.symbols
                .iter()
                .map(|s| format!("{}={:.2}", s.name, s.score))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if t.reject.is_some_and(|x| r.score >= x) {
            r.verdict = Verdict::Reject(Reply::new(
                550,
                "5.7.1",
                format!("Message rejected by policy (score {:.2})", r.score),
            ));
        } else if t.quarantine.is_some_and(|x| r.score >= x) {
            r.verdict = Verdict::Quarantine(format!("score {:.2}: {}", r.score, names(r)));
        }
        if t.add_header.is_some_and(|x| r.score >= x) {
            let symbols = names(r);
            r.edits.push(wit::Edit::SetHeader(wit::Header {
                name: "X-Sluice-Score".into(),
                value: format!("{:.2}", r.score),
            }));
            r.edits.push(wit::Edit::SetHeader(wit::Header {
                name: "X-Sluice-Symbols".into(),
                value: symbols,
            }));
        }
    }

    async fn call(
        &self,
        step: &Step,
        input: &StageInput,
        services: Option<&Services>,
    ) -> Result<(wit::Outcome, Option<Warm>), StepError> {
        // Dropping the future on timeout drops the store with whatever it was waiting on.
        let call = self.call_inner(step, input, services);
        match tokio::time::timeout(step.wall_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StepError::WallTimeout(step.wall_timeout)),
        }
    }

    async fn call_inner(
        &self,
        step: &Step,
        input: &StageInput,
        services: Option<&Services>,
    ) -> Result<(wit::Outcome, Option<Warm>), StepError> {
        let trap = |e: wasmtime::Error| classify(e);
        let warm = step.warm.as_ref().filter(|_| services.is_none());
        let reused = warm.and_then(WarmPool::take);
        let (mut store, plugin, uses, born_with) = match reused {
            Some(w) => (w.store, w.plugin, w.uses, w.born_with),
            None => {
                let mut store = step.store(
                    &self.runtime,
                    services.unwrap_or(&self.services),
                    services.is_some(),
                );
                let plugin = step
                    .pre
                    .instance_pre()
                    .instantiate_async(&mut store)
                    .await
                    .map_err(trap)?;
                step.metrics.instances(&self.name, &step.name).inc();
                let born_with = store.data().limits.memory_total();
                (store, plugin, 0, born_with)
            }
        };
        store.data_mut().cpu_ticks_left = step.deadline_ticks;
        store.set_epoch_deadline(1);
        store.data_mut().begin_call(input.message().cloned());
        let outcome = invoke(&step.handlers, &mut store, &plugin, input)
            .await
            .map_err(trap)?;
        store.data_mut().begin_call(None);
        let size = outcome_size(&outcome);
        if size > step.max_output {
            return Err(StepError::Oversized(size, step.max_output));
        }
        if outcome.symbols.len() > MAX_SYMBOLS {
            return Err(StepError::TooManySymbols(outcome.symbols.len()));
        }
        let warm = warm.map(|_| Warm {
            store,
            plugin,
            uses: uses + 1,
            born_with,
        });
        Ok((outcome, warm))
    }
}

/// Applies edits to the input's message (stages without one take none).
fn edit_message(input: &mut StageInput, edits: &[wit::Edit]) -> Result<(), EditError> {
    let Some(m) = input.message_mut() else {
        return Ok(());
    };
    let mut envelope = m.envelope.clone();
    let raw = crate::edits::apply_parsed(&m.raw, m.parsed_if_ready(), &mut envelope, edits)?;
    let raw = raw.map_or_else(|| m.raw.clone(), Arc::new);
    *m = m.edited(raw, envelope);
    Ok(())
}

/// Calls the handler for the input's stage.
async fn invoke(
    f: &Handlers,
    store: &mut Store<StepState>,
    p: &Instance,
    input: &StageInput,
) -> wasmtime::Result<wit::Outcome> {
    match input {
        StageInput::Connect(s) => f.on_connect(store, p, s).await,
        StageInput::Ehlo(s) => f.on_ehlo(store, p, s).await,
        StageInput::Mail(s, e) => f.on_mail(store, p, s, e).await,
        StageInput::Rcpt(s, e, r) => f.on_rcpt(store, p, s, e, r).await,
        StageInput::Data(m)
        | StageInput::Queued(m)
        | StageInput::Delivery(m, _)
        | StageInput::Render(m, _) => {
            let handle = store.data_mut().table.push(MessageHandle(m.clone()))?;
            let rep = handle.rep();
            let result = match input {
                StageInput::Data(_) => f.on_data(store, p, handle).await,
                StageInput::Queued(_) => f.on_queued(store, p, handle).await,
                StageInput::Delivery(_, r) => f.on_delivery(store, p, handle, r).await,
                StageInput::Render(_, r) => {
                    f.on_render(store, p, handle, r)
                        .await
                        .map(|edits| wit::Outcome {
                            verdict: wit::Verdict::Continue,
                            symbols: Vec::new(),
                            edits,
                        })
                }
                _ => unreachable!("matched above"),
            };
            // The message was lent for the call only; a warm instance must not keep it.
            let _ = store
                .data_mut()
                .table
                .delete(wasmtime::component::Resource::<MessageHandle>::new_own(rep));
            result
        }
        StageInput::Event(e) => f.on_event(store, p, e).await,
    }
}

/// A live instance kept for the next message.
pub struct Warm {
    store: Store<StepState>,
    plugin: Instance,
    uses: usize,
    /// Its linear memory right after instantiation.
    born_with: usize,
}

/// How far a warm instance's memory may grow past what it was born with (and past twice
/// that) before it is dropped instead of kept: a big message must not leave every idle
/// instance holding the memory it needed.
const WARM_GROWTH: usize = 4 << 20;

/// Warm instances of one step: for plugins that declare they keep nothing between calls
/// (a fresh instance costs about 20 µs of CPU under load, most of a no-op step), and for
/// heavy runtimes (Python, JavaScript) whose fresh instance costs milliseconds. An instance
/// sees up to `recycle_after` messages, so a plugin that does keep state carries it that
/// far; one that failed (trap, timeout, oversized result, refused edits) is never reused,
/// nor one whose memory grew more than 4 MiB (and twice its size) past its start, nor one
/// that left host resources open, and a reload starts new pools.
pub struct WarmPool {
    pub size: usize,
    pub recycle_after: usize,
    idle: std::sync::Mutex<Vec<Warm>>,
}

impl WarmPool {
    pub fn new(size: usize, recycle_after: usize) -> WarmPool {
        WarmPool {
            size,
            recycle_after,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Option<Warm> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put(&self, mut w: Warm) {
        let memory = w.store.data().limits.memory_total();
        let allowed = (w.born_with + WARM_GROWTH).max(2 * w.born_with);
        // Host resources the guest left open (a socket, an HTTP request still running, a
        // stream) would outlive the call they were counted against: such an instance goes.
        // Not counted: the `request-options` that wasmtime-wasi-http 48's `handle` reads and
        // never deletes (a leak of the host's, a few bytes each, gone with the instance),
        // and the `network` handle, a placeholder holding nothing that wasi-libc asks for
        // once and keeps (every plugin that opened a socket was otherwise never reused).
        let leftovers = w.store.data_mut().table.iter_mut().any(|r| {
            !r.is::<wasmtime_wasi_http::RequestOptions>() && !r.is::<wasmtime_wasi::p2::Network>()
        });
        if w.uses >= self.recycle_after || memory > allowed || leftovers {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.size {
            idle.push(w);
        }
    }
}

fn classify(e: wasmtime::Error) -> StepError {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>()
        && *t == wasmtime::Trap::Interrupt
    {
        return StepError::Timeout;
    }
    StepError::Trap(format!("{e:#}"))
}

/// Most symbols one step may return.
pub const MAX_SYMBOLS: usize = 1000;

/// What every symbol and edit counts for against `max_output`, whatever its content: a
/// million empty edits are not free to apply.
const ITEM_COST: usize = 64;

fn outcome_size(o: &wit::Outcome) -> usize {
    let reply = |r: &wit::Reply| r.enhanced.len() + r.text.len() + 2;
    let verdict = match &o.verdict {
        wit::Verdict::Reject(r) | wit::Verdict::Defer(r) => reply(r),
        wit::Verdict::Quarantine(s) => s.len(),
        _ => 0,
    };
    let symbols: usize = o
        .symbols
        .iter()
        .map(|s| s.name.len() + s.description.as_ref().map_or(0, String::len) + ITEM_COST)
        .sum();
    let edits: usize = o
        .edits
        .iter()
        .map(|e| match e {
            wit::Edit::AddHeader(h) | wit::Edit::SetHeader(h) => h.name.len() + h.value.len(),
            wit::Edit::ReplacePart(p) => p.body.len() + 4,
            wit::Edit::SetMeta(a) => a.key.len() + a.value.len(),
            wit::Edit::RemoveHeader(s)
            | wit::Edit::ReplaceText(s)
            | wit::Edit::ReplaceHtml(s)
            | wit::Edit::AddRecipient(s)
            | wit::Edit::RemoveRecipient(s)
            | wit::Edit::SetSender(s) => s.len(),
        } + ITEM_COST)
        .sum();
    verdict + symbols + edits
}

pub fn to_verdict(v: &wit::Verdict) -> Verdict {
    let reply = |r: &wit::Reply, class: u16| {
        // A plugin may only reject with 5xx and defer with 4xx; anything else is mended.
        let (code, enhanced) = if r.code / 100 == class && r.code < 600 {
            let enhanced = if valid_enhanced(&r.enhanced, class) {
                r.enhanced.clone()
            } else {
                format!("{class}.7.1")
            };
            (r.code, enhanced)
        } else if class == 5 {
            (550, "5.7.1".to_string())
        } else {
            (451, "4.7.1".to_string())
        };
        Reply::new(code, &enhanced, wire_text(&r.text, 512))
    };
    match v {
        wit::Verdict::Continue => Verdict::Continue,
        wit::Verdict::Accept => Verdict::Accept,
        wit::Verdict::Reject(r) => Verdict::Reject(reply(r, 5)),
        wit::Verdict::Defer(r) => Verdict::Defer(reply(r, 4)),
        wit::Verdict::Quarantine(s) => Verdict::Quarantine(wire_text(s, 512)),
        wit::Verdict::Discard => Verdict::Discard,
    }
}

/// `class.subject.detail` (RFC 3463): the class matching the reply code's, then one to three
/// digits, then one to three digits.
fn valid_enhanced(e: &str, class: u16) -> bool {
    let mut parts = e.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    parts.next() == Some(&class.to_string())
        && ok(parts.next())
        && ok(parts.next())
        && parts.next().is_none()
}

/// Plugin text that reaches the wire (replies, DSNs, logs): control characters become
/// spaces, at most `max` characters.
pub fn wire_text(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub fn from_wit_stage(s: wit::Stage) -> Stage {
    match s {
        wit::Stage::Connect => Stage::Connect,
        wit::Stage::Ehlo => Stage::Ehlo,
        wit::Stage::Mail => Stage::Mail,
        wit::Stage::Rcpt => Stage::Rcpt,
        wit::Stage::Data => Stage::Data,
        wit::Stage::Queued => Stage::Queued,
        wit::Stage::Delivery => Stage::Delivery,
        wit::Stage::Render => Stage::Render,
        wit::Stage::Event => Stage::Event,
    }
}
