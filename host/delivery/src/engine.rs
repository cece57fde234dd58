//! The delivery scheduler.
//!
//! Messages arrive from the SMTP session (through a channel) or from the queue at start.
//! Each due message gets an attempt: its due recipients are grouped by route, each group is
//! delivered (SMTP through a per-destination connection pool, or Maildir), and the outcomes
//! are written back. Temporary failures are retried with exponential backoff until the
//! message expires; permanent failures and expiry produce a DSN to the sender.

use crate::client::{SmtpConnection, TlsChoice};
use crate::dsn::{self, Action};
use crate::{Outcome, maildir, mx};
use hickory_resolver::TokioResolver;
use sluice_config::{Route, Settings, Via};
use sluice_core::{Event, EventKind, MessageRef, Pipelines, Recipient, Reply, Verdict};
use sluice_queue::{
    HandoffRx, MessageMeta, Queue, Queued, RecipientState, Status, new_id, now_secs,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

/// How long a shutdown waits for delivery attempts in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections to one destination: a concurrency limit and idle connections for reuse.
struct Pool {
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<SmtpConnection>>,
}

/// Where a group of recipients goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Maildir,
    Mx(String),
    Smarthost(String, u16),
}

/// What the `queued` stage lets through.
enum Gate {
    /// Go on to delivery.
    Pass,
    /// Not now (`Some`: run again then; `None`: held).
    Wait(Option<(u64, String)>),
    /// Every recipient is final with these outcomes.
    Done(Vec<(usize, Outcome)>),
}

/// The queue's messages as (due time, id), earliest first: what [`Engine::load`] found.
pub struct Schedule {
    timers: BinaryHeap<Reverse<(u64, Box<str>)>>,
}

/// What one attempt leaves to the scheduler.
struct AttemptResult {
    /// Still queued, due again at this unix time.
    due: Option<(u64, String)>,
    /// New messages (DSNs) to schedule.
    new: Vec<Queued>,
}

/// An operator's request to the running engine (admin API).
#[derive(Debug)]
pub enum Command {
    /// Make the message's deferred recipients due now.
    Retry(String),
    /// Delete the message without notice to its sender.
    Delete(String),
    /// Deliver a quarantined message after all.
    Release(String),
    /// Delete a message whose quarantine outlived its retention (unless it was released
    /// meanwhile: then `Conflict`).
    Expire(String),
}

/// Records when a message was quarantined after its arrival (the retention counts from it).
fn mark_quarantined(meta: &mut MessageMeta) {
    let key = sluice_core::meta::QUARANTINED_AT;
    meta.meta.retain(|(k, _)| k != key);
    meta.meta.push((key.into(), now_secs().to_string()));
}

/// When a quarantined message was held: the recorded time, else its arrival.
pub fn quarantined_at(meta: &MessageMeta) -> u64 {
    meta.meta
        .iter()
        .find(|(k, _)| k == sluice_core::meta::QUARANTINED_AT)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(meta.received_at)
}

/// Metadata key marking a message an operator released from quarantine.
pub const RELEASED: &str = "sluice.released";

fn released(meta: &MessageMeta) -> bool {
    meta.meta.iter().any(|(k, _)| k == RELEASED)
}

/// What became of a [`Command`].
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Done,
    NotFound,
    /// The request does not apply to the message as it is (releasing one not held).
    Conflict(String),
    Failed(String),
}

/// Sends [`Command`]s to [`Engine::run`].
#[derive(Clone)]
pub struct Control(mpsc::Sender<(Command, oneshot::Sender<Answer>)>);

/// The engine's end of [`Control`].
pub struct ControlRx(mpsc::Receiver<(Command, oneshot::Sender<Answer>)>);

/// A channel for operator requests; `None` from [`Control::send`] when the engine stopped.
pub fn control() -> (Control, ControlRx) {
    let (tx, rx) = mpsc::channel(64);
    (Control(tx), ControlRx(rx))
}

impl Control {
    pub async fn send(&self, command: Command) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        self.0.send((command, tx)).await.ok()?;
        rx.await.ok()
    }
}

pub struct Engine {
    settings: Arc<Settings>,
    queue: Arc<dyn Queue>,
    pipelines: Arc<dyn Pipelines>,
    resolver: Option<TokioResolver>,
    tls_unverified: Arc<rustls::ClientConfig>,
    tls_verified: Arc<rustls::ClientConfig>,
    /// Keyed by destination and TLS policy: a connection opened in plaintext for one route
    /// is never reused for a route that requires TLS.
    pools: Mutex<HashMap<(Target, sluice_config::TlsPolicy), Arc<Pool>>>,
    global: Arc<Semaphore>,
    /// DKIM keys; mail from authenticated clients and the host's own is signed after
    /// rendering, so the signature covers the bytes sent.
    signer: Option<Arc<sluice_auth::Signer>>,
    /// `[verp]`: its keys, made once.
    verp: Option<sluice_track::Keys>,
}

