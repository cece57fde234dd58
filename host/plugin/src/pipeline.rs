//! [`WasmPipeline`]: the host's pipelines, backed by the loaded policies, with atomic hot
//! reload. A session takes a [`Snapshot`] when it starts and keeps it, so a reload never
//! changes the chain under a session in flight.

use crate::bindings::host::NewEvent;
use crate::bindings::types as wit;
use crate::chain::{Chain, StageInput, StageResult};
use crate::message::MessageData;
use crate::policy::{PolicySet, load_policies};
use crate::runtime::Runtime;
use crate::step::Services;
use async_trait::async_trait;
use sluice_config::error::Problem;
use sluice_core::{
    Envelope, Event, EventKind, EventOutcome, MessageRef, Pipeline, Pipelines, Recipient, Rendered,
    SessionInfo, Stage, Variant, Verdict,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub struct WasmPipeline {
    runtime: Arc<Runtime>,
    path: PathBuf,
    services: Option<Services>,
    current: RwLock<Arc<Snapshot>>,
}

impl WasmPipeline {
    /// Loads the policies at `path` (a folder of `*.toml` or one file).
    pub async fn load(
        runtime: Arc<Runtime>,
        path: &Path,
        services: Option<Services>,
    ) -> Result<Arc<WasmPipeline>, Vec<Problem>> {
        let set = load_policies(&runtime, path, services.clone()).await?;
        Ok(Arc::new(WasmPipeline {
            runtime,
            path: path.to_path_buf(),
            services,
            current: RwLock::new(Arc::new(Snapshot { set })),
        }))
    }

    /// Compiles the policies again, off the hot path, and swaps them in. On any problem
    /// the running policies stay and the problems are returned.
    pub async fn reload(&self) -> Result<usize, Vec<Problem>> {
        let set = load_policies(&self.runtime, &self.path, self.services.clone()).await?;
        let chains = set.chains.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Snapshot { set });
        Ok(chains)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Pipelines for WasmPipeline {
    fn current(&self) -> Arc<dyn Pipeline> {
        self.snapshot()
    }
}

/// One generation of the policies.
pub struct Snapshot {
    pub set: PolicySet,
}

impl Snapshot {
    /// The first chain whose conditions hold with what is known.
    pub fn chain(
        &self,
        session: Option<&SessionInfo>,
        sender: Option<&str>,
        recipients: Option<&[String]>,
    ) -> Option<&Arc<Chain>> {
        self.set.chain(session, sender, recipients)
    }

    /// The chain for an event: the message's session facts (listener, authenticated) as
    /// recorded in the event, its sender and its recipient.
    pub fn event_chain(&self, event: &Event) -> Option<&Arc<Chain>> {
        let rcpts: Vec<String> = event.recipient.iter().cloned().collect();
        self.set.chains.iter().find(|c| {
            c.matches(
                event.listener.as_deref().unwrap_or(""),
                event.authenticated,
                Some(&event.sender),
                Some(&rcpts),
            )
        })
    }

    fn message_chain(&self, m: &MessageRef<'_>) -> Option<&Arc<Chain>> {
        let rcpts = addresses(&m.envelope.recipients);
        self.chain(m.session, Some(&m.envelope.sender), Some(&rcpts))
    }

    async fn run(&self, chain: Option<&Arc<Chain>>, mut input: StageInput) -> Option<StageResult> {
        Some(chain?.run(&mut input).await)
    }

    /// Runs one SMTP-phase stage (connect, ehlo, mail or rcpt) and returns the chain's
    /// name with the full result, for `sluice trace`.
    pub async fn trace_stage(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        mut input: StageInput,
    ) -> Option<(String, StageResult)> {
        let rcpts = addresses(&envelope.recipients);
        let (sender, rcpts) = match input.stage() {
            Stage::Connect | Stage::Ehlo => (None, None),
            Stage::Mail => (Some(envelope.sender.as_str()), None),
            _ => (Some(envelope.sender.as_str()), Some(rcpts.as_slice())),
        };
        let chain = self.chain(Some(session), sender, rcpts)?;
        Some((chain.name.clone(), chain.run(&mut input).await))
    }

    /// The `data` stage with edits applied: used by the SMTP session and `sluice trace`.
    pub async fn data_stage(
        &self,
        id: &str,
        session: &SessionInfo,
        envelope: &mut Envelope,
        message: &mut Vec<u8>,
    ) -> Option<StageResult> {
        let rcpts = addresses(&envelope.recipients);
        let chain = self.chain(Some(session), Some(&envelope.sender), Some(&rcpts))?;
        let dmarc = if chain.dmarc == crate::policy::DmarcMode::Enforce {
            envelope
                .meta(sluice_core::meta::DMARC_ACTION)
                .map(|action| {
                    let domain = envelope
                        .meta(sluice_core::meta::DMARC_DOMAIN)
                        .unwrap_or("the sender's domain");
                    (action == "reject", format!("DMARC policy of {domain}"))
                })
        } else {
            None
        };
        if let Some((true, why)) = &dmarc {
            tracing::info!(%id, "{why} rejects the message");
            return Some(StageResult {
                verdict: Verdict::Reject(sluice_core::Reply::new(
                    550,
                    "5.7.1",
                    format!("Message rejected by the {why}"),
                )),
                score: 0.0,
                symbols: Vec::new(),
                edits: Vec::new(),
                trace: Vec::new(),
            });
        }
        let raw = Arc::new(std::mem::take(message));
        let data = MessageData::new(raw.clone(), id, envelope.clone(), Some(session.clone()));
        let mut input = StageInput::Data(data);
        let mut result = chain.run(&mut input).await;
        if let Some((false, why)) = dmarc
            && matches!(result.verdict, Verdict::Continue | Verdict::Accept)
        {
            result.verdict = Verdict::Quarantine(why);
        }
        let kept = matches!(
            result.verdict,
            Verdict::Continue | Verdict::Accept | Verdict::Quarantine(_)
        );
        match input.message() {
            Some(m) if kept => {
                *envelope = m.envelope.clone();
                drop(raw);
                *message = Arc::try_unwrap(m.raw.clone()).unwrap_or_else(|a| (*a).clone());
            }
            _ => *message = Arc::try_unwrap(raw).unwrap_or_else(|a| (*a).clone()),
        }
        Some(result)
    }

    /// The `render` stage for one recipient, with the message it produced: for `sluice
    /// trace`.
    pub async fn render_one(
        &self,
        message: MessageRef<'_>,
        recipient: &str,
    ) -> Option<(StageResult, Arc<Vec<u8>>)> {
        let chain = self.message_chain(&message)?;
        if !chain.has_stage(Stage::Render) {
            return None;
        }
        let mut input = StageInput::Render(message_data(message), recipient.to_string());
        let result = chain.run(&mut input).await;
        let raw = input.message().map(|m| m.raw.clone())?;
        Some((result, raw))
    }
}

fn addresses(r: &[Recipient]) -> Vec<String> {
    r.iter().map(|r| r.address.clone()).collect()
}

pub fn wit_envelope(e: &Envelope) -> wit::Envelope {
    wit::Envelope {
        sender: e.sender.clone(),
        recipients: addresses(&e.recipients),
    }
}

pub fn wit_session(s: &SessionInfo) -> wit::SessionInfo {
    wit::SessionInfo {
        listener: s.listener.clone(),
        role: s.role.clone(),
        client_ip: s.client_ip.to_string(),
        helo: s.helo.clone(),
        tls: s.tls.clone(),
        auth_user: s.auth_user.clone(),
    }
}

pub fn wit_attributes(a: &[(String, String)]) -> Vec<wit::Attribute> {
    a.iter()
        .map(|(k, v)| wit::Attribute {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

fn wit_reply(r: &sluice_core::Reply) -> wit::Reply {
    wit::Reply {
        code: r.code,
        enhanced: r.enhanced.clone(),
        text: r.text.clone(),
    }
}

pub fn wit_event_kind(k: &EventKind) -> wit::EventKind {
    match k {
        EventKind::Queued => wit::EventKind::Queued,
        EventKind::Delivered => wit::EventKind::Delivered,
        EventKind::Deferred => wit::EventKind::Deferred,
        EventKind::Bounced => wit::EventKind::Bounced,
        EventKind::Rejected => wit::EventKind::Rejected,
        EventKind::Quarantined => wit::EventKind::Quarantined,
        EventKind::Opened => wit::EventKind::Opened,
        EventKind::Clicked => wit::EventKind::Clicked,
        EventKind::Unsubscribed => wit::EventKind::Unsubscribed,
        EventKind::Complained => wit::EventKind::Complained,
        EventKind::Other(s) => wit::EventKind::Other(s.clone()),
    }
}

fn event_kind(k: wit::EventKind) -> EventKind {
    match k {
        wit::EventKind::Queued => EventKind::Queued,
        wit::EventKind::Delivered => EventKind::Delivered,
        wit::EventKind::Deferred => EventKind::Deferred,
        wit::EventKind::Bounced => EventKind::Bounced,
        wit::EventKind::Rejected => EventKind::Rejected,
        wit::EventKind::Quarantined => EventKind::Quarantined,
        wit::EventKind::Opened => EventKind::Opened,
        wit::EventKind::Clicked => EventKind::Clicked,
        wit::EventKind::Unsubscribed => EventKind::Unsubscribed,
        wit::EventKind::Complained => EventKind::Complained,
        wit::EventKind::Other(s) => EventKind::Other(crate::chain::wire_text(&s, 64)),
    }
}

pub fn wit_event(e: &Event) -> wit::Event {
    wit::Event {
        id: e.id.clone(),
        time: e.time_ms,
        kind: wit_event_kind(&e.kind),
        queue_id: e.queue_id.clone(),
        message_id: e.message_id.clone(),
        sender: e.sender.clone(),
        recipient: e.recipient.clone(),
        reply: e.reply.as_ref().map(wit_reply),
        attributes: wit_attributes(&e.attributes),
    }
}

/// An event a plugin emitted, completed from the message it was handling.
pub fn event_from_wit(e: NewEvent, current: Option<&MessageData>) -> Event {
    let text = |s: String| crate::chain::wire_text(&s, 1024);
    let mut event = Event::new(
        event_kind(e.kind),
        e.sender
            .map(text)
            .or_else(|| current.map(|m| m.envelope.sender.clone()))
            .unwrap_or_default(),
    );
    event.queue_id = e
        .queue_id
        .map(text)
        .or_else(|| current.map(|m| m.queue_id.clone()));
    event.message_id = e
        .message_id
        .map(text)
        .or_else(|| current.and_then(MessageData::message_id));
    event.recipient = e.recipient.map(text);
    event.reply = e.reply.map(|r| {
        sluice_core::Reply::new(
            r.code,
            &crate::chain::wire_text(&r.enhanced, 16),
            text(r.text),
        )
    });
    if let Some(m) = current {
        event.attributes = m.envelope.meta.clone();
        event = event.with_session(m.session.as_ref());
    }
    for a in e.attributes {
        match event.attributes.iter_mut().find(|(k, _)| *k == a.key) {
            Some(slot) => slot.1 = a.value,
            None => event.attributes.push((a.key, a.value)),
        }
    }
    event
}

fn verdict(r: Option<StageResult>) -> Verdict {
    r.map_or(Verdict::Continue, |r| r.verdict)
}

fn message_data(m: MessageRef<'_>) -> Arc<MessageData> {
    MessageData::new(m.body.clone(), m.id, m.envelope.clone(), m.session.cloned())
}

#[async_trait]
impl Pipeline for Snapshot {
    async fn connect(&self, session: &SessionInfo) -> Verdict {
        let chain = self.chain(Some(session), None, None);
        verdict(
            self.run(chain, StageInput::Connect(wit_session(session)))
                .await,
        )
    }

    async fn ehlo(&self, session: &SessionInfo) -> Verdict {
        let chain = self.chain(Some(session), None, None);
        verdict(
            self.run(chain, StageInput::Ehlo(wit_session(session)))
                .await,
        )
    }

    async fn mail(&self, session: &SessionInfo, envelope: &Envelope) -> Verdict {
        let chain = self.chain(Some(session), Some(&envelope.sender), None);
        let input = StageInput::Mail(wit_session(session), wit_envelope(envelope));
        verdict(self.run(chain, input).await)
    }

    async fn rcpt(&self, session: &SessionInfo, envelope: &Envelope, rcpt: &Recipient) -> Verdict {
        let mut rcpts = addresses(&envelope.recipients);
        rcpts.push(rcpt.address.clone());
        let chain = self.chain(Some(session), Some(&envelope.sender), Some(&rcpts));
        let input = StageInput::Rcpt(
            wit_session(session),
            wit_envelope(envelope),
            rcpt.address.clone(),
        );
        verdict(self.run(chain, input).await)
    }

    async fn data(
        &self,
        id: &str,
        session: &SessionInfo,
        envelope: &mut Envelope,
        message: &mut Vec<u8>,
    ) -> Verdict {
        verdict(self.data_stage(id, session, envelope, message).await)
    }

    fn wants_events(&self) -> bool {
        self.set.chains.iter().any(|c| c.has_stage(Stage::Event))
    }

    fn wants_queued(&self, session: Option<&SessionInfo>, envelope: &Envelope) -> bool {
        let rcpts = addresses(&envelope.recipients);
        self.chain(session, Some(&envelope.sender), Some(&rcpts))
            .is_some_and(|c| c.has_stage(Stage::Queued))
    }

    async fn queued(&self, message: MessageRef<'_>, meta: &mut Vec<(String, String)>) -> Verdict {
        let chain = self
            .message_chain(&message)
            .filter(|c| c.has_stage(Stage::Queued));
        let Some(chain) = chain else {
            // Queued under a policy that had a `queued` step; a reload removed it.
            tracing::info!(id = %message.id, "the policy has no queued step for this message any more; passing it on");
            return Verdict::Continue;
        };
        let mut input = StageInput::Queued(message_data(message));
        let result = chain.run(&mut input).await;
        if let Some(m) = input.message() {
            *meta = m.envelope.meta.clone();
        }
        result.verdict
    }

    async fn delivery(&self, message: MessageRef<'_>, recipients: &[Recipient]) -> Verdict {
        let Some(chain) = self.message_chain(&message) else {
            return Verdict::Continue;
        };
        let input = StageInput::Delivery(message_data(message), addresses(recipients));
        verdict(self.run(Some(chain), input).await)
    }

    async fn render(&self, message: MessageRef<'_>, recipients: &[Recipient]) -> Option<Rendered> {
        let chain = self.message_chain(&message)?;
        if !chain.has_stage(Stage::Render) {
            return None;
        }
        let data = message_data(message);
        let mut rendered = Rendered::default();
        let mut hashes: Vec<(u64, usize)> = Vec::new();
        for (i, r) in recipients.iter().enumerate() {
            let mut input = StageInput::Render(data.clone(), r.address.clone());
            let result = chain.run(&mut input).await;
            if !matches!(result.verdict, Verdict::Continue | Verdict::Accept) {
                rendered.failed.push((i, result.verdict));
                continue;
            }
            let Some(body) = input.message().map(|m| m.raw.clone()) else {
                continue;
            };
            // Compared by hash first: many recipients with per-recipient content must not
            // cost a byte comparison against every earlier variant. A lone recipient has
            // nothing to compare with (hashing a 50 KB body was ~0.6% of the relay's CPU).
            let hash = if recipients.len() == 1 {
                0
            } else {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                body.hash(&mut h);
                h.finish()
            };
            let same = hashes
                .iter()
                .position(|&(x, k)| x == hash && rendered.variants[k].body == body);
            match same {
                Some(p) => rendered.variants[hashes[p].1].recipients.push(i),
                None => {
                    hashes.push((hash, rendered.variants.len()));
                    rendered.variants.push(Variant {
                        recipients: vec![i],
                        body,
                    })
                }
            }
        }
        Some(rendered)
    }

    async fn event(&self, event: &Event) -> EventOutcome {
        let Some(chain) = self.event_chain(event) else {
            return EventOutcome::Ack;
        };
        let mut input = StageInput::Event(wit_event(event));
        match chain.run(&mut input).await.verdict {
            Verdict::Defer(reply) => EventOutcome::Retry(reply),
            _ => EventOutcome::Ack,
        }
    }
}
