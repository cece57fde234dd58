//! A webhook receiver for the load harness: answers `204` to every HTTP/1.1 request on
//! 127.0.0.1 (keep-alive, Content-Length bodies) and prints the running count to stdout
//! every 100 ms, so that `relay_bench.py` measures Sluice's event delivery rather than a
//! slow receiver.
//!
//! `hook_sink PORT`

use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

async fn serve(stream: tokio::net::TcpStream, count: Arc<AtomicU64>) -> Result<()> {
    let mut s = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if s.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().context("content-length")?;
            }
        }
        let mut body = vec![0; length];
        s.read_exact(&mut body).await?;
        count.fetch_add(1, Ordering::Relaxed);
        s.get_mut()
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 2 {
        bail!("usage: hook_sink PORT");
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", a[1].parse::<u16>()?)).await?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            println!("{}", c.load(Ordering::Relaxed));
        }
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let count = count.clone();
        tokio::spawn(async move {
            let _ = serve(stream, count).await;
        });
    }
}
