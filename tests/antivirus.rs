//! The `antivirus` plugin against a real clamd: an EICAR attachment is rejected naming the
//! signature (or quarantined), a clean message passes, and clamd stopped or too slow gives
//! the step's `on_error`.

mod support;

use sluice_test_plugins::ANTIVIRUS;
use std::time::{Duration, Instant};
use support::clamd::{Clamd, EICAR, SIGNATURE};
use support::{Client, Sluice, wait_until};

fn start(clamd: &str, action: &str, on_error: &str, timeout_ms: u64) -> Sluice {
    start_with(clamd, action, on_error, timeout_ms, "")
}

/// [`start`] with more lines of the step's config.
fn start_with(clamd: &str, action: &str, on_error: &str, timeout_ms: u64, config: &str) -> Sluice {
    let s = Sluice::configure_with("policies = \"policy.toml\"", "", "");
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            r#"[[pipeline]]
name = "inbound"
[[pipeline.step]]
name = "antivirus"
plugin = "{}"
sha256 = "{}"
stages = ["data"]
timeout_ms = {timeout_ms}
on_error = "{on_error}"
[pipeline.step.capabilities]
tcp = ["{clamd}"]
[pipeline.step.config]
clamd = "{clamd}"
action = "{action}"
{config}
"#,
            ANTIVIRUS.path, ANTIVIRUS.sha256
        ),
    )
    .unwrap();
    s.spawn()
}

fn with_attachment(subject: &str, content: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(content);
    format!(
        "From: a@example.com\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"file.com\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--"
    )
}

#[test]
fn eicar_is_caught_clean_mail_passes_and_a_stopped_clamd_gives_on_error() {
    let mut clamd = Clamd::start();
    let addr = format!("127.0.0.1:{}", clamd.port);
    let s = start(&addr, "reject", "tempfail", 10_000);
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "a@example.com",
        &["bob@localhost"],
        &with_attachment("clean", "just a file"),
    );
    assert!(r.starts_with("250"), "{r}");
    // The raw message is streamed: the base64 attachment is decoded by clamd itself.
    let r = c.send_mail(
        "a@example.com",
        &["bob@localhost"],
        &with_attachment("eicar", EICAR),
    );
    assert!(r.starts_with("554 5.7.1") && r.contains(SIGNATURE), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    let mail = &s.maildir("bob@localhost")[0];
    assert!(mail.contains("X-Virus-Scanned: clamd: clean"), "{mail}");
    assert!(mail.contains("Subject: clean"));

    // Quarantine instead of reject.
    let mut q = start(&addr, "quarantine", "tempfail", 10_000);
    let mut c2 = Client::connect(q.mx_port);
    c2.cmd("EHLO client.test");
    let r = c2.send_mail(
        "a@example.com",
        &["carol@localhost"],
        &with_attachment("eicar", EICAR),
    );
    assert!(r.starts_with("250"), "{r}");
    c2.cmd("QUIT");
    std::thread::sleep(Duration::from_millis(500));
    assert!(q.maildir("carol@localhost").is_empty());
    q.stop();
    let list = String::from_utf8_lossy(&q.cli(&["queue", "list"], "").stdout).into_owned();
    assert!(
        list.contains(&format!("quarantined: virus found: {SIGNATURE}")),
        "{list}"
    );

    // clamd gone: on_error = tempfail answers 451, nothing is accepted unscanned.
    clamd.stop();
    let r = c.send_mail(
        "a@example.com",
        &["bob@localhost"],
        &with_attachment("while down", "x"),
    );
    assert!(r.starts_with("451 4.3.0"), "{r}");
}

/// A message larger than one INSTREAM chunk goes in several, and the virus after the first
/// chunk is still found; a clean one of the same size passes.
#[test]
fn a_message_in_many_chunks_is_scanned_whole() {
    let clamd = Clamd::start();
    let addr = format!("127.0.0.1:{}", clamd.port);
    let s = start_with(&addr, "reject", "tempfail", 10_000, "chunk_bytes = 512");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let padded = |content: &str| {
        with_attachment("chunks", content).replacen(
            "see attached",
            &"a line of text before the attachment, long enough to fill chunks\r\n".repeat(60),
            1,
        )
    };
    let eicar = padded(EICAR);
    assert!(eicar.len() > 8 * 512, "{}", eicar.len());
    let r = c.send_mail("a@example.com", &["bob@localhost"], &eicar);
    assert!(r.starts_with("554 5.7.1") && r.contains(SIGNATURE), "{r}");
    let r = c.send_mail("a@example.com", &["bob@localhost"], &padded("just a file"));
    assert!(r.starts_with("250"), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    assert!(s.maildir("bob@localhost")[0].contains("X-Virus-Scanned: clamd: clean"));
}

/// A clamd that accepts and never answers: the step's wall-clock limit ends the call and
/// `on_error` decides (here `skip`: accepted, unscanned, no header).
#[test]
fn a_silent_clamd_times_out_into_on_error() {
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tarpit.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in tarpit.incoming().take(1) {
            keep.push(s);
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let s = start(&addr, "reject", "skip", 1_000);
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let t = Instant::now();
    let r = c.send_mail(
        "a@example.com",
        &["bob@localhost"],
        &with_attachment("slow", EICAR),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    assert!(!s.maildir("bob@localhost")[0].contains("X-Virus-Scanned"));
    drop(held);
}
