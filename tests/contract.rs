//! Contract 0.2 through the running server: per-recipient rendering reaches a real SMTP
//! sink as one transaction per variant, the durable `queued` stage and the event bus keep
//! their promises across a kill -9, and RCPT verdicts hold or drop single recipients.

mod support;

use sluice_store::KvStore;
use sluice_test_plugins::{HOSTILE, PROBE};
use std::time::Duration;
use support::sink::Sink;
use support::{Client, Sluice, step, wait_until};

fn start(policy: &str, sink: Option<&Sink>) -> Sluice {
    let route = sink.map_or(String::new(), |k| {
        format!(
            "[[route]]\ndomain = \"example.net\"\nvia = \"smarthost\"\nhost = \"127.0.0.1:{}\"\ntls = \"none\"\n",
            k.port
        )
    });
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nrelay_domains = [\"example.net\"]",
        "",
        &format!(
            "[delivery]\nretry_initial = \"1s\"\nretry_max = \"1s\"\nevent_retry_initial = \"1s\"\nevent_retry_max = \"1s\"\n{route}"
        ),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!("[[pipeline]]\nname = \"all\"\n{policy}"),
    )
    .unwrap();
    s.spawn()
}

const HTML: &str = concat!(
    "From: app@example.com\r\nSubject: news\r\nMessage-ID: <n1@example.com>\r\n",
    "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n",
    "--b\r\nContent-Type: text/plain\r\n\r\nplain text\r\n",
    "--b\r\nContent-Type: text/html\r\n\r\n<p><a href=\"https://x.example/{{rcpt}}\">link</a></p>\r\n",
    "--b--\r\n"
);

fn stores(s: &Sluice) -> sluice_store::SledStores {
    sluice_store::SledStores::open(&s.data().join("stores")).unwrap()
}

#[test]
fn rendering_and_events_through_the_server_survive_a_kill() {
    let sink = Sink::start();
    let policy = format!(
        "{}{}",
        step("track", PROBE, "stages = [\"render\"]", "mode = \"render\""),
        step(
            "hooks",
            PROBE,
            "stages = [\"event\"]\n[pipeline.step.capabilities]\nkv = \"hooks\"",
            "mode = \"events\"\ntimes = 2"
        )
    );
    let mut s = start(&policy, Some(&sink));
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail("app@example.com", &["x@example.net", "y@example.net"], HTML);
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(15), || sink
        .messages()
        .len()
        == 2));
    for m in sink.messages() {
        assert_eq!(m.recipients.len(), 1, "one transaction per variant");
        let rcpt = &m.recipients[0];
        let parsed = mail_parser::MessageParser::default()
            .parse(m.data.as_bytes())
            .unwrap();
        assert!(
            parsed
                .body_html(0)
                .unwrap()
                .contains(&format!("https://x.example/{rcpt}")),
            "{}",
            m.data
        );
        assert!(parsed.header_raw("X-Rcpt-Token").is_some());
    }
    // The event step defers the first two runs of every event: kill the server while the
    // delivered events wait in the outbox, then let a new process finish them.
    assert!(wait_until(Duration::from_secs(15), || s
        .log()
        .contains("event deferred")));
    s.kill9();
    s.restart();
    // What the last moments before the kill wrote (the step's run counts in its key-value
    // store) may be lost with the process: an event may then be deferred again after the
    // restart. Retries come every second, so the events are done once no
    // deferral has been logged for 2.5 s.
    let mut last = (0, std::time::Instant::now());
    assert!(wait_until(Duration::from_secs(40), || {
        let n = s.log().matches("event deferred").count();
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        n >= 4 && last.1.elapsed() > Duration::from_millis(2500)
    }));
    s.stop();
    let st = stores(&s);
    for rcpt in ["x@example.net", "y@example.net"] {
        let seen = st
            .kv
            .get("hooks", &format!("seen/queued/{rcpt}"))
            .unwrap()
            .unwrap_or_else(|| panic!("queued event for {rcpt} not acknowledged\n{}", s.log()));
        assert!(String::from_utf8_lossy(&seen).starts_with('E'));
        assert!(
            st.kv
                .get("hooks", &format!("seen/delivered/{rcpt}"))
                .unwrap()
                .is_some(),
            "delivered event for {rcpt}\n{}",
            s.log()
        );
    }
    drop(st);
    let q = sluice_queue::SledQueue::open(&s.data().join("queue")).unwrap();
    assert!(q.outbox().is_empty(), "every event was acknowledged");
}

