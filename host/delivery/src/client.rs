//! One outbound SMTP connection: greeting, EHLO (HELO fallback), STARTTLS by policy, and
//! transactions with PIPELINING when offered. A connection can carry several messages.

use crate::Outcome;
use sluice_config::TlsPolicy;
use sluice_core::{Reply, Ret};
use sluice_net::MaybeTls;
use sluice_queue::MessageMeta;
use smtp_proto::response::parser::ResponseReceiver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the next hop announced in its EHLO reply.
#[derive(Debug, Default, Clone)]
pub struct Capabilities {
    pub pipelining: bool,
    pub size: Option<usize>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub starttls: bool,
}

impl Capabilities {
    fn parse(ehlo_text: &str) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in ehlo_text.lines().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                "8BITMIME" => caps.eight_bit = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                _ => {}
            }
        }
        caps
    }
}

/// Message data is written in chunks of this size, each with the command timeout.
const DATA_CHUNK: usize = 64 * 1024;

/// How long the reply to end of data may take (RFC 5321 §4.5.3.2.6).
const FINAL_REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// The enhanced status of a failed TLS handshake (RFC 3463: cryptographic failure).
const TLS_FAILED: &str = "4.7.5";

/// TLS settings for one connection.
#[derive(Clone)]
pub struct TlsChoice {
    pub policy: TlsPolicy,
    pub unverified: Arc<rustls::ClientConfig>,
    pub verified: Arc<rustls::ClientConfig>,
}

pub struct SmtpConnection {
    stream: MaybeTls<TcpStream>,
    rbuf: Vec<u8>,
    rpos: usize,
    receiver: ResponseReceiver,
    caps: Capabilities,
    /// Name of the host, for DSNs (`Remote-MTA`) and logs.
    pub host: String,
    pub messages_sent: usize,
    pub last_used: Instant,
    timeout: Duration,
}

fn io_reply(host: &str, what: &str, e: impl std::fmt::Display) -> Reply {
    Reply::new(451, "4.4.2", format!("{what} {host}: {e}"))
}

impl SmtpConnection {
    /// Connects and gets the session ready for MAIL. With opportunistic TLS, a peer that
    /// offers STARTTLS but fails the handshake is tried again in plaintext (as Postfix
    /// does): encryption was only ever a bonus there.
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        helo: &str,
        tls: &TlsChoice,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<SmtpConnection, Reply> {
        match Self::connect_once(addr, host, helo, tls, connect_timeout, timeout).await {
            Err(r) if tls.policy == TlsPolicy::Opportunistic && r.enhanced == TLS_FAILED => {
                tracing::info!(%host, %addr, reply = %r, "TLS failed; trying again without TLS");
                let plain = TlsChoice {
                    policy: TlsPolicy::None,
                    ..tls.clone()
                };
                Self::connect_once(addr, host, helo, &plain, connect_timeout, timeout).await
            }
            other => other,
        }
    }

