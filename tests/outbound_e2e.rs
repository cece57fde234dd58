//! Sending for applications, end to end in one run: a message submitted with AUTH on the
//! submission listener to four recipients, one of them suppressed. The suppressed one is
//! refused at RCPT; the others reach a local SMTP sink with their own tracked links, pixel,
//! one-click List-Unsubscribe headers and a DKIM signature dkimpy accepts; a tracked link
//! redirects; a one-click POST unsubscribes; a 550 from the sink and a DSN received later
//! make bounce events, an ARF report a complaint; every event reaches a real HTTP receiver,
//! which was down for the first part of the run; the suppression list ends with the
//! unsubscribed, bounced and complaining addresses.

mod support;

use sluice_test_plugins::{BOUNCES, LINK_TRACKING, SENDER_POLICY, SUPPRESSION, WEBHOOK};
use std::collections::HashMap;
use std::time::Duration;
use support::hooks::Receiver;
use support::web::{request, tracking_paths};
use support::{Client, Sink, Sluice, TlsClient, step, wait_until};

fn suppression() -> String {
    step(
        "suppression",
        SUPPRESSION,
        "stages = [\"rcpt\", \"event\"]\non_error = \"tempfail\"\n[pipeline.step.capabilities]\nkv = \"suppression\"",
        "stream = \"outbound\"",
    )
}

fn webhook(port: u16) -> String {
    step(
        "webhook",
        WEBHOOK,
        &format!(
            "stages = [\"event\"]\non_error = \"tempfail\"\ntimeout_ms = 5000\n[pipeline.step.capabilities]\nhttp = [\"http://127.0.0.1:{port}\"]"
        ),
        &format!(
            "url = \"http://127.0.0.1:{port}/events\"\nsecret = \"e2e-webhook-secret-0123456789\"\ntimeout_ms = 2000"
        ),
    )
}

fn tracking_path(text: &str, port: u16, kind: &str) -> String {
    tracking_paths(text, port, kind)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no /{kind}/ link in {text}"))
}

