//! The HTTP listener of a running server: `/healthz`, `/readyz`, and `/metrics` changing as
//! mail flows, checked by Prometheus's own `promtool check metrics`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{Client, Sluice, wait_until};

/// One GET; the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let r = support::web::request(port, "GET", path, "");
    (r.status, r.body)
}

/// The value of one sample line, 0 when absent.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn promtool() -> std::path::PathBuf {
    let cached = std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/sluice-tools/promtool");
    if cached.exists() {
        return cached;
    }
    "promtool".into()
}

#[test]
fn health_readiness_and_metrics() {
    let http = support::free_port();
    let s = Sluice::start(&format!("[http]\nbind = \"127.0.0.1:{http}\"\n"));
    let (status, body) = get(http, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = get(http, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    assert_eq!(get(http, "/nope").0, 404);

    let before = get(http, "/metrics").1;
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail("a@example.com", &["bob@localhost"], "Subject: m\r\n\r\nhi");
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<x@elsewhere.example>");
    assert!(r.starts_with("503") || r.starts_with('5'), "{r}");
    assert!(wait_until(Duration::from_secs(10), || s
        .maildir("bob@localhost")
        .len()
        == 1));
    let mut after = String::new();
    assert!(wait_until(Duration::from_secs(5), || {
        after = get(http, "/metrics").1;
        sample(&after, "sluice_deliveries_total{outcome=\"delivered\"}") >= 1.0
    }));
    let delta = |p: &str| sample(&after, p) - sample(&before, p);
    assert_eq!(
        delta("sluice_smtp_connections_total{listener=\"mx\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("sluice_messages_queued_total{kind=\"normal\",listener=\"mx\"}"),
        1.0,
        "{after}"
    );
    assert!(delta("sluice_smtp_replies_total{class=\"2xx\",listener=\"mx\"}") >= 4.0);
    assert!(delta("sluice_smtp_replies_total{class=\"5xx\",listener=\"mx\"}") >= 1.0);
    assert!(delta("sluice_smtp_end_of_data_seconds_count") >= 1.0);
    // Commands by verb: one EHLO, MAIL, DATA; two RCPT.
    for (command, n) in [("ehlo", 1.0), ("mail", 1.0), ("rcpt", 2.0), ("data", 1.0)] {
        assert_eq!(
            delta(&format!(
                "sluice_smtp_commands_total{{command=\"{command}\",listener=\"mx\"}}"
            )),
            n,
            "{command}: {after}"
        );
    }
    // The refused RCPT, by stage.
    assert!(
        delta("sluice_smtp_refusals_total{class=\"5xx\",listener=\"mx\",stage=\"rcpt\"}") >= 1.0,
        "{after}"
    );
    for line in after.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            after.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    // No address or id ever becomes a label.
    assert!(
        !after.contains("bob@") && !after.contains("example.com"),
        "{after}"
    );

    let file = s.dir.path().join("metrics.txt");
    std::fs::write(&file, &after).unwrap();
    let out = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Plugin steps show in the metrics: call durations, verdicts, and failures by kind.
#[test]
fn plugin_steps_are_measured() {
    use sluice_test_plugins::{HOSTILE, PROBE};
    let http = support::free_port();
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"",
        "",
        &format!("[http]\nbind = \"127.0.0.1:{http}\"\n"),
    );
    let step = |name: &str, p: sluice_test_plugins::Plugin, extra: &str, config: &str| {
        format!(
            "[[pipeline.step]]\nname = \"{name}\"\nplugin = \"{}\"\nsha256 = \"{}\"\n{extra}\n[pipeline.step.config]\n{config}\n",
            p.path, p.sha256
        )
    };
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"inbound\"\n{}{}",
            step("gate", PROBE, "stages = [\"rcpt\"]", "mode = \"rcpt\""),
            step(
                "crash",
                HOSTILE,
                "stages = [\"data\"]\non_error = \"skip\"",
                "mode = \"trap\""
            ),
        ),
    )
    .unwrap();
    let s = s.spawn();
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    for _ in 0..2 {
        let r = c.send_mail("a@example.com", &["bob@localhost"], "Subject: m\r\n\r\nhi");
        assert!(r.starts_with("250"), "{r}");
    }
    let m = get(http, "/metrics").1;
    // Each accepted message waited for a group commit of the queue.
    assert!(
        sample(&m, "sluice_queue_commit_seconds_count") >= 1.0,
        "{m}"
    );
    assert!(sample(&m, "sluice_queue_commit_writes_sum") >= 2.0, "{m}");
    assert!(
        sample(
            &m,
            "sluice_plugin_call_seconds_count{chain=\"inbound\",stage=\"rcpt\",step=\"gate\"}"
        ) >= 2.0,
        "{m}"
    );
    // The probe declares itself reusable: one warm instance served both messages; the
    // hostile plugin does not, and a failed instance is never kept either: one per call.
    assert_eq!(
        sample(
            &m,
            "sluice_plugin_instances_total{chain=\"inbound\",step=\"gate\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "sluice_plugin_instances_total{chain=\"inbound\",step=\"crash\"}"
        ),
        2.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "sluice_plugin_verdicts_total{chain=\"inbound\",step=\"gate\",verdict=\"continue\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "sluice_plugin_errors_total{chain=\"inbound\",kind=\"trap\",step=\"crash\"}"
        ) >= 1.0,
        "{m}"
    );
    // The message's score (none: the failed step scored nothing) in the distribution.
    assert!(
        sample(
            &m,
            "sluice_message_score_bucket{chain=\"inbound\",le=\"0\"}"
        ) >= 1.0,
        "{m}"
    );
}

/// The Grafana dashboard in `contrib/grafana/sluice.json` only queries metrics Sluice
/// declares (a renamed metric breaks this test, not the operators' dashboards).
#[test]
fn the_grafana_dashboard_uses_existing_metrics() {
    let declared = sluice_metrics::global().names();
    let dashboard =
        std::fs::read_to_string(support::repo_root().join("contrib/grafana/sluice.json")).unwrap();
    let mut used = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("sluice_") {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                declared.contains(&format!("sluice_{base}")),
                "the dashboard queries sluice_{name}, which Sluice does not export"
            );
            used += 1;
        }
    }
    assert!(used >= 10, "{used} metric references");
}

