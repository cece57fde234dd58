//! Authentication checks against test material nobody here wrote, each served by a DNS
//! server on 127.0.0.1 from the suite's own zone data:
//! - the RFC 7208 SPF test suite (`rfc7208-tests.yml` from the pyspf 2.0.14 source package,
//!   fetched by `scripts/setup.sh`): every case gives one of the results the suite allows;
//! - the ARC validation suite (`../shared/corpora/auth/arc/`): every case gives its `cv`;
//! - the DKIM vectors (`../shared/corpora/auth/dkim/`): every signature verifies as labelled.

mod support;

use serde_yaml::Value;
use sluice_auth::Verifier;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::dns::{Dns, Entry, Zone};

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/auth")
}

fn verifier(dns: &Dns) -> Verifier {
    let ns: SocketAddr = format!("127.0.0.1:{}", dns.port).parse().unwrap();
    Verifier::new(&[ns], "sluice.test", "sluice.test", Duration::from_secs(2)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh fetches it)", path.display()));
    let text = rename_repeated_cases(&text);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The ARC suite names a few cases twice within one document (`as_fields_b_head_case`, ...):
/// YAML forbids that and PyYAML silently keeps the last. Here the repeats get a suffix, so
/// every case runs.
fn rename_repeated_cases(text: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("---") {
            seen.clear();
        }
        let is_case = line.len() > 3
            && line.starts_with("  ")
            && !line.starts_with("   ")
            && line.trim_end().ends_with(':');
        if is_case && !seen.insert(line.trim_end().to_string()) {
            let name = line.trim_end().trim_end_matches(':');
            let mut n = 2;
            while !seen.insert(format!("{name}_{n}:")) {
                n += 1;
            }
            out.push_str(&format!("{name}_{n}:\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// TXT (or SPF) data as the suites write it: one string, or a list of strings.
fn strings(v: &Value) -> Vec<Vec<u8>> {
    match v {
        Value::Sequence(items) => items.iter().map(|i| text(i).into_bytes()).collect(),
        other => {
            // One string longer than 255 bytes is several character-strings on the wire.
            let s = text(other).into_bytes();
            if s.is_empty() {
                return vec![s];
            }
            s.chunks(255).map(|c| c.to_vec()).collect()
        }
    }
}

/// The SPF suite's zone data, the way its reference driver (pyspf's testspf.py) reads it:
/// SPF records are copied to TXT unless the name has TXT records of its own, and a `NONE`
/// value stands for no record.
fn spf_zone(data: &Value) -> Zone {
    let mut zone = Zone::default();
    let Some(names) = data.get("zonedata").and_then(Value::as_mapping) else {
        return zone;
    };
    for (name, entries) in names {
        let name = text(name);
        let entries = entries.as_sequence().cloned().unwrap_or_default();
        let has_txt = entries.iter().any(|e| e.get("TXT").is_some());
        let mut generated = Vec::new();
        for e in &entries {
            if text_if(e) == Some("TIMEOUT".into()) {
                zone.add(&name, Entry::Timeout);
                continue;
            }
            let Some(map) = e.as_mapping() else { continue };
            for (kind, value) in map {
                let kind = text(kind);
                if text_if(value) == Some("NONE".into()) {
                    continue;
                }
                let entry = match kind.as_str() {
                    "A" => Entry::A(text(value).parse().unwrap()),
                    "AAAA" => Entry::Aaaa(text(value).parse().unwrap()),
                    "MX" => {
                        let v = value.as_sequence().unwrap();
                        Entry::Mx(text(&v[0]).parse().unwrap(), text(&v[1]))
                    }
                    "PTR" => Entry::Ptr(text(value)),
                    "CNAME" => Entry::Cname(text(value)),
                    "TXT" => Entry::Txt(strings(value)),
                    "SPF" => {
                        if !has_txt {
                            generated.push(Entry::Txt(strings(value)));
                        }
                        Entry::Spf(strings(value))
                    }
                    "TIMEOUT" => Entry::Timeout,
                    other => panic!("zone entry {other} for {name}"),
                };
                zone.add(&name, entry);
            }
        }
        for g in generated {
            zone.add(&name, g);
        }
    }
    zone
}

fn text_if(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn spf_suite() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    Path::new(&home).join(".cache/sluice/pyspf/rfc7208-tests.yml")
}

#[test]
fn rfc7208_spf_suite_gives_an_allowed_result_for_every_case() {
    let rt = runtime();
    let mut failures = Vec::new();
    let mut cases = 0;
    for scenario in documents(&spf_suite()) {
        let dns = Dns::serve(spf_zone(&scenario));
        let verifier = verifier(&dns);
        let description = scenario.get("description").map(text).unwrap_or_default();
        let tests = scenario.get("tests").and_then(Value::as_mapping).unwrap();
        for (name, case) in tests {
            cases += 1;
            let ip: IpAddr = text(case.get("host").unwrap()).parse().unwrap();
            let helo = text(case.get("helo").unwrap());
            let mailfrom = case.get("mailfrom").map(text).unwrap_or_default();
            let allowed: Vec<String> = match case.get("result").unwrap() {
                Value::Sequence(v) => v.iter().map(text).collect(),
                v => vec![text(v)],
            };
            let got = rt.block_on(verifier.spf(ip, &helo, &mailfrom));
            if !allowed.iter().any(|a| a == got.result()) {
                failures.push(format!(
                    "spf {description} / {}: got {}, allowed {}",
                    text(name),
                    got.result(),
                    allowed.join(" ")
                ));
            }
        }
    }
    assert!(cases > 200, "only {cases} cases read");
    compare_with_known("SPF", cases, failures);
}

/// The suites' cases where mail-auth (the checks' library) is known to disagree with the
/// suite, one line each: `tests/data/auth-known-deviations.txt`. Any other failure fails the
/// test, and so does a listed case that now gives an allowed result (the list is kept
/// exact: fixing a deviation means deleting its line).
fn compare_with_known(suite: &str, cases: usize, failures: Vec<String>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/auth-known-deviations.txt");
    let known = std::fs::read_to_string(&path).unwrap();
    let prefix = format!("{} ", suite.to_ascii_lowercase());
    let known: std::collections::BTreeSet<&str> =
        known.lines().filter(|l| l.starts_with(&prefix)).collect();
    let got: std::collections::BTreeSet<&str> = failures.iter().map(|s| s.as_str()).collect();
    let new: Vec<&&str> = got.difference(&known).collect();
    let fixed: Vec<&&str> = known.difference(&got).collect();
    println!(
        "{suite} suite: {} of {cases} cases give an allowed result ({} known deviations)",
        cases - failures.len(),
        known.len()
    );
    assert!(
        new.is_empty() && fixed.is_empty(),
        "{suite} suite, {} of {cases} cases failed.\nNew failures:\n{}\nListed in {} but now passing:\n{}",
        failures.len(),
        new.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        path.display(),
        fixed
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

fn crlf(message: &str) -> Vec<u8> {
    message
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

#[test]
fn arc_validation_suite_gives_the_expected_cv() {
    let rt = runtime();
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut blank = 0;
    for scenario in documents(&corpora().join("arc/arc-draft-validation-tests.yml")) {
        let mut zone = Zone::default();
        if let Some(records) = scenario.get("txt-records").and_then(Value::as_mapping) {
            for (name, value) in records {
                zone.add(&text(name), Entry::Txt(strings(value)));
            }
        }
        let dns = Dns::serve(zone);
        let verifier = verifier(&dns);
        let tests = scenario.get("tests").and_then(Value::as_mapping).unwrap();
        for (name, case) in tests {
            cases += 1;
            let expected = text(case.get("cv").unwrap()).trim().to_ascii_lowercase();
            if expected.is_empty() {
                // Three cases (cv_fail_i1_as_cv_fail, cv_fail_i2_as1_fail,
                // cv_fail_i2_as2_fail) have a blank `cv`: no expectation to check.
                blank += 1;
                continue;
            }
            let message = crlf(&case.get("message").map(text).unwrap_or_default());
            let ip: IpAddr = "192.0.2.1".parse().unwrap();
            let got = rt.block_on(async {
                let spf = verifier.spf(ip, "mail.example.org", "").await;
                verifier.message(&message, ip, &spf).await
            });
            if got.summary.arc != expected {
                failures.push(format!(
                    "arc {}: got {}, expected {expected}",
                    text(name),
                    got.summary.arc
                ));
            }
        }
    }
    assert!(cases > 150, "only {cases} cases read");
    assert_eq!(blank, 3);
    compare_with_known("ARC", cases - blank, failures);
}

#[test]
fn dkim_vectors_verify_as_labelled() {
    let dir = corpora().join("dkim");
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("txt-records.json")).unwrap()).unwrap();
    let mut zone = Zone::default();
    for (name, value) in records["txt"].as_object().unwrap() {
        let value = value.as_str().unwrap().as_bytes();
        zone.add(
            name,
            Entry::Txt(value.chunks(255).map(|c| c.to_vec()).collect()),
        );
    }
    let dns = Dns::serve(zone);
    let verifier = verifier(&dns);
    let rt = runtime();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let mut checked = 0;
    for (file, signatures) in expected.as_object().unwrap() {
        let Some(signatures) = signatures.as_array() else {
            continue;
        };
        let raw = std::fs::read(dir.join(file)).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let got = rt.block_on(async {
            let spf = verifier.spf(ip, "mail.example.org", "").await;
            verifier.message(&raw, ip, &spf).await
        });
        for want in signatures {
            let d = want["d"].as_str().unwrap();
            let s = want["s"].as_str().unwrap();
            let label = want["result"].as_str().unwrap();
            let result = got
                .signatures
                .iter()
                .find(|r| r.domain.eq_ignore_ascii_case(d) && r.selector == s)
                .map(|r| r.result)
                .unwrap_or_else(|| panic!("{file}: no result for d={d} s={s}: {got:?}"));
            // A label such as "permerror/fail (no key)" allows either result.
            let allowed: Vec<&str> = label.split(' ').next().unwrap().split('/').collect();
            assert!(
                allowed.contains(&result),
                "{file} d={d} s={s}: got {result}, labelled {label}"
            );
            checked += 1;
        }
        if signatures.iter().any(|w| w["result"] == "pass") {
            assert_eq!(got.summary.dkim, "pass", "{file}");
        }
    }
    assert_eq!(checked, 6);
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "nothing after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An `mx` listener with `[authentication]`, DNS from `zone`, and a policy enforcing DMARC.
fn checked_server(zone: Zone) -> (support::Sluice, Dns) {
    let dns = Dns::serve(zone);
    let s = support::Sluice::configure_with(
        "policies = \"policy.toml\"",
        "",
        &format!(
            "[authentication]\ntimeout = \"5s\"\n\n[delivery]\nnameservers = [\"127.0.0.1:{}\"]\n",
            dns.port
        ),
    );
    std::fs::write(
        s.dir.path().join("policy.toml"),
        "[[pipeline]]\nname = \"inbound\"\nlisteners = [\"mx\"]\ndmarc = \"enforce\"\n",
    )
    .unwrap();
    (s.spawn(), dns)
}

fn txt(s: &str) -> Entry {
    Entry::Txt(vec![s.as_bytes().to_vec()])
}

#[test]
fn received_mail_gets_our_authentication_results_and_dmarc_is_enforced() {
    let mut zone = Zone::default();
    zone.add("example.org", txt("v=spf1 ip4:127.0.0.1 -all"));
    zone.add("_dmarc.example.org", txt("v=DMARC1; p=reject"));
    zone.add("evil.example", txt("v=spf1 -all"));
    zone.add("held.example", txt("v=spf1 -all"));
    zone.add("_dmarc.held.example", txt("v=DMARC1; p=quarantine"));
    zone.add("monitored.example", txt("v=spf1 -all"));
    zone.add("_dmarc.monitored.example", txt("v=DMARC1; p=none"));
    let (s, _dns) = checked_server(zone);

    // SPF passes and aligns with From: DMARC passes. A forged header claiming our
    // authserv-id is removed; another receiver's is kept.
    let mut c = support::Client::connect(s.mx_port);
    c.cmd("EHLO mail.example.org");
    let body = "Authentication-Results: sluice.test; dmarc=pass header.from=forged.example\r\n\
                Authentication-Results: other.example; spf=fail\r\n\
                From: Alice <alice@example.org>\r\nTo: bob@localhost\r\nSubject: hello\r\n\r\nHi.\r\n";
    let r = c.send_mail("alice@example.org", &["bob@localhost"], body);
    assert!(r.starts_with("250"), "{r}");
    let got = wait_for(Duration::from_secs(10), || {
        s.maildir("bob@localhost").into_iter().next()
    });
    let ours: Vec<&str> = got
        .split("\r\n")
        .filter(|l| l.starts_with("Authentication-Results: sluice.test"))
        .collect();
    assert_eq!(ours.len(), 1, "{got}");
    assert!(!got.contains("forged.example"), "{got}");
    assert!(
        got.contains("Authentication-Results: other.example; spf=fail"),
        "{got}"
    );
    assert!(got.contains("spf=pass"), "{got}");
    assert!(got.contains("dmarc=pass"), "{got}");

    // From: example.org sent from a host its SPF refuses, no DKIM: p=reject applies.
    let body = "From: boss@example.org\r\nTo: bob@localhost\r\nSubject: wire money\r\n\r\nNow.\r\n";
    let r = c.send_mail("x@evil.example", &["bob@localhost"], body);
    assert!(
        r.starts_with("550 5.7.1") && r.contains("DMARC policy of example.org"),
        "{r}"
    );

    // p=none: recorded, delivered.
    let body = "From: a@monitored.example\r\nTo: bob@localhost\r\nSubject: m\r\n\r\nM.\r\n";
    let r = c.send_mail("a@monitored.example", &["bob@localhost"], body);
    assert!(r.starts_with("250"), "{r}");
    let got = wait_for(Duration::from_secs(10), || {
        s.maildir("bob@localhost")
            .into_iter()
            .find(|m| m.contains("Subject: m\r\n"))
    });
    assert!(
        got.contains("spf=fail") && got.contains("dmarc=fail"),
        "{got}"
    );

    // p=quarantine: accepted and held, not delivered.
    let body = "From: a@held.example\r\nTo: bob@localhost\r\nSubject: held\r\n\r\nH.\r\n";
    let r = c.send_mail("a@held.example", &["bob@localhost"], body);
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !s.maildir("bob@localhost")
            .iter()
            .any(|m| m.contains("Subject: held\r\n")),
        "a message DMARC quarantines was delivered"
    );
}

#[test]
fn submitted_mail_is_dkim_signed_with_every_key_and_dkimpy_verifies_it() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa, rsa_pub) = support::dkim::rsa(keys.path(), "rsa");
    let (ed, ed_pub) = support::dkim::keypair(keys.path(), "ed", &["-algorithm", "ed25519"]);
    let sink = support::sink::Sink::start();
    let s = support::Sluice::configure_with(
        "",
        "",
        &format!(
            "{}\n[[dkim]]\ndomain = \"example.com\"\nselector = \"s2026\"\nkey = \"{}\"\n\n[[dkim]]\ndomain = \"example.com\"\nselector = \"ed2026\"\nkey = \"{}\"\n",
            support::route_to(sink.port),
            rsa.display(),
            ed.display()
        ),
    );
    s.cli(&["user", "add", "u"], "pw\n");
    let s = s.spawn();
    let mut c = support::TlsClient::connect(s.submission_port, "u", "pw");
    let body = "From: App <app@example.com>\r\nTo: x@remote.test\r\nSubject: Your receipt\r\nMessage-ID: <1@example.com>\r\n\r\nThanks  for\tyour order. \r\n..leading dot\r\n\r\n \r\n\t\r\n";
    let r = c.send_mail("bounces@example.com", &["x@remote.test"], body);
    assert!(r.starts_with("250"), "{r}");
    let got = wait_for(Duration::from_secs(20), || {
        sink.messages().into_iter().next()
    });
    let data = got.data.clone();
    assert_eq!(data.matches("DKIM-Signature:").count(), 2, "{data}");
    assert!(
        data.contains("a=rsa-sha256") && data.contains("a=ed25519-sha256"),
        "{data}"
    );
    assert!(
        data.contains("s=s2026") && data.contains("s=ed2026"),
        "{data}"
    );
    let records = [
        (
            "s2026._domainkey.example.com",
            format!("v=DKIM1; k=rsa; p={rsa_pub}"),
        ),
        (
            "ed2026._domainkey.example.com",
            format!("v=DKIM1; k=ed25519; p={ed_pub}"),
        ),
    ];
    assert_eq!(
        support::dkim::dkimpy(data.as_bytes(), &records, keys.path()),
        vec![true, true],
        "{data}"
    );
    // The same verifier refuses an altered body, and a second From: (From is over-signed).
    // (The body's whitespace runs, trailing spaces and whitespace-only last lines are what
    // relaxed canonicalization folds away: signer and verifier must agree on them.)
    let altered = data.replace("your order.", "your ordeR.");
    assert_eq!(
        support::dkim::dkimpy(altered.as_bytes(), &records, keys.path()),
        vec![false, false]
    );
    let added = format!("From: Evil <evil@example.net>\r\n{data}");
    assert_eq!(
        support::dkim::dkimpy(added.as_bytes(), &records, keys.path()),
        vec![false, false]
    );
}
