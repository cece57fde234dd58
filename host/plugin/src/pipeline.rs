//! [`WasmPipeline`]: the host's pipelines, backed by the loaded policies, with atomic hot
//! reload. A session takes a [`Snapshot`] when it starts and keeps it, so a reload never
//! changes the chain under a session in flight.

use crate::bindings::types as wit;
use crate::chain::{Chain, StageInput, StageResult};
use crate::message::{MessageData, no_auth_results};
use crate::policy::{PolicySet, load_policies};
use crate::runtime::Runtime;
use crate::step::Services;
use async_trait::async_trait;
use sluice_config::error::Problem;
use sluice_core::{
    DeliveryEvent, Envelope, EventKind, Pipeline, Pipelines, Recipient, SessionInfo, Verdict,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub struct WasmPipeline {
    runtime: Arc<Runtime>,
    path: PathBuf,
    services: Option<Arc<dyn Services>>,
    current: RwLock<Arc<Snapshot>>,
}

impl WasmPipeline {
    /// Loads the policies at `path` (a folder of `*.toml` or one file).
    pub async fn load(
        runtime: Arc<Runtime>,
        path: &Path,
        services: Option<Arc<dyn Services>>,
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
        let listener = session.map_or("", |s| s.listener.as_str());
        let auth = session.is_some_and(|s| s.auth_user.is_some());
        self.set
            .chains
            .iter()
            .find(|c| c.matches(listener, auth, sender, recipients))
    }

    async fn run(&self, chain: Option<&Arc<Chain>>, input: StageInput) -> Option<StageResult> {
        Some(chain?.run(&input).await)
    }

    /// Runs one SMTP-phase stage (connect, ehlo, mail or rcpt) and returns the chain's
    /// name with the full result, for `sluice trace`.
    pub async fn trace_stage(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        input: StageInput,
    ) -> Option<(String, StageResult)> {
        let rcpts = addresses(&envelope.recipients);
        let (sender, rcpts) = match input.stage() {
            sluice_core::Stage::Connect | sluice_core::Stage::Ehlo => (None, None),
            sluice_core::Stage::Mail => (Some(envelope.sender.as_str()), None),
            _ => (Some(envelope.sender.as_str()), Some(rcpts.as_slice())),
        };
        let chain = self.chain(Some(session), sender, rcpts)?;
        Some((chain.name.clone(), chain.run(&input).await))
    }

    /// The `data` stage with edits applied: used by the SMTP session and `sluice trace`.
    pub async fn data_stage(
        &self,
        session: &SessionInfo,
        envelope: &mut Envelope,
        message: &mut Vec<u8>,
    ) -> Option<StageResult> {
        let rcpts = addresses(&envelope.recipients);
        let chain = self.chain(Some(session), Some(&envelope.sender), Some(&rcpts))?;
        let raw = Arc::new(std::mem::take(message));
        let data = MessageData::new(
            raw.clone(),
            wit_envelope(envelope),
            wit_session(session),
            no_auth_results(),
        );
        let result = chain.run(&StageInput::Data(data)).await;
        *message = Arc::try_unwrap(raw).unwrap_or_else(|a| (*a).clone());
        if !result.edits.is_empty()
            && matches!(
                result.verdict,
                Verdict::Continue | Verdict::Accept | Verdict::Quarantine(_)
            )
            && let Some(edited) = crate::edits::apply(message, envelope, &result.edits)
        {
            *message = edited;
        }
        Some(result)
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

fn verdict(r: Option<StageResult>) -> Verdict {
    r.map_or(Verdict::Continue, |r| r.verdict)
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
        session: &SessionInfo,
        envelope: &mut Envelope,
        message: &mut Vec<u8>,
    ) -> Verdict {
        verdict(self.data_stage(session, envelope, message).await)
    }

    async fn queued(
        &self,
        _id: &str,
        session: Option<&SessionInfo>,
        envelope: &Envelope,
        message: &[u8],
    ) {
        let rcpts = addresses(&envelope.recipients);
        let Some(chain) = self.chain(session, Some(&envelope.sender), Some(&rcpts)) else {
            return;
        };
        let data = message_data(session, envelope, message);
        chain.run(&StageInput::Queued(data)).await;
    }

    async fn delivery(
        &self,
        _id: &str,
        session: Option<&SessionInfo>,
        envelope: &Envelope,
        message: &[u8],
        recipients: &[Recipient],
    ) -> Verdict {
        let rcpts = addresses(&envelope.recipients);
        let chain = self.chain(session, Some(&envelope.sender), Some(&rcpts));
        let Some(chain) = chain else {
            return Verdict::Continue;
        };
        let data = message_data(session, envelope, message);
        chain
            .run(&StageInput::Delivery(data, addresses(recipients)))
            .await
            .verdict
    }

    async fn event(&self, event: &DeliveryEvent) {
        let rcpts = [event.recipient.clone()];
        let Some(chain) = self.chain(None, Some(&event.sender), Some(&rcpts)) else {
            return;
        };
        let input = StageInput::Event(wit::DeliveryEvent {
            kind: match event.kind {
                EventKind::Delivered => wit::EventKind::Delivered,
                EventKind::Deferred => wit::EventKind::Deferred,
                EventKind::Bounced => wit::EventKind::Bounced,
            },
            message_id: event.message_id.clone(),
            sender: event.sender.clone(),
            recipient: event.recipient.clone(),
            reply: wit::Reply {
                code: event.reply.code,
                enhanced: event.reply.enhanced.clone(),
                text: event.reply.text.clone(),
            },
        });
        chain.run(&input).await;
    }
}

fn message_data(
    session: Option<&SessionInfo>,
    envelope: &Envelope,
    message: &[u8],
) -> Arc<MessageData> {
    MessageData::new(
        Arc::new(message.to_vec()),
        wit_envelope(envelope),
        session.map_or_else(crate::message::empty_session, wit_session),
        no_auth_results(),
    )
}
