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

/// A DSN of the Sisimai-free kind a forwarding host sends: about the address it forwarded
/// to, without the returned headers.
fn forwarded_dsn(to: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.elsewhere.test\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n\
         --r\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
         --r\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.elsewhere.test\r\n\r\n\
         Final-Recipient: rfc822; carol.forwarded@elsewhere.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <carol.forwarded@elsewhere.test>: Recipient address rejected: User unknown\r\n\
         --r--\r\n"
    )
}

/// With `[verp]`, mail from authenticated clients goes out one recipient per transaction
/// with a signed return path; a bounce arriving at one later names the original message and
/// recipient, even when the report itself speaks of a forwarding address and carries no
/// returned headers. An altered return path is not believed.
#[test]
fn verp_return_paths_tie_a_late_bounce_to_its_message_and_recipient() {
    let sink = support::sink::Sink::start();
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nlocal_domains = [\"localhost\", \"bounces.example.com\"]",
        "",
        &format!(
            "[http]\nbind = \"127.0.0.1:{}\"\n\n[verp]\ndomain = \"bounces.example.com\"\nkey = \"verp.key\"\n{}",
            support::free_port(),
            support::route_to(sink.port)
        ),
    );
    std::fs::write(
        s.dir.path().join("verp.key"),
        "verp-test-key-0123456789abcdef0123456789\n",
    )
    .unwrap();
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"bounces\"\nrecipient_domains = [\"bounces.example.com\"]\n{}\
             [[pipeline]]\nname = \"outbound\"\n",
            step(
                "bounces",
                BOUNCES,
                "stages = [\"data\"]\non_error = \"tempfail\"\n[pipeline.step.capabilities]\nevents = true",
                ""
            ),
        ),
    )
    .unwrap();
    s.cli(&["user", "add", "app"], "pw\n");
    let s = s.spawn();

    let mut c = support::TlsClient::connect(s.submission_port, "app", "pw");
    let r = c.send_mail(
        "app@example.com",
        &["alice@remote.test", "carol@remote.test"],
        "From: app@example.com\r\nSubject: hello\r\n\r\nHi.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    let qid = r.rsplit(' ').next().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(20), || sink
        .messages()
        .len()
        == 2));
    // One transaction per recipient, each with its own return path.
    let mut paths = std::collections::HashMap::new();
    for m in sink.messages() {
        assert_eq!(m.recipients.len(), 1, "{m:?}");
        let path = m
            .mail_line
            .split('<')
            .nth(1)
            .and_then(|x| x.split('>').next())
            .unwrap()
            .to_string();
        assert!(
            path.starts_with(&format!("bounces+{qid}."))
                && path.ends_with("@bounces.example.com")
                && path.split('@').next().unwrap().len() <= 64,
            "{path}"
        );
        paths.insert(m.recipients[0].clone(), path);
    }
    assert_ne!(paths["alice@remote.test"], paths["carol@remote.test"]);

    // Carol's forwarding host bounces days later, about the address it forwarded to.
    let carol = paths["carol@remote.test"].clone();
    let mut m = Client::connect(s.mx_port);
    m.cmd("EHLO mx.elsewhere.test");
    let r = m.send_mail("", &[&carol], &forwarded_dsn(&carol));
    assert!(r.starts_with("250"), "{r}");
    // The same report to a return path whose tag was altered: its own words only.
    let (local, domain) = carol.split_once('@').unwrap();
    let forged = format!(
        "{}{}@{domain}",
        &local[..local.len() - 1],
        if local.ends_with('0') { '1' } else { '0' }
    );
    let r = m.send_mail("", &[&forged], &forwarded_dsn(&forged));
    assert!(r.starts_with("250"), "{r}");
    m.cmd("QUIT");

    let bounced = || -> Vec<serde_json::Value> {
        let out = s.cli_ok(&["events", "--kind", "bounced", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["events"].as_array().cloned().unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(20), || bounced().len() == 2),
        "{:?}\n{}",
        bounced(),
        s.log()
    );
    let events = bounced();
    let attr = |e: &serde_json::Value, k: &str| {
        e["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].as_str().unwrap().to_string())
    };
    let verped: Vec<_> = events
        .iter()
        .filter(|e| attr(e, "verp").is_some())
        .collect();
    assert_eq!(verped.len(), 1, "{events:?}");
    let e = verped[0];
    assert_eq!(e["recipient"], "carol@remote.test", "{e}");
    assert_eq!(e["queue_id"], qid.as_str(), "{e}");
    assert_eq!(attr(e, "bounce_type").as_deref(), Some("hard"));
    let other = events.iter().find(|e| attr(e, "verp").is_none()).unwrap();
    assert_eq!(
        other["recipient"], "carol.forwarded@elsewhere.test",
        "{other}"
    );
    assert_ne!(other["queue_id"], qid.as_str());
}
