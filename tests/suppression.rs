//! The `suppression` plugin and the host's view of its list: a hard bounce suppresses the
//! recipient (through the event bus), the next message to it gets 550 5.7.1 at RCPT; the API
//! and the CLI list, add, remove and export entries, on a running and on a stopped server.

mod support;

use sluice_test_plugins::SUPPRESSION;
use std::time::Duration;
use support::{Client, Sink, Sluice, wait_until};

fn start(sink: &Sink, http: u16) -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nrelay_domains = [\"example.net\"]",
        "",
        &format!(
            r#"[http]
bind = "127.0.0.1:{http}"

[delivery]
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
name = "outbound"
[[pipeline.step]]
name = "suppression"
plugin = "{}"
sha256 = "{}"
stages = ["rcpt", "event"]
[pipeline.step.capabilities]
kv = "suppression"
[pipeline.step.config]
stream = "outbound"
"#,
            SUPPRESSION.path, SUPPRESSION.sha256
        ),
    )
    .unwrap();
    s.spawn()
}

fn rcpt(port: u16, to: &str) -> String {
    let mut c = Client::connect(port);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<app@example.com>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

#[test]
fn hard_bounces_suppress_and_operators_manage_the_list() {
    let sink = Sink::start();
    let http = support::free_port();
    let mut s = start(&sink, http);
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "app@example.com",
        &["reject-me@example.net"],
        "Subject: hi\r\n\r\nhello",
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    // The 550 at the sink bounces it; the bounced event reaches the plugin's event stage.
    assert!(
        wait_until(Duration::from_secs(20), || s
            .cli_ok(&["suppression", "list", "--stream", "outbound"])
            .contains("reject-me@example.net  hard-bounce  recipient")),
        "{}",
        s.log()
    );
    let r = rcpt(s.mx_port, "Reject-Me@example.net");
    assert!(
        r.starts_with("550 5.7.1") && r.contains("hard-bounce") && r.contains("outbound"),
        "{r}"
    );
    assert!(rcpt(s.mx_port, "fine@example.net").starts_with("250"));

    // Operators: add (CLI, through the API while running), refused; remove, accepted.
    s.cli_ok(&["suppression", "add", "later@example.net"]);
    assert!(rcpt(s.mx_port, "later@example.net").starts_with("550 5.7.1"));
    let csv = s.cli_ok(&["suppression", "export", "--stream", "outbound"]);
    assert!(csv.starts_with("address,reason,origin,time\n"), "{csv}");
    assert!(csv.contains("later@example.net,manual,admin,"), "{csv}");
    assert!(
        csv.contains("reject-me@example.net,hard-bounce,recipient,"),
        "{csv}"
    );
    s.cli_ok(&["suppression", "remove", "later@example.net"]);
    assert!(rcpt(s.mx_port, "later@example.net").starts_with("250"));
    let out = s.cli(&["suppression", "remove", "later@example.net"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not suppressed"));

    // On a stopped server the CLI opens the stores itself; the entry holds after a restart.
    s.stop();
    s.cli_ok(&["suppression", "add", "offline@example.net"]);
    assert!(
        s.cli_ok(&["suppression", "list"])
            .contains("offline@example.net  manual  admin")
    );
    s.restart();
    assert!(rcpt(s.mx_port, "offline@example.net").starts_with("550 5.7.1"));
    // Another stream is another list.
    assert!(
        !s.cli_ok(&["suppression", "list", "--stream", "broadcast"])
            .contains("offline@")
    );
}
