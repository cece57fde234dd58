//! The archive end to end: an inbound message forwarded to a real HTTP endpoint
//! (`webhook-forward` at the queued stage) and an outbound one submitted with AUTH are both
//! archived by the `archive` plugin with what an operator looks for later (envelope,
//! session, TLS, the endpoint's status and reply, processing time; authentication
//! results travel the same way, as `meta.sluice.auth.*`, when checks are configured); they are found by recipient, sender domain, subject words, Message-ID and dates
//! through the API and `sluice archive` (through the API while the server runs, directly
//! once it is stopped); the raw download is the stored message; `sluice archive verify`
//! passes, and fails once a stored byte is changed.

mod support;

use sluice_test_plugins::{ARCHIVE, WEBHOOK_FORWARD};
use std::time::Duration;
use support::hooks::Receiver;
use support::sink::Sink;
use support::web::request_as;
use support::{Client, Sluice, TlsClient, step, wait_until};

fn archive_step(namespace: &str) -> String {
    step(
        "archive",
        ARCHIVE,
        &format!("stages = [\"queued\"]\n[pipeline.step.capabilities]\nblobs = \"{namespace}\""),
        "retention_days = 30",
    )
}

const INBOUND: &str = concat!(
    "From: Alice <alice@remote.test>\r\nTo: support@in.example.com\r\n",
    "Subject: =?utf-8?q?Order_late=2C_h=C3=A9lp?= please\r\n",
    "Message-ID: <q1@remote.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n",
    "X-Spam-Score: 1.5\r\n\r\nMy order is late.\r\n"
);

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn attr<'a>(e: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    e["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["key"] == key)
        .filter_map(|a| a["value"].as_str())
        .collect()
}

