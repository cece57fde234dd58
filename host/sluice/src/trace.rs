//! `sluice trace`: one message through a policy, offline, step by step.

use anyhow::{Context, Result, bail};
use sluice_core::{Envelope, Recipient, SessionInfo, Verdict};
use sluice_plugin::WasmPipeline;
use sluice_plugin::chain::{StageInput, StageResult};
use sluice_plugin::pipeline::{wit_envelope, wit_session};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TraceArgs {
    /// Policy file (or folder of them) to run.
    #[arg(long)]
    policy: PathBuf,
    /// The message, as a file of RFC 5322 text.
    message: PathBuf,
    /// Envelope sender.
    #[arg(long = "from", default_value = "sender@example.com")]
    from: String,
    /// Envelope recipients (repeat for several).
    #[arg(long = "to", default_value = "rcpt@example.net")]
    to: Vec<String>,
    /// Listener name the message arrives on.
    #[arg(long, default_value = "mx")]
    listener: String,
    /// Authenticated user, if any.
    #[arg(long)]
    auth: Option<String>,
}

pub async fn run(args: TraceArgs) -> Result<()> {
    let runtime = sluice_plugin::Runtime::new(None)?;
    let pipeline = match WasmPipeline::load(runtime, &args.policy, None).await {
        Ok(p) => p,
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            bail!("the policy has problems:\n{}", list.join("\n"));
        }
    };
    let original = std::fs::read(&args.message)
        .with_context(|| format!("cannot read {}", args.message.display()))?;
    // Messages on disk often have bare LF line ends; SMTP would carry CRLF.
    let text = String::from_utf8_lossy(&original)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let original = text.into_bytes();
    let session = SessionInfo {
        listener: args.listener.clone(),
        role: args.listener.clone(),
        client_ip: "127.0.0.1".parse()?,
        helo: Some("trace.local".into()),
        tls: None,
        auth_user: args.auth.clone(),
    };
    let mut envelope = Envelope {
        sender: args.from.clone(),
        recipients: args.to.iter().map(Recipient::new).collect(),
        ..Envelope::default()
    };
    let snapshot = pipeline.snapshot();
    let mut out = String::new();
    let w = wit_session(&session);
    let e = wit_envelope(&envelope);
    let stages = vec![
        ("connect", StageInput::Connect(w.clone())),
        ("ehlo", StageInput::Ehlo(w.clone())),
        ("mail", StageInput::Mail(w.clone(), e.clone())),
    ]
    .into_iter()
    .chain(
        args.to
            .iter()
            .map(|r| ("rcpt", StageInput::Rcpt(w.clone(), e.clone(), r.clone()))),
    );
    for (name, input) in stages {
        if let Some((chain, result)) = snapshot.trace_stage(&session, &envelope, input).await {
            if result.trace.is_empty() {
                continue;
            }
            print_stage(&mut out, name, &chain, &result);
            if result.verdict != Verdict::Continue && result.verdict != Verdict::Accept {
                print!("{out}");
                println!("final: {}", verdict_text(&result.verdict));
                return Ok(());
            }
        }
    }
    let mut message = original.clone();
    let result = snapshot
        .data_stage(&session, &mut envelope, &mut message)
        .await;
    let final_verdict = match &result {
        Some(r) => {
            print_stage(&mut out, "data", "", r);
            writeln!(out, "score: {:.2}", r.score)?;
            r.verdict.clone()
        }
        None => {
            writeln!(out, "no chain applies to this message")?;
            Verdict::Continue
        }
    };
    writeln!(out, "final: {}", verdict_text(&final_verdict))?;
    writeln!(
        out,
        "envelope: from <{}> to {}",
        envelope.sender,
        envelope
            .recipients
            .iter()
            .map(|r| format!("<{}>", r.address))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let before = String::from_utf8_lossy(&original).replace("\r\n", "\n");
    let after = String::from_utf8_lossy(&message).replace("\r\n", "\n");
    if before == after {
        writeln!(out, "message unchanged")?;
    } else {
        let diff = similar::TextDiff::from_lines(&before, &after);
        write!(
            out,
            "{}",
            diff.unified_diff()
                .context_radius(2)
                .header("message", "message after the chain")
        )?;
    }
    print!("{out}");
    Ok(())
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Continue => "accept (continue)".into(),
        Verdict::Accept => "accept".into(),
        Verdict::Reject(r) => format!("reject {r}"),
        Verdict::Defer(r) => format!("defer {r}"),
        Verdict::Quarantine(why) => format!("quarantine ({why})"),
        Verdict::Discard => "discard".into(),
    }
}

fn print_stage(out: &mut String, stage: &str, chain: &str, r: &StageResult) {
    let _ = writeln!(
        out,
        "stage {stage}{}",
        if chain.is_empty() {
            String::new()
        } else {
            format!(" (chain {chain})")
        }
    );
    for t in &r.trace {
        let _ = writeln!(
            out,
            "  step {:<16} {:>9.3} ms  {}",
            t.step,
            t.elapsed.as_secs_f64() * 1000.0,
            verdict_text(&t.verdict)
        );
        if let Some(e) = &t.error {
            let _ = writeln!(out, "    error: {e}");
        }
        for s in &t.symbols {
            let _ = writeln!(out, "    symbol {} {:+.2}", s.name, s.score);
        }
        for e in &t.edits {
            let _ = writeln!(out, "    edit {e:?}");
        }
    }
}
