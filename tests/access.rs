//! The `access` plugin: denied networks refused at connect, denied senders at MAIL, denied
//! recipients at RCPT, and allowed senders skip the content checks after it.

mod support;

use sluice_test_plugins::{ACCESS, TAG};
use std::time::Duration;
use support::{Client, Sluice, wait_until};

fn start(access_config: &str) -> Sluice {
    let s = Sluice::configure_with("policies = \"policy.toml\"", "", "");
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            r#"[[pipeline]]
name = "inbound"
[pipeline.thresholds]
quarantine = 5.0

[[pipeline.step]]
name = "access"
plugin = "{}"
sha256 = "{}"
[pipeline.step.config]
{access_config}

[[pipeline.step]]
name = "content"
plugin = "{}"
sha256 = "{}"
stages = ["data"]
[pipeline.step.config]
header = "X-Content-Checked"
value = "yes"
words = {{ "free money" = 6.0 }}
"#,
            ACCESS.path, ACCESS.sha256, TAG.path, TAG.sha256
        ),
    )
    .unwrap();
    s.spawn()
}

#[test]
fn deny_lists_refuse_and_allow_lists_skip_content_checks() {
    let s = start(
        "allow_senders = [\"@trusted.example\"]\ndeny_senders = [\"@spammer.example\"]\ndeny_recipients = [\"old@localhost\"]",
    );
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.cmd("MAIL FROM:<x@mail.spammer.example>");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(c.cmd("MAIL FROM:<x@example.com>").starts_with("250"));
    let r = c.cmd("RCPT TO:<OLD@localhost>");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    c.cmd("RSET");
    // The same spammy message: quarantined from a stranger, delivered from the allowed domain
    // without the content step running.
    let body = "Subject: free money\r\n\r\nfree money inside";
    assert!(
        c.send_mail("x@example.com", &["bob@localhost"], body)
            .starts_with("250")
    );
    assert!(
        c.send_mail("ceo@trusted.example", &["bob@localhost"], body)
            .starts_with("250")
    );
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(500));
    let mail = s.maildir("bob@localhost");
    assert_eq!(mail.len(), 1, "the stranger's copy is quarantined");
    assert!(mail[0].contains("ceo@trusted.example") || mail[0].contains("Subject: free money"));
    assert!(!mail[0].contains("X-Content-Checked"), "{}", mail[0]);
}

#[test]
fn a_denied_network_is_refused_at_connect() {
    use std::io::Read;
    let s = start("deny_clients = [\"127.0.0.0/8\"]");
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.mx_port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    let n = raw.read(&mut buf).unwrap();
    let r = String::from_utf8_lossy(&buf[..n]);
    assert!(r.starts_with("554 5.7.1"), "{r}");
}
