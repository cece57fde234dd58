//! Bounces and complaints by mail: real reports from the Sisimai corpus sent over SMTP to
//! the bounce domain become `bounced` and `complained` events through the `bounces` plugin;
//! the suppression step suppresses hard bounces and complaints at once and soft bounces
//! after `soft_bounce_limit`; the reports are dropped, other mail to the domain delivered.

mod support;

use sluice_store::KvStore;
use sluice_test_plugins::{BOUNCES, PROBE, SUPPRESSION};
use std::time::Duration;
use support::{Client, Sluice, step, wait_until};

fn start() -> Sluice {
    start_stopped().spawn()
}

/// The configuration and policy, server not started.
fn start_stopped() -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nlocal_domains = [\"localhost\", \"bounces.example.com\"]",
        "",
        &format!(
            "[http]\nbind = \"127.0.0.1:{}\"\n\n[delivery]\nevent_retry_initial = \"1s\"\nevent_retry_max = \"1s\"\n",
            support::free_port()
        ),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"bounces\"\nrecipient_domains = [\"bounces.example.com\"]\n{}\
             [[pipeline]]\nname = \"outbound\"\n{}{}",
            step(
                "bounces",
                BOUNCES,
                "stages = [\"data\"]\non_error = \"tempfail\"\n[pipeline.step.capabilities]\nevents = true",
                ""
            ),
            step(
                "suppression",
                SUPPRESSION,
                "stages = [\"event\"]\n[pipeline.step.capabilities]\nkv = \"suppression\"",
                "stream = \"outbound\"\nsoft_bounce_limit = 2"
            ),
            step(
                "hooks",
                PROBE,
                "stages = [\"event\"]\n[pipeline.step.capabilities]\nkv = \"hooks\"",
                "mode = \"events\""
            ),
        ),
    )
    .unwrap();
    s
}

fn corpus(name: &str) -> String {
    let raw = std::fs::read(
        support::repo_root()
            .join("../shared/corpora/bounces/messages")
            .join(name),
    )
    .unwrap();
    // CRLF line ends and dot-stuffing for the SMTP transfer.
    String::from_utf8_lossy(&raw)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .replace("\r\n.", "\r\n..")
}

fn send(s: &Sluice, body: &str) {
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO mx.remote.test");
    let r = c.send_mail("", &["bounces+x@bounces.example.com"], body);
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
}

#[test]
fn reports_become_events_and_suppressions() {
    let mut s = start();
    // AOL's DSN: mikeneko@example.jp unknown (hard), sabineko@example.jp mailbox full (soft).
    send(&s, &corpus("rhost-aol-03.eml"));
    // A Yahoo feedback-loop complaint.
    send(&s, &corpus("arf-02.eml"));
    // Not a report: delivered to the bounce mailbox as it is.
    send(
        &s,
        "From: person@remote.test\r\nSubject: hello\r\n\r\nA human writing to the bounce address.\r\n",
    );
    assert!(
        wait_until(Duration::from_secs(20), || s
            .log()
            .matches("report: ")
            .count()
            >= 2),
        "{}",
        s.log()
    );
    let listed = |s: &Sluice| s.cli_ok(&["suppression", "list", "--stream", "outbound"]);
    assert!(
        wait_until(Duration::from_secs(20), || listed(&s)
            .contains("mikeneko@example.jp")),
        "{}",
        s.log()
    );
    assert!(
        !listed(&s).contains("sabineko@example.jp"),
        "one soft bounce does not suppress"
    );
    // The soft bounce comes again: the second one suppresses (soft_bounce_limit = 2).
    send(&s, &corpus("rhost-aol-03.eml"));
    std::thread::sleep(Duration::from_secs(4));
    let delivered = s.maildir("bounces+x@bounces.example.com");
    s.stop();
    assert_eq!(
        delivered.len(),
        1,
        "reports are dropped, other mail kept: {delivered:?}"
    );
    assert!(delivered[0].contains("A human writing"));

    let st = sluice_store::SledStores::open(&s.data().join("stores")).unwrap();
    let entry = |address: &str| -> Option<serde_json::Value> {
        st.kv
            .get("suppression", &format!("outbound/{address}"))
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
    };
    assert_eq!(
        entry("mikeneko@example.jp").map(|e| e["reason"].clone()),
        Some("hard-bounce".into()),
        "{}",
        s.log()
    );
    assert_eq!(
        entry("this-local-part-does-not-exist-on-yahoo@yahoo.com").map(|e| e["reason"].clone()),
        Some("spam-complaint".into())
    );
    assert_eq!(
        entry("sabineko@example.jp").map(|e| e["reason"].clone()),
        Some("hard-bounce".into()),
        "the second soft bounce suppresses"
    );
    for key in [
        "seen/bounced/mikeneko@example.jp",
        "seen/bounced/sabineko@example.jp",
        "seen/complained/this-local-part-does-not-exist-on-yahoo@yahoo.com",
    ] {
        assert!(
            st.kv.get("hooks", key).unwrap().is_some(),
            "{key}\n{}",
            s.log()
        );
    }
}

/// `sluice trace` shows offline what a report will do: the events the step emits.
#[test]
fn trace_shows_the_events_of_a_report() {
    let s = start_stopped();
    let file = support::repo_root().join("../shared/corpora/bounces/messages/rhost-aol-03.eml");
    let out = s.cli(
        &[
            "trace",
            "--policy",
            s.dir.path().join("policy.toml").to_str().unwrap(),
            "--from",
            "",
            "--to",
            "bounces+x@bounces.example.com",
            file.to_str().unwrap(),
        ],
        "",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("event bounced to <mikeneko@example.jp> reply 550 5.1.1")
            && text.contains("bounce_type=hard reason=user-unknown"),
        "{text}"
    );
    assert!(
        text.contains("event bounced to <sabineko@example.jp>")
            && text.contains("bounce_type=soft reason=mailbox-full"),
        "{text}"
    );
}