    async fn connect_once(
        addr: SocketAddr,
        host: &str,
        helo: &str,
        tls: &TlsChoice,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<SmtpConnection, Reply> {
        let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Reply::new(
                    451,
                    "4.4.1",
                    format!("connect to {host} ({addr}): {e}"),
                ));
            }
            Err(_) => {
                return Err(Reply::new(
                    451,
                    "4.4.1",
                    format!("connect to {host} ({addr}): timed out"),
                ));
            }
        };
        // Connecting to a closed port in the ephemeral range can connect the socket to
        // itself (TCP simultaneous open); it would then wait for its own greeting.
        if tcp.local_addr().ok() == tcp.peer_addr().ok() {
            return Err(Reply::new(
                451,
                "4.4.1",
                format!("connect to {host} ({addr}): connected to itself (nothing listens there)"),
            ));
        }
        let _ = tcp.set_nodelay(true);
        let mut conn = SmtpConnection {
            stream: MaybeTls::Plain(tcp),
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            receiver: ResponseReceiver::default(),
            caps: Capabilities::default(),
            host: host.to_string(),
            messages_sent: 0,
            last_used: Instant::now(),
            timeout,
        };
        let greeting = conn.read_reply().await?;
        if !greeting.is_positive() {
            return Err(greeting);
        }
        conn.ehlo(helo).await?;
        let want_tls = tls.policy != TlsPolicy::None;
        let must_tls = matches!(tls.policy, TlsPolicy::Required | TlsPolicy::Verify);
        if want_tls && conn.caps.starttls {
            let r = conn.command("STARTTLS\r\n").await?;
            if r.code == 220 {
                conn.start_tls(tls, host).await?;
                conn.ehlo(helo).await?;
            } else if must_tls {
                return Err(r);
            }
        } else if must_tls {
            return Err(Reply::new(
                451,
                "4.7.10",
                format!("TLS is required but {host} does not offer STARTTLS"),
            ));
        }
        Ok(conn)
    }

    async fn start_tls(&mut self, tls: &TlsChoice, host: &str) -> Result<(), Reply> {
        let config = if tls.policy == TlsPolicy::Verify {
            tls.verified.clone()
        } else {
            tls.unverified.clone()
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Reply::new(451, "4.7.0", format!("bad TLS server name {host}: {e}")))?;
        let MaybeTls::Plain(tcp) = std::mem::replace(&mut self.stream, MaybeTls::Upgrading) else {
            return Err(Reply::new(451, "4.7.0", "TLS already active"));
        };
        self.rbuf.clear();
        self.rpos = 0;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => {
                self.stream = MaybeTls::Tls(Box::new(s.into()));
                Ok(())
            }
            Ok(Err(e)) => Err(Reply::new(
                451,
                TLS_FAILED,
                format!("TLS with {host} failed: {e}"),
            )),
            Err(_) => Err(Reply::new(
                451,
                TLS_FAILED,
                format!("TLS with {host} timed out"),
            )),
        }
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), Reply> {
        let r = self.command(&format!("EHLO {helo}\r\n")).await?;
        if r.code == 250 {
            self.caps = Capabilities::parse(&r.text);
            return Ok(());
        }
        let r = self.command(&format!("HELO {helo}\r\n")).await?;
        if r.code != 250 {
            return Err(r);
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Reply> {
        let host = self.host.clone();
        let w = async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, w).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_reply(&host, "write to", e)),
            Err(_) => Err(io_reply(&host, "write to", "timed out")),
        }
    }

    /// Writes the message data in chunks, each with its own timeout (RFC 5321 §4.5.3.2.5:
    /// a timeout per data block, not one for the whole message).
    async fn write_data(&mut self, data: &[u8]) -> Result<(), Reply> {
        for chunk in data.chunks(DATA_CHUNK) {
            self.write(chunk).await?;
        }
        Ok(())
    }

    async fn command(&mut self, line: &str) -> Result<Reply, Reply> {
        self.write(line.as_bytes()).await?;
        self.read_reply().await
    }

    /// Reads one (possibly multi-line) reply. `Err` means the connection is unusable.
    async fn read_reply(&mut self) -> Result<Reply, Reply> {
        self.read_reply_within(self.timeout).await
    }

    async fn read_reply_within(&mut self, timeout: Duration) -> Result<Reply, Reply> {
        loop {
            if self.rpos < self.rbuf.len() {
                let mut it = self.rbuf[self.rpos..].iter();
                let parsed = self.receiver.parse(&mut it);
                self.rpos = self.rbuf.len() - it.len();
                match parsed {
                    Ok(r) => {
                        self.receiver.reset();
                        let enhanced = if r.esc == [0, 0, 0] {
                            String::new()
                        } else {
                            format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])
                        };
                        return Ok(Reply {
                            code: r.code,
                            enhanced,
                            text: r.message,
                        });
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(e) => {
                        return Err(Reply::new(
                            451,
                            "4.5.0",
                            format!("unreadable reply from {}: {e:?}", self.host),
                        ));
                    }
                }
            }
            self.rbuf.clear();
            self.rpos = 0;
            let read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.rbuf));
            match read.await {
                Ok(Ok(0)) => return Err(io_reply(&self.host, "connection closed by", "peer")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(io_reply(&self.host, "read from", e)),
                Err(_) => return Err(io_reply(&self.host, "read from", "timed out")),
            }
        }
    }

    /// Sends one message to the given recipients (indexes into `meta.recipients`).
    /// `Err` is a connection failure: every recipient is deferred and the connection is gone.
    pub async fn send(
        &mut self,
        meta: &MessageMeta,
        sender: &str,
        rcpts: &[usize],
        body: &[u8],
    ) -> Result<Vec<(usize, Outcome)>, Reply> {
        self.last_used = Instant::now();
        let caps = self.caps.clone();
        let remote = Some(self.host.clone());
        let fail_all = |reply: Reply| Ok(Outcome::for_all(rcpts, &reply, &remote));
        if meta.smtputf8 && !caps.smtputf8 {
            return fail_all(Reply::new(
                553,
                "5.6.7",
                format!("{} does not support SMTPUTF8", self.host),
            ));
        }
        // RFC 6152: 8-bit data goes only to a peer that announced 8BITMIME. Sluice does not
        // convert to quoted-printable; such a message bounces (5.6.3) rather than going raw.
        // A message declared 8BITMIME whose body is plain ASCII goes as it is.
        let eight_bit = !body.is_ascii();
        if eight_bit && !caps.eight_bit {
            return fail_all(Reply::new(
                554,
                "5.6.3",
                format!(
                    "{} does not accept 8-bit data (no 8BITMIME) and the message needs it",
                    self.host
                ),
            ));
        }
        if let Some(max) = caps.size
            && body.len() > max
        {
            return fail_all(Reply::new(
                552,
                "5.3.4",
                format!("message too big for {} (limit {max})", self.host),
            ));
        }

        let mut mail = format!("MAIL FROM:<{sender}>");
        if caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if (meta.eight_bit || eight_bit) && caps.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if meta.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if caps.dsn {
            match meta.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Headers) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &meta.envid {
                mail.push_str(&format!(" ENVID={}", xtext(envid)));
            }
        }
        mail.push_str("\r\n");
        let mut rcpt_lines = Vec::with_capacity(rcpts.len());
        for &i in rcpts {
            let r = &meta.recipients[i].recipient;
            let mut line = format!("RCPT TO:<{}>", r.address);
            if caps.dsn {
                if let Some(n) = r.notify.to_param() {
                    line.push_str(&format!(" NOTIFY={n}"));
                }
                if let Some(o) = &r.orcpt {
                    line.push_str(&format!(" ORCPT=rfc822;{}", xtext(o)));
                }
            }
            line.push_str("\r\n");
            rcpt_lines.push(line);
        }

        // MAIL, RCPT… and DATA in one write when the peer pipelines, one by one otherwise.
        let (mail_reply, rcpt_replies, data_reply) = if caps.pipelining {
            let mut batch = mail.clone();
            for l in &rcpt_lines {
                batch.push_str(l);
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes()).await?;
            let m = self.read_reply().await?;
            let mut rs = Vec::with_capacity(rcpts.len());
            for _ in rcpts {
                rs.push(self.read_reply().await?);
            }
            let d = self.read_reply().await?;
            (m, rs, Some(d))
        } else {
            let m = self.command(&mail).await?;
            let mut rs = Vec::new();
            if m.is_positive() {
                for l in &rcpt_lines {
                    rs.push(self.command(l).await?);
                }
            }
            let any = rs.iter().any(|r| r.is_positive());
            let d = if m.is_positive() && any {
                Some(self.command("DATA\r\n").await?)
            } else {
                None
            };
            (m, rs, d)
        };

        if !mail_reply.is_positive() {
            if data_reply.as_ref().is_some_and(|d| d.code == 354) {
                self.write(b".\r\n").await?;
                self.read_reply().await?;
            }
            self.rset().await?;
            return fail_all(mail_reply);
        }
        let mut outcomes = Vec::with_capacity(rcpts.len());
        let mut accepted = Vec::new();
        for (k, &i) in rcpts.iter().enumerate() {
            let r = rcpt_replies[k].clone();
            if r.is_positive() {
                accepted.push(i);
            } else {
                outcomes.push((i, Outcome::not_delivered(r, remote.clone())));
            }
        }
        let data_reply =
            data_reply.unwrap_or_else(|| Reply::new(554, "5.5.1", "no valid recipients"));
        if accepted.is_empty() || data_reply.code != 354 {
            if data_reply.code == 354 {
                // The peer wants a body although no recipient was accepted: end it empty.
                self.write(b".\r\n").await?;
                self.read_reply().await?;
            }
            self.rset().await?;
            outcomes.extend(Outcome::for_all(&accepted, &data_reply, &remote));
            return Ok(outcomes);
        }
        self.write_data(&dot_stuff(body)).await?;
        // RFC 5321 §4.5.3.2.6: the reply to end of data may take 10 minutes.
        let end = self.read_reply_within(FINAL_REPLY_TIMEOUT).await?;
        self.messages_sent += 1;
        self.last_used = Instant::now();
        for i in accepted {
            let o = if end.is_positive() {
                Outcome::Delivered {
                    reply: end.clone(),
                    remote: remote.clone(),
                    dsn_passed_on: caps.dsn,
                    final_delivery: false,
                }
            } else {
                Outcome::not_delivered(end.clone(), remote.clone())
            };
            outcomes.push((i, o));
        }
        Ok(outcomes)
    }

    async fn rset(&mut self) -> Result<(), Reply> {
        let r = self.command("RSET\r\n").await?;
        if r.is_positive() { Ok(()) } else { Err(r) }
    }

    /// Says goodbye; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.command("QUIT\r\n").await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// The body as sent after DATA: lines starting with `.` get another one, and it ends with
/// `CRLF.CRLF`.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut start = 0;
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    for pos in memchr::memmem::find_iter(body, b"\n.") {
        out.extend_from_slice(&body[start..=pos]);
        out.push(b'.');
        start = pos + 1;
    }
    out.extend_from_slice(&body[start..]);
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// xtext encoding (RFC 3461 §4): `+`, `=`, controls and non-ASCII as `+XX`.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\r\n.b\r\nc\r\n"), b"..a\r\n..b\r\nc\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn xtext_escapes() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn capabilities_from_ehlo() {
        let c = Capabilities::parse("mx greets\nPIPELINING\nSIZE 1000\nDSN\nSTARTTLS\n8BITMIME");
        assert!(c.pipelining && c.dsn && c.starttls && c.eight_bit && !c.smtputf8);
        assert_eq!(c.size, Some(1000));
    }
}
