//! AUTH PLAIN and LOGIN (RFC 4954), offered only once TLS is up.

use super::{Receiving, Session};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sluice_core::Reply;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where a SASL exchange stands.
pub(super) enum Sasl {
    Plain,
    LoginUser,
    LoginPassword(String),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Starts an exchange; its replies go straight to the output.
    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) {
        if let Some(reply) = self.auth_start(mechanism, initial).await {
            self.reply(reply);
        }
    }

    async fn auth_start(&mut self, mechanism: u64, initial: String) -> Option<Reply> {
        if !self.stream.is_tls() {
            return Some(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.info.auth_user.is_some() {
            return Some(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.tx.is_some() {
            return Some(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            ));
        }
        let initial = (!initial.is_empty()).then_some(initial);
        Some(match (mechanism, initial) {
            (AUTH_PLAIN, None) => {
                self.receiving = Receiving::Sasl(Sasl::Plain);
                Reply::new(334, "", "")
            }
            (AUTH_PLAIN, Some(resp)) => {
                self.sasl_step(Sasl::Plain, resp.as_bytes()).await;
                return None;
            }
            (AUTH_LOGIN, None) => {
                self.receiving = Receiving::Sasl(Sasl::LoginUser);
                Reply::new(334, "", B64.encode("Username:"))
            }
            (AUTH_LOGIN, Some(resp)) => match decode(&resp) {
                Some(user) => {
                    self.receiving = Receiving::Sasl(Sasl::LoginPassword(user));
                    Reply::new(334, "", B64.encode("Password:"))
                }
                None => Reply::new(501, "5.5.2", "Invalid base64 in AUTH response"),
            },
            _ => Reply::new(504, "5.5.4", "Unrecognized authentication mechanism"),
        })
    }

    /// One client line inside a SASL exchange.
    pub(super) async fn sasl_step(&mut self, state: Sasl, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if text == "*" {
            self.reply(Reply::new(501, "5.0.0", "Authentication cancelled"));
            return;
        }
        let Some(decoded) = decode(text) else {
            self.reply(Reply::new(501, "5.5.2", "Invalid base64 in AUTH response"));
            return;
        };
        let (user, password) = match state {
            Sasl::Plain => {
                // authzid \0 authcid \0 password; an authzid other than authcid is refused.
                let mut parts = decoded.splitn(3, '\0');
                let (authz, authc, pass) = (parts.next(), parts.next(), parts.next());
                match (authz, authc, pass) {
                    (Some(z), Some(c), Some(p)) if z.is_empty() || z == c => {
                        (c.to_string(), p.to_string())
                    }
                    _ => {
                        self.reply(Reply::new(501, "5.5.2", "Malformed AUTH PLAIN response"));
                        return;
                    }
                }
            }
            Sasl::LoginUser => {
                self.receiving = Receiving::Sasl(Sasl::LoginPassword(decoded));
                self.reply(Reply::new(334, "", B64.encode("Password:")));
                return;
            }
            Sasl::LoginPassword(user) => (user, decoded),
        };
        let users = self.ctx.users.clone();
        let name = user.clone();
        let ok = tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .unwrap_or(false);
        if ok {
            tracing::info!(client = %self.info.client_ip, %user, "authenticated");
            self.info.auth_user = Some(user);
            self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
        } else {
            tracing::warn!(client = %self.info.client_ip, %user, "authentication failed");
            if self.ctx.guard.auth_failed(self.info.client_ip) {
                sluice_metrics::global()
                    .auth_bans
                    .with_label_values(&[self.cfg.name.as_str()])
                    .inc();
                // Banned: this session ends too (after the 535, with 421).
                self.errors = self.errors.max(self.cfg.max_errors);
            }
            self.reply(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            ));
        }
    }
}

fn decode(s: &str) -> Option<String> {
    let bytes = B64.decode(s.trim()).ok()?;
    String::from_utf8(bytes).ok()
}
