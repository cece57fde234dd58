//! The `spam-score` plugin with a model `sluice spam train` built from the SpamAssassin
//! corpus's training groups: scores through a real SMTP session, the policy's thresholds
//! (headers, quarantine, reject), models refused at load, and `sluice score` / `sluice spam
//! score` agreeing and stable.

mod support;

use sluice_test_plugins::SPAM_SCORE;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Client, Sluice, sluice_bin, spam_corpus, spam_model, wait_until};

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(sluice_bin())
        .args(args)
        .output()
        .unwrap()
}

fn policy(model: &Path, sha: &str, thresholds: &str) -> String {
    format!(
        r#"[[pipeline]]
name = "inbound"
listeners = ["mx"]
[pipeline.thresholds]
{thresholds}

[[pipeline.step]]
name = "spam"
plugin = "{}"
sha256 = "{}"
stages = ["data"]
[pipeline.step.data]
model = {{ path = "{}", sha256 = "{sha}" }}
"#,
        SPAM_SCORE.path,
        SPAM_SCORE.sha256,
        model.display()
    )
}

/// `path TAB score` lines of `sluice spam score` with the corpus model.
fn model_scores(paths: &[PathBuf]) -> HashMap<String, f64> {
    model_scores_with(&spam_model().0, paths)
}

fn model_scores_with(model: &Path, paths: &[PathBuf]) -> HashMap<String, f64> {
    let mut args = vec![
        "spam".to_string(),
        "score".into(),
        "--model".into(),
        model.display().to_string(),
    ];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let out = std::process::Command::new(sluice_bin())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (p, s) = l.split_once('\t').unwrap();
            (p.to_string(), s.parse().unwrap())
        })
        .collect()
}

