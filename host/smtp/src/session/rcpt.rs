//! RCPT TO, with the relay rules: an `mx` listener accepts only local and relay domains unless the
//! client authenticated; a `submission` listener requires AUTH before MAIL.

use super::Session;
use sluice_config::Role;
use sluice_core::{Event, EventKind, Notify, Recipient, Reply, Verdict, domain_of, meta};
use smtp_proto::{
    RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, RcptTo,
};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn rcpt(&mut self, to: RcptTo<String>) -> Reply {
        let Some(tx) = self.tx.as_ref() else {
            return Reply::new(503, "5.5.1", "Send MAIL first");
        };
        // Held and discarded recipients count too: a policy that quarantines unknown users
        // must not let a client add recipients without end.
        if tx.envelope.recipients.len() + tx.held.len() + tx.discarded >= self.cfg.max_recipients {
            return Reply::new(452, "4.5.3", "Too many recipients");
        }
        if !tx.envelope.smtputf8 && !to.address.is_ascii() {
            return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        let domain = domain_of(&to.address);
        if domain.is_empty() {
            return Reply::new(501, "5.1.3", "Recipient address must have a domain");
        }
        let ours = self.ctx.settings.accepts_for(&domain);
        if ours && routing_local_part(&to.address) {
            return Reply::new(
                550,
                "5.1.3",
                "Routing characters (@ % ! /) are not accepted in a local part",
            );
        }
        if !ours && self.info.auth_user.is_none() {
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
        let verdict = self
            .pipeline
            .rcpt(&self.info, &tx.envelope, &recipient)
            .await;
        let tx = self.tx.as_mut().expect("checked above");
        match verdict {
            Verdict::Reject(r) => {
                let mut e = Event::new(EventKind::Rejected, &tx.envelope.sender);
                e.recipient = Some(recipient.address.clone());
                e.reply = Some(r.clone());
                e.attributes.push(("stage".into(), "rcpt".into()));
                self.publish(e);
                return r;
            }
            Verdict::Defer(r) => return r,
            Verdict::Quarantine(reason) => {
                tracing::info!(to = %recipient.address, %reason, "recipient held by policy");
                tx.held.push((recipient, reason));
            }
            Verdict::Discard => {
                tracing::info!(to = %recipient.address, "recipient discarded by policy");
                tx.discarded += 1;
                let mut e = Event::new(EventKind::Other("discarded".into()), &tx.envelope.sender);
                e.recipient = Some(recipient.address.clone());
                self.publish(e);
            }
            Verdict::Continue | Verdict::Accept => {
                if let Some(v) = &self.ctx.settings.verp
                    && domain == v.domain
                    && tx.envelope.meta(meta::VERP_QUEUE_ID).is_none()
                {
                    let keys = sluice_track::Keys::new(&v.key, &v.previous_keys);
                    if let Some((qid, index)) = sluice_track::verp::decode(
                        &keys,
                        &v.local_part,
                        &v.domain,
                        &recipient.address,
                    ) {
                        match self.ctx.queue.recipient_of(&qid, index) {
                            Ok(Some(original)) => {
                                tx.envelope.set_meta(meta::VERP_RECIPIENT, &original)
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(%qid, error = %e, "cannot look up a VERP recipient")
                            }
                        }
                        tx.envelope.set_meta(meta::VERP_QUEUE_ID, &qid);
                    }
                }
                tx.envelope.recipients.push(recipient)
            }
        }
        Reply::new(250, "2.1.5", "Recipient OK")
    }
}

/// A local part that some mail system could read as another route: the percent hack
/// (`user%other@here`), bang paths, an `@` in a quoted local part, or a path separator.
/// Refused for the domains this server accepts mail for, so that none of them can be
/// turned into an open relay further down.
fn routing_local_part(address: &str) -> bool {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    local.contains(['@', '%', '!', '/', '\\']) || local.starts_with('.')
}
