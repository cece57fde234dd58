//! DATA and BDAT, and what happens at end of data: checks, the Received header, the
//! `data` stage, and the durable enqueue before the 250.

use super::{Receiving, Session, Transaction};
use sluice_core::{Event, EventKind, Reply, Verdict};
use sluice_queue::{MessageMeta, Queued, new_id};
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// The reply for a message the queue could not take: `452 4.3.1` while the disk is full
/// (RFC 3463: mail system full), `451 4.3.0` for other storage failures.
pub(super) fn storage_reply(e: &sluice_queue::QueueError) -> Reply {
    if e.is_no_space() {
        Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
    } else {
        Reply::new(451, "4.3.0", "Temporary storage failure, try again later")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) fn data(&mut self) -> Reply {
        match &self.tx {
            None => Reply::new(503, "5.5.1", "Send MAIL first"),
            Some(tx) if !tx.has_recipients() => Reply::new(554, "5.5.1", "No valid recipients"),
            Some(tx) if tx.bdat => Reply::new(503, "5.5.1", "DATA cannot follow BDAT"),
            Some(_) if let Err(e) = self.ctx.queue.has_room(0) => {
                tracing::warn!(error = %e, "refusing DATA");
                storage_reply(&e)
            }
            Some(_) => {
                self.receiving = Receiving::Data(DataReceiver::new());
                Reply::new(354, "", "Start mail input; end with <CRLF>.<CRLF>")
            }
        }
    }

    /// Starts reading a BDAT chunk. The reply comes once the chunk is read.
    pub(super) fn bdat(&mut self, size: usize, is_last: bool) {
        let discard = match &mut self.tx {
            None => Some(Reply::new(503, "5.5.1", "Send MAIL first")),
            Some(tx) if !tx.has_recipients() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(tx) if tx.body.len() + size > self.cfg.max_message_size => {
                tx.too_big = true;
                Some(Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ))
            }
            Some(tx) => {
                tx.bdat = true;
                tx.body.reserve(size);
                None
            }
        };
        self.receiving = Receiving::Bdat {
            rx: BdatReceiver::new(size, is_last),
            discard,
        };
    }

    pub(super) async fn end_of_chunk(&mut self, is_last: bool, discard: Option<Reply>) -> Reply {
        if let Some(reply) = discard {
            if self.tx.as_ref().is_some_and(|t| t.too_big) {
                self.tx = None;
            }
            return reply;
        }
        if is_last {
            self.end_of_data().await
        } else {
            let n = self.tx.as_ref().map_or(0, |t| t.body.len());
            Reply::new(250, "2.0.0", format!("{n} octets received"))
        }
    }

    /// The transaction ends here whatever the outcome.
    pub(super) async fn end_of_data(&mut self) -> Reply {
        let started = std::time::Instant::now();
        let reply = self.end_of_data_reply().await;
        let m = sluice_metrics::global();
        m.end_of_data_seconds
            .observe(started.elapsed().as_secs_f64());
        if reply.code >= 400 {
            m.messages_refused
                .with_label_values(&[self.cfg.name.as_str(), sluice_metrics::class(reply.code)])
                .inc();
        }
        reply
    }

    async fn end_of_data_reply(&mut self) -> Reply {
        let Some(tx) = self.tx.take() else {
            return Reply::new(503, "5.5.1", "No transaction");
        };
        if tx.too_big {
            return Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
        }
        if let Some(problem) = bad_content(&tx.body) {
            return Reply::new(554, "5.6.0", problem);
        }
        self.accept(tx).await
    }

    async fn accept(&mut self, tx: Transaction) -> Reply {
        let started = std::time::Instant::now();
        let Transaction {
            mut envelope,
            mut body,
            held,
            spf,
            ..
        } = tx;
        let id = new_id();
        let auth_header = match (self.verifier(), spf) {
            (Some(v), Some(spf)) => {
                Some(self.authenticate(&v, &spf, &mut envelope, &mut body).await)
            }
            _ => None,
        };
        let mut message = self.received_header(&id, &envelope.recipients);
        message.reserve(body.len() + auth_header.as_ref().map_or(0, |h| h.len()));
        if let Some(h) = auth_header {
            message.extend_from_slice(h.as_bytes());
        }
        message.extend_from_slice(&body);
        drop(body);
        // The data stage sees every accepted recipient, held ones included, so mail held at
        // RCPT is checked (virus, score) like the rest before it waits for review.
        let held_addrs: Vec<String> = held
            .iter()
            .map(|(r, _)| r.address.to_ascii_lowercase())
            .collect();
        let held_reason = held.first().map(|(_, why)| why.clone());
        envelope.recipients.extend(held.into_iter().map(|(r, _)| r));
        let before: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.address.to_ascii_lowercase())
            .collect();
        let verdict = self
            .pipeline
            .data(&id, &self.info, &mut envelope, &mut message)
            .await;
        self.check_added_recipients(&id, &before, &mut envelope);
        envelope.set_meta(
            sluice_core::meta::DATA_MS,
            &started.elapsed().as_millis().to_string(),
        );
        let (held_rcpts, main_rcpts): (Vec<_>, Vec<_>) = std::mem::take(&mut envelope.recipients)
            .into_iter()
            .partition(|r| held_addrs.contains(&r.address.to_ascii_lowercase()));
        envelope.recipients = main_rcpts;
        let verdict =
            if envelope.recipients.is_empty() && held_rcpts.is_empty() && verdict_keeps(&verdict) {
                tracing::info!(%id, "no recipient left after the data stage; nothing queued");
                Verdict::Discard
            } else {
                verdict
            };
        let quarantine = match verdict {
            Verdict::Reject(r) => {
                self.publish_rejected(&id, &envelope, &message, &r);
                return r;
            }
            Verdict::Defer(r) => return r,
            Verdict::Discard => {
                tracing::info!(%id, sender = %envelope.sender, "message discarded by policy");
                return Reply::new(250, "2.0.0", format!("Ok: queued as {id}"));
            }
            Verdict::Quarantine(reason) => Some(reason),
            Verdict::Continue | Verdict::Accept => None,
        };
        // Shared by the queued copies and handed to delivery without another copy.
        let message = Arc::new(message);
        let mut queued_as = None;
        // The held copy first: if it cannot be queued nothing is, and the client's retry
        // delivers nothing twice.
        if !held_rcpts.is_empty() {
            let held_id = new_id();
            let mut held_envelope = envelope.clone();
            held_envelope.recipients = held_rcpts;
            let reason = held_reason.unwrap_or_else(|| "held at RCPT".into());
            if let Err(r) = self
                .enqueue(&held_id, &held_envelope, &message, Some(reason))
                .await
            {
                return r;
            }
            queued_as = Some(held_id);
        }
        if !envelope.recipients.is_empty() {
            if let Err(r) = self.enqueue(&id, &envelope, &message, quarantine).await {
                return r;
            }
            queued_as = Some(id.clone());
        }
        let id = queued_as.unwrap_or(id);
        Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
    }

    /// Runs DKIM, ARC and DMARC over the message as received (after removing any
    /// `Authentication-Results` claiming our authserv-id), records the results in the
    /// envelope's metadata and returns our `Authentication-Results` header.
    async fn authenticate(
        &self,
        verifier: &sluice_auth::Verifier,
        spf: &sluice_auth::SpfCheck,
        envelope: &mut sluice_core::Envelope,
        body: &mut Vec<u8>,
    ) -> String {
        use sluice_core::meta;
        if let Some(stripped) = sluice_auth::strip_ours(body, verifier.authserv_id()) {
            tracing::info!(
                sender = %envelope.sender,
                "removed Authentication-Results claiming our authserv-id"
            );
            *body = stripped;
        }
        let checked = verifier.message(body, self.info.client_ip, spf).await;
        let s = &checked.summary;
        envelope.set_meta(meta::SPF, &s.spf);
        envelope.set_meta(meta::DKIM, &s.dkim);
        envelope.set_meta(meta::DMARC, &s.dmarc);
        envelope.set_meta(meta::ARC, &s.arc);
        if let Some(d) = &checked.dmarc_domain {
            envelope.set_meta(meta::DMARC_DOMAIN, d);
        }
        // `pct` below 100 applies the policy to that share of failing mail only.
        let sampled = checked.dmarc_pct >= 100 || rand::random_range(0..100u8) < checked.dmarc_pct;
        match checked.dmarc_action {
            sluice_auth::DmarcAction::Reject if sampled => {
                envelope.set_meta(meta::DMARC_ACTION, "reject")
            }
            sluice_auth::DmarcAction::Quarantine if sampled => {
                envelope.set_meta(meta::DMARC_ACTION, "quarantine")
            }
            _ => {}
        }
        tracing::debug!(
            spf = %s.spf, dkim = %s.dkim, dmarc = %s.dmarc, arc = %s.arc,
            "authentication results"
        );
        checked.header
    }

    /// Recipients a plugin added get the rules the client's own RCPTs got: without AUTH
    /// only local and relay domains (a plugin cannot make Sluice an open relay), and never
    /// more than the listener's `max_recipients`. Others are dropped and logged.
    fn check_added_recipients(
        &self,
        id: &str,
        before: &[String],
        envelope: &mut sluice_core::Envelope,
    ) {
        let authenticated = self.info.auth_user.is_some();
        let max = self.cfg.max_recipients.max(before.len());
        let mut kept = 0;
        envelope.recipients.retain(|r| {
            if before.contains(&r.address.to_ascii_lowercase()) {
                kept += 1;
                return true;
            }
            let relay_ok = authenticated || self.ctx.settings.accepts_for(&r.domain());
            if !relay_ok {
                tracing::error!(%id, to = %r.address, "dropping a recipient a policy step added: relaying to it needs AUTH");
                return false;
            }
            if kept >= max {
                tracing::error!(%id, to = %r.address, max, "dropping a recipient a policy step added: too many recipients");
                return false;
            }
            kept += 1;
            true
        });
    }

    /// A `rejected` event per recipient of a message the policy refused permanently.
    fn publish_rejected(
        &self,
        id: &str,
        envelope: &sluice_core::Envelope,
        message: &[u8],
        reply: &Reply,
    ) {
        if !self.events_kept() {
            return;
        }
        let message_id = sluice_core::envelope::message_id(message);
        for r in &envelope.recipients {
            let mut e = Event::new(EventKind::Rejected, &envelope.sender);
            e.queue_id = Some(id.to_string());
            e.message_id = message_id.clone();
            e.recipient = Some(r.address.clone());
            e.reply = Some(reply.clone());
            e.attributes = envelope.meta.clone();
            e.attributes.push(("stage".into(), "data".into()));
            self.publish(e);
        }
    }

    /// Queues one message durably; the `Err` is the reply for the client.
    async fn enqueue(
        &mut self,
        id: &str,
        envelope: &sluice_core::Envelope,
        message: &Arc<Vec<u8>>,
        quarantine: Option<String>,
    ) -> Result<(), Reply> {
        let mut meta = MessageMeta::new(id.to_string(), envelope, message.len());
        meta.quarantine = quarantine;
        meta.session = Some(self.info.clone());
        meta.queued_pending =
            meta.quarantine.is_none() && self.pipeline.wants_queued(Some(&self.info), envelope);
        let events = if self.events_kept() {
            let message_id = sluice_core::envelope::message_id(message);
            let kind = if meta.quarantine.is_some() {
                EventKind::Quarantined
            } else {
                EventKind::Queued
            };
            envelope
                .recipients
                .iter()
                .map(|r| {
                    let mut e =
                        Event::new(kind.clone(), &envelope.sender).with_session(Some(&self.info));
                    e.queue_id = Some(id.to_string());
                    e.message_id = message_id.clone();
                    e.recipient = Some(r.address.clone());
                    e.attributes = envelope.meta.clone();
                    if let Some(reason) = &meta.quarantine {
                        e.attributes.push(("reason".into(), reason.clone()));
                    }
                    e
                })
                .collect()
        } else {
            Vec::new()
        };
        if let Err(e) = self
            .ctx
            .queue
            .enqueue_with_events(
                &meta,
                message.as_slice(),
                events,
                self.pipeline.wants_events(),
            )
            .await
        {
            tracing::error!(error = %e, "cannot queue message");
            return Err(storage_reply(&e));
        }
        sluice_metrics::global()
            .messages_queued
            .with_label_values(&[
                self.cfg.name.as_str(),
                if meta.quarantine.is_some() {
                    "quarantined"
                } else {
                    "normal"
                },
            ])
            .inc();
        tracing::info!(
            id = %meta.id,
            sender = %meta.sender,
            recipients = meta.recipients.len(),
            size = meta.size,
            client = %self.info.client_ip,
            quarantine = meta.quarantine.as_deref().unwrap_or(""),
            "queued"
        );
        if meta.quarantine.is_none() {
            let body = message.clone();
            self.ctx.queued.hand(Queued { meta, body });
        }
        Ok(())
    }

    fn received_header(&self, id: &str, recipients: &[sluice_core::Recipient]) -> Vec<u8> {
        let helo = self.info.helo.as_deref().unwrap_or("unknown");
        let tls = self.stream.is_tls();
        let auth = self.info.auth_user.is_some();
        let with = match (self.greeting, tls, auth) {
            (Some(super::Greeting::Helo), false, _) => "SMTP",
            (_, false, false) => "ESMTP",
            (_, true, false) => "ESMTPS",
            (_, false, true) => "ESMTPA",
            (_, true, true) => "ESMTPSA",
        };
        let tls_comment = match &self.info.tls {
            Some(t) => format!("\r\n\t(using {t})"),
            None => String::new(),
        };
        let for_clause = match recipients {
            [one] => format!("\r\n\tfor <{}>", one.address),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (Sluice) with {with} id {id}{tls_comment}{for_clause};\r\n\t{date}\r\n",
            ip = self.info.client_ip,
            host = self.ctx.settings.hostname,
            date = chrono::Utc::now().to_rfc2822(),
        )
        .into_bytes()
    }
}

