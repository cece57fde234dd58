//! EHLO and HELO.

use super::{Greeting, Session};
use sluice_core::{Reply, Verdict};
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn ehlo(&mut self, host: String, kind: Greeting) -> Reply {
        self.tx = None;
        self.info.helo = Some(host);
        match self.pipeline.ehlo(&self.info).await {
            Verdict::Reject(r) | Verdict::Defer(r) => {
                self.info.helo = None;
                return r;
            }
            _ => {}
        }
        self.greeting = Some(kind);
        let hostname = &self.ctx.settings.hostname;
        if kind == Greeting::Helo {
            return Reply::new(250, "", hostname.clone());
        }
        let mut lines = vec![
            format!("{hostname} greets {}", self.info.client_ip),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if !self.stream.is_tls() && self.cfg.starttls && self.ctx.tls.is_some() {
            lines.push("STARTTLS".into());
        }
        if self.stream.is_tls() && self.info.auth_user.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        // EHLO replies carry no enhanced code (RFC 2034 §3 leaves it to the first line only
        // for errors); write them bare.
        Reply::new(250, "", lines.join("\n"))
    }
}
