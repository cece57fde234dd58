//! Outbound delivery against a real SMTP sink: retries, DSNs, and durability across
//! kill -9.

mod support;

use std::collections::HashSet;
use std::time::Duration;
use support::{Client, Sink, Sluice, TlsClient, message, route_to, wait_until};

#[test]
fn temporary_failure_is_retried_until_accepted() {
    let sink = Sink::start();
    let s = Sluice::start(&route_to(sink.port));
    let out = s.cli(&["user", "add", "u"], "pw\n");
    assert!(out.status.success());
    let sent = send_authenticated(
        &s,
        "sender@localhost",
        &["tempfail-1@remote.test"],
        "retry me",
    );
    assert!(sent.starts_with("250"), "{sent}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.messages().len() == 1),
        "log:\n{}",
        s.log()
    );
    assert_eq!(
        sink.rcpt_attempts(),
        vec!["tempfail-1@remote.test", "tempfail-1@remote.test"]
    );
    assert!(
        s.maildir("sender@localhost").is_empty(),
        "no DSN for a success"
    );
}

#[test]
fn permanent_failure_sends_a_dsn_with_the_senders_parameters() {
    let sink = Sink::start();
    let s = Sluice::start(&route_to(sink.port));
    s.cli(&["user", "add", "u"], "pw\n");
    let mut c = tls_auth_client(&s);
    let r = c.cmd("MAIL FROM:<sender@localhost> RET=HDRS ENVID=env+2B42");
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<reject-me@remote.test> NOTIFY=FAILURE ORCPT=rfc822;orig@remote.test");
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<fine@remote.test> NOTIFY=NEVER");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(message("will bounce", 2000).as_bytes());
    c.send_raw(b"\r\n.\r\n");
    let r = c.read_reply();
    assert!(r.starts_with("250"), "{r}");

    assert!(
        wait_until(Duration::from_secs(20), || s
            .maildir("sender@localhost")
            .len()
            == 1),
        "log:\n{}",
        s.log()
    );
    let dsn = &s.maildir("sender@localhost")[0];
    for needle in [
        "Return-Path: <>",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Content-Type: message/delivery-status",
        "Reporting-MTA: dns; sluice.test",
        "Original-Envelope-Id: env+42",
        "Final-Recipient: rfc822; reject-me@remote.test",
        "Original-Recipient: rfc822; orig@remote.test",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown",
        "Content-Type: text/rfc822-headers",
        "Subject: will bounce",
    ] {
        assert!(dsn.contains(needle), "missing {needle:?} in DSN:\n{dsn}");
    }
    assert!(
        !dsn.contains("fine@remote.test"),
        "NOTIFY=NEVER recipient reported"
    );
    assert!(
        !dsn.contains("The quick brown fox"),
        "RET=HDRS but the body came back"
    );
    // The accepted recipient got the DSN parameters passed on (the sink offers DSN).
    assert!(wait_until(Duration::from_secs(5), || sink.messages().len() == 1));
    let m = &sink.messages()[0];
    assert!(
        m.mail_line.contains("RET=HDRS") && m.mail_line.contains("ENVID=env+2B42"),
        "{}",
        m.mail_line
    );
    assert!(
        m.rcpt_lines[0].contains("NOTIFY=NEVER"),
        "{:?}",
        m.rcpt_lines
    );
}

#[test]
fn no_dsn_for_the_null_sender() {
    let sink = Sink::start();
    let s = Sluice::start(&route_to(sink.port));
    s.cli(&["user", "add", "u"], "pw\n");
    let r = send_authenticated(&s, "", &["reject@remote.test"], "bounce of a bounce");
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || s
            .log()
            .contains("status=Bounced")),
        "log:\n{}",
        s.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!s.log().contains("DSN queued"), "log:\n{}", s.log());
}

