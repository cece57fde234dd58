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
    let (services, emitted) = sluice_plugin::step::Services::in_memory();
    let pipeline = match WasmPipeline::load(runtime, &args.policy, Some(services)).await {
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
    let id = "TRACE";
    let result = snapshot
        .data_stage(id, &session, &mut envelope, &mut message)
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
    for (k, v) in &envelope.meta {
        writeln!(out, "meta: {k} = {v}")?;
    }
    diff(&mut out, &original, &message, "message after the chain")?;
    let kept = matches!(final_verdict, Verdict::Continue | Verdict::Accept);
    if kept {
        let body = std::sync::Arc::new(message.clone());
        for r in &envelope.recipients {
            let m = sluice_core::MessageRef {
                id,
                session: Some(&session),
                envelope: &envelope,
                body: &body,
            };
            if let Some((result, rendered)) = snapshot.render_one(m, &r.address).await {
                print_stage(
                    &mut out,
                    &format!("render for <{}>", r.address),
                    "",
                    &result,
                );
                diff(
                    &mut out,
                    &message,
                    &rendered,
                    "message as sent to this recipient",
                )?;
            }
        }
    }
    for e in emitted.take() {
        writeln!(
            out,
            "event {} {}{}{}",
            e.kind.name(),
            e.recipient
                .as_deref()
                .map(|r| format!("to <{r}> "))
                .unwrap_or_default(),
            e.reply
                .as_ref()
                .map(|r| format!("reply {r} "))
                .unwrap_or_default(),
            e.attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )?;
    }
    print!("{out}");
    Ok(())
}

fn diff(out: &mut String, before: &[u8], after: &[u8], label: &str) -> Result<()> {
    let before = String::from_utf8_lossy(before).replace("\r\n", "\n");
    let after = String::from_utf8_lossy(after).replace("\r\n", "\n");
    if before == after {
        writeln!(out, "message unchanged")?;
    } else {
        let diff = similar::TextDiff::from_lines(&before, &after);
        write!(
            out,
            "{}",
            diff.unified_diff()
                .context_radius(2)
                .header("message", label)
        )?;
    }
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
