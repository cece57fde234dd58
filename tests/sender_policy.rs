//! Sending controls through a real submission session with AUTH: authorized senders on MAIL
//! FROM and on the From: header, recipients per message, attachments, size and messages per
//! hour, each refused with its own reply; an unlisted user sends nothing.

mod support;

use sluice_test_plugins::SENDER_POLICY;
use support::{Sink, Sluice, TlsClient};

fn start(sink: &Sink) -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"",
        "",
        &support::route_to(sink.port),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            r#"[[pipeline]]
name = "outbound"
authenticated = true

[[pipeline.step]]
name = "senders"
plugin = "{}"
sha256 = "{}"
stages = ["mail", "rcpt", "data"]
on_error = "tempfail"
[pipeline.step.capabilities]
kv = "senders"
[pipeline.step.config.users.app]
from = ["@example.com"]
max_recipients = 2
max_attachments = 1
max_message_bytes = 4000
messages_per_hour = 2
"#,
            SENDER_POLICY.path, SENDER_POLICY.sha256
        ),
    )
    .unwrap();
    s.cli(&["user", "add", "app"], "pw\n");
    s.cli(&["user", "add", "stranger"], "pw\n");
    s.spawn()
}

fn data(c: &mut TlsClient, body: &str) -> String {
    let r = c.cmd("DATA");
    assert!(r.starts_with("354"), "{r}");
    c.send_raw(body.as_bytes());
    c.send_raw(b"\r\n.\r\n");
    c.read_reply()
}

fn attachment(name: &str) -> String {
    format!(
        "--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n"
    )
}

fn with_attachments(n: usize) -> String {
    let mut m = String::from(
        "From: App <app@example.com>\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n",
    );
    for i in 0..n {
        m.push_str(&attachment(&format!("f{i}.bin")));
    }
    m.push_str("--b--\r\n");
    m
}

#[test]
fn each_control_answers_with_its_reply() {
    let sink = Sink::start();
    let s = start(&sink);
    let mut c = TlsClient::connect(s.submission_port, "app", "pw");

    let r = c.cmd("MAIL FROM:<app@other.test>");
    assert!(
        r.starts_with("550 5.7.1") && r.contains("not allowed for user app"),
        "{r}"
    );

    assert!(c.cmd("MAIL FROM:<app@mail.example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<a@remote.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<c@remote.test>");
    assert!(r.starts_with("452 4.5.3"), "{r}");
    // A forged From: header.
    let r = data(
        &mut c,
        "From: CEO <ceo@other.test>\r\nSubject: wire money\r\n\r\nnow\r\n",
    );
    assert!(
        r.starts_with("550 5.7.1") && r.contains("<ceo@other.test>"),
        "{r}"
    );

    // Two attachments where one is allowed.
    assert!(c.cmd("MAIL FROM:<app@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<a@remote.test>").starts_with("250"));
    let r = data(&mut c, &with_attachments(2));
    assert!(
        r.starts_with("550 5.7.1 Too many attachments (2, limit 1)"),
        "{r}"
    );

    // Over the size limit.
    assert!(c.cmd("MAIL FROM:<app@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<a@remote.test>").starts_with("250"));
    let big = format!(
        "From: app@example.com\r\nSubject: big\r\n\r\n{}\r\n",
        "x".repeat(70).repeat(60).as_str()
    );
    let r = data(&mut c, &big);
    assert!(r.starts_with("552 5.3.4"), "{r}");

    // Two messages an hour pass, the third waits.
    for i in 0..3 {
        assert!(c.cmd("MAIL FROM:<app@example.com>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<a@remote.test>").starts_with("250"));
        let r = data(&mut c, &with_attachments(1));
        if i < 2 {
            assert!(r.starts_with("250"), "message {i}: {r}");
        } else {
            assert!(r.starts_with("451 4.7.1"), "{r}");
        }
    }

    // A user without rules sends nothing.
    let mut other = TlsClient::connect(s.submission_port, "stranger", "pw");
    let r = other.cmd("MAIL FROM:<stranger@example.com>");
    assert!(
        r.starts_with("550 5.7.1") && r.contains("no sending rights"),
        "{r}"
    );
}