impl Engine {
    pub fn new(
        settings: Arc<Settings>,
        queue: Arc<dyn Queue>,
        pipelines: Arc<dyn Pipelines>,
    ) -> Arc<Engine> {
        Engine::with_signer(settings, queue, pipelines, None)
    }

    /// With DKIM signing (`None` or no keys: nothing is signed).
    pub fn with_signer(
        settings: Arc<Settings>,
        queue: Arc<dyn Queue>,
        pipelines: Arc<dyn Pipelines>,
        signer: Option<Arc<sluice_auth::Signer>>,
    ) -> Arc<Engine> {
        let signer = signer.filter(|s| !s.is_empty());
        let resolver = resolver(&settings.delivery.nameservers);
        let verp = settings
            .verp
            .as_ref()
            .map(|v| sluice_track::Keys::new(&v.key, &v.previous_keys));
        Arc::new(Engine {
            global: Arc::new(Semaphore::new(settings.delivery.max_connections)),
            settings,
            queue,
            pipelines,
            resolver,
            tls_unverified: sluice_net::client_tls::unverified(),
            tls_verified: sluice_net::client_tls::verified(),
            pools: Mutex::new(HashMap::new()),
            signer,
            verp,
        })
    }

    /// Reads the queue into a schedule: one pass, one record in memory at a time, keeping
    /// only (due time, id) per message. Run it before the listeners accept, so that a
    /// message accepted meanwhile is not scheduled twice. Blocking.
    pub fn load(&self) -> Schedule {
        let mut timers = BinaryHeap::new();
        let mut done = Vec::new();
        let started = std::time::Instant::now();
        let result = self.queue.for_each(&mut |m| {
            if m.quarantine.is_some() {
                return;
            }
            match m.next_due() {
                Some(due) => timers.push(Reverse((due, m.id.into_boxed_str()))),
                None => done.push(m.id),
            }
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot read the queue");
        }
        for id in done {
            let _ = self.queue.remove(&id);
        }
        if !timers.is_empty() {
            tracing::info!(messages = timers.len(), took = ?started.elapsed(), "resuming delivery of queued mail");
        }
        Schedule { timers }
    }

    /// Runs until `shutdown` turns true; then lets attempts in flight finish.
    ///
    /// At most `max_in_flight` attempts run at once (each may hold a body in memory); due
    /// messages wait in the schedule as (time, id) until a place is free, and a message
    /// already in flight is never started twice.
    pub async fn run(
        self: Arc<Self>,
        schedule: Schedule,
        mut incoming: HandoffRx,
        mut control: ControlRx,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut timers = schedule.timers;
        let max_in_flight = self
            .settings
            .delivery
            .max_connections
            .saturating_mul(2)
            .max(8);
        let mut in_flight: HashSet<String> = HashSet::new();
        // Deleted while an attempt ran: removed when the attempt ends.
        let mut cancelled: HashSet<String> = HashSet::new();
        let mut attempts = tokio::task::JoinSet::new();
        let mut reaper = tokio::time::interval(Duration::from_secs(1));
        let m = sluice_metrics::global();
        loop {
            m.queue_scheduled.set(timers.len() as i64);
            m.queue_in_flight.set(attempts.len() as i64);
            let room = attempts.len() < max_in_flight;
            let next = timers.peek().map(|Reverse((due, _))| *due);
            let sleep = async {
                match next {
                    Some(due) => {
                        let wait = due.saturating_sub(now_secs());
                        tokio::time::sleep(Duration::from_secs(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(Queued { meta, body }) = incoming.queued.recv(), if room => {
                    if in_flight.insert(meta.id.clone()) {
                        let engine = self.clone();
                        attempts.spawn(async move {
                            let id = meta.id.clone();
                            (id, engine.attempt(meta, Some(body)).await)
                        });
                    }
                }
                Some(id) = incoming.overflow.recv() => {
                    timers.push(Reverse((now_secs(), id.into_boxed_str())));
                }
                _ = sleep, if room => {
                    let now = now_secs();
                    while attempts.len() < max_in_flight {
                        match timers.peek() {
                            Some(Reverse((due, _))) if *due <= now => {}
                            _ => break,
                        }
                        let Reverse((_, id)) = timers.pop().expect("peeked");
                        let id = String::from(id);
                        // Its running attempt reschedules it when it ends.
                        if !in_flight.insert(id.clone()) {
                            continue;
                        }
                        let engine = self.clone();
                        attempts.spawn(async move {
                            let result = match engine.queue.get(&id) {
                                Ok(Some(meta)) => engine.attempt(meta, None).await,
                                Ok(None) => AttemptResult { due: None, new: Vec::new() },
                                Err(e) => {
                                    tracing::error!(%id, error = %e, "cannot load queued message");
                                    AttemptResult { due: Some((now_secs() + 60, id.clone())), new: Vec::new() }
                                }
                            };
                            (id, result)
                        });
                    }
                }
                Some((command, reply)) = control.0.recv() => {
                    let answer = self.command(command, &in_flight, &mut cancelled, &mut timers);
                    let _ = reply.send(answer);
                }
                Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                    match done {
                        Ok((id, result)) => {
                            in_flight.remove(&id);
                            if cancelled.remove(&id) {
                                if let Err(e) = self.queue.remove(&id) {
                                    tracing::error!(%id, error = %e, "cannot delete message");
                                }
                                tracing::info!(%id, "message deleted by the operator after its attempt");
                            } else if let Some((due, id)) = result.due {
                                timers.push(Reverse((due, id.into_boxed_str())));
                            }
                            // DSNs: due now; they start as soon as there is room.
                            for Queued { meta, .. } in result.new {
                                timers.push(Reverse((now_secs(), meta.id.into_boxed_str())));
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "delivery attempt panicked"),
                    }
                }
                _ = reaper.tick() => self.close_idle(false).await,
                _ = stopped(&mut shutdown) => break,
            }
        }
        tracing::debug!(in_flight = attempts.len(), "delivery stopping");
        // Attempts in flight get a grace period; one stuck on a slow peer is abandoned (its
        // recipients are still pending on disk and are tried again after the restart).
        let drain = async { while attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(
                abandoned = attempts.len(),
                "delivery attempts still running at shutdown; they are retried after the restart"
            );
            attempts.abort_all();
            while attempts.join_next().await.is_some() {}
        }
        self.close_idle(true).await;
        tracing::debug!("delivery stopped");
    }

    /// Closes idle connections past the idle timeout (all of them with `all`).
    async fn close_idle(&self, all: bool) {
        let limit = self.settings.delivery.idle_timeout;
        let mut stale = Vec::new();
        {
            let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            for pool in pools.values() {
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                let (old, keep): (Vec<_>, Vec<_>) = idle
                    .drain(..)
                    .partition(|c| all || c.last_used.elapsed() >= limit);
                *idle = keep;
                stale.extend(old);
            }
        }
        // QUIT waits for the peer's reply: never on the scheduler's own task.
        let quits: Vec<_> = stale.into_iter().map(|c| tokio::spawn(c.quit())).collect();
        if all {
            for q in quits {
                let _ = q.await;
            }
        }
    }

    fn pool(&self, target: &Target, tls: sluice_config::TlsPolicy) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry((target.clone(), tls))
            .or_insert_with(|| {
                Arc::new(Pool {
                    slots: Arc::new(Semaphore::new(
                        self.settings.delivery.max_connections_per_destination,
                    )),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// One attempt at every due recipient of a message; the body is read from the queue
    /// unless given.
    async fn attempt(&self, mut meta: MessageMeta, body: Option<Arc<Vec<u8>>>) -> AttemptResult {
        let now = now_secs();
        tracing::trace!(id = %meta.id, "attempt");
        let body = match body.map_or_else(
            || self.queue.body(&meta.id).map(|b| b.map(Arc::new)),
            |b| Ok(Some(b)),
        ) {
            Ok(Some(b)) => b,
            Ok(None) => {
                // Reported, never dropped silently: every pending recipient fails with a
                // DSN to the sender (built from the envelope alone).
                tracing::error!(id = %meta.id, sender = %meta.sender, "queued message body is missing or fails its checksum; bouncing it");
                let reply = Reply::new(
                    550,
                    "5.3.0",
                    "the message was damaged in the queue (body missing or checksum mismatch) and cannot be delivered; please send it again",
                );
                let outcomes: Vec<(usize, Outcome)> = (0..meta.recipients.len())
                    .filter(|&i| !meta.recipients[i].status.is_final())
                    .map(|i| {
                        (
                            i,
                            Outcome::Failed {
                                reply: reply.clone(),
                                remote: None,
                            },
                        )
                    })
                    .collect();
                let mut new = Vec::new();
                let recorded = self.apply(&mut meta, outcomes, now, b"", &mut new).await;
                return self.finish(meta, now, new, recorded);
            }
            Err(e) => {
                tracing::error!(id = %meta.id, error = %e, "cannot read message body");
                return AttemptResult {
                    due: Some((now + 60, meta.id)),
                    new: Vec::new(),
                };
            }
        };
        if meta.queued_pending {
            match self.queued_stage(&mut meta, &body, now).await {
                Gate::Pass => {}
                Gate::Wait(due) => {
                    return AttemptResult {
                        due,
                        new: Vec::new(),
                    };
                }
                Gate::Done(outcomes) => {
                    let mut new = Vec::new();
                    let recorded = self.apply(&mut meta, outcomes, now, &body, &mut new).await;
                    return self.finish(meta, now, new, recorded);
                }
            }
        }
        let due: Vec<usize> = (0..meta.recipients.len())
            .filter(|&i| match meta.recipients[i].status {
                Status::Pending => true,
                Status::Deferred { next_attempt } => next_attempt <= now,
                _ => false,
            })
            .collect();

        let rcpts: Vec<Recipient> = due
            .iter()
            .map(|&i| meta.recipients[i].recipient.clone())
            .collect();
        let envelope = meta.envelope();
        let pipeline = self.pipelines.current();
        let message = MessageRef {
            id: &meta.id,
            session: meta.session.as_ref(),
            envelope: &envelope,
            body: &body,
        };
        let verdict = match pipeline.delivery(message, &rcpts).await {
            // An operator released it after review: a hold at this stage is not applied again.
            Verdict::Quarantine(reason) if released(&meta) => {
                tracing::info!(id = %meta.id, %reason, "quarantine verdict ignored: released by the operator");
                Verdict::Continue
            }
            v => v,
        };
        let outcomes: Vec<(usize, Outcome)> = match verdict {
            Verdict::Reject(reply) => due
                .iter()
                .map(|&i| {
                    (
                        i,
                        Outcome::Failed {
                            reply: reply.clone(),
                            remote: None,
                        },
                    )
                })
                .collect(),
            Verdict::Defer(reply) => due
                .iter()
                .map(|&i| {
                    (
                        i,
                        Outcome::Deferred {
                            reply: reply.clone(),
                            remote: None,
                        },
                    )
                })
                .collect(),
            Verdict::Discard => due
                .iter()
                .map(|&i| {
                    let reply = Reply::new(250, "2.0.0", "discarded by policy");
                    (
                        i,
                        Outcome::Delivered {
                            reply,
                            remote: None,
                            dsn_passed_on: true,
                            final_delivery: true,
                        },
                    )
                })
                .collect(),
            Verdict::Quarantine(reason) => {
                tracing::info!(id = %meta.id, %reason, "message quarantined at delivery");
                meta.quarantine = Some(reason);
                mark_quarantined(&mut meta);
                self.save(&meta);
                return AttemptResult {
                    due: None,
                    new: Vec::new(),
                };
            }
            Verdict::Continue | Verdict::Accept => {
                // Per-recipient rendering: one transaction per distinct variant.
                let mut outcomes = Vec::new();
                let variants: Vec<(Arc<Vec<u8>>, Vec<usize>)> =
                    match pipeline.render(message, &rcpts).await {
                        None => vec![(body.clone(), due.clone())],
                        Some(rendered) => {
                            for (k, verdict) in rendered.failed {
                                let i = due[k];
                                outcomes.push(match verdict {
                                    Verdict::Reject(reply) => (
                                        i,
                                        Outcome::Failed {
                                            reply,
                                            remote: None,
                                        },
                                    ),
                                    Verdict::Defer(reply) => (
                                        i,
                                        Outcome::Deferred {
                                            reply,
                                            remote: None,
                                        },
                                    ),
                                    _ => (
                                        i,
                                        Outcome::Deferred {
                                            reply: Reply::new(451, "4.3.0", "rendering failed"),
                                            remote: None,
                                        },
                                    ),
                                });
                            }
                            rendered
                                .variants
                                .into_iter()
                                .map(|v| (v.body, v.recipients.iter().map(|&k| due[k]).collect()))
                                .collect()
                        }
                    };
                let variants = self.sign(&meta, variants);
                let verp = self.verp_applies(&meta);
                let mut work = Vec::new();
                for (variant, idx) in &variants {
                    // With VERP each recipient has its own envelope sender: its own
                    // transaction.
                    let mut groups: HashMap<(Target, Option<usize>), (Route, Vec<usize>)> =
                        HashMap::new();
                    for &i in idx {
                        let route = self
                            .settings
                            .route_for(&meta.recipients[i].recipient.domain());
                        let target = match &route.via {
                            Via::Maildir => Target::Maildir,
                            Via::Mx => Target::Mx(route.domain.clone()),
                            Via::Smarthost { host, port } => Target::Smarthost(host.clone(), *port),
                        };
                        // A Maildir keeps the message's own sender: no split there.
                        let single = (verp && target != Target::Maildir).then_some(i);
                        groups
                            .entry((target, single))
                            .or_insert_with(|| (route, Vec::new()))
                            .1
                            .push(i);
                    }
                    for ((target, single), (route, idx)) in groups {
                        let sender = match single {
                            Some(i) => self.verp_sender(&meta, i),
                            None => meta.sender.clone(),
                        };
                        work.push(self.deliver_group(target, route, &meta, idx, variant, sender));
                    }
                }
                outcomes.extend(futures::future::join_all(work).await.into_iter().flatten());
                outcomes
            }
        };

        let mut new = Vec::new();
        let recorded = self.apply(&mut meta, outcomes, now, &body, &mut new).await;
        self.finish(meta, now, new, recorded)
    }

    /// DKIM-signs each variant of a message from an authenticated client or made by the
    /// host (DSNs) whose From: domain has keys. A signing failure is logged and the variant
    /// goes unsigned (a receiver treats it as unsigned mail, not as a forgery).
    fn sign(
        &self,
        meta: &MessageMeta,
        variants: Vec<(Arc<Vec<u8>>, Vec<usize>)>,
    ) -> Vec<(Arc<Vec<u8>>, Vec<usize>)> {
        let Some(signer) = &self.signer else {
            return variants;
        };
        let ours = meta.session.as_ref().is_none_or(|s| s.auth_user.is_some());
        if !ours {
            return variants;
        }
        variants
            .into_iter()
            .map(|(body, idx)| match signer.sign(&body) {
                Ok(headers) if headers.is_empty() => (body, idx),
                Ok(mut signed) => {
                    signed.extend_from_slice(&body);
                    (Arc::new(signed), idx)
                }
                Err(e) => {
                    tracing::warn!(id = %meta.id, error = %e, "DKIM signing failed; sent unsigned");
                    (body, idx)
                }
            })
            .collect()
    }

    /// Applies an operator's request between attempts: only the engine writes queue
    /// records while delivery runs, so a request never races an attempt's own write.
    fn command(
        &self,
        command: Command,
        in_flight: &HashSet<String>,
        cancelled: &mut HashSet<String>,
        timers: &mut BinaryHeap<Reverse<(u64, Box<str>)>>,
    ) -> Answer {
        let (Command::Retry(id) | Command::Delete(id) | Command::Release(id) | Command::Expire(id)) =
            &command;
        let meta = match self.queue.get(id) {
            Ok(Some(m)) => m,
            Ok(None) => return Answer::NotFound,
            Err(e) => return Answer::Failed(e.to_string()),
        };
        match command {
            Command::Delete(id) if in_flight.contains(&id) => {
                // An attempt is under way: what it delivers is delivered; the record goes
                // when it ends.
                cancelled.insert(id);
                Answer::Done
            }
            Command::Delete(id) => match self.queue.remove(&id) {
                Ok(()) => {
                    tracing::info!(%id, "message deleted by the operator");
                    Answer::Done
                }
                Err(e) => Answer::Failed(e.to_string()),
            },
            Command::Expire(id) => {
                let Some(reason) = &meta.quarantine else {
                    return Answer::Conflict(format!("message {id} is not quarantined"));
                };
                match self.queue.remove(&id) {
                    Ok(()) => {
                        tracing::info!(%id, %reason, "quarantined message expired, deleted");
                        Answer::Done
                    }
                    Err(e) => Answer::Failed(e.to_string()),
                }
            }
            Command::Release(id) => {
                let mut meta = meta;
                let Some(reason) = meta.quarantine.take() else {
                    return Answer::Conflict(format!("message {id} is not quarantined"));
                };
                meta.meta.retain(|(k, _)| k != RELEASED);
                meta.meta.push((RELEASED.into(), "1".into()));
                if let Err(e) = self.queue.update(&meta) {
                    return Answer::Failed(e.to_string());
                }
                tracing::info!(%id, %reason, "released from quarantine by the operator");
                timers.push(Reverse((now_secs(), id.into_boxed_str())));
                Answer::Done
            }
            // Being attempted right now: nothing to hurry.
            Command::Retry(id) if in_flight.contains(&id) => Answer::Done,
            Command::Retry(id) => {
                let mut meta = meta;
                let now = now_secs();
                for r in &mut meta.recipients {
                    if let Status::Deferred { next_attempt } = &mut r.status {
                        *next_attempt = now;
                    }
                }
                if let Err(e) = self.queue.update(&meta) {
                    return Answer::Failed(e.to_string());
                }
                timers.push(Reverse((now, id.into_boxed_str())));
                Answer::Done
            }
        }
    }

    /// Writes an attempt's result back: removes a finished message, or keeps it with its
    /// next due time.
    /// Writes a message's record back; a failure is logged (the next attempt or restart
    /// works from the older record: delivery is at least once).
    fn save(&self, meta: &MessageMeta) {
        if let Err(e) = self.queue.update(meta) {
            tracing::error!(id = %meta.id, error = %e, "cannot update queued message");
        }
    }

    /// With `events_published` false the events could not be put on the bus: the record is
    /// left as it was, so the result and its events come again with the next attempt.
    fn finish(
        &self,
        meta: MessageMeta,
        now: u64,
        new: Vec<Queued>,
        events_published: bool,
    ) -> AttemptResult {
        if !events_published {
            return AttemptResult {
                due: Some((now + 60, meta.id)),
                new,
            };
        }
        if meta.is_done() {
            if let Err(e) = self.queue.remove(&meta.id) {
                tracing::error!(id = %meta.id, error = %e, "cannot remove delivered message");
            }
            AttemptResult { due: None, new }
        } else {
            self.save(&meta);
            let due = meta.next_due().unwrap_or(now + 60);
            AttemptResult {
                due: Some((due, meta.id)),
                new,
            }
        }
    }

    /// The policy's `queued` stage, before the first delivery attempt: run until it stops
    /// deferring (at least once across restarts: `queued_pending` is in the record).
    async fn queued_stage(&self, meta: &mut MessageMeta, body: &Arc<Vec<u8>>, now: u64) -> Gate {
        let envelope = meta.envelope();
        let message = MessageRef {
            id: &meta.id,
            session: meta.session.as_ref(),
            envelope: &envelope,
            body,
        };
        let mut kv = meta.meta.clone();
        let verdict = self.pipelines.current().queued(message, &mut kv).await;
        meta.meta = kv;
        meta.queued_attempts += 1;
        let all = |o: &dyn Fn() -> Outcome| -> Vec<(usize, Outcome)> {
            (0..meta.recipients.len())
                .filter(|&i| !meta.recipients[i].status.is_final())
                .map(|i| (i, o()))
                .collect()
        };
        let gate = match verdict {
            Verdict::Continue | Verdict::Accept => {
                meta.queued_pending = false;
                Gate::Pass
            }
            Verdict::Defer(reply) => {
                let expire_at = meta.received_at + self.settings.delivery.expire.as_secs();
                if now >= expire_at {
                    let reply = Reply::new(
                        550,
                        "5.4.7",
                        format!(
                            "message expired before the policy's queued stage passed; last error: {reply}"
                        ),
                    );
                    meta.queued_pending = false;
                    Gate::Done(all(&|| Outcome::Failed {
                        reply: reply.clone(),
                        remote: None,
                    }))
                } else {
                    let wait = self.backoff(meta.queued_attempts);
                    meta.queued_next = now + wait.as_secs().max(1);
                    tracing::info!(id = %meta.id, %reply, retry_in = ?wait, "queued stage deferred");
                    self.save(meta);
                    Gate::Wait(Some((meta.queued_next, meta.id.clone())))
                }
            }
            Verdict::Reject(reply) => {
                meta.queued_pending = false;
                Gate::Done(all(&|| Outcome::Failed {
                    reply: reply.clone(),
                    remote: None,
                }))
            }
            Verdict::Discard => {
                meta.queued_pending = false;
                tracing::info!(id = %meta.id, "message discarded by the queued stage");
                Gate::Done(all(&|| Outcome::Delivered {
                    reply: Reply::new(250, "2.0.0", "discarded by policy"),
                    remote: None,
                    dsn_passed_on: true,
                    final_delivery: true,
                }))
            }
            Verdict::Quarantine(reason) => {
                meta.queued_pending = false;
                tracing::info!(id = %meta.id, %reason, "message quarantined by the queued stage");
                meta.quarantine = Some(reason);
                mark_quarantined(meta);
                self.save(meta);
                Gate::Wait(None)
            }
        };
        // A pass is not written here: the attempt that follows at once ends by removing or
        // saving the record (`finish`), and a crash before that runs the stage again, which
        // at least once allows. One queue write per message fewer.
        gate
    }

    /// Whether the message goes out with VERP return paths: `[verp]` is configured and it
    /// came from an authenticated client with a sender to return to.
    fn verp_applies(&self, meta: &MessageMeta) -> bool {
        self.verp.is_some()
            && !meta.sender.is_empty()
            && meta.session.as_ref().is_some_and(|s| s.auth_user.is_some())
    }

    /// The VERP return path of recipient `i`.
    fn verp_sender(&self, meta: &MessageMeta, i: usize) -> String {
        let (Some(keys), Some(v)) = (&self.verp, &self.settings.verp) else {
            return meta.sender.clone();
        };
        sluice_track::verp::address(keys, &v.local_part, &v.domain, &meta.id, i)
    }

    /// Sends recipients `idx` of the message to one target in one transaction, with `sender`
    /// as the envelope sender (for SMTP; a Maildir keeps the message's own).
    async fn deliver_group(
        &self,
        target: Target,
        route: Route,
        meta: &MessageMeta,
        idx: Vec<usize>,
        body: &Arc<Vec<u8>>,
        sender: String,
    ) -> Vec<(usize, Outcome)> {
        if target == Target::Maildir {
            let root = self.settings.maildir();
            let host = self.settings.hostname.clone();
            let sender = meta.sender.clone();
            let jobs: Vec<(usize, String)> = idx
                .iter()
                .map(|&i| (i, meta.recipients[i].recipient.address.clone()))
                .collect();
            let body = body.clone();
            return tokio::task::spawn_blocking(move || {
                jobs.into_iter()
                    .map(|(i, rcpt)| (i, maildir::deliver(&root, &host, &sender, &rcpt, &body)))
                    .collect()
            })
            .await
            .unwrap_or_default();
        }
        let defer_all = |reply: Reply| Outcome::for_all(&idx, &reply, &None);
        // The destination's slot first: a slow destination queues on its own slots and
        // cannot hold global permits that other destinations are waiting for.
        let pool = self.pool(&target, route.tls);
        tracing::trace!(id = %meta.id, "waiting for a destination slot");
        let _slot = pool.slots.clone().acquire_owned().await;
        tracing::trace!(id = %meta.id, "waiting for a connection permit");
        let _global = self.global.clone().acquire_owned().await;
        tracing::trace!(id = %meta.id, "connecting");
        let tls = TlsChoice {
            policy: route.tls,
            unverified: self.tls_unverified.clone(),
            verified: self.tls_verified.clone(),
        };
        // A reused connection may have been closed by the peer meanwhile: then try a fresh one.
        loop {
            let reused = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(c) => c,
                None => match self.connect(&target, &tls).await {
                    Ok(c) => c,
                    Err(reply) => return defer_all(reply),
                },
            };
            // An overall cap: a tarpit answering a byte at a time cannot hold this slot
            // for ever.
            let cap = self.settings.delivery.transaction_timeout;
            let sent = tokio::time::timeout(cap, conn.send(meta, &sender, &idx, body))
                .await
                .unwrap_or_else(|_| {
                    Err(Reply::new(
                        451,
                        "4.4.2",
                        format!("{} took too long; attempt abandoned", conn.host),
                    ))
                });
            match sent {
                Ok(outcomes) => {
                    if conn.messages_sent < self.settings.delivery.max_messages_per_connection {
                        pool.idle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(conn);
                    } else {
                        tokio::spawn(conn.quit());
                    }
                    return outcomes;
                }
                Err(reply) if fresh => {
                    return idx
                        .iter()
                        .map(|&i| {
                            (
                                i,
                                Outcome::Deferred {
                                    reply: reply.clone(),
                                    remote: Some(conn.host.clone()),
                                },
                            )
                        })
                        .collect();
                }
                Err(_) => continue,
            }
        }
    }

    async fn connect(&self, target: &Target, tls: &TlsChoice) -> Result<SmtpConnection, Reply> {
        let d = &self.settings.delivery;
        let no_dns = || Reply::new(451, "4.4.3", "no DNS resolver available");
        let hops: Vec<(String, Vec<SocketAddr>)> = match target {
            Target::Smarthost(host, port) => {
                let addrs = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, *port)],
                    Err(_) => {
                        let r = self.resolver.as_ref().ok_or_else(no_dns)?;
                        mx::host_addrs(r, host, *port).await?
                    }
                };
                vec![(host.clone(), addrs)]
            }
            Target::Mx(domain) => {
                let r = self.resolver.as_ref().ok_or_else(no_dns)?;
                mx::mx_hops(r, domain, d.mx_port)
                    .await?
                    .into_iter()
                    .map(|h| (h.name, h.addrs))
                    .collect()
            }
            Target::Maildir => unreachable!("maildir has no connections"),
        };
        let mut last = Reply::new(451, "4.4.4", "no host to connect to");
        for (name, addrs) in hops {
            for addr in addrs {
                match SmtpConnection::connect(
                    addr,
                    &name,
                    &self.settings.hostname,
                    tls,
                    d.connect_timeout,
                    d.command_timeout,
                )
                .await
                {
                    Ok(c) => return Ok(c),
                    Err(reply) => {
                        tracing::info!(host = %name, %addr, %reply, "next hop unavailable");
                        last = reply;
                    }
                }
            }
        }
        Err(last)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let d = &self.settings.delivery;
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        d.retry_initial.saturating_mul(factor).min(d.retry_max)
    }

    /// Writes outcomes into `meta`, emits events and queues DSNs.
    async fn apply(
        &self,
        meta: &mut MessageMeta,
        outcomes: Vec<(usize, Outcome)>,
        now: u64,
        body: &[u8],
        new: &mut Vec<Queued>,
    ) -> bool {
        let expire_at = meta.received_at + self.settings.delivery.expire.as_secs();
        let mut published = true;
        let mut events = Vec::with_capacity(outcomes.len());
        for (i, outcome) in outcomes {
            let r = &mut meta.recipients[i];
            r.attempts += 1;
            let kind = match outcome {
                Outcome::Delivered {
                    reply,
                    remote,
                    dsn_passed_on,
                    final_delivery,
                } => {
                    r.status = Status::Delivered;
                    r.last_reply = Some(reply);
                    r.remote_mta = remote;
                    r.relayed_with_dsn = dsn_passed_on && !final_delivery;
                    EventKind::Delivered
                }
                Outcome::Failed { reply, remote } => {
                    r.status = Status::Failed;
                    r.last_reply = Some(reply);
                    r.remote_mta = remote;
                    EventKind::Bounced
                }
                Outcome::Deferred { reply, remote } => {
                    if now >= expire_at {
                        // The 5.4.7 is ours, not the remote's: no Remote-MTA claims it.
                        let from = remote.map(|h| format!(" from {h}")).unwrap_or_default();
                        r.remote_mta = None;
                        r.status = Status::Failed;
                        r.last_reply = Some(Reply::new(
                            550,
                            "5.4.7",
                            format!("message expired in queue; last error{from}: {reply}"),
                        ));
                        EventKind::Bounced
                    } else {
                        r.remote_mta = remote;
                        // Backoff counts from the end of the attempt, however long it took.
                        let wait = self.backoff(r.attempts);
                        r.status = Status::Deferred {
                            next_attempt: now_secs().max(now) + wait.as_secs().max(1),
                        };
                        r.last_reply = Some(reply);
                        EventKind::Deferred
                    }
                }
            };
            let m = sluice_metrics::global();
            let outcome = match kind {
                EventKind::Delivered => {
                    m.delivery_latency_seconds
                        .observe(now_secs().saturating_sub(meta.received_at) as f64);
                    "delivered"
                }
                EventKind::Deferred => "deferred",
                _ => "bounced",
            };
            m.deliveries.with_label_values(&[outcome]).inc();
            tracing::info!(
                id = %meta.id,
                to = %r.recipient.address,
                status = ?kind,
                reply = %r.last_reply.as_ref().map(|x| x.to_string()).unwrap_or_default(),
                "delivery"
            );
            events.push((kind, i));
        }
        let deliver = self.pipelines.current().wants_events();
        if deliver || self.queue.keeps_events() {
            let message_id = sluice_core::envelope::message_id(body);
            for (kind, i) in &events {
                let r = &meta.recipients[*i];
                let mut e =
                    Event::new(kind.clone(), &meta.sender).with_session(meta.session.as_ref());
                e.queue_id = Some(meta.id.clone());
                e.message_id = message_id.clone();
                e.recipient = Some(r.recipient.address.clone());
                e.reply = r.last_reply.clone();
                e.attributes = meta.meta.clone();
                if let Some(remote) = &r.remote_mta {
                    e.attributes.push(("remote_mta".into(), remote.clone()));
                }
                // What kind of failure, as the bounces plugin says it for reports.
                if *kind == EventKind::Bounced
                    && let Some(reply) = &r.last_reply
                {
                    let reason = sluice_bounce::classify(&reply.enhanced, &reply.text);
                    let hard = reason.is_hard(reply.code >= 500);
                    e.attributes.push((
                        "bounce_type".into(),
                        if hard { "hard" } else { "soft" }.into(),
                    ));
                    e.attributes.push(("reason".into(), reason.name().into()));
                }
                // Published before the record changes: sled keeps the order, so the
                // result is never on disk without its event for event steps.
                if let Err(err) = self.queue.event(e, deliver) {
                    tracing::error!(id = %meta.id, error = %err, "cannot publish event; the attempt's result is not recorded and will be retried");
                    published = false;
                }
            }
        }
        if meta.sender.is_empty() {
            return published; // never report about a report (RFC 3461 §6.1)
        }
        let delay_after = self.settings.delivery.delay_notify_after.as_secs();
        let mut failed = Vec::new();
        let mut delayed = Vec::new();
        let mut succeeded = Vec::new();
        for (kind, i) in &events {
            let r = &meta.recipients[*i];
            let n = r.recipient.notify;
            match kind {
                EventKind::Bounced if n.on_failure() => failed.push(*i),
                EventKind::Deferred
                    if n.on_delay()
                        && !r.delay_notified
                        && now >= meta.received_at + delay_after =>
                {
                    delayed.push(*i)
                }
                EventKind::Delivered if n.on_success() && !r.relayed_with_dsn => succeeded.push(*i),
                _ => {}
            }
        }
        for i in &delayed {
            meta.recipients[*i].delay_notified = true;
        }
        let reports = [
            (failed, Action::Failed),
            (delayed, Action::Delayed),
            (succeeded, Action::Delivered),
        ];
        for (idx, action) in reports {
            if idx.is_empty() {
                continue;
            }
            let list: Vec<(&RecipientState, Action)> = idx
                .iter()
                .map(|&i| {
                    let r = &meta.recipients[i];
                    let action = match action {
                        Action::Delivered if r.remote_mta.is_some() => Action::Relayed,
                        a => a,
                    };
                    (r, action)
                })
                .collect();
            let report = dsn::build(
                &self.settings.hostname,
                meta,
                body,
                &list,
                expire_at,
                self.settings.delivery.dsn_max_original,
            );
            let envelope = sluice_core::Envelope {
                sender: String::new(),
                recipients: vec![Recipient::new(meta.sender.clone())],
                // A report to a UTF-8 address must travel with SMTPUTF8 (RFC 6533).
                smtputf8: !meta.sender.is_ascii(),
                ..Default::default()
            };
            let dsn_meta = MessageMeta::new(new_id(), &envelope, report.len());
            match self.queue.enqueue(&dsn_meta, &report).await {
                Ok(()) => {
                    tracing::info!(id = %meta.id, dsn = %dsn_meta.id, ?action, to = %meta.sender, "DSN queued");
                    new.push(Queued {
                        meta: dsn_meta,
                        body: Arc::new(report),
                    });
                }
                Err(e) => {
                    // A recipient is final only once its DSN is queued: leave the record as
                    // it was, so the next attempt produces the result and the DSN again.
                    tracing::error!(id = %meta.id, error = %e, "cannot queue DSN; the attempt's result is not recorded and will be retried");
                    published = false;
                }
            }
        }
        published
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The DNS resolver: the configured servers, or the system's.
fn resolver(nameservers: &[SocketAddr]) -> Option<TokioResolver> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::name_server::TokioConnectionProvider;
    use hickory_resolver::proto::xfer::Protocol;
    if nameservers.is_empty() {
        return match TokioResolver::builder_tokio() {
            Ok(b) => Some(b.build()),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver: MX delivery will be deferred");
                None
            }
        };
    }
    let mut config = ResolverConfig::new();
    for addr in nameservers {
        config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
        config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
    }
    Some(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build())
}
