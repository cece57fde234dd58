//! The `greylist` plugin through real SMTP sessions: a new triplet gets 451 4.7.1, a retry
//! too soon too, a retry after the delay passes; the pass survives a restart (sled-backed
//! key-value store); another recipient is a new triplet; authenticated sessions are never
//! greylisted; a network that passed often enough is whitelisted.

mod support;

use sluice_test_plugins::GREYLIST;
use std::time::Duration;
use support::{Client, Sluice, wait_until};

fn start(auto_whitelist_after: u32) -> Sluice {
    let s = Sluice::configure_with("policies = \"policy.toml\"", "", "");
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            r#"[[pipeline]]
name = "inbound"
[[pipeline.step]]
name = "greylist"
plugin = "{}"
sha256 = "{}"
stages = ["rcpt"]
[pipeline.step.capabilities]
kv = "greylist"
[pipeline.step.config]
delay_seconds = 2
retry_window_hours = 1
auto_whitelist_after = {auto_whitelist_after}
"#,
            GREYLIST.path, GREYLIST.sha256
        ),
    )
    .unwrap();
    s.spawn()
}

fn rcpt(port: u16, from: &str, to: &str) -> String {
    let mut c = Client::connect(port);
    c.cmd("EHLO client.test");
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

#[test]
fn a_retry_after_the_delay_passes_and_is_remembered() {
    let mut s = start(0);
    let r = rcpt(s.mx_port, "news@example.com", "bob@localhost");
    assert!(
        r.starts_with("451 4.7.1") && r.contains("Greylisted"),
        "{r}"
    );
    let r = rcpt(s.mx_port, "news@example.com", "bob@localhost");
    assert!(r.starts_with("451 4.7.1"), "too soon: {r}");
    std::thread::sleep(Duration::from_millis(2100));
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "news@example.com",
        &["bob@localhost"],
        "Subject: x\r\n\r\nhi",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    // Another recipient is another triplet.
    assert!(rcpt(s.mx_port, "news@example.com", "carol@localhost").starts_with("451"));
    // The pass is kept across a restart.
    s.stop();
    s.restart();
    let r = rcpt(s.mx_port, "NEWS@example.com", "bob@localhost");
    assert!(r.starts_with("250"), "after restart: {r}");
}

#[test]
fn authenticated_sessions_and_whitelisted_networks_skip_it() {
    let s = start(1);
    assert!(s.cli(&["user", "add", "u"], "pw\n").status.success());
    // Authenticated (submission over TLS): no greylisting even on a chain that has it.
    let mut t = support::TlsClient::connect(s.submission_port, "u", "pw");
    assert!(t.cmd("MAIL FROM:<u@localhost>").starts_with("250"));
    let r = t.cmd("RCPT TO:<dave@localhost>");
    assert!(r.starts_with("250"), "{r}");
    t.cmd("QUIT");
    // One pass whitelists the network (auto_whitelist_after = 1): a new triplet passes.
    assert!(rcpt(s.mx_port, "a@example.com", "bob@localhost").starts_with("451"));
    std::thread::sleep(Duration::from_millis(2100));
    assert!(rcpt(s.mx_port, "a@example.com", "bob@localhost").starts_with("250"));
    let r = rcpt(s.mx_port, "other@example.org", "erin@localhost");
    assert!(r.starts_with("250"), "whitelisted network: {r}");
}
