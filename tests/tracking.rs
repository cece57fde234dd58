//! Link tracking end to end: the `link-tracking` plugin renders each recipient's copy with
//! signed links, an open pixel and one-click List-Unsubscribe headers; the HTTP listener's
//! `/c/`, `/o/` and `/u/` endpoints redirect, answer the pixel and unsubscribe, refuse
//! altered tokens, and put `clicked`, `opened` and `unsubscribed` events on the bus, where the
//! suppression plugin takes the unsubscribe. The MIME torture message keeps its part tree.

mod support;

use sluice_store::KvStore;
use sluice_test_plugins::{LINK_TRACKING, PROBE, SUPPRESSION};
use std::time::Duration;
use support::web::{request, tracking_paths as paths};
use support::{Client, Sink, Sluice, step, wait_until};

fn start(sink: &Sink, http: u16, tracking_config: &str) -> Sluice {
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nrelay_domains = [\"example.net\"]",
        "",
        &format!(
            r#"[http]
bind = "127.0.0.1:{http}"

[tracking]
base_url = "http://127.0.0.1:{http}/"
key = "tracking.key"

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
        s.dir.path().join("tracking.key"),
        "0123456789abcdef0123456789abcdef-test-key\n",
    )
    .unwrap();
    std::fs::write(
        s.dir.path().join("policy.toml"),
        format!(
            "[[pipeline]]\nname = \"outbound\"\n{}{}{}",
            step(
                "suppression",
                SUPPRESSION,
                "stages = [\"rcpt\", \"event\"]\n[pipeline.step.capabilities]\nkv = \"suppression\"",
                "stream = \"outbound\""
            ),
            step(
                "track",
                LINK_TRACKING,
                "stages = [\"render\"]\n[pipeline.step.capabilities]\ntracking = true",
                tracking_config
            ),
            step(
                "hooks",
                PROBE,
                "stages = [\"event\"]\n[pipeline.step.capabilities]\nkv = \"hooks\"",
                "mode = \"events\""
            ),
        ),
    )
    .unwrap();
    s.spawn()
}

const ATTACHMENT: &str = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg==";

fn newsletter() -> String {
    concat!(
        "From: News <news@example.com>\r\nTo: list@example.net\r\nSubject: This week\r\n",
        "Message-ID: <week-1@example.com>\r\nMIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n",
        "--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n",
        "--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        "Read more at https://shop.example/sale?x=1 today. Caf\u{e9}.\r\n",
        "--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
        "<html><body><p>Hello! <a href=3D\"https://shop.example/sale?x=3D1&amp;utm=\r\n",
        "=3Dnews\">Sale</a> and <a href=3D\"https://blog.example/post/42\">blog</a>.</p>=\r\n",
        "<p>Not a link: https://plain.example/ in text. Caf=C3=A9.</p></body></html>\r\n",
        "--alt--\r\n",
        "--outer\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n",
        "Content-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg==\r\n",
        "--outer--\r\n"
    )
    .to_string()
}

#[test]
fn tracked_links_open_pixel_and_one_click_unsubscribe() {
    let sink = Sink::start();
    let port = support::free_port();
    let mut s = start(
        &sink,
        port,
        "unsubscribe_mailto = \"unsubscribe@example.com\"",
    );
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "news@example.com",
        &["x@example.net", "y@example.net"],
        &newsletter(),
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.messages().len() == 2),
        "{}",
        s.log()
    );
    let mut clicks = std::collections::HashMap::new();
    let mut others = std::collections::HashMap::new();
    for m in sink.messages() {
        assert_eq!(m.recipients.len(), 1, "one transaction per recipient");
        let rcpt = m.recipients[0].clone();
        let parsed = mail_parser::MessageParser::default()
            .parse(m.data.as_bytes())
            .unwrap();
        let html = parsed.body_html(0).unwrap().into_owned();
        assert!(!html.contains("href=\"https://"), "{html}");
        assert!(
            html.contains("Not a link: https://plain.example/ in text."),
            "{html}"
        );
        assert!(html.contains("Café"), "{html}");
        let c = paths(&html, port, "c");
        assert_eq!(c.len(), 2, "{html}");
        let o = paths(&html, port, "o");
        assert_eq!(o.len(), 1, "{html}");
        assert!(
            html.contains("</p><img src="),
            "the pixel ends the body: {html}"
        );
        // Text parts are left alone unless `text = true`.
        let text = parsed.body_text(0).unwrap();
        assert!(
            text.contains("https://shop.example/sale?x=1 today"),
            "{text}"
        );
        // Unfolded.
        let unsub = parsed
            .header_raw("List-Unsubscribe")
            .unwrap()
            .replace(['\r', '\n'], "")
            .trim()
            .to_string();
        let u = paths(&unsub, port, "u");
        assert_eq!(u.len(), 1, "{unsub}");
        assert!(
            unsub.ends_with(", <mailto:unsubscribe@example.com?subject=unsubscribe>"),
            "{unsub}"
        );
        assert_eq!(
            parsed.header_raw("List-Unsubscribe-Post").map(str::trim),
            Some("List-Unsubscribe=One-Click")
        );
        // The attachment travels untouched.
        let pdf = parsed.attachment(0).unwrap();
        use base64::Engine;
        assert_eq!(
            pdf.contents(),
            base64::engine::general_purpose::STANDARD
                .decode(ATTACHMENT)
                .unwrap()
        );
        clicks.insert(rcpt.clone(), c);
        others.insert(rcpt, (o[0].clone(), u[0].clone()));
    }
    assert_ne!(
        clicks["x@example.net"], clicks["y@example.net"],
        "tokens are per recipient"
    );

    // A click redirects to the link's URL, decoded from the HTML.
    let r = request(port, "GET", &clicks["x@example.net"][0], "");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example/sale?x=1&utm=news")
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    let r = request(port, "GET", &clicks["y@example.net"][1], "");
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("https://blog.example/post/42"))
    );
    // Altered, truncated or misplaced tokens get 404.
    let good = &clicks["x@example.net"][0];
    let mut altered = good.clone().into_bytes();
    let last = altered.len() - 5;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(altered).unwrap(),
        good[..good.len() - 3].to_string(),
        good.replacen("/c/", "/o/", 1),
        "/c/AAAA".to_string(),
    ] {
        let r = request(port, "GET", &bad, "");
        assert_eq!(r.status, 404, "{bad}");
        assert_eq!(r.header("location"), None);
    }

    // The pixel: a GIF nobody caches.
    let (open, unsub) = others["x@example.net"].clone();
    let r = request(port, "GET", &open, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert!(r.header("cache-control").unwrap().contains("no-store"));
    assert!(r.body.starts_with("GIF89a"));

    // GET shows a page and unsubscribes nobody; the one-click POST does.
    let r = request(port, "GET", &unsub, "");
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("x@example.net") && r.body.contains("<form method=\"post\""),
        "{}",
        r.body
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<news@example.com>");
    assert!(c.cmd("RCPT TO:<x@example.net>").starts_with("250"));
    c.cmd("QUIT");
    let r = request(port, "POST", &unsub, "List-Unsubscribe=One-Click");
    assert_eq!(r.status, 200, "{}", r.body);
    let suppressed = wait_until(Duration::from_secs(20), || {
        let mut c = Client::connect(s.mx_port);
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<news@example.com>");
        let r = c.cmd("RCPT TO:<x@example.net>");
        c.cmd("QUIT");
        r.starts_with("550 5.7.1")
    });
    assert!(suppressed, "{}", s.log());
    // y did not unsubscribe.
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<news@example.com>");
    assert!(c.cmd("RCPT TO:<y@example.net>").starts_with("250"));
    c.cmd("QUIT");

    // Every hit reached the event chain.
    std::thread::sleep(Duration::from_secs(2));
    s.stop();
    let st = sluice_store::SledStores::open(&s.data().join("stores")).unwrap();
    for key in [
        "seen/clicked/x@example.net",
        "seen/clicked/y@example.net",
        "seen/opened/x@example.net",
        "seen/unsubscribed/x@example.net",
    ] {
        assert!(
            st.kv.get("hooks", key).unwrap().is_some(),
            "{key}\n{}",
            s.log()
        );
    }
    assert!(
        st.kv
            .get("hooks", "seen/unsubscribed/y@example.net")
            .unwrap()
            .is_none()
    );
}

