//! The SMTP server against real clients: protocol, limits, relay rules, bad input, TLS and
//! AUTH. Each test runs its own `sluice serve`.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::{Client, Sink, Sluice, TlsClient, message, wait_until};

fn remote_route(sink: &Sink) -> String {
    format!(
        r#"
[delivery]
retry_initial = "1s"
retry_max = "2s"

[[route]]
domain = "remote.test"
via = "smarthost"
host = "127.0.0.1:{}"
tls = "none"
"#,
        sink.port
    )
}

#[test]
fn delivers_locally_and_refuses_open_relay() {
    let s = Sluice::start("");
    let mut c = Client::connect(s.mx_port);
    let ehlo = c.cmd("EHLO client.test");
    for ext in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    let r = c.send_mail("a@example.com", &["bob@localhost"], &message("local", 100));
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    let r = c.cmd("RCPT TO:<victim@elsewhere.example>");
    assert!(r.starts_with("554 5.7.1"), "open relay! {r}");
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    let mail = &s.maildir("bob@localhost")[0];
    assert!(mail.starts_with("Return-Path: <a@example.com>\r\nDelivered-To: bob@localhost\r\nReceived: from client.test"), "{mail}");

    // The submission listener wants AUTH before anything.
    let mut c = Client::connect(s.submission_port);
    c.cmd("EHLO client.test");
    let r = c.cmd("MAIL FROM:<a@example.com>");
    assert!(r.starts_with("530 5.7.0"), "{r}");
}

#[test]
fn pipelining_and_vrfy_expn_help() {
    let s = Sluice::start("");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    // The whole transaction in one write, as RFC 2920 allows.
    c.send_raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@localhost>\r\nRCPT TO:<y@localhost>\r\nRCPT TO:<z@nowhere.example>\r\nDATA\r\n");
    assert!(c.read_reply().starts_with("250 2.1.0"));
    assert!(c.read_reply().starts_with("250 2.1.5"));
    assert!(c.read_reply().starts_with("250 2.1.5"));
    assert!(c.read_reply().starts_with("554 5.7.1"));
    assert!(c.read_reply().starts_with("354"));
    c.send_raw(b"Subject: p\r\n\r\nbody\r\n.\r\nNOOP\r\nVRFY x\r\nEXPN y\r\nHELP\r\nQUIT\r\n");
    assert!(c.read_reply().starts_with("250 2.0.0 Ok: queued as"));
    assert!(c.read_reply().starts_with("250 2.0.0"));
    assert!(c.read_reply().starts_with("252 2.5.0"));
    assert!(c.read_reply().starts_with("502 5.5.1"));
    assert!(c.read_reply().starts_with("214"));
    assert!(c.read_reply().starts_with("221"));
    assert!(wait_until(Duration::from_secs(10), || {
        s.maildir("x@localhost").len() == 1 && s.maildir("y@localhost").len() == 1
    }));
}

#[test]
fn bdat_chunks_are_assembled() {
    let s = Sluice::start("");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<chunky@localhost>");
    let part1 = "Subject: chunks\r\n\r\nfirst ";
    let part2 = "second\r\n";
    c.send_raw(format!("BDAT {}\r\n{part1}", part1.len()).as_bytes());
    assert!(c.read_reply().starts_with("250"));
    c.send_raw(format!("BDAT {} LAST\r\n{part2}", part2.len()).as_bytes());
    let r = c.read_reply();
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("chunky@localhost")
        .len()
        == 1));
    assert!(s.maildir("chunky@localhost")[0].ends_with("first second\r\n"));
}

