//! `sluice spam train|cv` (the spam model, from the operator's own mail) and `sluice score`
//! (a policy's data stage over many messages).
//!
//! Messages are read as the `spam-score` plugin sees them: parsed by the host's
//! `MessageData` (the code behind the plugin contract's `message` resource), so a model
//! trained here scores the same in the plugin.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use sluice_core::{Envelope, Recipient, SessionInfo, Verdict};
use sluice_plugin::WasmPipeline;
use sluice_plugin::message::MessageData;
use sluice_spam::train::{self, Params};
use sluice_spam::{Features, Model, View};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Subcommand)]
pub enum SpamCommand {
    /// Trains a model from ham and spam folders (Maildir, folders of message files) or mbox
    /// files, and writes it with its sha256 (for the policy's `data` entry).
    Train {
        #[command(flatten)]
        corpus: Corpus,
        /// Where to write the model.
        #[arg(short = 'o', long)]
        output: PathBuf,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Cross-validates training on a corpus: k folds (copies of a message stay in one
    /// fold), each scored by a model trained on the others; prints recall, false positives
    /// and ROC AUC.
    Cv {
        #[command(flatten)]
        corpus: Corpus,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Score at and above which a message counts as spam.
        #[arg(long, default_value_t = sluice_spam::model::SCORE_OFFSET)]
        threshold: f64,
        /// Writes one line per message: path, label, fold, score (TAB separated).
        #[arg(long)]
        scores: Option<PathBuf>,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Scores messages with a model file alone (no policy, no plugin): path, score (TAB
    /// separated). The `spam-score` plugin gives the same score plus its authentication
    /// checks.
    Score {
        /// The model file.
        #[arg(long)]
        model: PathBuf,
        /// Message files, folders of them (Maildir included) or mbox files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct Corpus {
    /// Ham: Maildir or message folders, or mbox files (repeat for several).
    #[arg(long, required = true)]
    ham: Vec<PathBuf>,
    /// Spam: Maildir or message folders, or mbox files (repeat for several).
    #[arg(long, required = true)]
    spam: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct ParamArgs {
    /// log2 of the number of weights (model size is 4 bytes × 2^bits).
    #[arg(long, default_value_t = Params::default().bits, value_parser = clap::value_parser!(u32).range(10..=26))]
    bits: u32,
    #[arg(long, default_value_t = Params::default().epochs)]
    epochs: u32,
    /// Weight of a ham message's error relative to a spam's.
    #[arg(long, default_value_t = Params::default().ham_weight)]
    ham_weight: f32,
    #[arg(long, default_value_t = Params::default().rate)]
    rate: f32,
    #[arg(long, default_value_t = Params::default().l2)]
    l2: f32,
    /// Seed of the order in which training visits the messages.
    #[arg(long, default_value_t = Params::default().seed)]
    seed: u64,
    /// How many fits, each in its own order, are averaged into the model.
    #[arg(long, default_value_t = Params::default().orders)]
    orders: u32,
}

impl ParamArgs {
    fn params(&self) -> Params {
        Params {
            bits: self.bits,
            epochs: self.epochs,
            ham_weight: self.ham_weight,
            rate: self.rate,
            l2: self.l2,
            seed: self.seed,
            orders: self.orders,
        }
    }
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Policy file (or folder of them) whose data stage is run.
    #[arg(long)]
    policy: PathBuf,
    /// Message files, folders of them (Maildir included) or mbox files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Listener name the messages arrive on (chains are chosen by it).
    #[arg(long, default_value = "mx")]
    listener: String,
}

/// One message read from disk.
pub struct Mail {
    /// The file, with `#n` for the n-th message of an mbox.
    pub name: String,
    /// CRLF line ends, the mbox `From ` line removed.
    pub raw: Vec<u8>,
}

/// Reads every message under `paths`: folders recursively (a Maildir's `tmp` skipped), mbox
/// files split on their `From ` lines, other files as one message each. Sorted by name.
pub fn read_mail(paths: &[PathBuf]) -> Result<Vec<Mail>> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files).with_context(|| format!("cannot read {}", p.display()))?;
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let name = f.display().to_string();
        let messages = split_mbox(&bytes);
        let several = messages.len() > 1;
        for (i, m) in messages.into_iter().enumerate() {
            out.push(Mail {
                name: if several {
                    format!("{name}#{}", i + 1)
                } else {
                    name.clone()
                },
                raw: crlf(m),
            });
        }
    }
    Ok(out)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "tmp" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// An mbox's messages (`From ` lines at the start or after an empty line open one; `>From `
/// is unquoted); a plain message file is one message.
fn split_mbox(bytes: &[u8]) -> Vec<&[u8]> {
    if !bytes.starts_with(b"From ") {
        return vec![bytes];
    }
    let mut starts = vec![0];
    let mut i = 0;
    while let Some(off) = find(&bytes[i..], b"\n\nFrom ") {
        starts.push(i + off + 2);
        i += off + 2;
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            let end = starts.get(n + 1).copied().unwrap_or(bytes.len());
            let m = &bytes[s..end];
            // Skip the `From ` line.
            match m.iter().position(|&b| b == b'\n') {
                Some(nl) => &m[nl + 1..],
                None => &m[m.len()..],
            }
        })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// CRLF line ends (as SMTP carries them), mboxrd `>From ` quoting undone.
fn crlf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + m.len() / 40);
    let mut prev = b'\n';
    for (i, &b) in m.iter().enumerate() {
        if prev == b'\n' && b == b'>' && m[i + 1..].starts_with(b"From ") {
            prev = b;
            continue;
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// What the plugin contract gives the `spam-score` plugin, computed by the same host code.
pub struct Parsed {
    headers: Vec<(String, String)>,
    text: Vec<String>,
    html: Vec<String>,
    parts: Vec<String>,
    charsets: Vec<String>,
    attachments: Vec<(Option<String>, String, u64)>,
}

impl Parsed {
    pub fn new(raw: Vec<u8>) -> Parsed {
        let m = MessageData::new(Arc::new(raw), "", Envelope::default(), None);
        Parsed {
            headers: m.headers().into_iter().map(|h| (h.name, h.value)).collect(),
            text: m.text_parts(),
            html: m.html_parts(),
            parts: m.parts().iter().map(|p| p.content_type.clone()).collect(),
            charsets: m.parts().into_iter().filter_map(|p| p.charset).collect(),
            attachments: m
                .attachments()
                .into_iter()
                .map(|a| (a.filename, a.content_type, a.size))
                .collect(),
        }
    }

    pub fn view(&self) -> View<'_> {
        View {
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            text_parts: self.text.iter().map(String::as_str).collect(),
            html_parts: self.html.iter().map(String::as_str).collect(),
            part_types: self.parts.iter().map(String::as_str).collect(),
            charsets: self.charsets.iter().map(String::as_str).collect(),
            attachments: self
                .attachments
                .iter()
                .map(|(f, t, s)| (f.as_deref(), t.as_str(), *s))
                .collect(),
        }
    }

    fn duplicate_key(&self) -> u64 {
        let subject = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("subject"))
            .map_or("", |(_, v)| v.as_str());
        let body = if self.text.is_empty() {
            self.html.join("\n")
        } else {
            self.text.join("\n")
        };
        train::duplicate_key(subject, &body)
    }
}

struct Labelled {
    name: String,
    spam: bool,
    features: Features,
    key: u64,
}

/// Reads and featurises a corpus on every core.
fn load_corpus(c: &Corpus) -> Result<Vec<Labelled>> {
    let ham = read_mail(&c.ham)?;
    let spam = read_mail(&c.spam)?;
    if ham.is_empty() || spam.is_empty() {
        bail!(
            "need both ham and spam: found {} ham and {} spam messages",
            ham.len(),
            spam.len()
        );
    }
    let all: Vec<(Mail, bool)> = ham
        .into_iter()
        .map(|m| (m, false))
        .chain(spam.into_iter().map(|m| (m, true)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = all.len().div_ceil(threads);
    let mut out = Vec::with_capacity(all.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = all
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(m, spam)| {
                            let p = Parsed::new(m.raw.clone());
                            Labelled {
                                name: m.name.clone(),
                                spam: *spam,
                                features: sluice_spam::extract(&p.view()),
                                key: p.duplicate_key(),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().expect("featurising panicked"));
        }
    });
    Ok(out)
}

pub fn run(command: SpamCommand) -> Result<()> {
    match command {
        SpamCommand::Train {
            corpus,
            output,
            params,
        } => {
            let data = load_corpus(&corpus)?;
            let ex: Vec<(&Features, bool)> = data.iter().map(|d| (&d.features, d.spam)).collect();
            let model = train::train(&ex, &params.params());
            let bytes = model.to_bytes();
            sluice_core::durable::write_atomic(&output, &bytes, 0o644)
                .with_context(|| format!("cannot write {}", output.display()))?;
            let spam = data.iter().filter(|d| d.spam).count();
            println!(
                "trained on {} ham and {spam} spam messages: {} ({} bytes)",
                data.len() - spam,
                output.display(),
                bytes.len()
            );
            println!("sha256 = \"{}\"", hex::encode(Sha256::digest(&bytes)));
            Ok(())
        }
        SpamCommand::Cv {
            corpus,
            folds,
            threshold,
            scores,
            params,
        } => cv(
            &corpus,
            folds,
            threshold,
            scores.as_deref(),
            &params.params(),
        ),
        SpamCommand::Score { model, paths } => {
            let bytes = std::fs::read(&model)
                .with_context(|| format!("cannot read {}", model.display()))?;
            let model =
                Model::from_bytes(&bytes).with_context(|| format!("{}", model.display()))?;
            lines(read_mail(&paths)?.into_iter().map(|m| {
                let p = Parsed::new(m.raw);
                let s = model.score(&sluice_spam::extract(&p.view())).score;
                format!("{}\t{s:.2}", m.name)
            }))
        }
    }
}

/// Prints lines; a closed pipe (`| head`) ends the output quietly.
fn lines(mut it: impl Iterator<Item = String>) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let r = it
        .try_for_each(|l| writeln!(out, "{l}"))
        .and_then(|()| out.flush());
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn cv(c: &Corpus, k: usize, threshold: f64, out: Option<&Path>, p: &Params) -> Result<()> {
    if k < 2 {
        bail!("--folds must be at least 2");
    }
    let data = load_corpus(c)?;
    let keys: Vec<u64> = data.iter().map(|d| d.key).collect();
    let labels: Vec<bool> = data.iter().map(|d| d.spam).collect();
    let fold = train::folds(&keys, &labels, k);
    let mut score = vec![0f64; data.len()];
    for f in 0..k {
        let ex: Vec<(&Features, bool)> = data
            .iter()
            .zip(&fold)
            .filter(|(_, ff)| **ff != f)
            .map(|(d, _)| (&d.features, d.spam))
            .collect();
        let model = train::train(&ex, p);
        for (i, d) in data.iter().enumerate() {
            if fold[i] == f {
                score[i] = model.score(&d.features).score;
            }
        }
    }
    let all: Vec<(f64, bool)> = score.iter().copied().zip(labels.iter().copied()).collect();
    println!("fold\tham\tspam\trecall\tfalse_pos\tauc");
    for f in 0..k {
        let part: Vec<(f64, bool)> = all
            .iter()
            .zip(&fold)
            .filter(|(_, ff)| **ff == f)
            .map(|(x, _)| *x)
            .collect();
        report(&f.to_string(), &part, threshold);
    }
    report("all", &all, threshold);
    let groups = keys.iter().collect::<std::collections::HashSet<_>>().len();
    println!(
        "{} messages in {groups} groups of copies; threshold {threshold}",
        data.len()
    );
    if let Some(path) = out {
        let mut text = String::new();
        for (i, d) in data.iter().enumerate() {
            text.push_str(&format!(
                "{}\t{}\t{}\t{:.4}\n",
                d.name,
                if d.spam { "spam" } else { "ham" },
                fold[i],
                score[i]
            ));
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn report(label: &str, s: &[(f64, bool)], threshold: f64) {
    let ham = s.iter().filter(|x| !x.1).count();
    let spam = s.len() - ham;
    let (recall, fp) = train::rates(s, threshold);
    let fp_n = s.iter().filter(|x| !x.1 && x.0 >= threshold).count();
    println!(
        "{label}\t{ham}\t{spam}\t{:.2}%\t{fp_n} ({:.2}%)\t{:.4}",
        recall * 100.0,
        fp * 100.0,
        train::auc(s)
    );
}

/// `sluice score`: one line per message, `path TAB score TAB verdict`.
pub async fn score(args: ScoreArgs) -> Result<()> {
    let runtime = sluice_plugin::Runtime::new(None)?;
    let (services, _) = sluice_plugin::step::Services::in_memory();
    let pipeline = match WasmPipeline::load(runtime, &args.policy, Some(services)).await {
        Ok(p) => p,
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            bail!("the policy has problems:\n{}", list.join("\n"));
        }
    };
    let snapshot = pipeline.snapshot();
    let session = SessionInfo {
        listener: args.listener.clone(),
        role: args.listener.clone(),
        client_ip: "127.0.0.1".parse()?,
        helo: Some("score.local".into()),
        tls: None,
        auth_user: None,
    };
    let mut out = Vec::new();
    for (n, mail) in read_mail(&args.paths)?.into_iter().enumerate() {
        let mut envelope = Envelope {
            sender: "sender@example.com".into(),
            recipients: vec![Recipient::new("rcpt@example.net")],
            ..Envelope::default()
        };
        let mut message = mail.raw;
        let id = format!("SCORE{n}");
        let r = snapshot
            .data_stage(&id, &session, &mut envelope, &mut message)
            .await;
        let (score, verdict) = match r {
            Some(r) => (r.score, verdict_name(&r.verdict)),
            None => (0.0, "no-chain"),
        };
        out.push(format!("{}\t{score:.2}\t{verdict}", mail.name));
    }
    lines(out.into_iter())
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Continue | Verdict::Accept => "accept",
        Verdict::Reject(_) => "reject",
        Verdict::Defer(_) => "defer",
        Verdict::Quarantine(_) => "quarantine",
        Verdict::Discard => "discard",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_files_split_and_unquote() {
        let mbox = b"From a@b Thu Aug 22 13:17:22 2002\nSubject: one\n\nbody\n>From here\n\nFrom c@d Fri\nSubject: two\n\nx\n";
        let parts = split_mbox(mbox);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with(b"Subject: one"));
        assert_eq!(
            crlf(parts[0]),
            b"Subject: one\r\n\r\nbody\r\nFrom here\r\n\r\n".to_vec()
        );
        assert_eq!(split_mbox(b"Subject: x\n\nFrom y\n").len(), 1);
    }
}