/// The part tree of a message as in the corpus's expected-structure file: one line per
/// part, `type/subtype` indented four spaces per level.
fn structure(raw: &[u8]) -> String {
    use mail_parser::MimeHeaders;
    fn walk(m: &mail_parser::Message<'_>, id: u32, depth: usize, out: &mut String) {
        let part = &m.parts[id as usize];
        // No (or an invalid) content type reads as text/plain (RFC 2045 section 5.2).
        let ct = part
            .content_type()
            .and_then(|c| Some(format!("{}/{}", c.ctype(), c.subtype()?).to_ascii_lowercase()))
            .unwrap_or_else(|| "text/plain".into());
        out.push_str(&format!("{}{ct}\n", "    ".repeat(depth)));
        match &part.body {
            mail_parser::PartType::Multipart(children) => {
                for &c in children {
                    walk(m, c, depth + 1, out);
                }
            }
            mail_parser::PartType::Message(inner) => walk(inner, 0, depth + 1, out),
            _ => {}
        }
    }
    let m = mail_parser::MessageParser::default().parse(raw).unwrap();
    let mut out = String::new();
    walk(&m, 0, 0, &mut out);
    out
}

#[test]
fn the_mime_torture_message_keeps_its_part_tree() {
    let corpus = support::repo_root().join("../shared/corpora/mime");
    let original = std::fs::read(corpus.join("crispin-torture-test.eml")).unwrap();
    let expected =
        std::fs::read_to_string(corpus.join("crispin-torture-test.expected-structure.txt"))
            .unwrap();
    assert_eq!(
        structure(&original).trim_end(),
        expected.trim_end(),
        "the tree reader"
    );
    let sink = Sink::start();
    let port = support::free_port();
    let s = start(&sink, port, "text = true");
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    // Dot-stuffing for the SMTP transfer.
    let text = String::from_utf8_lossy(&original).replace("\r\n.", "\r\n..");
    let r = c.send_mail("news@example.com", &["x@example.net"], &text);
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(30), || sink.messages().len() == 1),
        "{}",
        s.log()
    );
    let got = sink.messages()[0].data.clone();
    assert!(got.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert_eq!(structure(got.as_bytes()).trim_end(), expected.trim_end());
}

/// A base64 HTML body (a single-part message) is rewritten too and stays readable.
#[test]
fn a_base64_html_body_is_rewritten_and_reparses() {
    use base64::Engine;
    let sink = Sink::start();
    let port = support::free_port();
    let s = start(&sink, port, "");
    let html =
        "<html><body><p>Caf\u{e9}: <a href=\"https://shop.example/b64\">link</a></p></body></html>";
    let encoded = base64::engine::general_purpose::STANDARD.encode(html);
    let body = format!(
        "From: news@example.com\r\nSubject: b64\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
    );
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail("news@example.com", &["x@example.net"], &body);
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.messages().len() == 1),
        "{}",
        s.log()
    );
    let got = sink.messages()[0].data.clone();
    let parsed = mail_parser::MessageParser::default()
        .parse(got.as_bytes())
        .unwrap();
    let out = parsed.body_html(0).unwrap();
    assert!(out.contains("Café: <a href=\"http://127.0.0.1:"), "{out}");
    assert!(!out.contains("https://shop.example/b64"), "{out}");
    assert_eq!(paths(&out, port, "o").len(), 1, "{out}");
    let r = request(port, "GET", &paths(&out, port, "c")[0], "");
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("https://shop.example/b64"))
    );
}