/// N messages get a 250 while the next hop is down; the server is killed with SIGKILL and
/// restarted; all N reach the next hop once it is up.
#[test]
fn every_accepted_message_survives_kill_9() {
    const N: usize = 40;
    let sink_port = support::free_port();
    let mut s = Sluice::start(&route_to(sink_port));
    s.cli(&["user", "add", "u"], "pw\n");
    let mut c = tls_auth_client(&s);
    let mut ids = HashSet::new();
    for i in 0..N {
        let subject = format!("durable {i}");
        let r = c.send_mail(
            "sender@localhost",
            &[&format!("r{i}@remote.test")],
            &message(&subject, 3000),
        );
        assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
        ids.insert(r.rsplit(' ').next().unwrap().to_string());
    }
    assert_eq!(ids.len(), N);
    s.kill9();

    let sink = Sink::start_on(sink_port);
    s.restart();
    assert!(
        wait_until(Duration::from_secs(30), || sink.messages().len() >= N),
        "only {} of {N} delivered after restart; log:\n{}",
        sink.messages().len(),
        s.log()
    );
    let mut subjects: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| {
            m.data
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), N, "every message exactly once");
    assert_eq!(sink.messages().len(), N, "no duplicates in this scenario");
}

#[test]
fn graceful_shutdown_on_sigterm() {
    let mut s = Sluice::start("");
    let mut idle = Client::connect(s.mx_port);
    idle.cmd("EHLO client.test");
    let status = s.stop();
    assert!(status.success(), "{status:?}");
    let r = idle.read_reply();
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(s.log().contains("stopped"));
}

/// A client on the submission port after STARTTLS and AUTH PLAIN as `u`/`pw`.
fn tls_auth_client(s: &Sluice) -> TlsClient {
    TlsClient::connect(s.submission_port, "u", "pw")
}

fn send_authenticated(s: &Sluice, from: &str, to: &[&str], subject: &str) -> String {
    let mut c = tls_auth_client(s);
    c.send_mail(from, to, &message(subject, 1000))
}

#[test]
fn delay_dsn_then_expiry_bounce() {
    let sink = Sink::start();
    let extra = route_to(sink.port).replace(
        "[delivery]\n",
        "[delivery]\ndelay_notify_after = \"0s\"\nexpire = \"3s\"\n",
    );
    let s = Sluice::start(&extra);
    s.cli(&["user", "add", "u"], "pw\n");
    let mut c = tls_auth_client(&s);
    c.cmd("MAIL FROM:<sender@localhost>");
    let r = c.cmd("RCPT TO:<defer-1@remote.test> NOTIFY=DELAY,FAILURE");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(message("slow one", 500).as_bytes());
    c.send_raw(b"\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    assert!(
        wait_until(Duration::from_secs(20), || s
            .maildir("sender@localhost")
            .len()
            == 2),
        "log:\n{}",
        s.log()
    );
    let reports = s.maildir("sender@localhost");
    assert!(reports[0].contains("Action: delayed"), "{}", reports[0]);
    assert!(reports[0].contains("Status: 4.2.1"), "{}", reports[0]);
    assert!(reports[0].contains("Will-Retry-Until:"), "{}", reports[0]);
    assert!(reports[1].contains("Action: failed"), "{}", reports[1]);
    assert!(reports[1].contains("Status: 5.4.7"), "{}", reports[1]);
    // The 5.4.7 is ours: no Remote-MTA or smtp Diagnostic-Code claims it for the sink.
    let failed_part = &reports[1][reports[1].find("Action: failed").unwrap()..];
    let failed_part = &failed_part[..failed_part.find("\r\n\r\n").unwrap_or(failed_part.len())];
    assert!(!failed_part.contains("Remote-MTA"), "{failed_part}");
    assert!(
        !failed_part.contains("Diagnostic-Code: smtp; 550 5.4.7"),
        "{failed_part}"
    );
    assert!(
        reports[1].contains("Subject: slow one"),
        "the bounce carries the message"
    );
    assert!(sink.rcpt_attempts().len() >= 2, "retried before expiring");
}

