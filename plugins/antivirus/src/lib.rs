//! A bridge to ClamAV's clamd: the raw message is streamed to clamd with the INSTREAM
//! protocol (length-prefixed chunks) over the TCP capability; a signature found rejects the
//! message with `554 5.7.1` naming it, or quarantines it, as configured.
//!
//! ```toml
//! [[pipeline.step]]
//! name = "antivirus"
//! plugin = "antivirus.wasm"
//! sha256 = "…"
//! stages = ["data"]
//! timeout_ms = 30000          # clamd slower than this: the step's on_error
//! on_error = "tempfail"       # clamd down: 451 (or "skip" to accept unscanned)
//! [pipeline.step.capabilities]
//! tcp = ["127.0.0.1:3310"]
//! [pipeline.step.config]
//! clamd = "127.0.0.1:3310"
//! action = "reject"           # or "quarantine"
//! ```
//!
//! clamd unreachable, an `ERROR` answer (a size limit, say) or a broken connection make the
//! call fail, so the policy's `on_error` decides; it never passes a message it could not scan
//! as clean.
//!
//! clamd writes every stream, and the MIME parts it takes apart, to files in a fresh
//! directory under its `TemporaryDirectory`: put that on a tmpfs. On the queue's busy ext4
//! disk, creating them cost clamd 1.1–1.9 ms of CPU per 5 KB message under load, on a
//! tmpfs 0.46 ms (bench/RESULTS.md, tenth session).

use serde::Deserialize;
use sluice_plugin_sdk::{Filter, Message, Outcome, Stage, Verdict, export_filter};
use std::io::{Read, Write};
use std::net::TcpStream;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    clamd: String,
    #[serde(default = "default_action")]
    action: String,
    /// Bytes per INSTREAM chunk (clamd's StreamMaxLength still bounds the whole message).
    #[serde(default = "default_chunk")]
    chunk_bytes: u32,
}

fn default_action() -> String {
    "reject".into()
}

fn default_chunk() -> u32 {
    64 * 1024
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
}

/// What clamd said about the stream.
#[derive(Debug, PartialEq)]
enum Scan {
    Clean,
    Found(String),
}

/// Parses clamd's answer (`stream: OK`, `stream: NAME FOUND`, `... ERROR`).
fn parse(answer: &str) -> Result<Scan, String> {
    let a = answer.trim_end_matches(['\0', '\n']).trim();
    let rest = a.strip_prefix("stream:").map(str::trim).unwrap_or(a);
    if rest == "OK" {
        Ok(Scan::Clean)
    } else if let Some(name) = rest.strip_suffix(" FOUND") {
        Ok(Scan::Found(name.trim().to_string()))
    } else {
        Err(format!("clamd: {a}"))
    }
}

fn scan(c: &Config, message: &Message) -> Result<Scan, String> {
    let mut s = TcpStream::connect(&c.clamd).map_err(|e| format!("clamd {}: {e}", c.clamd))?;
    let io = |e: std::io::Error| format!("clamd {}: {e}", c.clamd);
    // The command, the chunks with their lengths and the end mark go out in as few writes
    // as the chunk size allows: one for a message smaller than a chunk (separate small
    // writes each cost a system call and a TCP segment).
    let size = message.size();
    let mut out = Vec::with_capacity(size.min(u64::from(c.chunk_bytes)) as usize + 32);
    out.extend_from_slice(b"zINSTREAM\0");
    let mut at = 0u64;
    while at < size {
        let chunk = message.bytes(at, c.chunk_bytes);
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        at += chunk.len() as u64;
        if out.len() >= c.chunk_bytes as usize {
            s.write_all(&out).map_err(io)?;
            out.clear();
        }
    }
    out.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&out).map_err(io)?;
    let mut answer = Vec::new();
    s.take(4096).read_to_end(&mut answer).map_err(io)?;
    parse(&String::from_utf8_lossy(&answer))
}

struct Antivirus;

impl Filter for Antivirus {
    const STAGES: &'static [Stage] = &[Stage::Data];

    fn configure(c: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(c).map_err(|e| e.to_string())?;
        if !matches!(c.action.as_str(), "reject" | "quarantine") {
            return Err(format!(
                "`action` must be reject or quarantine, not `{}`",
                c.action
            ));
        }
        if c.chunk_bytes == 0 || c.chunk_bytes > 1 << 24 {
            return Err("`chunk_bytes` must be between 1 and 16777216".into());
        }
        if c.clamd.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "`clamd` must be an ip:port address, not `{}`",
                c.clamd
            ));
        }
        Ok(())
    }

    fn on_data(message: &Message) -> Outcome {
        let c = config();
        match scan(c, message) {
            Ok(Scan::Clean) => Outcome::cont().add_header("X-Virus-Scanned", "clamd: clean"),
            Ok(Scan::Found(name)) => {
                let out = Outcome::cont().symbol("VIRUS_FOUND", 0.0);
                if c.action == "quarantine" {
                    out.verdict(Verdict::Quarantine(format!("virus found: {name}")))
                } else {
                    Outcome::reject(554, "5.7.1", &format!("Virus found: {name}"))
                }
            }
            // The host turns the trap into the step's `on_error`.
            Err(e) => panic!("{e}"),
        }
    }
}

export_filter!(Antivirus, reusable);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(parse("stream: OK\0"), Ok(Scan::Clean));
        assert_eq!(
            parse("stream: Eicar-Test-Signature FOUND\0"),
            Ok(Scan::Found("Eicar-Test-Signature".into()))
        );
        assert!(parse("INSTREAM size limit exceeded. ERROR\0").is_err());
    }
}
