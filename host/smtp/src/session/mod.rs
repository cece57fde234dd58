//! One SMTP session: the read loop, reply buffering (for PIPELINING) and command dispatch.
//! Each phase lives in its own file.
//!
//! State is kept in three parts: protocol state ([`Receiving`]: which receiver reads the
//! next bytes), the transaction ([`Transaction`]: the envelope and the message being built),
//! and the listener's settings (`cfg`).

mod auth;
mod data;
mod ehlo;
mod mail;
mod rcpt;

use crate::server::ServerContext;
use sluice_config::ListenerSettings;
use sluice_core::{Envelope, Pipeline, Reply, SessionInfo, Verdict};
use sluice_net::MaybeTls;
use smtp_proto::Request;
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver, DummyDataReceiver};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slowest average rate at which message data may arrive, in bytes per second, on top of
/// the data timeout.
const MIN_DATA_RATE: usize = 500;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Which receiver consumes the next input bytes.
enum Receiving {
    Commands,
    Data(DataReceiver),
    /// DATA past the size limit: read to the end, store nothing.
    DataDiscard(DummyDataReceiver),
    Bdat {
        rx: BdatReceiver,
        /// Read the chunk but do not keep it; answer with this reply.
        discard: Option<Reply>,
    },
    Sasl(auth::Sasl),
}

/// The transaction between MAIL and end of data.
struct Transaction {
    envelope: Envelope,
    body: Vec<u8>,
    too_big: bool,
    /// BDAT was used; DATA may not follow.
    bdat: bool,
    /// Recipients the `rcpt` stage quarantined, with the reason: queued apart, held.
    held: Vec<(sluice_core::Recipient, String)>,
    /// Recipients the `rcpt` stage discarded (accepted, never delivered).
    discarded: usize,
    /// The SPF check of MAIL FROM, when this transaction is checked.
    spf: Option<sluice_auth::SpfCheck>,
}

impl Transaction {
    /// Some RCPT got a 250.
    fn has_recipients(&self) -> bool {
        !self.envelope.recipients.is_empty() || !self.held.is_empty() || self.discarded > 0
    }
}

/// What the loop does after processing input.
enum Flow {
    Continue,
    StartTls,
    Close,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Greeting {
    Helo,
    Ehlo,
}

pub struct Session<S> {
    stream: MaybeTls<S>,
    ctx: Arc<ServerContext>,
    /// The chain this session started with, kept across reloads.
    pipeline: Arc<dyn Pipeline>,
    cfg: Arc<ListenerSettings>,
    shutdown: watch::Receiver<bool>,
    info: SessionInfo,
    greeting: Option<Greeting>,
    receiving: Receiving,
    tx: Option<Transaction>,
    errors: usize,
    /// The phase the next reply belongs to, for the refusal metrics.
    stage: &'static str,
    /// Input not yet consumed starts at `rpos`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// An over-long line is being skipped up to its LF.
    skipping_line: bool,
    /// When the command line or message data being read began to arrive.
    started: Option<Instant>,
    /// Replies waiting to be written (sent together when input runs out: PIPELINING).
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(
        stream: S,
        client_ip: IpAddr,
        ctx: Arc<ServerContext>,
        cfg: Arc<ListenerSettings>,
        shutdown: watch::Receiver<bool>,
    ) -> Session<S> {
        let info = SessionInfo {
            listener: cfg.name.clone(),
            role: cfg.role.as_str().to_string(),
            client_ip,
            helo: None,
            tls: None,
            auth_user: None,
        };
        Session {
            stream: MaybeTls::Plain(stream),
            pipeline: ctx.pipelines.current(),
            ctx,
            cfg,
            shutdown,
            info,
            greeting: None,
            receiving: Receiving::Commands,
            tx: None,
            errors: 0,
            stage: "connect",
            rbuf: Vec::with_capacity(1024),
            rpos: 0,
            skipping_line: false,
            started: None,
            out: Vec::with_capacity(256),
        }
    }

    /// Runs the session to its end. Never panics on client input.
    pub async fn run(mut self) {
        let hostname = self.ctx.settings.hostname.clone();
        match self.pipeline.connect(&self.info).await {
            Verdict::Reject(r) | Verdict::Defer(r) => {
                self.reply(r);
                let _ = self.flush().await;
                return;
            }
            _ => self.reply(Reply::new(220, "", format!("{hostname} ESMTP Sluice"))),
        }
        loop {
            let flow = self.process().await;
            if self.flush().await.is_err() {
                return;
            }
            match flow {
                Flow::Close => break,
                Flow::StartTls => {
                    if !self.start_tls().await {
                        return;
                    }
                    continue;
                }
                Flow::Continue => {}
            }
            match self.read_more().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(reply) => {
                    self.reply(reply);
                    let _ = self.flush().await;
                    break;
                }
            }
        }
        let _ = self.stream.shutdown().await;
    }

