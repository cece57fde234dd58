//! MAIL FROM.

use super::{Session, Transaction};
use sluice_config::Role;
use sluice_core::{Envelope, Reply, Ret, Verdict};
use smtp_proto::{
    MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8, MailFrom,
};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn mail(&mut self, from: MailFrom<String>) -> Reply {
        if self.greeting.is_none() {
            return Reply::new(503, "5.5.1", "Send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return Reply::new(503, "5.5.1", "Nested MAIL command");
        }
        if self.cfg.role == Role::Submission && self.info.auth_user.is_none() {
            return Reply::new(530, "5.7.0", "Authentication required");
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Reply::new(555, "5.5.4", "BODY=BINARYMIME is not supported");
        }
        if from.size > self.cfg.max_message_size {
            return Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
        }
        if let Err(e) = self.ctx.queue.has_room(from.size as u64) {
            tracing::warn!(error = %e, size = from.size, "refusing MAIL");
            return super::data::storage_reply(&e);
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        let envelope = Envelope {
            sender: from.address,
            recipients: Vec::new(),
            ret: if from.flags & MAIL_RET_FULL != 0 {
                Some(Ret::Full)
            } else if from.flags & MAIL_RET_HDRS != 0 {
                Some(Ret::Headers)
            } else {
                None
            },
            envid: from.env_id,
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8,
            meta: Vec::new(),
        };
        // Each transaction runs with the policies current at its MAIL FROM: a reload reaches
        // sessions already open at their next transaction, and no transaction mixes two
        // generations of the policies.
        self.pipeline = self.ctx.pipelines.current();
        match self.pipeline.mail(&self.info, &envelope).await {
            Verdict::Reject(r) | Verdict::Defer(r) => return r,
            _ => {}
        }
        let spf = match self.verifier() {
            Some(v) => {
                let helo = self.info.helo.clone().unwrap_or_default();
                Some(v.spf(self.info.client_ip, &helo, &envelope.sender).await)
            }
            None => None,
        };
        self.tx = Some(Transaction {
            spf,
            envelope,
            body: Vec::new(),
            too_big: false,
            bdat: false,
            held: Vec::new(),
            discarded: 0,
        });
        Reply::new(250, "2.1.0", "Sender OK")
    }

    /// The checks of received mail, when this session's mail gets them: `[authentication]`
    /// is configured, the listener is `mx` and the client did not authenticate.
    pub(super) fn verifier(&self) -> Option<Arc<sluice_auth::Verifier>> {
        if self.cfg.role != Role::Mx || self.info.auth_user.is_some() {
            return None;
        }
        self.ctx.auth.clone()
    }
}