/// Sluice relays to a second Sluice over a smarthost route that requires TLS.
#[test]
fn relays_to_a_next_hop_over_required_starttls() {
    let b = Sluice::configure_with("local_domains = [\"b.test\"]", "", "").spawn();
    let a = Sluice::configure_with(
        "local_domains = []\nrelay_domains = [\"b.test\"]",
        "",
        &format!(
            "[[route]]\ndomain = \"b.test\"\nvia = \"smarthost\"\nhost = \"127.0.0.1:{}\"\ntls = \"required\"\n",
            b.mx_port
        ),
    )
    .spawn();
    let mut c = Client::connect(a.mx_port);
    c.cmd("EHLO client.test");
    for i in 0..3 {
        let r = c.send_mail(
            "x@example.com",
            &["user@b.test"],
            &message(&format!("tls {i}"), 800),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(
        wait_until(Duration::from_secs(20), || b.maildir("user@b.test").len()
            == 3),
        "A log:\n{}\nB log:\n{}",
        a.log(),
        b.log()
    );
    let mail = &b.maildir("user@b.test")[0];
    assert!(
        mail.contains("by sluice.test (Sluice) with ESMTPS"),
        "{mail}"
    );
    assert!(mail.contains("(using TLS"), "{mail}");
}

#[test]
fn required_tls_defers_when_the_next_hop_has_none() {
    let sink = Sink::start(); // offers no STARTTLS
    let s = Sluice::configure_with(
        "relay_domains = [\"remote.test\"]",
        "",
        &route_to(sink.port).replace("tls = \"none\"", "tls = \"required\""),
    )
    .spawn();
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "x@example.com",
        &["someone@remote.test"],
        "Subject: t\r\n\r\nx",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || s.log().contains("4.7.10")),
        "log:\n{}",
        s.log()
    );
    assert!(
        sink.messages().is_empty(),
        "sent in clear text despite tls = required"
    );
}

#[test]
fn queue_commands_on_a_stopped_server() {
    let sink_port = support::free_port(); // nothing listens: mail stays deferred
    let mut s = Sluice::start(&route_to(sink_port));
    s.cli(&["user", "add", "u"], "pw\n");
    let a = send_authenticated(&s, "sender@localhost", &["a@remote.test"], "first");
    let b = send_authenticated(&s, "sender@localhost", &["b@remote.test"], "second");
    let (id_a, id_b) = (a.rsplit(' ').next().unwrap(), b.rsplit(' ').next().unwrap());
    assert!(wait_until(Duration::from_secs(10), || s
        .log()
        .contains("status=Deferred")));
    // The queue is locked while the server runs; without [http] there is no API to use.
    let locked = s.cli(&["queue", "list"], "");
    assert!(!locked.status.success());
    let err = String::from_utf8_lossy(&locked.stderr).into_owned();
    assert!(err.contains("stop it, or configure [http]"), "{err}");
    s.stop();
    // Two damaged records: one too short to say where its body is, one whose metadata
    // does not decode. Neither stops the listing or delivery.
    {
        let db = sled::open(s.data().join("queue").join("db")).unwrap();
        db.insert("m/00000000000000000001", &b"short"[..]).unwrap();
        db.insert("m/00000000000000000002", vec![7u8; 60]).unwrap();
        db.flush().unwrap();
    }

    let list = String::from_utf8_lossy(&s.cli(&["queue", "list"], "").stdout).into_owned();
    assert!(
        list.contains(id_a) && list.contains(id_b) && list.contains("2 message(s)"),
        "{list}"
    );
    assert!(list.contains("2 unreadable record(s)"), "{list}");
    let del = s.cli(&["queue", "delete", "00000000000000000001"], "");
    assert!(del.status.success(), "{del:?}");
    let list = String::from_utf8_lossy(&s.cli(&["queue", "list"], "").stdout).into_owned();
    assert!(list.contains("1 unreadable record(s)"), "{list}");
    let show = String::from_utf8_lossy(&s.cli(&["queue", "show", id_a], "").stdout).into_owned();
    assert!(
        show.contains("recipient <a@remote.test>: Deferred"),
        "{show}"
    );
    assert!(show.contains("Subject: first"), "{show}");
    let del = s.cli(&["queue", "delete", id_b], "");
    assert!(del.status.success());
    let retry = String::from_utf8_lossy(&s.cli(&["queue", "retry"], "").stdout).into_owned();
    assert!(retry.contains("1 message(s) due now"), "{retry}");

    // Back up with the next hop there: only the remaining message goes out, at once.
    let sink = Sink::start_on(sink_port);
    s.restart();
    assert!(
        wait_until(Duration::from_secs(10), || sink.messages().len() == 1),
        "log:\n{}",
        s.log()
    );
    assert!(sink.messages()[0].data.contains("Subject: first"));
}