    /// Reads more input. `Ok(false)` on end of stream; `Err` with the reply to close with
    /// on timeout or shutdown.
    async fn read_more(&mut self) -> Result<bool, Reply> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let in_data = matches!(
            self.receiving,
            Receiving::Data(_) | Receiving::DataDiscard(_) | Receiving::Bdat { .. }
        );
        // A client may not stretch one command, or a message, without end by sending a
        // byte now and then: a command line must be complete within the command timeout of
        // its first byte, and message data must arrive at MIN_DATA_RATE on average (Postfix:
        // smtpd_min_data_rate) besides the per-read data timeout.
        let (since, received) = match (&self.receiving, self.tx.as_ref()) {
            (Receiving::Data(_) | Receiving::DataDiscard(_) | Receiving::Bdat { .. }, tx) => (
                *self.started.get_or_insert_with(Instant::now),
                tx.map_or(0, |t| t.body.len()),
            ),
            _ if !self.rbuf.is_empty() => (*self.started.get_or_insert_with(Instant::now), 0),
            _ => (Instant::now(), 0),
        };
        let limit = if in_data {
            let allowed =
                self.cfg.data_timeout + Duration::from_secs((received / MIN_DATA_RATE) as u64);
            self.cfg
                .data_timeout
                .min(allowed.saturating_sub(since.elapsed()))
        } else {
            self.cfg.command_timeout.saturating_sub(since.elapsed())
        };
        // Small while reading commands (10,000 idle sessions must stay cheap), large while
        // message data streams in (fewer reads).
        let want = if in_data { 16 * 1024 } else { 512 };
        if self.rbuf.capacity() - self.rbuf.len() < want {
            self.rbuf.reserve(want.max(self.rbuf.len()));
        }
        let idle = !in_data && self.rbuf.is_empty();
        let read = tokio::time::timeout(limit, self.stream.read_buf(&mut self.rbuf));
        let shutdown = async {
            if idle {
                let _ = self.shutdown.wait_for(|s| *s).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = read => match r {
                Ok(Ok(0)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => {
                    tracing::debug!(client = %self.info.client_ip, error = %e, "read failed");
                    Ok(false)
                }
                Err(_) => Err(Reply::new(
                    421,
                    "4.4.2",
                    format!("{} Timeout exceeded, closing connection", self.ctx.settings.hostname),
                )),
            },
            _ = shutdown => Err(Reply::new(
                421,
                "4.3.2",
                format!("{} Service shutting down, try again later", self.ctx.settings.hostname),
            )),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r?;
        self.stream.flush().await
    }

    fn reply(&mut self, reply: Reply) {
        if reply.code >= 400 && reply.code != 421 {
            self.errors += 1;
        }
        let m = sluice_metrics::global();
        let listener = self.cfg.name.as_str();
        if reply.code >= 400 {
            m.smtp_refusals
                .with_label_values(&[listener, self.stage, sluice_metrics::class(reply.code)])
                .inc();
        }
        m.smtp_replies
            .with_label_values(&[listener, sluice_metrics::class(reply.code)])
            .inc();
        // 235 and 535 are only ever AUTH's answers.
        match reply.code {
            235 => m.auth.with_label_values(&[listener, "success"]).inc(),
            535 => m.auth.with_label_values(&[listener, "failure"]).inc(),
            _ => {}
        }
        reply.write_to(&mut self.out);
    }

    /// Whether events about this session's mail go anywhere (event steps or the history):
    /// when not, they are not built.
    fn events_kept(&self) -> bool {
        self.pipeline.wants_events() || self.ctx.queue.keeps_events()
    }

    /// Records an event about this session's mail (on the bus too when any chain has
    /// event steps): for what never reaches the queue (recipients refused or dropped by
    /// policy).
    fn publish(&self, event: sluice_core::Event) {
        if let Err(err) = self.ctx.queue.event(
            event.with_session(Some(&self.info)),
            self.pipeline.wants_events(),
        ) {
            tracing::error!(error = %err, "cannot publish event");
        }
    }

    fn too_many_errors(&self) -> bool {
        self.errors >= self.cfg.max_errors
    }

    /// Consumes buffered input until more is needed or the session must stop.
    async fn process(&mut self) -> Flow {
        loop {
            let progressed = match &mut self.receiving {
                Receiving::Commands | Receiving::Sasl(_) => match self.next_line() {
                    None => false,
                    Some(Err(reply)) => {
                        self.reply(reply);
                        true
                    }
                    Some(Ok(line)) => match self.on_line(line).await {
                        Flow::Continue => true,
                        other => return other,
                    },
                },
                Receiving::Data(rx) => {
                    let tx = self.tx.as_mut().expect("DATA without transaction");
                    let mut iter = self.rbuf[self.rpos..].iter();
                    let done = rx.ingest(&mut iter, &mut tx.body);
                    self.rpos = self.rbuf.len() - iter.len();
                    if !done && tx.body.len() > self.cfg.max_message_size {
                        tx.too_big = true;
                        tx.body = Vec::new();
                        self.receiving = Receiving::DataDiscard(DummyDataReceiver::new_data(rx));
                        continue;
                    }
                    if done {
                        self.receiving = Receiving::Commands;
                        let reply = self.end_of_data().await;
                        self.reply(reply);
                    }
                    done
                }
                Receiving::DataDiscard(rx) => {
                    let mut iter = self.rbuf[self.rpos..].iter();
                    let done = rx.ingest(&mut iter);
                    self.rpos = self.rbuf.len() - iter.len();
                    if done {
                        self.receiving = Receiving::Commands;
                        let reply = self.end_of_data().await;
                        self.reply(reply);
                    }
                    done
                }
                Receiving::Bdat { rx, discard } => {
                    let mut iter = self.rbuf[self.rpos..].iter();
                    let done = match (discard.is_some(), self.tx.as_mut()) {
                        (false, Some(tx)) => rx.ingest(&mut iter, &mut tx.body),
                        _ => rx.ingest(&mut iter, &mut Vec::new()),
                    };
                    self.rpos = self.rbuf.len() - iter.len();
                    if done {
                        let is_last = rx.is_last;
                        let discard = discard.take();
                        self.receiving = Receiving::Commands;
                        let reply = self.end_of_chunk(is_last, discard).await;
                        self.reply(reply);
                    }
                    done
                }
            };
            if self.too_many_errors() {
                self.reply(Reply::new(
                    421,
                    "4.7.0",
                    "Too many errors, closing connection",
                ));
                return Flow::Close;
            }
            if !progressed {
                return Flow::Continue;
            }
            // A command or a message was complete: the next one's clock starts afresh.
            self.started = None;
        }
    }

    /// The next complete line (CRLF included), an error for a malformed one, or `None`
    /// when no complete line is buffered.
    fn next_line(&mut self) -> Option<Result<Vec<u8>, Reply>> {
        let max = self.cfg.max_line_length;
        let pending = &self.rbuf[self.rpos..];
        let Some(lf) = pending.iter().position(|&b| b == b'\n') else {
            if pending.len() > max {
                // Drop what we have of the over-long line and skip to its end.
                self.rpos = self.rbuf.len();
                self.skipping_line = true;
            }
            return None;
        };
        let line = pending[..=lf].to_vec();
        self.rpos += lf + 1;
        if std::mem::take(&mut self.skipping_line) || line.len() > max {
            return Some(Err(Reply::new(500, "5.5.2", "Line too long")));
        }
        if line.len() < 2 || line[line.len() - 2] != b'\r' {
            return Some(Err(Reply::new(
                500,
                "5.5.2",
                "Bare LF received: lines must end with CRLF",
            )));
        }
        if line.contains(&0) {
            return Some(Err(Reply::new(500, "5.5.2", "NUL byte in command")));
        }
        Some(Ok(line))
    }

    async fn on_line(&mut self, line: Vec<u8>) -> Flow {
        if let Receiving::Sasl(sasl) = std::mem::replace(&mut self.receiving, Receiving::Commands) {
            self.sasl_step(sasl, &line).await;
            return Flow::Continue;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(e) => {
                self.stage = "other";
                self.reply(parse_error(e));
                return Flow::Continue;
            }
        };
        self.on_request(request).await
    }

    async fn on_request(&mut self, request: Request<String>) -> Flow {
        // The command's name for the metrics, and the stage its refusals count under.
        let (command, stage) = match &request {
            Request::Ehlo { .. } => ("ehlo", "ehlo"),
            Request::Helo { .. } => ("helo", "ehlo"),
            Request::Lhlo { .. } => ("helo", "other"),
            Request::Mail { .. } => ("mail", "mail"),
            Request::Rcpt { .. } => ("rcpt", "rcpt"),
            Request::Data => ("data", "data"),
            Request::Bdat { .. } => ("bdat", "data"),
            Request::Auth { .. } => ("auth", "auth"),
            Request::StartTls => ("starttls", "starttls"),
            Request::Rset => ("rset", "other"),
            Request::Noop { .. } => ("noop", "other"),
            Request::Quit => ("quit", "other"),
            Request::Vrfy { .. } => ("vrfy", "other"),
            Request::Expn { .. } => ("expn", "other"),
            Request::Help { .. } => ("help", "other"),
            _ => ("other", "other"),
        };
        sluice_metrics::global()
            .smtp_commands
            .with_label_values(&[self.cfg.name.as_str(), command])
            .inc();
        self.stage = stage;
        let reply = match request {
            Request::Ehlo { host } => self.ehlo(host, Greeting::Ehlo).await,
            Request::Helo { host } => self.ehlo(host, Greeting::Helo).await,
            Request::Mail { from } => self.mail(from).await,
            Request::Rcpt { to } => self.rcpt(to).await,
            // RFC 2920 §3.1: DATA ends a pipelined group; the client waits for the 354. Text
            // already sent behind it is a client smuggling a message past the reply (Postfix:
            // smtpd_forbid_unauth_pipelining).
            Request::Data if self.rpos < self.rbuf.len() => {
                tracing::warn!(client = %self.info.client_ip, "message data sent before the 354 reply");
                self.tx = None;
                self.reply(Reply::new(
                    554,
                    "5.5.0",
                    "Improper use of SMTP command pipelining: wait for the 354 reply",
                ));
                return Flow::Close;
            }
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                // The reply comes once the chunk is read.
                self.bdat(chunk_size, is_last);
                return Flow::Continue;
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                self.auth(mechanism, initial_response).await;
                return Flow::Continue;
            }
            Request::StartTls => {
                if self.stream.is_tls() {
                    Reply::new(503, "5.5.1", "TLS already active")
                } else if self.ctx.tls.is_none() || !self.cfg.starttls {
                    Reply::new(502, "5.5.1", "STARTTLS not available")
                } else {
                    self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
                    return Flow::StartTls;
                }
            }
            Request::Rset => {
                self.tx = None;
                Reply::new(250, "2.0.0", "Reset OK")
            }
            Request::Noop { .. } => Reply::new(250, "2.0.0", "OK"),
            Request::Vrfy { .. } => Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Request::Expn { .. } => Reply::new(502, "5.5.1", "EXPN not available"),
            Request::Help { .. } => Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS AUTH",
            ),
            Request::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                return Flow::Close;
            }
            Request::Lhlo { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => Reply::new(502, "5.5.1", "Command not implemented"),
        };
        self.reply(reply);
        Flow::Continue
    }

