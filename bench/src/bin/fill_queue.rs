//! Fills a queue folder with N messages of a given size, as `sluice serve` would have
//! queued them, for the backlog benchmark (`bench/backlog_bench.py`).
//!
//! `fill_queue DIR COUNT SIZE` — enqueues from 64 concurrent tasks so the group commit
//! batches the fsyncs; recipients are `r<n>@remote.test`.

use anyhow::{Context, Result, bail};
use sluice_core::{Envelope, Recipient};
use sluice_queue::{MessageMeta, Queue, SledQueue, new_id};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        bail!("usage: fill_queue DIR COUNT SIZE");
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let count: usize = args[2].parse().context("COUNT")?;
    let size: usize = args[3].parse().context("SIZE")?;
    let queue = Arc::new(SledQueue::open(&dir)?);
    let next = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (queue, next) = (queue.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let mut body = format!(
                    "From: bench@example.com\r\nTo: r{n}@remote.test\r\nSubject: backlog {n}\r\n\r\n"
                );
                while body.len() < size {
                    body.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
                }
                let envelope = Envelope {
                    sender: "bench@example.com".into(),
                    recipients: vec![Recipient::new(format!("r{n}@remote.test"))],
                    ..Default::default()
                };
                let meta = MessageMeta::new(new_id(), &envelope, body.len());
                queue.enqueue(&meta, body.as_bytes()).await?;
                if n > 0 && n % 100_000 == 0 {
                    eprintln!("{n} queued in {:.1} s", started.elapsed().as_secs_f64());
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    queue.sync().await?;
    println!(
        "{count} messages of {size} bytes queued in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
