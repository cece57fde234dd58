//! DMARC aggregate reports by mail: reports in the shapes Google (zip), Microsoft and Yahoo
//! (gzip) send, and a plain XML one, arrive over SMTP at the report address; the
//! `dmarc-reports` plugin stores them (once, however often sent) and drops the mail; the
//! summary per domain and day, the list and one report with its records come out of the
//! admin API and the CLI, through the API while the server runs and from the store when
//! it is stopped. Damaged attachments, reports about other domains and mail without a
//! report get `550 5.6.0` with the reason; other recipients are not touched.

mod support;

use base64::Engine;
use serde_json::Value;
use sluice_test_plugins::DMARC_REPORTS;
use support::{Client, Sluice, step, web};

const STEM: &str = "example.com!1763596800!1763683199";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(support::repo_root().join("tests/data/dmarc").join(name)).unwrap()
}

fn base64_lines(bytes: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(bytes);
    b.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Google's shape: the zip is the whole message.
fn google_mail() -> String {
    let name = format!("google.com!{STEM}.zip");
    format!(
        "From: noreply-dmarc-support@google.com\r\nTo: dmarc-rua@example.com\r\n\
         Subject: Report domain: example.com Submitter: google.com Report-ID: 9876543210987654321\r\n\
         Message-ID: <9876543210987654321@google.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/zip; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        base64_lines(&fixture(&name))
    )
}

/// Microsoft's and Yahoo's shape: a text part, then the report attachment.
fn multipart_mail(from: &str, name: &str, content_type: &str, content: &[u8]) -> String {
    format!(
        "From: {from}\r\nTo: dmarc-rua@example.com\r\nSubject: Report Domain: example.com\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is a DMARC aggregate report.\r\n\
         --b1\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        base64_lines(content)
    )
}

fn microsoft_mail() -> String {
    let name = format!("enterprise.protection.outlook.com!{STEM}.xml.gz");
    multipart_mail(
        "dmarcreport@microsoft.com",
        &name,
        "application/gzip",
        &fixture(&name),
    )
}

fn yahoo_mail() -> String {
    let name = format!("yahoo.com!{STEM}.xml.gz");
    multipart_mail(
        "noreply@dmarc.yahoo.com",
        &name,
        "application/octet-stream",
        &fixture(&name),
    )
}

/// A report about example.org, as plain XML.
fn other_domain_mail() -> String {
    let xml = "<?xml version=\"1.0\"?><feedback><report_metadata><org_name>mx.example.net</org_name>\
        <email>dmarc@example.net</email><report_id>1</report_id><date_range><begin>1763596800</begin>\
        <end>1763683199</end></date_range></report_metadata><policy_published><domain>example.org</domain>\
        <p>none</p></policy_published><record><row><source_ip>192.0.2.1</source_ip><count>1</count>\
        <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>\
        </policy_evaluated></row><identifiers><header_from>example.org</header_from></identifiers>\
        <auth_results><spf><domain>example.org</domain><result>pass</result></spf></auth_results>\
        </record></feedback>";
    multipart_mail(
        "dmarc@example.net",
        "report.xml",
        "text/xml",
        xml.as_bytes(),
    )
}

fn start(http: u16) -> Sluice {
    start_with(http, "", "")
}

/// The report step with extra capability lines and extra config lines.
fn start_with(http: u16, capabilities: &str, config: &str) -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nlocal_domains = [\"localhost\", \"example.com\"]",
        "",
        &format!("[http]\nbind = \"127.0.0.1:{http}\"\n"),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"inbound\"\nlisteners = [\"mx\"]\n{}",
            step(
                "dmarc-reports",
                DMARC_REPORTS,
                &format!("stages = [\"data\"]\non_error = \"tempfail\"\n[pipeline.step.capabilities]\nkv = \"dmarc\"\n{capabilities}"),
                &format!("addresses = [\"dmarc-rua@example.com\"]\ndomains = [\"example.com\"]\nretention_days = 30\n{config}")
            ),
        ),
    )
    .unwrap();
    s.spawn()
}