fn verdict_keeps(v: &Verdict) -> bool {
    matches!(
        v,
        Verdict::Continue | Verdict::Accept | Verdict::Quarantine(_)
    )
}

/// Why a message body is refused: NUL bytes, or a CR or LF that is not part of a CRLF
/// (RFC 5321 §2.3.8), which downstream servers may read differently: SMTP smuggling.
fn bad_content(body: &[u8]) -> Option<&'static str> {
    if body.contains(&0) {
        return Some("Message contains NUL bytes");
    }
    for i in memchr::memchr2_iter(b'\r', b'\n', body) {
        match body[i] {
            b'\r' if body.get(i + 1) != Some(&b'\n') => {
                return Some("Message contains a bare CR: lines must end with CRLF");
            }
            b'\n' if i == 0 || body[i - 1] != b'\r' => {
                return Some("Message contains a bare LF: lines must end with CRLF");
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::bad_content;

    #[test]
    fn bare_lf_and_nul_are_refused() {
        assert!(bad_content(b"a\r\nb\r\n").is_none());
        assert!(bad_content(b"a\nb\r\n").is_some());
        assert!(bad_content(b"a\r\n\0\r\n").is_some());
        assert!(bad_content(b"\n").is_some());
        assert!(bad_content(b"a\r.\r\nb\r\n").is_some());
        assert!(bad_content(b"a\rb").is_some());
        assert!(bad_content(b"a\r").is_some());
    }
}