/// A sink, the test DNS server and Sluice delivering by MX through both (plus `extra`
/// TOML), with the user `u`.
fn mx_setup(extra: &str) -> (Sink, support::dns::Dns, Sluice) {
    let sink = Sink::start();
    let dns = support::dns::Dns::start();
    let s = Sluice::start(&format!(
        "[delivery]\nnameservers = [\"127.0.0.1:{}\"]\nmx_port = {}\ntls = \"none\"\nretry_initial = \"1s\"\nretry_max = \"1s\"\n{extra}",
        dns.port, sink.port
    ));
    s.cli(&["user", "add", "u"], "pw\n");
    (sink, dns, s)
}

/// MX routing against a real DNS server on loopback: MX records, the implicit MX, the null
/// MX and a domain that does not exist.
#[test]
fn delivers_by_mx_and_bounces_what_dns_refuses() {
    let (sink, _dns, s) = mx_setup("");
    let mut c = tls_auth_client(&s);
    let r = c.send_mail(
        "sender@localhost",
        &[
            "a@mx.test",
            "b@implicit.test",
            "c@nullmx.test",
            "d@nowhere.test",
        ],
        &message("by mx", 800),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.messages().len() == 2
            && s.maildir("sender@localhost").len() == 1),
        "sink got {:?}; log:\n{}",
        sink.rcpt_attempts(),
        s.log()
    );
    let mut got: Vec<String> = sink
        .messages()
        .iter()
        .flat_map(|m| m.recipients.clone())
        .collect();
    got.sort();
    assert_eq!(got, ["a@mx.test", "b@implicit.test"]);
    let dsn = &s.maildir("sender@localhost")[0];
    for needle in [
        "Final-Recipient: rfc822; c@nullmx.test",
        "Status: 5.1.10",
        "Final-Recipient: rfc822; d@nowhere.test",
        "Status: 5.1.2",
    ] {
        assert!(dsn.contains(needle), "missing {needle:?} in:\n{dsn}");
    }
    assert!(!dsn.contains("a@mx.test"));
}

/// A DNS server that fails (SERVFAIL) or does not answer is a temporary problem: the
/// recipient is deferred with 4.4.3, never bounced. A wildcard route to MX looks up each
/// recipient's own domain.
#[test]
fn dns_failures_defer_and_wildcard_routes_use_the_recipients_mx() {
    let (sink, _dns, s) = mx_setup("\n[[route]]\ndomain = \"*\"\nvia = \"mx\"\n");
    let mut c = tls_auth_client(&s);
    let r = c.send_mail(
        "sender@localhost",
        &["a@mx.test", "e@servfail.test", "f@silent.test"],
        &message("dns trouble", 800),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.messages().len() == 1),
        "the wildcard route did not reach mx.test's MX; log:\n{}",
        s.log()
    );
    assert_eq!(sink.messages()[0].recipients, ["a@mx.test"]);
    let deferred = |who: &str| {
        s.log().lines().any(|l| {
            l.contains(&format!("to={who}")) && l.contains("status=Deferred") && l.contains("4.4.3")
        })
    };
    assert!(
        wait_until(Duration::from_secs(40), || deferred("e@servfail.test")
            && deferred("f@silent.test")),
        "log:\n{}",
        s.log()
    );
    assert!(!s.log().contains("status=Bounced"), "log:\n{}", s.log());
    assert!(
        s.maildir("sender@localhost").is_empty(),
        "no DSN for a DNS outage"
    );
}

