//! The server with plugin chains: edits reach the mailbox, hot reload under load drops no
//! session, a broken policy is refused while the running one stays, `sluice trace` and the
//! example policies in `policies/`.

mod support;

use sluice_test_plugins::{
    ACCESS, ANTIVIRUS, ARCHIVE, BOUNCES, DMARC_REPORTS, GREYLIST, LINK_TRACKING, PY_SPAM_WORDS,
    Plugin, SENDER_POLICY, SPAM_SCORE, SUPPRESSION, TAG,
};
use std::time::Duration;
use support::{Client, Sluice, message, wait_until};

fn tag_policy(value: &str) -> String {
    policy_with(
        TAG,
        &format!(
            "[pipeline.step.config]\nheader = \"X-Processed-By\"\nvalue = \"{value}\"\nwords = {{ winner = 3.0 }}\n"
        ),
    )
}

fn policy_with(p: Plugin, rest: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"all\"\n[pipeline.thresholds]\nadd_header = 1.0\n\n[[pipeline.step]]\nname = \"tag\"\nplugin = \"{}\"\nsha256 = \"{}\"\n{rest}",
        p.path, p.sha256
    )
}

fn start_with_policy(policy: &str) -> (Sluice, std::path::PathBuf) {
    let s = Sluice::configure_with("policies = \"policy.toml\"", "", "");
    let path = s.dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    (s.spawn(), path)
}

#[test]
fn edits_from_the_chain_reach_the_mailbox() {
    let (s, _) = start_with_policy(&tag_policy("one"));
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "a@example.com",
        &["bob@localhost"],
        &message("You are a winner", 500),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    let mail = &s.maildir("bob@localhost")[0];
    assert!(mail.contains("X-Processed-By: one\r\n"), "{mail}");
    assert!(
        mail.contains("X-Sluice-Symbols: SUBJECT_WINNER=3.00\r\n"),
        "{mail}"
    );
}

#[test]
fn hot_reload_under_load_fails_no_session() {
    let (s, path) = start_with_policy(&tag_policy("one"));
    let port = s.mx_port;
    let senders: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut replies = Vec::new();
                for session in 0..6 {
                    let mut c = Client::connect(port);
                    c.cmd("EHLO client.test");
                    for m in 0..5 {
                        let to = format!("load{t}@localhost");
                        replies.push(c.send_mail(
                            "a@example.com",
                            &[&to],
                            &message(&format!("{session}/{m}"), 300),
                        ));
                    }
                    c.cmd("QUIT");
                }
                replies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&path, tag_policy("two")).unwrap();
    let out = s.cli(&["reload"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all = Vec::new();
    for t in senders {
        all.extend(t.join().expect("a sender failed"));
    }
    assert_eq!(all.len(), 120);
    for r in &all {
        assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || s
            .log()
            .contains("policies reloaded")),
        "{}",
        s.log()
    );

    // A broken policy is refused; the running one stays.
    std::fs::write(
        &path,
        tag_policy("three").replace("sha256 = \"", "sha256 = \"00"),
    )
    .unwrap();
    s.cli(&["reload"], "");
    assert!(
        wait_until(Duration::from_secs(10), || s
            .log()
            .contains("policy reload refused")),
        "{}",
        s.log()
    );
    let mut c = Client::connect(port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "a@example.com",
        &["after@localhost"],
        &message("after", 300),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("after@localhost")
        .len()
        == 1));
    assert!(s.maildir("after@localhost")[0].contains("X-Processed-By: two\r\n"));
    let delivered = || -> usize {
        (0..4)
            .map(|t| s.maildir(&format!("load{t}@localhost")).len())
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(10), || delivered() == 120),
        "{} of 120 delivered",
        delivered()
    );
}

#[test]
fn trace_shows_each_step_the_verdict_and_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, tag_policy("traced")).unwrap();
    let eml = dir.path().join("m.eml");
    std::fs::write(&eml, "From: a@example.com\nSubject: a winner\n\nhello\n").unwrap();
    let out = std::process::Command::new(support::sluice_bin())
        .args([
            "trace",
            "--policy",
            policy.to_str().unwrap(),
            eml.to_str().unwrap(),
            "--to",
            "x@example.net",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "stage data",
        "step tag",
        "symbol SUBJECT_WINNER +3.00",
        "score: 3.00",
        "final: accept",
        "+X-Processed-By: traced",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// The example policies in `policies/` load against the real plugins (paths and digests
/// pointed at the test build).
#[test]
fn example_policies_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(pdir.join("tests")).unwrap();
    // The messages the policies' test cases name.
    for f in std::fs::read_dir(support::repo_root().join("policies/tests")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, pdir.join("tests").join(f.file_name().unwrap())).unwrap();
    }
    for name in ["outbound.toml", "inbound.toml"] {
        let text =
            std::fs::read_to_string(support::repo_root().join("policies").join(name)).unwrap();
        let mut fixed = String::new();
        for line in text.lines() {
            if line.starts_with("sha256 = ") {
                continue;
            }
            if line.starts_with("model = ") {
                let (model, sha) = support::spam_model();
                fixed.push_str(&format!(
                    "model = {{ path = \"{}\", sha256 = \"{sha}\" }}\n",
                    model.display()
                ));
                continue;
            }
            if line.starts_with("plugin = ") {
                let p = if line.contains("spam_words") {
                    PY_SPAM_WORDS
                } else if line.contains("spam_score") {
                    SPAM_SCORE
                } else if line.contains("antivirus") {
                    ANTIVIRUS
                } else if line.contains("greylist") {
                    GREYLIST
                } else if line.contains("suppression") {
                    SUPPRESSION
                } else if line.contains("access") {
                    ACCESS
                } else if line.contains("link_tracking") {
                    LINK_TRACKING
                } else if line.contains("bounces") {
                    BOUNCES
                } else if line.contains("sender_policy") {
                    SENDER_POLICY
                } else if line.contains("archive") {
                    ARCHIVE
                } else if line.contains("dmarc_reports") {
                    DMARC_REPORTS
                } else if line.contains("/tag.wasm") {
                    TAG
                } else {
                    panic!("{name}: no test build for `{line}`: add it here");
                };
                fixed.push_str(&format!(
                    "plugin = \"{}\"\nsha256 = \"{}\"\n",
                    p.path, p.sha256
                ));
            } else {
                fixed.push_str(line);
                fixed.push('\n');
            }
        }
        std::fs::write(pdir.join(name), fixed).unwrap();
    }
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\npolicies = \"policies\"\n[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:1\"\nrole = \"mx\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(support::sluice_bin())
        .args(["--config", config.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 policy chain(s)"));
}