/// One request with an optional bearer key: status, headers (`name: value` lines,
/// lowercased names), body.
fn call(port: u16, method: &str, path: &str, key: Option<&str>) -> (u16, String, String) {
    let r = support::web::request_as(port, method, path, key, "");
    let head: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    (r.status, head.join("\r\n"), r.body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `sluice api-key create`: the token printed on the last line.
fn new_key(s: &Sluice, name: &str, scope: &str) -> String {
    let out = s.cli(&["api-key", "create", "--name", name, "--scope", scope], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string()
}

fn api_server() -> (Sluice, u16) {
    let dead = support::free_port(); // nothing listens: mail stays deferred
    api_server_routed(dead)
}

/// A server with the API whose mail for `remote.test` goes to 127.0.0.1:`port`, retried
/// only after an hour.
fn api_server_routed(port: u16) -> (Sluice, u16) {
    let http = support::free_port();
    let s = Sluice::configure_with(
        "relay_domains = [\"remote.test\"]",
        "",
        &format!(
            r#"[http]
bind = "127.0.0.1:{http}"

[delivery]
retry_initial = "1h"
retry_max = "1h"

[[route]]
domain = "remote.test"
via = "smarthost"
host = "127.0.0.1:{port}"
tls = "none"
"#
        ),
    )
    .spawn();
    (s, http)
}

/// Keys: 401 without or with a bad key (JSON, WWW-Authenticate), 403 for a read key that
/// writes, a rotated key working through its grace period, a revoked key refused at once.
#[test]
fn api_keys_scopes_rotation_and_revocation() {
    let (s, http) = api_server();
    let (status, head, body) = call(http, "GET", "/api/v1/queue", None);
    assert_eq!(status, 401, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    assert!(
        json(&body)["error"].as_str().unwrap().contains("API key"),
        "{body}"
    );
    let (status, _, body) = call(http, "GET", "/api/v1/queue", Some("sluice_0000_1111"));
    assert_eq!(
        (status, json(&body)["error"].as_str().unwrap()),
        (401, "invalid API key")
    );

    let read = new_key(&s, "dashboards", "read");
    let admin = new_key(&s, "ops", "admin");
    assert!(
        !std::fs::read_to_string(s.data().join("api-keys.json"))
            .unwrap()
            .contains(read.rsplit('_').next().unwrap()),
        "secrets are stored hashed"
    );
    assert_eq!(call(http, "GET", "/api/v1/queue", Some(&read)).0, 200);
    let (status, _, body) = call(http, "POST", "/api/v1/policies/reload", Some(&read));
    assert_eq!(status, 403, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("read scope")
    );
    // No policies configured: the reload is refused with the reason, as JSON.
    let (status, _, body) = call(http, "POST", "/api/v1/policies/reload", Some(&admin));
    assert_eq!(status, 409, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("no policies")
    );

    let id = read.split('_').nth(1).unwrap().to_string();
    let out = s.cli(&["api-key", "rotate", &id, "--grace", "2"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replacement = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert_eq!(
        call(http, "GET", "/api/v1/queue", Some(&read)).0,
        200,
        "grace period"
    );
    assert_eq!(
        call(http, "GET", "/api/v1/queue", Some(&replacement)).0,
        200
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let (status, _, body) = call(http, "GET", "/api/v1/queue", Some(&read));
        status == 401 && body.contains("expired")
    }));
    let listed = String::from_utf8_lossy(&s.cli(&["api-key", "list"], "").stdout).into_owned();
    assert!(
        listed.contains("dashboards") && listed.contains("expires"),
        "{listed}"
    );

    let admin_id = admin.split('_').nth(1).unwrap().to_string();
    assert!(
        s.cli(&["api-key", "revoke", &admin_id], "")
            .status
            .success()
    );
    assert_eq!(call(http, "GET", "/api/v1/queue", Some(&admin)).0, 401);
    let (status, _, body) = call(http, "GET", "/api/v1/nothing", Some(&replacement));
    assert_eq!(status, 404);
    assert!(json(&body)["error"].is_string());
}

/// The queue on a running server: list with filters and paging, show, retry now, delete.
#[test]
fn api_queue_list_show_retry_delete() {
    let (s, http) = api_server();
    let key = new_key(&s, "ops", "admin");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    for rcpt in ["a@remote.test", "b@remote.test", "c@remote.test"] {
        let r = c.send_mail("app@example.com", &[rcpt], "Subject: hi\r\n\r\nhello");
        assert!(r.starts_with("250"), "{r}");
    }
    c.cmd("QUIT");
    let page = |q: &str| json(&call(http, "GET", &format!("/api/v1/queue{q}"), Some(&key)).2);
    assert!(wait_until(Duration::from_secs(20), || {
        page("?state=deferred")["messages"]
            .as_array()
            .unwrap()
            .len()
            == 3
    }));
    // Queue depth by state, from the server's periodic census (every 15 s).
    assert!(
        wait_until(Duration::from_secs(40), || {
            let m = get(http, "/metrics").1;
            sample(&m, "sluice_queue_messages{state=\"deferred\"}") == 3.0
                && m.lines()
                    .any(|l| l == "sluice_queue_messages{state=\"pending\"} 0")
        }),
        "{}",
        get(http, "/metrics").1
    );
    let all = page("");
    let ids: Vec<String> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let one = page("?recipient=B@remote.test");
    assert_eq!(one["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        page("?sender=nobody@example.com")["messages"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Paging: two pages of two.
    let p1 = page("?limit=2");
    assert_eq!(p1["messages"].as_array().unwrap().len(), 2);
    let next = p1["next"].as_str().unwrap().to_string();
    let p2 = page(&format!("?limit=2&after={next}"));
    assert_eq!(p2["messages"].as_array().unwrap().len(), 1);
    assert!(p2["next"].is_null());
    let (status, _, body) = call(http, "GET", "/api/v1/queue?limit=0", Some(&key));
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = call(http, "GET", "/api/v1/queue?state=lost", Some(&key));
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"].is_string());

    let id = &ids[0];
    let (status, _, body) = call(http, "GET", &format!("/api/v1/queue/{id}"), Some(&key));
    assert_eq!(status, 200, "{body}");
    let m = json(&body);
    assert_eq!(m["sender"], "app@example.com");
    let r = &m["recipients"][0];
    assert_eq!(r["status"], "deferred");
    assert_eq!(r["attempts"], 1);
    assert!(r["last_reply"].is_string(), "{body}");
    assert_eq!(m["session"]["listener"], "mx");

    // Retry now: a second attempt within seconds instead of an hour.
    let (status, _, body) = call(
        http,
        "POST",
        &format!("/api/v1/queue/{id}/retry"),
        Some(&key),
    );
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(Duration::from_secs(20), || {
        json(&call(http, "GET", &format!("/api/v1/queue/{id}"), Some(&key)).2)["recipients"][0]["attempts"]
            == 2
    }));

    let (status, _, body) = call(http, "DELETE", &format!("/api/v1/queue/{id}"), Some(&key));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        call(http, "GET", &format!("/api/v1/queue/{id}"), Some(&key)).0,
        404
    );
    assert_eq!(
        call(http, "DELETE", &format!("/api/v1/queue/{id}"), Some(&key)).0,
        404
    );
    assert_eq!(page("")["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        call(http, "POST", "/api/v1/queue/NOPE/retry", Some(&key)).0,
        404
    );
    // The CLI on a running server goes through the API (the queue is locked).
    let out = s.cli(&["queue", "list"], "");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains(&ids[1]) && listed.contains("2 message(s)"),
        "{listed}"
    );
    let shown =
        String::from_utf8_lossy(&s.cli(&["queue", "show", &ids[1]], "").stdout).into_owned();
    assert!(shown.contains("deferred, 1 attempt(s)"), "{shown}");
    assert!(s.cli(&["queue", "delete", &ids[1]], "").status.success());
    assert_eq!(page("")["messages"].as_array().unwrap().len(), 1);
    let doc = json(&call(http, "GET", "/api/v1/openapi.json", None).2);
    assert!(
        doc["paths"]["/api/v1/queue/{id}"]["delete"].is_object(),
        "{doc}"
    );
}

/// The event history: recent events by kind and recipient, one message's story with each
/// delivery attempt's remote reply, from the API and the CLI (through the API while the
/// server runs, from the database once it is stopped).
#[test]
fn api_events_and_message_history() {
    let sink = support::sink::Sink::start();
    let (mut s, http) = api_server_routed(sink.port);
    let key = new_key(&s, "viewer", "read");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    // The sender is routed to the sink too: the bounce's DSN goes there, not to DNS.
    let r = c.send_mail(
        "app@remote.test",
        &["ok@remote.test", "reject@remote.test", "defer@remote.test"],
        "Subject: hi\r\nMessage-ID: <m1@example.com>\r\n\r\nhello",
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    let id = r.split_whitespace().last().unwrap().to_string();
    let get = |path: &str| {
        let (status, _, body) = call(http, "GET", path, Some(&key));
        assert_eq!(status, 200, "{path}: {body}");
        json(&body)
    };
    let history = format!("/api/v1/queue/{id}/history");
    assert!(
        wait_until(Duration::from_secs(20), || {
            get(&history)["events"].as_array().unwrap().len() == 6
        }),
        "{}",
        get(&history)
    );
    let h = get(&history);
    assert_eq!(
        h["in_queue"], true,
        "the deferred recipient keeps it queued: {h}"
    );
    let events = h["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(&kinds[..3], ["queued", "queued", "queued"], "{h}");
    let of = |rcpt: &str, kind: &str| {
        events
            .iter()
            .find(|e| e["recipient"] == rcpt && e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event for {rcpt}: {h}"))
    };
    assert!(
        of("ok@remote.test", "delivered")["reply"]
            .as_str()
            .unwrap()
            .starts_with("250")
    );
    let bounced = of("reject@remote.test", "bounced");
    assert_eq!(bounced["reply"], "550 5.1.1 User unknown");
    assert_eq!(bounced["message_id"], "m1@example.com");
    let remote = bounced["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "remote_mta")
        .unwrap_or_else(|| panic!("{bounced}"));
    assert!(
        remote["value"].as_str().unwrap().contains("127.0.0.1"),
        "{remote}"
    );
    assert_eq!(
        of("defer@remote.test", "deferred")["reply"],
        "451 4.2.1 Mailbox busy"
    );
    let times: Vec<u64> = events.iter().map(|e| e["time"].as_u64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );

    // Recent events: by kind, by recipient (any case), both, paged, bounded in time.
    let b = get("/api/v1/events?kind=bounced");
    let b = b["events"].as_array().unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["recipient"], "reject@remote.test");
    let d = get("/api/v1/events?recipient=DEFER@Remote.test");
    let kinds: Vec<&str> = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["deferred", "queued"], "newest first");
    let both = get("/api/v1/events?recipient=defer@remote.test&kind=queued");
    assert_eq!(both["events"].as_array().unwrap().len(), 1);
    // Every event (once the DSN to the sender is delivered too), then in two pages.
    assert!(wait_until(Duration::from_secs(20), || {
        get("/api/v1/events?kind=delivered&recipient=app@remote.test")["events"]
            .as_array()
            .unwrap()
            .len()
            == 1
    }));
    let all = get("/api/v1/events?limit=1000")["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(all.len() >= 6, "{all:?}");
    let p1 = get("/api/v1/events?limit=4");
    assert_eq!(p1["events"].as_array().unwrap()[..], all[..4]);
    let next = p1["next"].as_str().unwrap().to_string();
    let p2 = get(&format!("/api/v1/events?limit=1000&before={next}"));
    assert_eq!(p2["events"].as_array().unwrap()[..], all[4..]);
    assert!(p2["next"].is_null());
    let future = 4_102_444_800u64; // 2100-01-01
    assert!(
        get(&format!("/api/v1/events?since={future}"))["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    for bad in ["limit=0", "limit=1001", "since=-1", "since=soon"] {
        let (status, _, body) = call(http, "GET", &format!("/api/v1/events?{bad}"), Some(&key));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    let (status, _, body) = call(http, "GET", "/api/v1/queue/NOPE/history", Some(&key));
    assert_eq!(status, 404, "{body}");
    assert_eq!(call(http, "GET", "/api/v1/events", None).0, 401);

    // The CLI: through the API now, from the database once the server is stopped.
    let bounces = s.cli_ok(&["events", "--kind", "bounced"]);
    assert!(
        bounces.contains("reject@remote.test") && bounces.contains("550 5.1.1"),
        "{bounces}"
    );
    let online = s.cli_ok(&["queue", "history", &id]);
    assert_eq!(online.lines().count(), 6, "{online}");
    assert!(
        online.contains("\tdeferred\t") && online.contains("451 4.2.1"),
        "{online}"
    );
    s.stop();
    let offline = s.cli_ok(&["queue", "history", &id]);
    assert_eq!(offline, online);
    let out = s.cli(&["queue", "history", "NOPE"], "");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no message NOPE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An independent OpenAPI fuzzer (schemathesis) against the running server, every check:
/// no 5xx, every response as the document says.
#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    let (s, http) = api_server();
    let key = new_key(&s, "fuzz", "admin");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail("app@example.com", &["a@remote.test"], "Subject: x\r\n\r\nx");
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    let st = std::process::Command::new("st")
        .args([
            "run",
            &format!("http://127.0.0.1:{http}/api/v1/openapi.json"),
        ])
        .args(["--checks", "all", "--max-examples", "40", "--seed", "1"])
        .args(["--request-timeout", "10", "-H"])
        .arg(format!("Authorization: Bearer {key}"))
        .output()
        .expect("schemathesis (`st`) is installed by scripts/setup.sh");
    let out = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// One session that fails AUTH once (STARTTLS first: AUTH is only offered over TLS); the
/// 535 reply.
fn fail_auth(port: u16) -> String {
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1024];
    let n = raw.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"220"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    raw.write_all(b"EHLO client.test\r\n").unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"250 ") || !got.ends_with(b"\r\n") {
        let n = raw.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    raw.write_all(b"STARTTLS\r\n").unwrap();
    let n = raw.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"220"));
    let mut c = support::TlsClient::handshake(raw);
    c.cmd("EHLO client.test");
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode("\0u\0wrong");
    c.cmd(&format!("AUTH PLAIN {token}"))
}

/// The greeting a new connection gets.
fn greeting(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Too many failed AUTH attempts ban the address at connect; the ban shows in the API, the
/// CLI and the metrics, expires by itself, and can be lifted.
#[test]
fn failed_auth_bans_the_address_until_it_expires_or_is_lifted() {
    let http = support::free_port();
    let s = Sluice::start(&format!(
        "[http]\nbind = \"127.0.0.1:{http}\"\n\n[protection]\nauth_failures = 3\nban_for = \"3s\"\n"
    ));
    assert!(s.cli(&["user", "add", "u"], "pw\n").status.success());
    let key = new_key(&s, "ops", "admin");
    for _ in 0..3 {
        assert!(fail_auth(s.submission_port).starts_with("535 5.7.8"));
    }
    let g = greeting(s.mx_port);
    assert!(g.starts_with("421 4.7.1"), "{g}");
    let bans = json(&call(http, "GET", "/api/v1/bans", Some(&key)).2);
    assert_eq!(bans[0]["address"], "127.0.0.1", "{bans}");
    let listed = String::from_utf8_lossy(&s.cli(&["ban", "list"], "").stdout).into_owned();
    assert!(listed.contains("127.0.0.1"), "{listed}");
    let metrics = get(http, "/metrics").1;
    assert!(
        sample(
            &metrics,
            "sluice_smtp_auth_bans_total{listener=\"submission\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "sluice_smtp_connections_refused_total{listener=\"mx\",reason=\"banned\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // Expires by itself.
    assert!(wait_until(Duration::from_secs(10), || greeting(s.mx_port)
        .starts_with("220")));
    // Banned again, then lifted from the CLI.
    for _ in 0..3 {
        fail_auth(s.submission_port);
    }
    assert!(greeting(s.mx_port).starts_with("421 4.7.1"));
    let out = s.cli(&["ban", "lift", "127.0.0.1"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(greeting(s.mx_port).starts_with("220"));
    let (status, _, body) = call(http, "DELETE", "/api/v1/bans/127.0.0.1", Some(&key));
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = call(http, "DELETE", "/api/v1/bans/not-an-ip", Some(&key));
    assert_eq!(status, 404);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("not an IP address")
    );
}

/// A ban outlives a restart (the server keeps them in `<data_dir>/bans.json`, saved within a
/// second: here the server is killed, not stopped), and so does lifting it.
#[test]
fn bans_outlive_a_restart() {
    let http = support::free_port();
    let mut s = Sluice::start(&format!(
        "[http]\nbind = \"127.0.0.1:{http}\"\n\n[protection]\nauth_failures = 2\nban_for = \"10m\"\n"
    ));
    assert!(s.cli(&["user", "add", "u"], "pw\n").status.success());
    for _ in 0..2 {
        assert!(fail_auth(s.submission_port).starts_with("535 5.7.8"));
    }
    assert!(greeting(s.mx_port).starts_with("421 4.7.1"));
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    s.restart();
    let g = greeting(s.mx_port);
    assert!(
        g.starts_with("421 4.7.1"),
        "still banned after a restart: {g}"
    );
    let listed = s.cli_ok(&["ban", "list"]);
    assert!(listed.contains("127.0.0.1"), "{listed}");
    s.cli_ok(&["ban", "lift", "127.0.0.1"]);
    assert!(greeting(s.mx_port).starts_with("220"));
    // The lift is saved within a second too.
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    s.restart();
    let g = greeting(s.mx_port);
    assert!(g.starts_with("220"), "the lift outlives a restart: {g}");
}

/// More connections per minute than allowed from one address get 421 at connect.
#[test]
fn connection_rate_per_address_is_limited() {
    let s = Sluice::start("[protection]\nconnections_per_minute = 20\n");
    // Starting the server probed its listeners: a few of the 20 are used already.
    let greetings: Vec<String> = (0..25).map(|_| greeting(s.mx_port)).collect();
    let accepted = greetings.iter().filter(|g| g.starts_with("220")).count();
    assert!(
        (15..=20).contains(&accepted),
        "{accepted} accepted: {greetings:?}"
    );
    let refused = greetings.last().unwrap();
    assert!(
        refused.starts_with("421 4.7.0") && refused.contains("your address"),
        "{refused}"
    );
}

/// `--log-format json`: one JSON object per line, and the accepted message and its delivery
/// attempt each on a line with the queue id.
#[test]
fn json_logs_follow_a_message_by_its_queue_id() {
    let s = Sluice::configure_with("", "", "");
    let mut s = s;
    s.set_env("SLUICE_LOG_FORMAT", "json");
    s.restart();
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "a@example.com",
        &["bob@localhost"],
        "Subject: x\r\n\r\nhello",
    );
    assert!(r.starts_with("250"), "{r}");
    let id = r.rsplit(' ').next().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(10), || s
        .log()
        .contains("\"delivery\"")));
    let lines: Vec<serde_json::Value> = s.log().lines().map(json).collect();
    let about: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["id"] == id.as_str())
        .collect();
    let messages: Vec<&str> = about
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(messages.contains(&"queued"), "{about:?}");
    assert!(messages.contains(&"delivery"), "{about:?}");
}
