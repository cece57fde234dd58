//! Hostile clients: a scripted client tries SMTP smuggling, pipelining abuse, floods,
//! oversized input, broken encodings, slow-drip sessions and every open-relay trick, and
//! each gets the right reply or a timeout while other sessions keep working.

mod support;

use std::time::{Duration, Instant};
use support::{Client, Sluice, wait_until};

fn ehlo(s: &Sluice) -> Client {
    let mut c = Client::connect(s.mx_port);
    assert!(c.cmd("EHLO hostile.test").starts_with("250"));
    c
}

/// Every end-of-data variant that some server reads as the end of a message: the message
/// holding it is refused whole, and the message hidden behind it is never queued.
#[test]
fn smtp_smuggling_variants_are_refused() {
    let s = Sluice::start("");
    let variants: [&[u8]; 8] = [
        b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\r", b"\r\n.\n", b"\n.\r", b"\r.\r\n", b"\r.\n",
    ];
    for v in variants {
        let mut c = ehlo(&s);
        assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<outer@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let mut body = b"Subject: outer\r\n\r\nline".to_vec();
        body.extend_from_slice(v);
        body.extend_from_slice(
            b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<smuggled@localhost>\r\nDATA\r\n\
              Subject: smuggled\r\n\r\nhidden\r\n.\r\n",
        );
        c.send_raw(&body);
        let r = c.read_reply();
        assert!(r.starts_with("554 5.6.0"), "variant {v:?}: {r}");
        assert!(c.cmd("NOOP").starts_with("250"), "session still usable");
    }
    // Bare CR and LF in BDAT chunks too.
    for chunk in [
        &b"Subject: b\r\n\r\na\rb\r\n"[..],
        &b"Subject: b\r\n\r\na\nb\r\n"[..],
    ] {
        let mut c = ehlo(&s);
        c.cmd("MAIL FROM:<a@example.com>");
        c.cmd("RCPT TO:<outer@localhost>");
        c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
        c.send_raw(chunk);
        let r = c.read_reply();
        assert!(r.starts_with("554 5.6.0"), "BDAT {chunk:?}: {r}");
    }
    // Message data sent before the 354: refused, the connection closed, nothing queued.
    let mut c = ehlo(&s);
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<outer@localhost>");
    c.send_raw(b"DATA\r\nSubject: early\r\n\r\nbefore the 354\r\n.\r\n");
    let r = c.read_reply();
    assert!(r.starts_with("554 5.5.0"), "{r}");
    assert!(c.is_closed());

    // A clean message still goes through, and nothing else was stored.
    let mut c = ehlo(&s);
    let r = c.send_mail(
        "a@example.com",
        &["clean@localhost"],
        "Subject: clean\r\n\r\nfine",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("clean@localhost")
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.maildir("outer@localhost").is_empty());
    assert!(s.maildir("smuggled@localhost").is_empty());
}