#[test]
fn the_queued_stage_gates_delivery_and_survives_a_kill() {
    let policy = step(
        "forward",
        PROBE,
        "stages = [\"queued\"]\n[pipeline.step.capabilities]\nkv = \"fwd\"",
        "mode = \"queued\"\ntimes = 3",
    );
    let mut s = start(&policy, None);
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail("a@example.com", &["bob@localhost"], HTML);
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .log()
        .contains("queued stage deferred")));
    assert!(
        s.maildir("bob@localhost").is_empty(),
        "delivery waits for the queued stage"
    );
    // Let the deferral reach the disk (sled flushes every 500 ms), then crash.
    std::thread::sleep(Duration::from_millis(1200));
    s.kill9();
    s.restart();
    assert!(
        wait_until(Duration::from_secs(30), || s.maildir("bob@localhost").len()
            == 1),
        "{}",
        s.log()
    );
    s.stop();
    let st = stores(&s);
    let page = st.kv.scan("fwd", "queued/", None, 10).unwrap();
    assert_eq!(page.entries.len(), 1);
    let runs = i64::from_le_bytes(page.entries[0].1.clone().try_into().unwrap());
    assert!(runs >= 3, "the stage ran until it passed: {runs}");
}

#[test]
fn rcpt_verdicts_hold_or_drop_single_recipients() {
    let policy = step("gate", PROBE, "stages = [\"rcpt\"]", "mode = \"rcpt\"");
    let mut s = start(&policy, None);
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "a@example.com",
        &["hold@localhost", "drop@localhost", "bob@localhost"],
        "Subject: t\r\n\r\nhello\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.maildir("hold@localhost").is_empty());
    assert!(s.maildir("drop@localhost").is_empty());
    s.stop();
    let list = s.cli(&["queue", "list"], "");
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        out.contains("1 recipient(s), 1 pending, quarantined: held by probe"),
        "the held recipient is kept apart, quarantined: {out}"
    );
    assert!(
        out.contains("1 message(s)"),
        "the dropped one was not queued: {out}"
    );
    let id = out.split_whitespace().next().unwrap();
    let show = s.cli(&["queue", "show", id], "");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("recipient <hold@localhost>") && !show.contains("recipient <bob@localhost>"),
        "{show}"
    );
}

#[test]
fn a_plugin_cannot_make_the_mx_listener_an_open_relay() {
    let policy = step(
        "bcc",
        HOSTILE,
        "[pipeline.step.capabilities]\nenvelope = true",
        "mode = \"relay\"\ntarget = \"victim@elsewhere.example\"",
    );
    let mut s = start(&policy, None);
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "a@example.com",
        &["bob@localhost"],
        "Subject: t\r\n\r\nhi\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    assert!(
        s.log()
            .contains("dropping a recipient a policy step added: relaying to it needs AUTH"),
        "{}",
        s.log()
    );
    s.stop();
    let list = s.cli(&["queue", "list"], "");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("0 message(s)"),
        "the added recipient was never queued: {}",
        String::from_utf8_lossy(&list.stdout)
    );
}

#[test]
fn held_and_dropped_recipients_count_toward_the_recipient_limit() {
    let s = Sluice::configure_with("policies = \"policy.toml\"", "max_recipients = 3", "");
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"all\"\n{}",
            step("gate", PROBE, "stages = [\"rcpt\"]", "mode = \"rcpt\"")
        ),
    )
    .unwrap();
    let s = s.spawn();
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    for r in ["hold1@localhost", "drop1@localhost", "hold2@localhost"] {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(reply.starts_with("250"), "{r}: {reply}");
    }
    let reply = c.cmd("RCPT TO:<bob@localhost>");
    assert!(reply.starts_with("452 4.5.3"), "{reply}");
}

/// A `quarantine` verdict at the delivery stage is honoured: the message is held, not
/// delivered, not retried, and still held after a restart (`sluice queue list` shows it).
#[test]
fn a_delivery_stage_quarantine_holds_the_message() {
    let sink = Sink::start();
    let policy = step("hold", PROBE, "stages = [\"delivery\"]", "mode = \"hold\"");
    let mut s = start(&policy, Some(&sink));
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail("a@example.com", &["bob@example.net"], HTML);
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || s
            .log()
            .contains("message quarantined at delivery")),
        "{}",
        s.log()
    );
    s.stop();
    s.restart();
    std::thread::sleep(Duration::from_secs(2));
    assert!(sink.messages().is_empty(), "a held message was delivered");
    assert_eq!(
        s.log().matches("message quarantined at delivery").count(),
        1,
        "held messages are not attempted again"
    );
    s.stop();
    let list = String::from_utf8_lossy(&s.cli(&["queue", "list"], "").stdout).into_owned();
    assert!(
        list.contains("quarantined: held at delivery by probe"),
        "{list}"
    );
    // Released on the stopped server: delivered after the restart, not held again.
    let id = list.split_whitespace().next().unwrap().to_string();
    let out = s.cli(&["queue", "release", &id], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.restart();
    assert!(wait_until(Duration::from_secs(10), || sink
        .messages()
        .len()
        == 1));
}

