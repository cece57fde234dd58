//! The archive at scale: fills a `sluice-archive` with synthetic mail (≈4 KB messages, 1 to
//! 3 recipients from a pool of 200,000 addresses on 2,000 domains, 5,000 senders, subjects
//! of 4 to 8 words from a 5,000-word vocabulary) from several writer threads, each `put`
//! waiting for its `fdatasync` as the plugin's does, then times searches: by recipient,
//! by sender domain, by two subject words, by Message-ID, by recipient within a date range;
//! and the reopen (index recovery) and a full `verify` if asked.
//!
//! `archive_bench [--entries N] [--threads T] [--queries Q] [--dir PATH] [--verify]`
//! (an existing archive in `--dir` is searched without filling it again when it already
//! holds `--entries`).

use anyhow::{Context, Result, bail};
use sluice_archive::{Archive, Query, keys};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pen", "dor", "al", "est", "ing", "ver",
    "con", "pro", "tion", "ment", "ly", "re", "de", "un", "ex", "or", "an",
];

fn word(i: u64) -> String {
    let mut r = Rng(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n = 1 + r.below(3);
    (0..n)
        .map(|_| SYLLABLES[r.below(SYLLABLES.len() as u64) as usize])
        .collect::<String>()
        + &(i % 7).to_string()
}

fn recipient(i: u64) -> String {
    format!("user{i}@d{}.test", i % 2000)
}

fn sender(i: u64) -> String {
    format!("app{i}@s{}.example", i % 500)
}

struct Message {
    raw: Vec<u8>,
    attributes: Vec<(String, String)>,
}

fn message(n: u64) -> Message {
    let mut r = Rng(n.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5bd1_e995);
    let from = sender(r.below(5000));
    let to: Vec<String> = (0..1 + r.below(3))
        .map(|_| recipient(r.below(200_000)))
        .collect();
    let subject: Vec<String> = (0..4 + r.below(5)).map(|_| word(r.below(5000))).collect();
    let subject = subject.join(" ");
    let message_id = format!("{n}.{}@bench.example", r.next());
    let mut body = String::new();
    while body.len() < 3800 {
        body.push_str(&word(r.below(5000)));
        body.push(if r.below(12) == 0 { '\n' } else { ' ' });
    }
    let raw = format!(
        "Received: from mail.s.example (mail.s.example [192.0.2.{}])\r\n\tby mx.sluice.test\r\nFrom: {from}\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        r.below(255),
        to.join(", "),
        body.replace('\n', "\r\n")
    )
    .into_bytes();
    let mut attributes = vec![
        (keys::QUEUE_ID.to_string(), format!("Q{n:016X}")),
        (keys::MESSAGE_ID.to_string(), message_id),
        (keys::SENDER.to_string(), from),
        (keys::SUBJECT.to_string(), subject),
        (keys::SIZE.to_string(), raw.len().to_string()),
        (keys::LISTENER.to_string(), "mx".into()),
        (keys::CLIENT_IP.to_string(), "192.0.2.1".into()),
        ("meta.sluice.auth.spf".into(), "pass".into()),
        ("direction".into(), "inbound".into()),
    ];
    attributes.extend(to.into_iter().map(|t| (keys::RECIPIENT.to_string(), t)));
    Message { raw, attributes }
}

/// Bytes of the files in `path` whose names end with `suffix`.
fn files_size(path: &std::path::Path, suffix: &str) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(suffix) {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

fn report(name: &str, mut times: Vec<Duration>, found: usize) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
        times.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*times.last().expect("queries ran")),
        found as f64 / times.len() as f64
    );
}

