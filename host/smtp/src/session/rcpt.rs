//! RCPT TO, with the relay rules: an `mx` listener accepts only local and relay domains unless the
//! client authenticated; a `submission` listener requires AUTH before MAIL.

use super::Session;
use sluice_config::Role;
use sluice_core::{Notify, Recipient, Reply, Verdict, domain_of};
use smtp_proto::{
    RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, RcptTo,
};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn rcpt(&mut self, to: RcptTo<String>) -> Reply {
        let Some(tx) = self.tx.as_ref() else {
            return Reply::new(503, "5.5.1", "Send MAIL first");
        };
        if tx.envelope.recipients.len() >= self.cfg.max_recipients {
            return Reply::new(452, "4.5.3", "Too many recipients");
        }
        if !tx.envelope.smtputf8 && !to.address.is_ascii() {
            return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        let domain = domain_of(&to.address);
        if domain.is_empty() {
            return Reply::new(501, "5.1.3", "Recipient address must have a domain");
        }
        if !self.ctx.settings.accepts_for(&domain) && self.info.auth_user.is_none() {
            return match self.cfg.role {
                Role::Submission => Reply::new(530, "5.7.0", "Authentication required"),
                Role::Mx => Reply::new(554, "5.7.1", format!("Relay access denied for {domain}")),
            };
        }
        if to.flags & RCPT_NOTIFY_NEVER != 0 && to.flags & !RCPT_NOTIFY_NEVER & 0b111 != 0 {
            return Reply::new(
                501,
                "5.5.4",
                "NOTIFY=NEVER cannot be combined with other values",
            );
        }
        let recipient = Recipient {
            address: to.address,
            notify: Notify {
                never: to.flags & RCPT_NOTIFY_NEVER != 0,
                success: to.flags & RCPT_NOTIFY_SUCCESS != 0,
                failure: to.flags & RCPT_NOTIFY_FAILURE != 0,
                delay: to.flags & RCPT_NOTIFY_DELAY != 0,
            },
            orcpt: to.orcpt,
        };
        let tx = self.tx.as_ref().expect("checked above");
        match self
            .pipeline
            .rcpt(&self.info, &tx.envelope, &recipient)
            .await
        {
            Verdict::Reject(r) | Verdict::Defer(r) => return r,
            _ => {}
        }
        let tx = self.tx.as_mut().expect("checked above");
        tx.envelope.recipients.push(recipient);
        Reply::new(250, "2.1.5", "Recipient OK")
    }
}