/// A running server with the admin API on `http` whose policy holds every message at the
/// delivery stage (probe `hold`), relaying example.net to `sink`; `delivery` is more of the
/// `[delivery]` table.
fn holding_server(sink: &Sink, http: u16, delivery: &str) -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nrelay_domains = [\"example.net\"]",
        "",
        &format!(
            "[http]\nbind = \"127.0.0.1:{http}\"\n[delivery]\n{delivery}\n[[route]]\ndomain = \"example.net\"\nvia = \"smarthost\"\nhost = \"127.0.0.1:{}\"\ntls = \"none\"\n",
            sink.port
        ),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"all\"\n{}",
            step("hold", PROBE, "stages = [\"delivery\"]", "mode = \"hold\"")
        ),
    )
    .unwrap();
    s.spawn()
}

/// An operator releases a message held at the delivery stage (`sluice queue release`,
/// through the admin API of the running server): it is delivered, the hold is not applied
/// again; releasing a message that is not held is refused.
#[test]
fn a_released_message_is_delivered_despite_the_hold() {
    let sink = Sink::start();
    let http = support::free_port();
    let s = holding_server(&sink, http, "retry_initial = \"1s\"\nretry_max = \"1s\"");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail("a@example.com", &["bob@example.net"], HTML);
    assert!(r.starts_with("250"), "{r}");
    let id = r.rsplit(' ').next().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(10), || s
        .log()
        .contains("message quarantined at delivery")));
    let out = s.cli(&["queue", "release", &id], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(10), || sink.messages().len() == 1),
        "{}",
        s.log()
    );
    assert!(
        s.log()
            .contains("quarantine verdict ignored: released by the operator")
    );
    // Delivered and gone: nothing to release any more.
    let again = s.cli(&["queue", "release", &id], "");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(err.contains("404") && err.contains("no message"), "{err}");
}

/// Quarantined mail through `sluice quarantine` (the running server's API): listed with
/// its reason, shown, deleted one by one; what is left expires after
/// `quarantine_retention` (here at the scan that follows a restart), counted in
/// `sluice_store_purged_total{store="quarantine"}`.
#[test]
fn quarantined_mail_is_managed_and_expires_after_its_retention() {
    let sink = Sink::start();
    let http = support::free_port();
    let mut s = holding_server(&sink, http, "quarantine_retention = \"3s\"");
    let mut ids = Vec::new();
    for rcpt in ["bob@example.net", "carol@example.net"] {
        let mut c = Client::connect(s.mx_port);
        c.cmd("EHLO client.test");
        let r = c.send_mail("a@example.com", &[rcpt], HTML);
        assert!(r.starts_with("250"), "{r}");
        ids.push(r.rsplit(' ').next().unwrap().to_string());
    }
    assert!(wait_until(Duration::from_secs(10), || s
        .log()
        .matches("message quarantined at delivery")
        .count()
        == 2));
    let list = s.cli_ok(&["quarantine", "list"]);
    assert!(list.contains("2 message(s)"), "{list}");
    assert_eq!(
        list.matches("quarantined: held at delivery by probe")
            .count(),
        2,
        "{list}"
    );
    let shown = s.cli_ok(&["quarantine", "show", &ids[0]]);
    assert!(shown.contains("quarantined: held at delivery"), "{shown}");
    s.cli_ok(&["quarantine", "delete", &ids[0]]);
    let list = s.cli_ok(&["quarantine", "list"]);
    assert!(
        list.contains("1 message(s)") && list.contains(&ids[1]),
        "{list}"
    );

    // Past the retention: the scan at start deletes it, and counts it.
    s.stop();
    std::thread::sleep(Duration::from_millis(3500));
    s.restart();
    assert!(
        wait_until(Duration::from_secs(10), || s
            .log()
            .contains("quarantined message expired, deleted")),
        "{}",
        s.log()
    );
    assert!(s.cli_ok(&["quarantine", "list"]).contains("0 message(s)"));
    let metrics = support::web::request(http, "GET", "/metrics", "").body;
    assert!(
        metrics.contains("sluice_store_purged_total{store=\"quarantine\"} 1"),
        "{metrics}"
    );
    assert!(sink.messages().is_empty(), "expired mail is not delivered");
}