fn main() -> Result<()> {
    let mut entries = 1_000_000u64;
    let mut threads = 16usize;
    let mut queries = 200usize;
    let mut dir: Option<std::path::PathBuf> = None;
    let mut verify = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--entries" => entries = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            "--queries" => queries = value()?.parse()?,
            "--dir" => dir = Some(value()?.into()),
            "--verify" => verify = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let _tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            _tmp = tempfile_dir()?;
            _tmp.clone()
        }
    };
    let started = Instant::now();
    let archive = Arc::new(Archive::open(&dir)?);
    println!("open: {:.2} s", started.elapsed().as_secs_f64());
    let have = archive
        .search(&Query {
            limit: 1,
            ..Query::default()
        })?
        .entries
        .first()
        .map_or(0, |e| e.id);
    if have < entries {
        let next = Arc::new(AtomicU64::new(have));
        let started = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (a, next) = (archive.clone(), next.clone());
                std::thread::spawn(move || -> Result<u64> {
                    let mut bytes = 0;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= entries {
                            return Ok(bytes);
                        }
                        let m = message(n);
                        bytes += m.raw.len() as u64;
                        a.put("bench", &m.raw, m.attributes, 30)?;
                        if n % 100_000 == 0 && n > 0 {
                            eprintln!("{n} archived");
                        }
                    }
                })
            })
            .collect();
        let mut bytes = 0;
        for w in workers {
            bytes += w.join().expect("writer thread")?;
        }
        let took = started.elapsed().as_secs_f64();
        let added = entries - have;
        archive.flush()?;
        println!(
            "fill: {added} messages ({:.0} MB raw) in {took:.1} s with {threads} threads: {:.0} msg/s",
            bytes as f64 / 1e6,
            added as f64 / took
        );
    }
    println!(
        "disk: segments {:.0} MB, index files {:.0} MB",
        files_size(&dir.join("segments"), ".seg") as f64 / 1e6,
        files_size(&dir.join("segments"), ".idx") as f64 / 1e6
    );
    drop(archive);
    let started = Instant::now();
    let archive = Archive::open(&dir)?;
    println!(
        "reopen with {entries} entries: {:.2} s",
        started.elapsed().as_secs_f64()
    );

    println!("\n| search (limit 50) | queries | median ms | p99 ms | max ms | results/query |");
    println!("|---|---|---|---|---|---|");
    let mut r = Rng(42);
    let run = |name: &str, make: &mut dyn FnMut() -> Query| -> Result<()> {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..queries {
            let q = make();
            let t = Instant::now();
            let page = archive.search(&q)?;
            times.push(t.elapsed());
            found += page.entries.len();
        }
        report(name, times, found);
        Ok(())
    };
    let sample = |r: &mut Rng| message(r.below(entries));
    run("recipient", &mut || Query {
        recipient: sample(&mut r)
            .attributes
            .iter()
            .find(|(k, _)| k == keys::RECIPIENT)
            .map(|(_, v)| v.clone()),
        ..Query::default()
    })?;
    let mut r2 = Rng(7);
    run("sender domain (@sN.example)", &mut || Query {
        sender: Some(format!("@s{}.example", r2.below(500))),
        ..Query::default()
    })?;
    let mut r3 = Rng(9);
    run("two subject words", &mut || {
        let m = sample(&mut r3);
        let subject = m
            .attributes
            .iter()
            .find(|(k, _)| k == keys::SUBJECT)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let words: Vec<&str> = subject.split(' ').take(2).collect();
        Query {
            subject: Some(words.join(" ")),
            ..Query::default()
        }
    })?;
    let mut r4 = Rng(11);
    run("message-id", &mut || Query {
        message_id: sample(&mut r4)
            .attributes
            .iter()
            .find(|(k, _)| k == keys::MESSAGE_ID)
            .map(|(_, v)| v.clone()),
        ..Query::default()
    })?;
    let newest = archive
        .search(&Query {
            limit: 1,
            ..Query::default()
        })?
        .entries
        .first()
        .map_or(0, |e| e.created_ms / 1000);
    let mut r5 = Rng(13);
    run("recipient domain, last 60 s", &mut || Query {
        recipient: Some(format!("@d{}.test", r5.below(2000))),
        since: Some(newest.saturating_sub(60)),
        ..Query::default()
    })?;
    let mut r6 = Rng(17);
    run("sender domain + subject word (no match)", &mut || Query {
        sender: Some(format!("@s{}.example", r6.below(500))),
        subject: Some("zzzz".into()),
        ..Query::default()
    })?;
    if verify {
        let started = Instant::now();
        let v = archive.verify()?;
        println!(
            "\nverify: {} messages, {:.0} MB, {} problems, {:.1} s",
            v.messages,
            v.bytes as f64 / 1e6,
            v.problems.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("sluice-archive-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
