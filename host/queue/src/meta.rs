//! The record kept for each queued message.

use serde::{Deserialize, Serialize};
use sluice_core::{Envelope, Recipient, Reply, Ret, SessionInfo};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not tried yet.
    Pending,
    /// Failed temporarily; next try at this unix time.
    Deferred {
        next_attempt: u64,
    },
    Delivered,
    /// Failed permanently or expired.
    Failed,
}

impl Status {
    pub fn is_final(&self) -> bool {
        matches!(self, Status::Delivered | Status::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub recipient: Recipient,
    pub status: Status,
    pub attempts: u32,
    /// The last reply about this recipient, ours or the next hop's.
    pub last_reply: Option<Reply>,
    /// The host that gave `last_reply`.
    pub remote_mta: Option<String>,
    /// A delay DSN went out for this recipient.
    pub delay_notified: bool,
    /// The next hop accepted it with DSN support, so DSNs are its business now.
    pub relayed_with_dsn: bool,
}

impl RecipientState {
    pub fn new(recipient: Recipient) -> RecipientState {
        RecipientState {
            recipient,
            status: Status::Pending,
            attempts: 0,
            last_reply: None,
            remote_mta: None,
            delay_notified: false,
            relayed_with_dsn: false,
        }
    }
}

/// A queued message's metadata: its envelope and per-recipient state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub id: String,
    pub sender: String,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Unix time of the 250.
    pub received_at: u64,
    pub size: usize,
    pub recipients: Vec<RecipientState>,
    /// Held by the policy (quarantine); not delivered until released.
    pub quarantine: Option<String>,
    /// The session that submitted it; `None` for mail the host made (DSNs).
    pub session: Option<SessionInfo>,
    /// Metadata set by plugins (`set-meta`).
    pub meta: Vec<(String, String)>,
    /// The policy's `queued` stage has yet to pass; delivery waits for it.
    pub queued_pending: bool,
    /// When the `queued` stage runs next (unix seconds) and how often it ran.
    pub queued_next: u64,
    pub queued_attempts: u32,
}

/// The record layout before metadata and the durable `queued` stage (format version 1,
/// written without a version marker).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MessageMetaV1 {
    pub id: String,
    pub sender: String,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub received_at: u64,
    pub size: usize,
    pub recipients: Vec<RecipientState>,
    pub quarantine: Option<String>,
    pub session: Option<SessionInfo>,
}

impl From<MessageMetaV1> for MessageMeta {
    fn from(v: MessageMetaV1) -> MessageMeta {
        MessageMeta {
            id: v.id,
            sender: v.sender,
            ret: v.ret,
            envid: v.envid,
            eight_bit: v.eight_bit,
            smtputf8: v.smtputf8,
            received_at: v.received_at,
            size: v.size,
            recipients: v.recipients,
            quarantine: v.quarantine,
            session: v.session,
            meta: Vec::new(),
            queued_pending: false,
            queued_next: 0,
            queued_attempts: 0,
        }
    }
}

impl MessageMeta {
    pub fn new(id: String, envelope: &Envelope, size: usize) -> MessageMeta {
        MessageMeta {
            id,
            sender: envelope.sender.clone(),
            ret: envelope.ret,
            envid: envelope.envid.clone(),
            eight_bit: envelope.eight_bit,
            smtputf8: envelope.smtputf8,
            received_at: now_secs(),
            size,
            recipients: envelope
                .recipients
                .iter()
                .cloned()
                .map(RecipientState::new)
                .collect(),
            quarantine: None,
            session: None,
            meta: envelope.meta.clone(),
            queued_pending: false,
            queued_next: 0,
            queued_attempts: 0,
        }
    }

    pub fn envelope(&self) -> Envelope {
        Envelope {
            sender: self.sender.clone(),
            recipients: self
                .recipients
                .iter()
                .map(|r| r.recipient.clone())
                .collect(),
            ret: self.ret,
            envid: self.envid.clone(),
            eight_bit: self.eight_bit,
            smtputf8: self.smtputf8,
            meta: self.meta.clone(),
        }
    }

    /// Some recipient not tried yet.
    pub fn has_pending(&self) -> bool {
        self.recipients.iter().any(|r| r.status == Status::Pending)
    }

    /// Some recipient waiting for a retry.
    pub fn has_deferred(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| matches!(r.status, Status::Deferred { .. }))
    }

    /// Every recipient has a final status.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }

    /// When the next non-final recipient is due (unix seconds); `None` when done.
    pub fn next_due(&self) -> Option<u64> {
        if self.queued_pending {
            return Some(self.queued_next);
        }
        self.recipients
            .iter()
            .filter_map(|r| match r.status {
                Status::Pending => Some(0),
                Status::Deferred { next_attempt } => Some(next_attempt),
                _ => None,
            })
            .min()
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new queue id: sortable by arrival (milliseconds), unique within the process by a
/// counter and across restarts by a random start.
pub fn new_id() -> String {
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(rand::random::<u32>);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let n = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{millis:012X}{n:08X}")
}
