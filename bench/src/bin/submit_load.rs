//! Load for a submission listener, the way an application sends: `SESSIONS` connections,
//! each with STARTTLS and AUTH PLAIN once, then messages back to back until `COUNT` are
//! sent in all. (smtp-source, the load of `relay_bench.py`, has no TLS or AUTH.)
//!
//! `submit_load HOST:PORT USER PASSWORD SESSIONS COUNT RECIPIENTS FILE` — the message is
//! FILE (LF or CRLF line ends); recipient `i` of each message is `<i>rcpt@bench.test`.
//! Prints the seconds taken and the messages accepted.

use anyhow::{Context, Result, bail};
use base64::Engine;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn reply<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> Result<String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(all);
        }
    }
}

async fn expect<S: AsyncRead + Unpin>(r: &mut BufReader<S>, code: &str) -> Result<()> {
    let got = reply(r).await?;
    if !got.starts_with(code) {
        bail!("expected {code}, got {}", got.trim());
    }
    Ok(())
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    line: &str,
    code: &str,
) -> Result<()> {
    s.get_mut().write_all(line.as_bytes()).await?;
    expect(s, code).await
}

#[allow(clippy::too_many_arguments)]
async fn session(
    addr: String,
    auth: String,
    body: Arc<Vec<u8>>,
    recipients: usize,
    next: Arc<AtomicUsize>,
    count: usize,
    done: Arc<AtomicUsize>,
) -> Result<()> {
    let tcp = TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let mut plain = BufReader::new(tcp);
    expect(&mut plain, "220").await?;
    send(&mut plain, "EHLO load.bench.test\r\n", "250").await?;
    send(&mut plain, "STARTTLS\r\n", "220").await?;
    let tls = tokio_rustls::TlsConnector::from(sluice_net::client_tls::unverified());
    let name = rustls_pki_types::ServerName::try_from("sluice.bench.test")?.to_owned();
    let stream = tls.connect(name, plain.into_inner()).await?;
    let mut s = BufReader::new(stream);
    send(&mut s, "EHLO load.bench.test\r\n", "250").await?;
    send(&mut s, &format!("AUTH PLAIN {auth}\r\n"), "235").await?;
    while next.fetch_add(1, Ordering::Relaxed) < count {
        let mut cmds = String::from("MAIL FROM:<news@bench.test>\r\n");
        for i in 0..recipients {
            cmds.push_str(&format!("RCPT TO:<{i}rcpt@bench.test>\r\n"));
        }
        cmds.push_str("DATA\r\n");
        // PIPELINING: the envelope in one write, then each reply.
        s.get_mut().write_all(cmds.as_bytes()).await?;
        for _ in 0..=recipients {
            expect(&mut s, "250").await?;
        }
        expect(&mut s, "354").await?;
        s.get_mut().write_all(&body).await?;
        s.get_mut().write_all(b".\r\n").await?;
        expect(&mut s, "250").await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    send(&mut s, "QUIT\r\n", "221").await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 8 {
        bail!("usage: submit_load HOST:PORT USER PASSWORD SESSIONS COUNT RECIPIENTS FILE");
    }
    let sessions: usize = a[4].parse().context("SESSIONS")?;
    let count: usize = a[5].parse().context("COUNT")?;
    let recipients: usize = a[6].parse().context("RECIPIENTS")?;
    let text = std::fs::read_to_string(&a[7]).context("FILE")?;
    // CRLF line ends, dot-stuffed.
    let mut body = String::with_capacity(text.len() + text.len() / 20);
    for line in text.replace("\r\n", "\n").lines() {
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
        body.push_str("\r\n");
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", a[2], a[3]));
    let body = Arc::new(body.into_bytes());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        tasks.spawn(session(
            a[1].clone(),
            auth.clone(),
            body.clone(),
            recipients,
            next.clone(),
            count,
            done.clone(),
        ));
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!(
        "{:.3} {}",
        started.elapsed().as_secs_f64(),
        done.load(Ordering::Relaxed)
    );
    Ok(())
}