/// Floods, junk and malformed input: each gets its reply, memory stays bounded (the
/// server's RSS is checked), and a normal session works throughout.
#[test]
fn floods_and_junk_get_their_replies() {
    let s = Sluice::configure("max_recipients = 100", "").spawn();
    let pid = server_pid(&s);
    let rss_before = rss_kb(pid);

    // 10,000 pipelined RCPTs: the first 100 accepted, the rest 452 4.5.3, in order.
    let mut c = ehlo(&s);
    c.cmd("MAIL FROM:<a@example.com>");
    let mut flood = Vec::new();
    for i in 0..10_000 {
        flood.extend_from_slice(format!("RCPT TO:<u{i}@localhost>\r\n").as_bytes());
    }
    let writer = {
        let mut w = c.try_clone_stream();
        std::thread::spawn(move || {
            use std::io::Write;
            // The server may hang up on the flood (too many errors).
            let _ = w.write_all(&flood);
        })
    };
    let mut ok = 0;
    let mut too_many = 0;
    for _ in 0..10_000 {
        let r = c.read_reply();
        if r.starts_with("250") {
            ok += 1;
        } else if r.starts_with("452 4.5.3") {
            too_many += 1;
        } else if r.starts_with("421") {
            // Too many errors: the server may hang up on a flood of refused commands.
            break;
        } else {
            panic!("unexpected reply in the RCPT flood: {r}");
        }
    }
    writer.join().unwrap();
    assert_eq!(ok, 100);
    assert!(too_many > 0);

    // Over-long command line, NUL and 8-bit junk, invalid UTF-8 in an address.
    let mut c = ehlo(&s);
    c.send_raw(&vec![b'A'; 100_000]);
    c.send_raw(b"\r\n");
    assert!(c.read_reply().starts_with("500 5.5.2"));
    c.send_raw(b"NO\0OP\r\n");
    assert!(c.read_reply().starts_with("500 5.5.2"));
    c.send_raw(b"\xff\xfe\xfd\r\n");
    assert!(c.read_reply().starts_with("500"));
    c.send_raw(b"MAIL FROM:<\xff\xfe@example.com>\r\n");
    let r = c.read_reply();
    assert!(r.starts_with('5'), "invalid UTF-8 sender: {r}");
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    c.send_raw(b"RCPT TO:<\xc3\x28@localhost>\r\n");
    let r = c.read_reply();
    assert!(r.starts_with('5'), "invalid UTF-8 recipient: {r}");
    assert!(c.cmd("RSET").starts_with("250"));

    // AUTH with bad base64 (after TLS, where AUTH is offered).
    let mut t = starttls(&s);
    let r = t.cmd("AUTH PLAIN %%%not-base64%%%");
    assert!(r.starts_with("501 5.5.2"), "{r}");
    // STARTTLS twice.
    let r = t.cmd("STARTTLS");
    assert!(r.starts_with("503") || r.starts_with("554"), "{r}");

    // A 1 MB header and a MIME bomb (deep nesting, thousands of parts): accepted or
    // refused, never a crash; the session stays usable.
    let mut c = ehlo(&s);
    let mut big = String::from("Subject: big\r\nX-Big: ");
    while big.len() < 1_000_000 {
        big.push_str(
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n ",
        );
    }
    big.push_str("end\r\n\r\nbody");
    let r = c.send_mail("a@example.com", &["big@localhost"], &big);
    assert!(r.starts_with("250") || r.starts_with("552"), "{r}");
    let r = c.send_mail("a@example.com", &["bomb@localhost"], &mime_bomb());
    assert!(r.starts_with("250"), "{r}");

    // Meanwhile a normal session works, and memory stayed bounded.
    let mut c = ehlo(&s);
    let r = c.send_mail(
        "a@example.com",
        &["normal@localhost"],
        "Subject: n\r\n\r\nok",
    );
    assert!(r.starts_with("250"), "{r}");
    let rss_after = rss_kb(pid);
    assert!(
        rss_after < rss_before + 200 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
}

/// A client that sends one byte every 700 ms never completes a command within the
/// 2-second command timeout: it is cut off although every single read arrived in time.
#[test]
fn a_slow_drip_client_is_cut_off() {
    use std::io::Write;
    let s = Sluice::configure(r#"command_timeout = "2s""#, "").spawn();
    let mut c = ehlo(&s);
    let start = Instant::now();
    let mut closed_reply = String::new();
    for b in b"NOOP NOOP NOOP NOOP NOOP" {
        if c.try_clone_stream().write_all(&[*b]).is_err() {
            closed_reply = c.read_reply();
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
        if start.elapsed() > Duration::from_secs(4) {
            closed_reply = c.read_reply();
            break;
        }
    }
    assert!(closed_reply.starts_with("421 4.4.2"), "{closed_reply:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// No way through an `mx` listener to another domain without AUTH.
#[test]
fn open_relay_matrix_is_refused() {
    let s = Sluice::start("");
    let relay_attempts = [
        "victim@other.example",
        "victim@OTHER.EXAMPLE",
        "victim@other.example.",
        "victim%other.example@localhost",
        "victim!other.example@localhost",
        "other.example!victim@localhost",
        "\"victim@other.example\"@localhost",
        "@localhost:victim@other.example",
        "@localhost,@relay.example:victim@other.example",
        "victim@[192.0.2.1]",
        "victim@[127.0.0.1]",
        "victim@[IPv6:::1]",
        "victim@localhost.",
        "postmaster@other.example",
        "victim@other.example@localhost",
        "../victim@localhost",
    ];
    for to in relay_attempts {
        let mut c = ehlo(&s);
        assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        assert!(r.starts_with('5'), "RCPT TO:<{to}> was not refused: {r}");
    }
    // What is ours is accepted, in any case.
    for to in [
        "postmaster@localhost",
        "POSTMASTER@LOCALHOST",
        "user@LocalHost",
    ] {
        let mut c = ehlo(&s);
        c.cmd("MAIL FROM:<a@example.com>");
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        assert!(r.starts_with("250"), "RCPT TO:<{to}>: {r}");
    }
    // AUTH is offered and accepted only under TLS.
    let mut c = ehlo(&s);
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==");
    assert!(r.starts_with("538 5.7.11"), "{r}");
    // TLS below 1.2 is refused (when this machine's openssl can still offer it).
    if let Some(out) = openssl_tls11(s.mx_port) {
        // The server's own alert, not a client that could not even offer TLS 1.1.
        assert!(
            out.contains("Cipher is (NONE)") && out.contains("SSL alert number"),
            "a TLS 1.1 handshake succeeded, or none was tried:\n{out}"
        );
    }
}

fn openssl_tls11(port: u16) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-starttls",
            "smtp",
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn starttls(s: &Sluice) -> support::TlsClient {
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO hostile.test");
    assert!(c.cmd("STARTTLS").starts_with("220"));
    let mut t = support::TlsClient::handshake(c.into_stream());
    assert!(t.cmd("EHLO hostile.test").starts_with("250"));
    t
}

fn mime_bomb() -> String {
    let mut m = String::from("Subject: bomb\r\nMIME-Version: 1.0\r\n");
    // 200 levels of nesting, then 3,000 sibling parts.
    for depth in 0..200 {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{depth}\"\r\n\r\n--b{depth}\r\n"
        ));
    }
    m.push_str("Content-Type: multipart/mixed; boundary=\"flat\"\r\n\r\n");
    for i in 0..3000 {
        m.push_str(&format!(
            "--flat\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
        ));
    }
    m.push_str("--flat--\r\n");
    for depth in (0..200).rev() {
        m.push_str(&format!("--b{depth}--\r\n"));
    }
    m
}

fn server_pid(s: &Sluice) -> u32 {
    let pid_file = s.data().join("sluice.pid");
    assert!(wait_until(Duration::from_secs(5), || pid_file.exists()));
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