/// A corpus message as SMTP carries it: no mbox line, CRLF, dot-stuffed; `None` when it is
/// not plain ASCII (kept out of the session tests for simplicity).
fn smtp_body(path: &str) -> Option<String> {
    let raw = std::fs::read(path).unwrap();
    let text = String::from_utf8(raw).ok().filter(|t| t.is_ascii())?;
    let text = match text.strip_prefix("From ") {
        Some(rest) => rest.split_once('\n')?.1.to_string(),
        None => text,
    };
    let mut out = String::new();
    for line in text.replace("\r\n", "\n").lines() {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    Some(out.trim_end().to_string())
}

fn data_reply(c: &mut Client, body: &str, to: &str) -> String {
    assert!(c.cmd("MAIL FROM:<sender@example.com>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(body.as_bytes());
    c.send_raw(b"\r\n.\r\n");
    c.read_reply()
}

/// Trained on the groups, the model separates them (in-sample), and the plugin's score for
/// each message is the trainer's (same features through the contract's `message`).
#[test]
fn the_plugin_scores_as_the_trainer_and_sluice_score_is_stable() {
    let c = spam_corpus();
    let (model, sha) = spam_model();
    let groups = [c.join("spam-1"), c.join("easy-ham-1"), c.join("hard-ham-1")];
    let trained = model_scores(&groups);
    let spam: Vec<f64> = trained
        .iter()
        .filter(|(p, _)| p.contains("/spam-1/"))
        .map(|(_, s)| *s)
        .collect();
    let ham: Vec<f64> = trained
        .iter()
        .filter(|(p, _)| !p.contains("/spam-1/"))
        .map(|(_, s)| *s)
        .collect();
    assert_eq!((spam.len(), ham.len()), (500, 2750));
    let caught = spam.iter().filter(|s| **s >= 5.0).count();
    let fp = ham.iter().filter(|s| **s >= 5.0).count();
    assert!(caught >= 490, "only {caught} of 500 training spam at 5.0");
    assert!(fp <= 3, "{fp} of 2750 training ham at 5.0");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, policy(&model, &sha, "quarantine = 9.0\nreject = 15.0")).unwrap();
    let score = |paths: &[PathBuf]| {
        let mut args = vec![
            "score".to_string(),
            "--policy".into(),
            p.display().to_string(),
        ];
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let out = std::process::Command::new(sluice_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let some = [c.join("spam-1"), c.join("hard-ham-1")];
    let first = score(&some);
    assert_eq!(
        first,
        score(&some),
        "sluice score output changed between runs"
    );
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 750);
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 3, "{line}");
        let s: f64 = f[1].parse().unwrap();
        let want = trained[f[0]];
        // The plugin rounds each symbol to 0.01.
        assert!(
            (s - want).abs() < 0.06,
            "{}: plugin {s}, trainer {want}",
            f[0]
        );
        // Printed to 0.01: a score that rounds onto a threshold may fall either side.
        if [9.0, 15.0].iter().any(|t| (s - t).abs() < 0.006) {
            continue;
        }
        let verdict = if s >= 15.0 {
            "reject"
        } else if s >= 9.0 {
            "quarantine"
        } else {
            "accept"
        };
        assert_eq!(f[2], verdict, "{line}");
    }
}

/// Through a real SMTP session: ham is delivered with `X-Spam-Status: No`, spam between the
/// thresholds is quarantined, spam above `reject` gets a 550 at the end of data.
#[test]
fn thresholds_tag_quarantine_and_reject_in_a_session() {
    let c = spam_corpus();
    let (model, sha) = spam_model();
    let scores = model_scores(&[c.join("spam-1"), c.join("easy-ham-1")]);
    let mut sorted: Vec<(&String, &f64)> = scores.iter().collect();
    sorted.sort_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)));
    let pick = |want: &dyn Fn(&str, f64) -> bool| {
        sorted
            .iter()
            .filter(|(p, s)| want(p, **s))
            .find_map(|(p, s)| smtp_body(p).map(|b| (p.to_string(), **s, b)))
            .expect("a message for this band")
    };
    let ham = pick(&|p, s| p.contains("/easy-ham-1/") && s < 0.0);
    let middle = pick(&|p, s| p.contains("/spam-1/") && (10.0..14.0).contains(&s));
    let high = pick(&|p, s| p.contains("/spam-1/") && s >= 25.0);

    let s = Sluice::configure_with("policies = \"policy.toml\"", "", "");
    std::fs::write(
        s.dir.path().join("policy.toml"),
        policy(&model, &sha, "quarantine = 9.0\nreject = 20.0"),
    )
    .unwrap();
    let mut s = s.spawn();
    let mut client = Client::connect(s.mx_port);
    client.cmd("EHLO client.test");
    let r = data_reply(&mut client, &ham.2, "ham@localhost");
    assert!(r.starts_with("250"), "{}: {r}", ham.0);
    let r = data_reply(&mut client, &middle.2, "middle@localhost");
    assert!(r.starts_with("250"), "{}: {r}", middle.0);
    let r = data_reply(&mut client, &high.2, "high@localhost");
    assert!(
        r.starts_with("550 5.7.1") && r.contains("score"),
        "{} ({}): {r}",
        high.0,
        high.1
    );
    client.cmd("QUIT");

    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("ham@localhost")
        .len()
        == 1));
    let mail = &s.maildir("ham@localhost")[0];
    assert!(mail.contains("\r\nX-Spam-Status: No, score="), "{mail}");
    assert!(mail.contains("tests=SPAM_MODEL="), "{mail}");
    let header_score: f64 = mail
        .split("X-Spam-Score: ")
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (header_score - ham.1).abs() < 0.06,
        "{header_score} vs {}",
        ham.1
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        s.maildir("middle@localhost").is_empty(),
        "a quarantined message was delivered"
    );
    s.stop();
    let list = String::from_utf8_lossy(&s.cli(&["queue", "list"], "").stdout).into_owned();
    assert!(list.contains("quarantined: score"), "{list}");
    assert!(list.contains("SPAM_MODEL="), "{list}");
}