#[test]
fn size_limit_is_enforced_without_storing_the_excess() {
    let s = Sluice::configure("max_message_size = 10000", "").spawn();
    let mut c = Client::connect(s.mx_port);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("SIZE 10000"), "{ehlo}");
    let r = c.cmd("MAIL FROM:<a@example.com> SIZE=20000");
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Without SIZE the excess is read and dropped, then refused at end of data.
    let r = c.send_mail("a@example.com", &["big@localhost"], &message("big", 50_000));
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session goes on and the next message is fine.
    let r = c.send_mail(
        "a@example.com",
        &["small@localhost"],
        &message("small", 1000),
    );
    assert!(r.starts_with("250"), "{r}");
    // BDAT past the limit too.
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<big@localhost>");
    let chunk = "x".repeat(12_000);
    c.send_raw(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes());
    let r = c.read_reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("small@localhost")
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.maildir("big@localhost").is_empty());
}

#[test]
fn bad_input_gets_clear_replies() {
    let s = Sluice::configure("max_errors = 20", "").spawn();
    let mut c = Client::connect(s.mx_port);
    assert!(
        c.cmd("MAIL FROM:<a@example.com>").starts_with("503 5.5.1"),
        "MAIL before EHLO"
    );
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<x@localhost>").starts_with("503 5.5.1"),
        "RCPT before MAIL"
    );
    assert!(c.cmd("DATA").starts_with("503 5.5.1"), "DATA before MAIL");
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<a@example.com>").starts_with("503 5.5.1"),
        "nested MAIL"
    );
    assert!(c.cmd("DATA").starts_with("554 5.5.1"), "DATA without RCPT");
    assert!(c.cmd("RSET").starts_with("250"));
    let r = c.cmd("XYZZY plugh");
    assert!(r.starts_with("500 5.5.2"), "{r}");
    let r = c.cmd(&format!("NOOP {}", "a".repeat(10_000)));
    assert!(r.starts_with("500 5.5.2"), "over-long line: {r}");
    c.send_raw(b"NOOP\0\r\n");
    assert!(c.read_reply().starts_with("500 5.5.2"), "NUL");
    c.send_raw(b"NOOP\n");
    assert!(c.read_reply().starts_with("500 5.5.2"), "bare LF");
    let r = c.cmd("MAIL FROM:<not an address");
    assert!(r.starts_with("501"), "{r}");
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==");
    assert!(r.starts_with("538 5.7.11"), "AUTH without TLS: {r}");
    assert!(c.cmd("NOOP").starts_with("250"), "still usable");

    // A bare LF in the body (SMTP smuggling) is refused and nothing is stored.
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<smuggle@localhost>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(b"Subject: s\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\n.\r\n");
    let r = c.read_reply();
    assert!(r.starts_with("554 5.6.0"), "{r}");

    // Too many errors: the server hangs up with 421.
    let mut c = Client::connect(s.mx_port);
    let mut last = String::new();
    for _ in 0..21 {
        last = c.cmd("GARBAGE");
        if last.starts_with("421") {
            break;
        }
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert!(c.is_closed());

    // A client that vanishes mid-DATA leaves nothing behind.
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<vanish@localhost>");
    c.cmd("DATA");
    c.send_raw(b"Subject: half\r\n\r\nhalf a mes");
    drop(c);

    // TLS garbage after STARTTLS: the connection is closed, the server carries on.
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    assert!(c.cmd("STARTTLS").starts_with("220"));
    c.send_raw(b"\x16\x03\x01\x00\x05garbage that is not a TLS handshake");
    assert!(c.is_closed());

    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "a@example.com",
        &["after@localhost"],
        "Subject: ok\r\n\r\nfine",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("after@localhost")
        .len()
        == 1));
    assert!(s.maildir("smuggle@localhost").is_empty());
    assert!(s.maildir("vanish@localhost").is_empty());
}

