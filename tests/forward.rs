//! Inbound mail to HTTP (`webhook-forward`) against a real HTTP receiver on 127.0.0.1: at
//! the data stage the endpoint's answer becomes the SMTP reply (2xx → 250, 4xx → 550 with
//! its words, 5xx or down → 451); the JSON carries envelope, headers, bodies and attachments,
//! the raw form the message itself, both signed; at the queued stage a message waits through
//! an outage and is forwarded once the endpoint is back.

mod support;

use aws_lc_rs::hmac;
use sluice_test_plugins::WEBHOOK_FORWARD;
use std::time::Duration;
use support::hooks::{Receiver, Request};
use support::{Client, Sluice, wait_until};

const SECRET: &str = "forward-secret-0123456789";

fn start(port: u16, stage: &str, format: &str, deliver: bool) -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nlocal_domains = [\"in.example.com\"]",
        "",
        "[delivery]\nretry_initial = \"1s\"\nretry_max = \"1s\"\n",
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            r#"[[pipeline]]
name = "inbound"

[[pipeline.step]]
name = "forward"
plugin = "{}"
sha256 = "{}"
stages = ["{stage}"]
timeout_ms = 5000
on_error = "tempfail"
[pipeline.step.capabilities]
http = ["http://127.0.0.1:{port}"]
[pipeline.step.config]
url = "http://127.0.0.1:{port}/incoming?box=1"
secret = "{SECRET}"
format = "{format}"
timeout_ms = 3000
deliver = {deliver}
"#,
            WEBHOOK_FORWARD.path, WEBHOOK_FORWARD.sha256
        ),
    )
    .unwrap();
    s.spawn()
}

const PDF: &[u8] = b"%PDF-1.4 binary \x00\x01\x02\xff bytes";

fn message() -> String {
    use base64::Engine;
    format!(
        concat!(
            "From: Alice <alice@remote.test>\r\nTo: support@in.example.com\r\nSubject: Help please\r\n",
            "Message-ID: <q1@remote.test>\r\nMIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n",
            "--m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n",
            "--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nMy order is late.\r\n",
            "--a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>My order is <b>late</b>.</p>\r\n",
            "--a--\r\n",
            "--m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\n",
            "Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--m--\r\n"
        ),
        base64::engine::general_purpose::STANDARD.encode(PDF)
    )
}

fn send(s: &Sluice) -> String {
    send_message(s, &message())
}

fn send_message(s: &Sluice, message: &str) -> String {
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO mail.remote.test");
    let r = c.cmd("MAIL FROM:<alice@remote.test>");
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<support@in.example.com>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(message.as_bytes());
    c.send_raw(b"\r\n.\r\n");
    let r = c.read_reply();
    c.cmd("QUIT");
    r
}

fn check_signature(q: &Request) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let ts = q.header("x-sluice-timestamp").unwrap();
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&q.body);
    let want = format!("v1={}", hex::encode(hmac::sign(&key, &signed).as_ref()));
    assert_eq!(q.header("x-sluice-signature"), Some(want.as_str()));
}