#[test]
fn submission_tracking_bounces_complaints_and_webhooks_in_one_run() {
    let sink = Sink::start();
    let http_port = support::free_port();
    let hook_port = support::free_port();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = support::dkim::rsa(keys.path(), "dkim");
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nlocal_domains = [\"localhost\", \"bounces.example.com\"]",
        "",
        &format!(
            "[http]\nbind = \"127.0.0.1:{http_port}\"\n\n[tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nkey = \"tracking.key\"\n\n[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey = \"{}\"\n{}",
            key.display(),
            support::route_to(sink.port).replacen(
                "[delivery]",
                "[delivery]\nevent_retry_initial = \"1s\"\nevent_retry_max = \"1s\"",
                1
            )
        ),
    );
    std::fs::write(
        s.dir.path().join("tracking.key"),
        "e2e-tracking-key-0123456789abcdef0123456789\n",
    )
    .unwrap();
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"outbound\"\nlisteners = [\"submission\"]\nauthenticated = true\n{}{}{}{}\
             [[pipeline]]\nname = \"bounces\"\nlisteners = [\"mx\"]\nrecipient_domains = [\"bounces.example.com\"]\n{}\
             [[pipeline]]\nname = \"mx\"\nlisteners = [\"mx\"]\n{}{}",
            step(
                "senders",
                SENDER_POLICY,
                "stages = [\"mail\", \"rcpt\", \"data\"]\n[pipeline.step.capabilities]\nkv = \"senders\"",
                "[pipeline.step.config.users.app]\nfrom = [\"@example.com\"]"
            ),
            suppression(),
            step(
                "track",
                LINK_TRACKING,
                "stages = [\"render\"]\n[pipeline.step.capabilities]\ntracking = true",
                ""
            ),
            webhook(hook_port),
            step(
                "bounces",
                BOUNCES,
                "stages = [\"data\"]\non_error = \"tempfail\"\n[pipeline.step.capabilities]\nevents = true",
                ""
            ),
            suppression(),
            webhook(hook_port),
        ),
    )
    .unwrap();
    s.cli(&["user", "add", "app"], "pw\n");
    s.cli_ok(&[
        "suppression",
        "add",
        "--stream",
        "outbound",
        "gone@remote.test",
    ]);
    let mut s = s.spawn();

    // The application sends; the webhook receiver is down.
    let mut c = TlsClient::connect(s.submission_port, "app", "pw");
    assert!(c.cmd("MAIL FROM:<app@example.com>").starts_with("250"));
    let r = c.cmd("RCPT TO:<gone@remote.test>");
    assert!(r.starts_with("550 5.7.1"), "suppressed at RCPT: {r}");
    for rcpt in [
        "alice@remote.test",
        "reject-bob@remote.test",
        "carol@remote.test",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("250"), "{rcpt}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(
        concat!(
            "From: Shop <app@example.com>\r\nTo: customers@example.com\r\nSubject: Your order\r\n",
            "Message-ID: <order-1@example.com>\r\nMIME-Version: 1.0\r\n",
            "Content-Type: text/html; charset=utf-8\r\n\r\n",
            "<html><body><p>Track it <a href=\"https://shop.example/orders/1?a=1&amp;b=2\">here</a>.</p></body></html>\r\n",
            ".\r\n"
        )
        .as_bytes(),
    );
    let r = c.read_reply();
    assert!(r.starts_with("250"), "{r}");
    // A second message with a From: the user may not use is refused at the end of data.
    assert!(c.cmd("MAIL FROM:<app@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<erin@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(b"From: CEO <ceo@other.test>\r\nSubject: wire\r\n\r\nnow\r\n.\r\n");
    let r = c.read_reply();
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.messages().len() == 2),
        "{}",
        s.log()
    );
    let copies: HashMap<String, String> = sink
        .messages()
        .into_iter()
        .map(|m| (m.recipients[0].clone(), m.data))
        .collect();
    let alice = &copies["alice@remote.test"];
    let carol = &copies["carol@remote.test"];
    // Each copy: its own links and pixel, one-click headers, a signature dkimpy accepts.
    let records = [(
        "s1._domainkey.example.com",
        format!("v=DKIM1; k=rsa; p={public}"),
    )];
    for copy in [alice, carol] {
        assert!(
            copy.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{copy}"
        );
        assert_eq!(
            support::dkim::dkimpy(copy.as_bytes(), &records, keys.path()),
            vec![true],
            "{copy}"
        );
    }
    let parsed = |raw: &str| {
        mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap()
            .body_html(0)
            .unwrap()
            .into_owned()
    };
    let alice_html = parsed(alice);
    let click = tracking_path(&alice_html, http_port, "c");
    assert_ne!(click, tracking_path(&parsed(carol), http_port, "c"));
    tracking_path(&alice_html, http_port, "o");

    // Alice clicks, then unsubscribes with her mail client's one-click POST.
    let r = request(http_port, "GET", &click, "");
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example/orders/1?a=1&b=2")
    );
    let unsub = tracking_path(alice, http_port, "u");
    let r = request(http_port, "POST", &unsub, "List-Unsubscribe=One-Click");
    assert_eq!(r.status, 200, "{}", r.body);

    // Carol's mailbox bounces later: a DSN naming her, with the returned headers.
    let returned_headers = carol.split("\r\n\r\n").next().unwrap();
    let dsn = format!(
        concat!(
            "From: MAILER-DAEMON@mx.remote.test\r\nTo: app@example.com\r\nSubject: Undelivered Mail\r\n",
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n",
            "--r\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n",
            "--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n",
            "Final-Recipient: rfc822; carol@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 <carol@remote.test>: User unknown\r\n\r\n",
            "--r\r\nContent-Type: text/rfc822-headers\r\n\r\n{}\r\n",
            "--r--\r\n"
        ),
        returned_headers
    );
    // And a feedback loop reports a complaint about an earlier message to dave.
    let arf = concat!(
        "From: fbl@isp.test\r\nTo: abuse@example.com\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n",
        "Content-Type: multipart/report; report-type=feedback-report; boundary=\"f\"\r\n\r\n",
        "--f\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n",
        "--f\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: FBL/1\r\nVersion: 1\r\n",
        "Original-Rcpt-To: dave@remote.test\r\n",
        "--f\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: app@example.com\r\nTo: dave@remote.test\r\n",
        "--f--\r\n"
    );
    for report in [dsn.as_str(), arf] {
        let mut m = Client::connect(s.mx_port);
        m.cmd("EHLO mx.remote.test");
        let r = m.send_mail("", &["bounces@bounces.example.com"], report);
        assert!(r.starts_with("250"), "{r}");
        m.cmd("QUIT");
    }

    // The receiver comes up after all of that; every event arrives.
    std::thread::sleep(Duration::from_secs(2));
    let receiver = Receiver::start_on(hook_port, 0);
    let events = |r: &Receiver| -> Vec<serde_json::Value> {
        r.accepted()
            .iter()
            .map(|q| serde_json::from_slice(&q.body).unwrap())
            .collect()
    };
    let has = |evs: &[serde_json::Value], kind: &str, rcpt: &str| {
        evs.iter()
            .find(|e| e["kind"] == kind && e["recipient"] == rcpt)
            .cloned()
    };
    let want = [
        ("queued", "alice@remote.test"),
        ("delivered", "alice@remote.test"),
        ("delivered", "carol@remote.test"),
        ("bounced", "reject-bob@remote.test"),
        ("clicked", "alice@remote.test"),
        ("unsubscribed", "alice@remote.test"),
        ("bounced", "carol@remote.test"),
        ("complained", "dave@remote.test"),
        ("rejected", "gone@remote.test"),
        ("rejected", "erin@remote.test"),
    ];
    let all = wait_until(Duration::from_secs(40), || {
        let evs = events(&receiver);
        want.iter().all(|(k, r)| has(&evs, k, r).is_some())
    });
    let evs = events(&receiver);
    assert!(
        all,
        "missing {:?}\n{}",
        want.iter()
            .filter(|(k, r)| has(&evs, k, r).is_none())
            .collect::<Vec<_>>(),
        s.log()
    );
    let at_rcpt = has(&evs, "rejected", "gone@remote.test").unwrap();
    assert_eq!(
        (
            at_rcpt["reply"]["code"].clone(),
            at_rcpt["attributes"]["stage"].clone()
        ),
        (550.into(), "rcpt".into())
    );
    let at_data = has(&evs, "rejected", "erin@remote.test").unwrap();
    assert_eq!(at_data["attributes"]["stage"], "data");
    assert_eq!(at_data["reply"]["enhanced"], "5.7.1");
    let sync = has(&evs, "bounced", "reject-bob@remote.test").unwrap();
    assert_eq!(sync["reply"]["code"], 550);
    assert_eq!(sync["attributes"]["bounce_type"], "hard");
    let queued = has(&evs, "queued", "alice@remote.test").unwrap();
    let dsn_event = has(&evs, "bounced", "carol@remote.test").unwrap();
    assert_eq!(dsn_event["attributes"]["format"], "dsn");
    assert_eq!(dsn_event["attributes"]["bounce_type"], "hard");
    assert_eq!(
        dsn_event["queue_id"], queued["queue_id"],
        "the DSN is tied to the message it is about"
    );
    assert_eq!(dsn_event["message_id"], "order-1@example.com");
    let clicked = has(&evs, "clicked", "alice@remote.test").unwrap();
    assert_eq!(
        clicked["attributes"]["url"],
        "https://shop.example/orders/1?a=1&b=2"
    );
    assert_eq!(clicked["message_id"], "order-1@example.com");

    // The list now holds everyone who cannot or will not get mail.
    let list = || s.cli_ok(&["suppression", "list", "--stream", "outbound"]);
    let expected = [
        ("gone@remote.test", "manual"),
        ("alice@remote.test", "unsubscribe"),
        ("reject-bob@remote.test", "hard-bounce"),
        ("carol@remote.test", "hard-bounce"),
        ("dave@remote.test", "spam-complaint"),
    ];
    let complete = wait_until(Duration::from_secs(20), || {
        let l = list();
        expected.iter().all(|(a, reason)| {
            l.lines()
                .any(|line| line.contains(a) && line.contains(reason))
        })
    });
    assert!(complete, "{}\n{}", list(), s.log());
    s.stop();
}
