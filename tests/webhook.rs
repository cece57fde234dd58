//! Event webhooks: the `webhook` plugin POSTs every event as signed JSON to a real HTTP
//! receiver on 127.0.0.1; while the receiver is down (and across a kill -9 of the server) the
//! events wait in the outbox and arrive once it is back, with valid signatures.

mod support;

use aws_lc_rs::hmac;
use sluice_test_plugins::WEBHOOK;
use std::time::Duration;
use support::hooks::Receiver;
use support::{Client, Sink, Sluice, wait_until};

const SECRET: &str = "webhook-secret-0123456789";

fn start(sink: &Sink, hook_port: u16) -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nrelay_domains = [\"example.net\"]",
        "",
        &format!(
            r#"[delivery]
retry_initial = "1s"
retry_max = "1s"
event_retry_initial = "1s"
event_retry_max = "1s"

[[route]]
domain = "example.net"
via = "smarthost"
host = "127.0.0.1:{}"
tls = "none"
"#,
            sink.port
        ),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            r#"[[pipeline]]
name = "all"

[[pipeline.step]]
name = "webhook"
plugin = "{}"
sha256 = "{}"
stages = ["event"]
on_error = "tempfail"
[pipeline.step.capabilities]
http = ["http://127.0.0.1:{hook_port}"]
[pipeline.step.config]
url = "http://127.0.0.1:{hook_port}/hooks/sluice?tenant=t1"
secret = "{SECRET}"
timeout_ms = 2000
"#,
            WEBHOOK.path, WEBHOOK.sha256
        ),
    )
    .unwrap();
    s.spawn()
}

#[test]
fn events_reach_the_receiver_signed_after_it_was_down_and_the_server_was_killed() {
    let sink = Sink::start();
    let hook_port = support::free_port();
    let mut s = start(&sink, hook_port);
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let body = "From: app@example.net\r\nSubject: receipt\r\nMessage-ID: <r1@example.net>\r\n\r\nThanks.\r\n";
    let r = c.send_mail(
        "app@example.net",
        &["x@example.net", "reject-me@example.net"],
        body,
    );
    assert!(r.starts_with("250"), "{r}");
    // The receiver is down: events are deferred and wait in the outbox.
    assert!(
        wait_until(Duration::from_secs(20), || s
            .log()
            .matches("event deferred")
            .count()
            >= 2),
        "{}",
        s.log()
    );
    s.kill9();
    s.restart();
    // Back, refusing its first request once more.
    let receiver = Receiver::start_on(hook_port, 1);
    let kinds = |r: &Receiver| -> Vec<(String, Option<String>)> {
        r.accepted()
            .iter()
            .map(|q| {
                let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["recipient"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let want = [
        ("queued", Some("x@example.net")),
        ("delivered", Some("x@example.net")),
        ("bounced", Some("reject-me@example.net")),
    ];
    let arrived = wait_until(Duration::from_secs(40), || {
        let got = kinds(&receiver);
        want.iter()
            .all(|(k, r)| got.iter().any(|(gk, gr)| gk == k && gr.as_deref() == *r))
    });
    assert!(arrived, "{:?}\n{}", kinds(&receiver), s.log());
    assert!(
        receiver.all().len() > receiver.accepted().len(),
        "a 503 was retried"
    );

    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut ids = std::collections::HashSet::new();
    for q in receiver.accepted() {
        assert_eq!(q.method, "POST");
        assert_eq!(q.path, "/hooks/sluice?tenant=t1");
        assert_eq!(q.header("content-type"), Some("application/json"));
        let ts: u64 = q.header("x-sluice-timestamp").unwrap().parse().unwrap();
        assert!(now.abs_diff(ts) < 300, "fresh timestamp");
        let mut signed = format!("{ts}.").into_bytes();
        signed.extend_from_slice(&q.body);
        let want = format!("v1={}", hex::encode(hmac::sign(&key, &signed).as_ref()));
        assert_eq!(q.header("x-sluice-signature"), Some(want.as_str()));
        let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
        assert_eq!(q.header("x-sluice-event-id"), v["id"].as_str());
        ids.insert(v["id"].as_str().unwrap().to_string());
        // The bounce's DSN (from <>, to app@) has events of its own.
        if v["recipient"] == "app@example.net" {
            assert_eq!(v["sender"], "");
            continue;
        }
        assert_eq!(v["sender"], "app@example.net");
        assert_eq!(
            v["message_id"], "r1@example.net",
            "without angle brackets: {v}"
        );
        assert!(v["queue_id"].as_str().is_some_and(|q| !q.is_empty()));
        assert!(v["time"].as_u64().is_some());
        if v["kind"] == "bounced" {
            assert_eq!(v["reply"]["code"], 550, "{v}");
            assert_eq!(v["reply"]["enhanced"], "5.1.1", "{v}");
        }
    }
    // At least once: a retried event may come twice, always with its one id.
    let distinct: std::collections::HashSet<_> =
        receiver.accepted().iter().map(|q| q.body.clone()).collect();
    assert_eq!(ids.len(), distinct.len(), "one id per distinct event");
}