/// A model whose bytes do not match the policy's sha256, or a damaged model listed with its
/// own (new) sha256, is refused when the policy loads, with a message saying which.
#[test]
fn damaged_or_mismatched_models_are_refused_at_load() {
    let (model, sha) = spam_model();
    let dir = tempfile::tempdir().unwrap();
    let check = |policy: &str| {
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, policy).unwrap();
        let cfg = dir.path().join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\npolicies = \"policy.toml\"\n[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:1\"\nrole = \"mx\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let out = run(&["--config", cfg.to_str().unwrap(), "check-config"]);
        assert!(!out.status.success(), "a bad model was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let wrong = "0".repeat(64);
    let err = check(&policy(&model, &wrong, ""));
    assert!(
        err.contains("policy.toml") && err.contains("sha256"),
        "{err}"
    );

    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let damaged = dir.path().join("damaged.model");
    std::fs::write(&damaged, &bytes).unwrap();
    use sha2::Digest as _;
    let dsha = hex::encode(sha2::Sha256::digest(&bytes));
    let err = check(&policy(&damaged, &dsha, ""));
    assert!(
        err.contains("damaged model: the weights fail their checksum"),
        "{err}"
    );

    let truncated = dir.path().join("short.model");
    std::fs::write(&truncated, &bytes[..1000]).unwrap();
    let tsha = hex::encode(sha2::Sha256::digest(&bytes[..1000]));
    let err = check(&policy(&truncated, &tsha, ""));
    assert!(err.contains("damaged model: 1000 bytes"), "{err}");

    let mut old = std::fs::read(&model).unwrap();
    old[28] = 99;
    let old_path = dir.path().join("old.model");
    std::fs::write(&old_path, &old).unwrap();
    let osha = hex::encode(sha2::Sha256::digest(&old));
    let err = check(&policy(&old_path, &osha, ""));
    assert!(
        err.contains("model trained on features version 99") && err.contains("retrain"),
        "{err}"
    );

    let not_model = dir.path().join("notes.txt");
    std::fs::write(&not_model, b"just some text, not a model at all").unwrap();
    let nsha = hex::encode(sha2::Sha256::digest(b"just some text, not a model at all"));
    let err = check(&policy(&not_model, &nsha, ""));
    assert!(err.contains("not a Sluice spam model"), "{err}");
    let _ = sha;
}

/// A retrained model (new file, new sha256 in the policy) is used after `sluice reload`,
/// and a session open across the reload goes on without a failed reply.
#[test]
fn a_retrained_model_is_picked_up_by_reload_without_dropping_a_session() {
    let c = spam_corpus();
    let (model, sha) = spam_model();
    let s = Sluice::configure_with("policies = \"policy.toml\"", "", "");
    let policy_path = s.dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy(&model, &sha, "")).unwrap();
    // A second model from the same corpus with other settings: other scores.
    let other = s.dir.path().join("retrained.model");
    let out = std::process::Command::new(sluice_bin())
        .args(["spam", "train", "--epochs", "2", "--ham"])
        .arg(c.join("hard-ham-1"))
        .arg("--spam")
        .arg(c.join("spam-1"))
        .arg("-o")
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let other_sha = printed
        .split("sha256 = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let s = s.spawn();
    let body = smtp_body(
        &c.join("easy-ham-1/00001.7c53336b37003a9286aba55d2945844c.txt")
            .display()
            .to_string(),
    )
    .unwrap();
    let header = |mail: &str| -> String {
        mail.split("X-Spam-Score: ")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .unwrap()
            .to_string()
    };
    let mut client = Client::connect(s.mx_port);
    client.cmd("EHLO client.test");
    assert!(data_reply(&mut client, &body, "before@localhost").starts_with("250"));
    std::fs::write(&policy_path, policy(&other, &other_sha, "")).unwrap();
    let out = s.cli(&["reload"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(20), || s
        .log()
        .contains("policies reloaded")));
    // Same session, after the reload.
    assert!(data_reply(&mut client, &body, "after@localhost").starts_with("250"));
    assert!(client.cmd("QUIT").starts_with("221"));
    assert!(wait_until(Duration::from_secs(10), || {
        s.maildir("before@localhost").len() == 1 && s.maildir("after@localhost").len() == 1
    }));
    let before = header(&s.maildir("before@localhost")[0]);
    let after = header(&s.maildir("after@localhost")[0]);
    let want_after = model_scores_with(
        &other,
        &[c.join("easy-ham-1/00001.7c53336b37003a9286aba55d2945844c.txt")],
    );
    let want_after = *want_after.values().next().unwrap();
    assert_ne!(before, after, "the same score before and after the reload");
    assert!(
        (after.parse::<f64>().unwrap() - want_after).abs() < 0.06,
        "after the reload {after}, the retrained model gives {want_after}"
    );
}