/// Two routes to the same next hop, one plaintext and one requiring TLS: the connection
/// left idle by the first is never reused for the second.
#[test]
fn a_plaintext_connection_is_not_reused_for_a_route_requiring_tls() {
    let sink = Sink::start();
    let s = Sluice::start(&format!(
        r#"
[delivery]
retry_initial = "1s"
retry_max = "1s"
idle_timeout = "30s"

[[route]]
domain = "plain.test"
via = "smarthost"
host = "127.0.0.1:{port}"
tls = "none"

[[route]]
domain = "secure.test"
via = "smarthost"
host = "127.0.0.1:{port}"
tls = "required"
"#,
        port = sink.port
    ));
    s.cli(&["user", "add", "u"], "pw\n");
    let r = send_authenticated(&s, "sender@localhost", &["a@plain.test"], "plain");
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || sink
        .messages()
        .len()
        == 1));
    let r = send_authenticated(&s, "sender@localhost", &["b@secure.test"], "secure");
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || s.log().contains("4.7.10")),
        "log:\n{}",
        s.log()
    );
    assert_eq!(
        sink.messages().len(),
        1,
        "sent in clear text on a pooled connection"
    );
}

/// A peer that offers STARTTLS and then fails the handshake still gets the mail under
/// opportunistic TLS: Sluice tries again without TLS.
#[test]
fn opportunistic_tls_falls_back_to_plaintext_after_a_failed_handshake() {
    let sink = Sink::start_broken_tls();
    let s =
        Sluice::start(&route_to(sink.port).replace("tls = \"none\"", "tls = \"opportunistic\""));
    s.cli(&["user", "add", "u"], "pw\n");
    let r = send_authenticated(&s, "sender@localhost", &["a@remote.test"], "fallback");
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || sink.messages().len() == 1),
        "log:\n{}",
        s.log()
    );
    assert!(
        s.log().contains("trying again without TLS"),
        "log:\n{}",
        s.log()
    );
}