#[test]
fn the_endpoint_decides_the_reply_at_data() {
    let port = support::free_port();
    let receiver = Receiver::start_with(port, |_, n| match n {
        1 => (200, "stored".into()),
        2 => (422, "No such ticket queue here\nmore".into()),
        _ => (503, "overloaded".into()),
    });
    let s = start(port, "data", "json", false);
    let r = send(&s);
    assert!(r.starts_with("250"), "{r}");
    let r = send(&s);
    assert!(r.starts_with("550 5.7.1 No such ticket queue here"), "{r}");
    let r = send(&s);
    assert!(r.starts_with("451 4.4.1"), "{r}");
    // The POST was the delivery of the accepted message: nothing in the mailbox.
    std::thread::sleep(Duration::from_secs(1));
    assert!(s.maildir("support@in.example.com").is_empty());

    let q = &receiver.all()[0];
    assert_eq!(
        (q.method.as_str(), q.path.as_str()),
        ("POST", "/incoming?box=1")
    );
    assert_eq!(q.header("content-type"), Some("application/json"));
    check_signature(q);
    let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
    assert_eq!(v["envelope"]["from"], "alice@remote.test");
    assert_eq!(v["envelope"]["to"][0], "support@in.example.com");
    assert_eq!(v["envelope"]["helo"], "mail.remote.test");
    assert_eq!(v["envelope"]["remote_ip"], "127.0.0.1");
    assert_eq!(v["envelope"]["spf"], "none");
    assert!(
        v["envelope"]["queue_id"]
            .as_str()
            .is_some_and(|q| !q.is_empty())
    );
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "Subject" && h["value"] == "Help please"),
        "{v}"
    );
    assert_eq!(
        v["plain"].as_str().map(str::trim),
        Some("My order is late.")
    );
    assert!(v["html"].as_str().unwrap().contains("<b>late</b>"));
    let a = &v["attachments"][0];
    assert_eq!(a["file_name"], "invoice.pdf");
    assert_eq!(a["content_type"], "application/pdf");
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(a["content"].as_str().unwrap())
            .unwrap(),
        PDF
    );
    assert_eq!(a["size"], PDF.len());

    // The endpoint down: 451 too.
    drop(receiver);
    let down = start(support::free_port(), "data", "json", false);
    let r = send(&down);
    assert!(r.starts_with("451 4.4.1"), "{r}");
}

/// An endpoint that answers `413` as soon as it has a request's head. With `drain` it then
/// reads and drops the body (as a server refusing large uploads does); without, it neither
/// reads nor closes until `release` is sent (the body stops fitting in the connection).
fn early_refusal(
    port: u16,
    drain: bool,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (release, released) = std::sync::mpsc::channel();
    let endpoint = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut writer = conn;
        let mut length = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim_end().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let text = "Message too large for this mailbox";
        write!(
            writer,
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
        writer.flush().unwrap();
        if drain {
            // Closing with unread data would reset the connection and lose the answer.
            let _ = std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink());
        } else {
            let _ = released.recv();
        }
        // A second request would be a retry: the listener is still open to count it.
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err(), "the POST was sent again");
    });
    (endpoint, release)
}

#[test]
fn an_endpoint_that_refuses_before_reading_the_body_decides_the_reply() {
    // About 12 MB of JSON: more than a loopback connection's buffers take before the
    // endpoint answers.
    let line = "All work and no play makes a dull message body, line after line.\r\n";
    let big = message().replace("My order is late.", &line.repeat(160_000));
    for drain in [true, false] {
        let port = support::free_port();
        let (endpoint, release) = early_refusal(port, drain);
        let s = start(port, "data", "json", false);
        let r = send_message(&s, &big);
        // Without `drain`, the body waits for room that never comes: the answer ends it
        // (not the step's 5 s limit, which would give 451).
        assert!(
            r.starts_with("550 5.7.1 Message too large for this mailbox"),
            "drain {drain}: {r}\n{}",
            s.log()
        );
        let _ = release.send(());
        endpoint.join().unwrap();
    }
}

#[test]
fn raw_messages_are_forwarded_after_an_outage_at_the_queued_stage() {
    let port = support::free_port();
    let s = start(port, "queued", "raw", true);
    // Accepted at once, though nobody listens yet.
    let r = send(&s);
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(15), || s.log().contains("4.4.1")),
        "{}",
        s.log()
    );
    let receiver = Receiver::start_on(port, 0);
    assert!(
        wait_until(Duration::from_secs(30), || !receiver.accepted().is_empty()),
        "{}",
        s.log()
    );
    let q = &receiver.accepted()[0];
    assert_eq!(q.header("content-type"), Some("message/rfc822"));
    assert_eq!(q.header("x-sluice-from"), Some("alice@remote.test"));
    assert_eq!(q.header("x-sluice-to"), Some("support@in.example.com"));
    check_signature(q);
    let body = String::from_utf8_lossy(&q.body);
    assert!(body.contains("Subject: Help please\r\n"), "{body}");
    assert!(
        body.contains(&message()),
        "the message as received, after our Received header"
    );
    // With `deliver = true`, delivered as usual too.
    assert!(
        wait_until(Duration::from_secs(15), || !s
            .maildir("support@in.example.com")
            .is_empty()),
        "{}",
        s.log()
    );
}