#[test]
fn connection_limit_and_command_timeout() {
    let s = Sluice::configure("max_connections = 2\ncommand_timeout = \"1s\"", "").spawn();
    // The start's readiness probe holds a slot until the server has seen it close.
    let mut clients = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        clients.clear();
        clients.extend(Client::try_connect(s.mx_port));
        clients.extend(Client::try_connect(s.mx_port));
        clients.len() == 2
    }));
    let _b = clients.pop().unwrap();
    let _a = clients.pop().unwrap();
    let mut third = std::net::TcpStream::connect(("127.0.0.1", s.mx_port)).unwrap();
    let mut buf = String::new();
    third.read_to_string(&mut buf).unwrap();
    assert!(buf.starts_with("421 4.7.0"), "{buf}");
    // The idle ones are timed out.
    let mut a = _a;
    let r = a.read_reply();
    assert!(r.starts_with("421 4.4.2"), "{r}");
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    let s = Sluice::start("");
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.mx_port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = [0u8; 512];
    let _ = raw.read(&mut r).unwrap();
    raw.write_all(b"EHLO c\r\n").unwrap();
    let _ = raw.read(&mut r).unwrap();
    // The injected command must not be run inside the TLS session.
    raw.write_all(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        .unwrap();
    let n = raw.read(&mut r).unwrap();
    assert!(
        r[..n].starts_with(b"220"),
        "{}",
        String::from_utf8_lossy(&r[..n])
    );
    let mut tls = TlsClient::handshake(raw);
    let ehlo = tls.cmd("EHLO c");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let r = tls.cmd("RCPT TO:<x@localhost>");
    assert!(r.starts_with("503 5.5.1"), "injected MAIL took effect: {r}");
}

#[test]
fn submission_with_starttls_and_auth_from_python_smtplib() {
    let sink = Sink::start();
    let s = Sluice::start(&remote_route(&sink));
    let out = s.cli(&["user", "add", "app"], "correct horse\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.cli(&["user", "list"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");

    let send = |password: &str| {
        std::process::Command::new("python3")
            .arg(support::repo_root().join("tests/clients/send.py"))
            .args(["--port", &s.submission_port.to_string(), "--starttls"])
            .args(["--user", "app", "--password", password])
            .args(["--from", "app@example.com", "--to", "someone@remote.test"])
            .args(["--subject", "via submission"])
            .output()
            .unwrap()
    };
    let bad = send("wrong");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("535"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let ok = send("correct horse");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(15), || sink.messages().len() == 1),
        "log:\n{}",
        s.log()
    );
    let m = &sink.messages()[0];
    assert_eq!(m.recipients, vec!["someone@remote.test"]);
    assert!(m.data.contains("with ESMTPSA"), "{}", m.data);
    assert!(m.data.contains("Subject: via submission"));
}

#[test]
fn recipient_limit_auth_login_and_cli() {
    let s = Sluice::configure("max_recipients = 2", "").spawn();
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    assert!(c.cmd("RCPT TO:<one@localhost>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<two@localhost>").starts_with("250"));
    let r = c.cmd("RCPT TO:<three@localhost>");
    assert!(r.starts_with("452 4.5.3"), "{r}");

    // AUTH LOGIN, step by step, after STARTTLS.
    let out = s.cli(&["user", "add", "login-user"], "pw2\n");
    assert!(out.status.success());
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.submission_port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1024];
    let _ = raw.read(&mut buf).unwrap();
    raw.write_all(b"EHLO c\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _ = raw.read(&mut buf).unwrap();
    raw.write_all(b"STARTTLS\r\n").unwrap();
    let n = raw.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"220"));
    let mut t = TlsClient::handshake(raw);
    t.cmd("EHLO c");
    assert_eq!(t.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(t.cmd("bG9naW4tdXNlcg=="), "334 UGFzc3dvcmQ6"); // login-user
    let r = t.cmd("cHcy"); // pw2
    assert!(r.starts_with("235 2.7.0"), "{r}");
    assert!(t.cmd("AUTH PLAIN").starts_with("503 5.5.1"), "second AUTH");

    // check-config names file, line and key.
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "hostname = \"x\"\n[[listener]]\nname = \"a\"\nbind = \"nope\"\nrole = \"mx\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(support::sluice_bin())
        .args(["--config", bad.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4: listener[0].bind:", bad.display())),
        "{err}"
    );
    let out = s.cli(&["check-config"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