    /// After `220 Ready to start TLS`: drops any plaintext the client pipelined after
    /// STARTTLS (it must not be trusted), does the handshake and forgets the EHLO.
    async fn start_tls(&mut self) -> bool {
        if self.rpos < self.rbuf.len() {
            tracing::warn!(client = %self.info.client_ip, "discarding plaintext pipelined after STARTTLS");
        }
        self.rbuf.clear();
        self.rpos = 0;
        let MaybeTls::Plain(plain) = std::mem::replace(&mut self.stream, MaybeTls::Upgrading)
        else {
            return false;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.ctx.tls.clone().expect("tls"));
        let result = tokio::time::timeout(self.cfg.command_timeout, acceptor.accept(plain)).await;
        let ok = matches!(result, Ok(Ok(_)));
        sluice_metrics::global()
            .tls_handshakes
            .with_label_values(&[self.cfg.name.as_str(), if ok { "ok" } else { "failed" }])
            .inc();
        match result {
            Ok(Ok(tls)) => {
                self.stream = MaybeTls::Tls(Box::new(tls.into()));
                self.info.tls = self.stream.tls_info();
                self.info.helo = None;
                self.greeting = None;
                self.tx = None;
                true
            }
            Ok(Err(e)) => {
                tracing::info!(client = %self.info.client_ip, error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::info!(client = %self.info.client_ip, "TLS handshake timed out");
                false
            }
        }
    }
}

/// The reply to a command smtp-proto could not parse.
fn parse_error(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => Reply::new(500, "5.5.2", "Syntax error, command unrecognized"),
        E::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        E::InvalidRecipientAddress => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
        E::SyntaxError { syntax } => Reply::new(501, "5.5.2", format!("Syntax: {syntax}")),
        E::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid value for parameter {param}"))
        }
        E::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
        }
        E::ResponseTooLong => Reply::new(500, "5.5.2", "Line too long"),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => {
            Reply::new(500, "5.5.2", "Syntax error")
        }
    }
}