/// A body damaged on disk is reported: the sender gets a DSN saying so, and the log names
/// the message. It is not dropped silently.
#[test]
fn a_damaged_body_is_bounced_to_the_sender() {
    let sink_port = support::free_port(); // down: the message stays queued
    let mut s = Sluice::start(&route_to(sink_port));
    s.cli(&["user", "add", "u"], "pw\n");
    let r = send_authenticated(&s, "sender@localhost", &["a@remote.test"], "to be damaged");
    assert!(r.starts_with("250"), "{r}");
    s.stop();
    let bodies = s.data().join("queue").join("bodies");
    let mut damaged = 0;
    for e in std::fs::read_dir(&bodies).unwrap() {
        let path = e.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(pos) = bytes.windows(13).position(|w| w == b"to be damaged") {
            bytes[pos] ^= 0x20;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1);
    s.restart();
    assert!(
        wait_until(Duration::from_secs(10), || s
            .maildir("sender@localhost")
            .len()
            == 1),
        "log:\n{}",
        s.log()
    );
    let dsn = &s.maildir("sender@localhost")[0];
    assert!(dsn.contains("Status: 5.3.0"), "{dsn}");
    assert!(dsn.contains("damaged in the queue"), "{dsn}");
    assert!(s.log().contains("fails its checksum"), "log:\n{}", s.log());
}

/// RFC 6152: 8-bit data never goes raw to a peer without 8BITMIME. It bounces (5.6.3);
/// a message declared 8BITMIME whose body is plain ASCII goes through.
#[test]
fn eight_bit_data_is_not_sent_to_a_seven_bit_peer() {
    let sink = Sink::start_7bit();
    let s = Sluice::start(&route_to(sink.port));
    s.cli(&["user", "add", "u"], "pw\n");
    let mut c = tls_auth_client(&s);
    assert!(
        c.cmd("MAIL FROM:<sender@localhost> BODY=8BITMIME")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<a@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw("Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n.\r\n".as_bytes());
    assert!(c.read_reply().starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<sender@localhost> BODY=8BITMIME")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<b@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(b"Subject: ascii\r\n\r\nplain\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    assert!(
        wait_until(Duration::from_secs(15), || sink.messages().len() == 1
            && s.maildir("sender@localhost").len() == 1),
        "log:\n{}",
        s.log()
    );
    assert!(sink.messages()[0].data.contains("Subject: ascii"));
    let dsn = &s.maildir("sender@localhost")[0];
    assert!(dsn.contains("Status: 5.6.3"), "{dsn}");
}

/// A DSN to a UTF-8 address travels with SMTPUTF8 (RFC 6531/6533): the bounce of a message
/// from `jörg@remote.test` reaches the next hop as `MAIL FROM:<> SMTPUTF8`.
#[test]
fn a_dsn_to_a_utf8_sender_uses_smtputf8() {
    let sink = Sink::start();
    let s = Sluice::start(&route_to(sink.port));
    s.cli(&["user", "add", "u"], "pw\n");
    let mut c = tls_auth_client(&s);
    let r = c.cmd("MAIL FROM:<j\u{f6}rg@remote.test> SMTPUTF8");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("RCPT TO:<reject-1@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(b"Subject: utf8\r\n\r\nhello\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    assert!(
        wait_until(Duration::from_secs(15), || !sink.messages().is_empty()),
        "log:\n{}",
        s.log()
    );
    let dsn = &sink.messages()[0];
    assert_eq!(dsn.recipients, ["j\u{f6}rg@remote.test"]);
    assert!(
        dsn.mail_line.starts_with("MAIL FROM:<>"),
        "{}",
        dsn.mail_line
    );
    assert!(dsn.mail_line.contains("SMTPUTF8"), "{}", dsn.mail_line);
}

/// A next hop that reads a big message slowly but steadily gets it: the command timeout
/// (2 s here) applies to each 64 KB chunk written, not to the whole body, and the reply to
/// end of data may take longer than the command timeout (RFC 5321 §4.5.3.2).
#[test]
fn a_slow_but_steady_next_hop_gets_a_big_message() {
    let sink = Sink::start_slow_reader();
    let s = Sluice::start(
        &route_to(sink.port).replace("[delivery]\n", "[delivery]\ncommand_timeout = \"2s\"\n"),
    );
    s.cli(&["user", "add", "u"], "pw\n");
    let mut c = tls_auth_client(&s);
    let r = c.send_mail(
        "sender@localhost",
        &["big@remote.test"],
        &message("big and slow", 20_000_000),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(60), || sink.messages().len() == 1),
        "log:\n{}",
        s.log()
    );
    assert!(!s.log().contains("timed out"), "log:\n{}", s.log());
}

/// A tarpit answers every command just within the command timeout: the transaction cap
/// (`transaction_timeout`, 3 s here) ends the attempt, which is deferred, instead of the
/// tarpit holding the connection slot for as long as it likes. The retry waits its backoff
/// (2 s) counted from the end of that long attempt, not from its start.
#[test]
fn a_tarpit_cannot_hold_a_delivery_for_ever() {
    let sink = Sink::start_tarpit(Duration::from_millis(900));
    let s = Sluice::start(
        &route_to(sink.port)
            .replace("retry_initial = \"1s\"", "retry_initial = \"2s\"")
            .replace("retry_max = \"1s\"", "retry_max = \"2s\"")
            .replace(
                "[delivery]\n",
                "[delivery]\ncommand_timeout = \"2s\"\ntransaction_timeout = \"3s\"\n",
            ),
    );
    s.cli(&["user", "add", "u"], "pw\n");
    let rcpts: Vec<String> = (0..8).map(|i| format!("r{i}@remote.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let r = send_authenticated(&s, "sender@localhost", &rcpts, "tarpit");
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(30), || s
            .log()
            .contains("attempt abandoned")),
        "log:\n{}",
        s.log()
    );
    assert!(s.log().contains("status=Deferred"), "log:\n{}", s.log());
    assert!(
        wait_until(Duration::from_secs(30), || sink.connection_times().len()
            >= 2),
        "no retry; log:\n{}",
        s.log()
    );
    // EHLO 0.9 s + the 3 s cap, then a 2 s backoff in whole seconds (at least 1 s after
    // truncation): at least 4.9 s between the connections. Counted from the attempt's start
    // the retry would be due before the attempt ended, about 3.9 s.
    let t = sink.connection_times();
    let gap = t[1] - t[0];
    assert!(gap >= Duration::from_millis(4600), "retried after {gap:?}");
}
