//! The HTTP listener of a running server: `/healthz`, `/readyz`, and `/metrics` changing as
//! mail flows, checked by Prometheus's own `promtool check metrics`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{Client, Sluice, wait_until};

/// One GET; the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
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
    let r = c.send_mail("a@example.com", &["bob@localhost"], "Subject: m\r\n\r\nhi");
    assert!(r.starts_with("250"), "{r}");
    let m = get(http, "/metrics").1;
    assert!(
        sample(
            &m,
            "sluice_plugin_call_seconds_count{chain=\"inbound\",stage=\"rcpt\",step=\"gate\"}"
        ) >= 1.0,
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