#[test]
fn both_directions_are_archived_searchable_downloadable_and_verified() {
    let sink = Sink::start();
    let http_port = support::free_port();
    let hook_port = support::free_port();
    let _receiver = Receiver::start_with(hook_port, |_, _| (200, "stored as ticket 42".into()));
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nlocal_domains = [\"in.example.com\"]",
        "",
        &format!(
            "[http]\nbind = \"127.0.0.1:{http_port}\"\n\n{}",
            support::route_to(sink.port)
        ),
    );
    let forward = step(
        "forward",
        WEBHOOK_FORWARD,
        &format!(
            "stages = [\"queued\"]\ntimeout_ms = 5000\n[pipeline.step.capabilities]\nhttp = [\"http://127.0.0.1:{hook_port}\"]"
        ),
        &format!(
            "url = \"http://127.0.0.1:{hook_port}/in\"\nsecret = \"forward-secret-0123456789\"\ndeliver = true"
        ),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"outbound\"\nlisteners = [\"submission\"]\nauthenticated = true\n{}\
             [[pipeline]]\nname = \"inbound\"\nlisteners = [\"mx\"]\n{forward}{}",
            archive_step("outbound"),
            archive_step("inbound"),
        ),
    )
    .unwrap();
    s.cli(&["user", "add", "app"], "pw\n");
    let mut s = s.spawn();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO mail.remote.test");
    let r = c.send_mail("alice@remote.test", &["support@in.example.com"], INBOUND);
    assert!(r.starts_with("250"), "{r}");
    let mut t = TlsClient::connect(s.submission_port, "app", "pw");
    let r = t.send_mail(
        "app@example.com",
        &["Customer@Remote.test"],
        "From: app@example.com\r\nTo: customer@remote.test\r\nSubject: Your invoice for November\r\nMessage-ID: <inv-7@example.com>\r\n\r\nThanks.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");

    let key = std::fs::read_to_string(s.data().join("cli.key")).unwrap();
    let key = Some(key.trim());
    let get = |path: &str| {
        let r = request_as(http_port, "GET", path, key, "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        json(&r.body)
    };
    assert!(
        wait_until(
            Duration::from_secs(20),
            || get("/api/v1/archive")["entries"].as_array().unwrap().len() == 2
        ),
        "both messages archived: {}",
        s.log()
    );

    // Inbound: the forward's result, the session, the processing time.
    let page = get("/api/v1/archive?recipient=SUPPORT@in.example.com");
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{page}");
    let e = &entries[0];
    assert_eq!(e["namespace"], "inbound");
    assert_eq!(e["sender"], "alice@remote.test");
    assert_eq!(e["message_id"], "q1@remote.test");
    assert_eq!(e["subject"], "Order late, hélp please", "decoded");
    assert_eq!(attr(e, "direction"), ["inbound"]);
    assert_eq!(attr(e, "client-ip"), ["127.0.0.1"]);
    assert_eq!(attr(e, "helo"), ["mail.remote.test"]);
    assert_eq!(attr(e, "date"), ["2026-11-23T10:00:00Z"]);
    assert_eq!(attr(e, "header.x-spam-score"), ["1.5"]);
    assert_eq!(attr(e, "meta.forward.status"), ["200"]);
    assert!(
        attr(e, "meta.forward.response")[0].contains("stored as ticket 42"),
        "{e}"
    );
    assert!(
        attr(e, "meta.sluice.timing.data-ms")[0]
            .parse::<u64>()
            .is_ok(),
        "{e}"
    );
    let inbound_id = e["id"].as_u64().unwrap();

    // Outbound: the AUTH user and TLS.
    let page = get("/api/v1/archive?sender=%40example.com");
    let o = &page["entries"].as_array().unwrap()[0];
    assert_eq!(o["namespace"], "outbound");
    assert_eq!(o["recipients"][0], "Customer@Remote.test");
    assert_eq!(attr(o, "direction"), ["outbound"]);
    assert_eq!(attr(o, "auth-user"), ["app"]);
    assert!(attr(o, "tls")[0].contains("TLS"), "{o}");

    // The other searches.
    let ids = |path: &str| -> Vec<u64> {
        get(path)["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect()
    };
    let outbound_id = o["id"].as_u64().unwrap();
    assert_eq!(
        ids("/api/v1/archive?recipient=customer%40remote.test"),
        [outbound_id]
    );
    assert_eq!(
        ids("/api/v1/archive?subject=invoice%20NOVEMBER"),
        [outbound_id]
    );
    assert_eq!(ids("/api/v1/archive?subject=h%C3%A9lp"), [inbound_id]);
    assert_eq!(
        ids("/api/v1/archive?message_id=%3Cq1%40remote.test%3E"),
        [inbound_id]
    );
    assert_eq!(
        ids(&format!("/api/v1/archive?since={}", before - 5)).len(),
        2
    );
    assert!(ids(&format!("/api/v1/archive?until={}", before - 5)).is_empty());
    assert!(ids("/api/v1/archive?since=1577836800&until=1609459200").is_empty());
    assert_eq!(
        ids("/api/v1/archive?namespace=inbound&limit=1"),
        [inbound_id]
    );
    let r = request_as(http_port, "GET", "/api/v1/archive?since=yesterday", key, "");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("since"), "{}", r.body);
    let out = s.cli_ok(&[
        "archive",
        "search",
        "--since",
        "2020-01-01",
        "--until",
        "2020-12-31",
    ]);
    assert!(out.is_empty(), "{out}");
    let r = request_as(http_port, "GET", "/api/v1/archive/999999", key, "");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = request_as(http_port, "GET", "/api/v1/archive", None, "");
    assert_eq!(r.status, 401);

    // The raw download is the stored message: its SHA-256 is the entry's.
    let r = request_as(
        http_port,
        "GET",
        &format!("/api/v1/archive/{inbound_id}/raw"),
        key,
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("message/rfc822"));
    assert!(r.body.contains("Message-ID: <q1@remote.test>"));
    assert!(
        r.body.contains("Received: from mail.remote.test"),
        "{}",
        r.body
    );
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(r.body.as_bytes())),
        e["sha256"].as_str().unwrap()
    );

    // The CLI while the server runs (through the API).
    let out = s.cli_ok(&["archive", "search", "--recipient", "support@in.example.com"]);
    assert!(out.starts_with(&format!("{inbound_id}\t")), "{out}");
    assert!(out.contains("Order late, hélp please"), "{out}");
    // Before any verification the API has no outcome to show; the CLI starts one in the
    // background and waits for it; the API then shows that outcome.
    let v = request_as(http_port, "GET", "/api/v1/archive/verify", key, "");
    assert_eq!(v.status, 404, "{}", v.body);
    let out = s.cli_ok(&["archive", "verify"]);
    assert!(
        out.contains("2 messages") && out.trim_end().ends_with("ok"),
        "{out}"
    );
    let v = request_as(http_port, "GET", "/api/v1/archive/verify", key, "");
    let status: serde_json::Value = serde_json::from_str(&v.body).unwrap();
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["report"]["ok"], true, "{status}");
    assert!(status["finished"].as_u64().unwrap() >= status["started"].as_u64().unwrap());
    let online_show = s.cli_ok(&["archive", "show", &inbound_id.to_string()]);
    assert!(
        online_show.contains("meta.forward.status: 200"),
        "{online_show}"
    );

    // And with the server stopped (directly): the same answers.
    s.stop();
    assert_eq!(
        s.cli_ok(&["archive", "show", &inbound_id.to_string()]),
        online_show
    );
    let raw_file = s.dir.path().join("m.eml");
    s.cli_ok(&[
        "archive",
        "raw",
        &inbound_id.to_string(),
        "-o",
        raw_file.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&raw_file).unwrap(), r.body);
    let out = s.cli_ok(&["archive", "verify"]);
    assert!(out.contains("head: entry 2"), "{out}");

    // A changed byte in a segment: verify names the entry and fails.
    let segments = s.data().join("archive/segments");
    let seg = std::fs::read_dir(&segments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let out = s.cli(&["archive", "verify"], "");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("problem: entry"), "{text}");
}