fn send(s: &Sluice, to: &str, body: &str) -> String {
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO mail.remote.test");
    let r = c.send_mail("reports@remote.test", &[to], body);
    c.cmd("QUIT");
    r
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn aggregate_reports_by_mail_are_stored_summarised_and_shown() {
    let http = support::free_port();
    let mut s = start(http);
    for mail in [google_mail(), microsoft_mail(), yahoo_mail(), google_mail()] {
        let r = send(&s, "dmarc-rua@example.com", &mail);
        assert!(r.starts_with("250"), "{r}\n{}", s.log());
    }
    // Refused with the reason: about someone else's domain, damaged, no report at all.
    let r = send(&s, "dmarc-rua@example.com", &other_domain_mail());
    assert!(
        r.starts_with("550 5.6.0") && r.contains("example.org"),
        "{r}"
    );
    let gz = fixture(&format!("enterprise.protection.outlook.com!{STEM}.xml.gz"));
    let damaged = multipart_mail(
        "x@remote.test",
        "r.xml.gz",
        "application/gzip",
        &gz[..gz.len() / 2],
    );
    let r = send(&s, "dmarc-rua@example.com", &damaged);
    assert!(r.starts_with("550 5.6.0") && r.contains("gzip"), "{r}");
    let r = send(
        &s,
        "dmarc-rua@example.com",
        "Subject: hello\r\n\r\nJust text.\r\n",
    );
    assert!(
        r.starts_with("550 5.6.0") && r.contains("no report attachment"),
        "{r}"
    );
    // Other recipients: the step lets their mail through.
    let r = send(
        &s,
        "postmaster@example.com",
        "Subject: hello\r\n\r\nFor a person.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(support::wait_until(
        std::time::Duration::from_secs(10),
        || { s.maildir("postmaster@example.com").len() == 1 }
    ));
    assert!(
        s.maildir("dmarc-rua@example.com").is_empty(),
        "reports are dropped"
    );

    // The summary (CLI through the API): three reports, the duplicate stored once.
    let sum = json(&s.cli_ok(&["dmarc", "report", "--domain", "example.com", "--json"]));
    let days = sum["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{sum}");
    let d = &days[0];
    assert_eq!(d["day"], "2025-11-20");
    assert_eq!(d["reports"], 3);
    assert_eq!(d["messages"], 130 + 58 + 40);
    assert_eq!(d["dmarc_pass"], 123 + 55 + 31);
    assert_eq!(d["dmarc_fail"], 7 + 3 + 9);
    assert_eq!(d["quarantined"], 7 + 2);
    assert_eq!(d["rejected"], 1);
    assert_eq!(
        d["reporters"],
        serde_json::json!(["Enterprise Outlook", "Yahoo", "google.com"])
    );

    // The list, then one report with its records.
    let list = s.cli_ok(&["dmarc", "list", "--since", "2025-11-20"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    let google = lines
        .iter()
        .find(|l| l.contains("\tgoogle.com\t"))
        .expect("google's report listed");
    let cols: Vec<&str> = google.split('\t').collect();
    assert_eq!(
        &cols[1..],
        ["example.com", "2025-11-20", "google.com", "130", "7"]
    );
    let id = cols[0];
    let shown = json(&s.cli_ok(&["dmarc", "show", id, "--json"]));
    assert_eq!(shown["report"]["report_id"], "9876543210987654321");
    assert_eq!(shown["report"]["policy"]["p"], "quarantine");
    let records = shown["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    let spoofed = records
        .iter()
        .find(|r| r["source_ip"] == "198.51.100.23")
        .unwrap();
    assert_eq!(spoofed["count"], 7);
    assert_eq!(spoofed["disposition"], "quarantine");
    assert_eq!(spoofed["spf_results"][0]["domain"], "spoofer.example.net");
    assert!(
        s.cli_ok(&["dmarc", "list", "--since", "2025-11-21"])
            .is_empty()
    );

    // The API itself: bad input is a 400 with a message, an unknown id a 404.
    let key = s.cli_ok(&["api-key", "create", "--name", "ops", "--scope", "read"]);
    let key = key.lines().last().unwrap().trim().to_string();
    let get = |path: &str| web::request_as(http, "GET", path, Some(&key), "");
    let r = get("/api/v1/dmarc/reports?domain=example.com&limit=2");
    assert_eq!(r.status, 200, "{}", r.body);
    let page = json(&r.body);
    assert_eq!(page["reports"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap().to_string();
    let r = get(&format!(
        "/api/v1/dmarc/reports?domain=example.com&limit=2&after={next}"
    ));
    assert_eq!(
        json(&r.body)["reports"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    let r = get("/api/v1/dmarc/reports/0123456789abcdef");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        json(&r.body)["error"]
            .as_str()
            .unwrap()
            .contains("no DMARC report")
    );
    let r = get("/api/v1/dmarc/reports/nope");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get("/api/v1/dmarc/summary?domain=Example.COM");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get("/api/v1/dmarc/summary?since=10&until=5");
    assert_eq!(json(&r.body)["days"], serde_json::json!([]), "{}", r.body);
    let r = get("/api/v1/dmarc/summary?since=-1");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = web::request_as(http, "GET", "/api/v1/dmarc/summary", None, "");
    assert_eq!(r.status, 401);

    // Stopped: the CLI reads the store itself.
    s.stop();
    let table = s.cli_ok(&["dmarc", "report"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("example.com"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        ["example.com", "2025-11-20", "3", "228", "209", "19", "8.3%"]
    );
    let shown = s.cli_ok(&["dmarc", "show", id]);
    assert!(
        shown.contains("198.51.100.23\t7\tquarantine\tfail\tfail"),
        "{shown}"
    );
}

/// `keep = true` delivers the report mail after storing it, `not_a_report = "deliver"` lets
/// other mail to the address through, and a report the store refuses gets `451 4.3.0` (the
/// reporter sends it again) without being counted.
#[test]
fn kept_reports_delivered_mail_and_a_failing_store() {
    let s = start_with(
        support::free_port(),
        "",
        "keep = true\nnot_a_report = \"deliver\"",
    );
    let r = send(&s, "dmarc-rua@example.com", &google_mail());
    assert!(r.starts_with("250"), "{r}\n{}", s.log());
    let r = send(
        &s,
        "dmarc-rua@example.com",
        "Subject: hello\r\n\r\nA person writing to the report address.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        support::wait_until(std::time::Duration::from_secs(10), || s
            .maildir("dmarc-rua@example.com")
            .len()
            == 2),
        "both delivered: {:?}\n{}",
        s.maildir("dmarc-rua@example.com"),
        s.log()
    );
    let list = s.cli_ok(&["dmarc", "list", "--since", "2025-11-20"]);
    assert_eq!(list.lines().count(), 1, "the report is stored too: {list}");

    // A namespace too small for a report: the store refuses, the reporter retries later.
    let s = start_with(
        support::free_port(),
        "kv_limits = { max_value_bytes = 64 }",
        "",
    );
    let r = send(&s, "dmarc-rua@example.com", &google_mail());
    assert!(r.starts_with("451 4.3.0"), "{r}\n{}", s.log());
    assert!(
        s.cli_ok(&["dmarc", "list", "--since", "2025-11-20"])
            .is_empty()
    );
    assert!(s.maildir("dmarc-rua@example.com").is_empty());
}
