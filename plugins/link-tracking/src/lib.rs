//! Link tracking, per recipient, at the `render` stage: in HTML parts every absolute
//! http(s) link becomes a signed `<base>/c/<token>` URL from the host (`tracking-url`,
//! capability `tracking`), an open pixel `<base>/o/<token>` is added at the end of the body,
//! and `List-Unsubscribe: <<base>/u/<token>>[, <mailto:...>]` with
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058) is set. The host serves
//! those URLs and turns hits into `clicked`, `opened` and `unsubscribed` events.
//!
//! Left alone: links with `data-sluice-track="off"` (the attribute is removed), links to
//! `exclude_domains` (and their subdomains), anything that is not an absolute http(s) URL
//! (`mailto:`, anchors, relative links), text that only looks like a link, and the parts of
//! attached messages (`message/rfc822`). The host re-encodes edited parts; every other part
//! stays byte for byte.
//!
//! ```toml
//! [pipeline.step.config]
//! opens = true                # the pixel
//! clicks = true               # links in HTML parts
//! unsubscribe = true          # List-Unsubscribe and List-Unsubscribe-Post
//! text = false               # also links in text/plain parts
//! exclude_domains = ["example.org"]
//! unsubscribe_mailto = "unsubscribe@example.com"   # optional second List-Unsubscribe URI
//! ```

use serde::Deserialize;
use sluice_plugin_sdk::host::{self, TrackKind};
use sluice_plugin_sdk::{Edit, Filter, Header, Message, PartBody, Stage, export_filter};
use std::cell::RefCell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub opens: bool,
    pub clicks: bool,
    pub unsubscribe: bool,
    pub text: bool,
    pub exclude_domains: Vec<String>,
    pub unsubscribe_mailto: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            opens: true,
            clicks: true,
            unsubscribe: true,
            text: false,
            exclude_domains: Vec::new(),
            unsubscribe_mailto: None,
        }
    }
}

impl Config {
    fn check(&self) -> Result<(), String> {
        for d in &self.exclude_domains {
            if d.is_empty() || d.contains(['/', ' ', '@', ':']) {
                return Err(format!("exclude_domains: `{d}` is not a domain"));
            }
        }
        if let Some(m) = &self.unsubscribe_mailto {
            let ok = m.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && !d.is_empty() && !m.contains([' ', '<', '>', ',', '\r', '\n'])
            });
            if !ok {
                return Err(format!("unsubscribe_mailto: `{m}` is not an address"));
            }
        }
        Ok(())
    }

    /// Whether links to `url` stay as they are.
    fn excluded(&self, url: &str) -> bool {
        let Some(host) = url_host(url) else {
            return true;
        };
        self.exclude_domains.iter().any(|d| {
            let d = d.trim_start_matches('.').to_ascii_lowercase();
            host == d || host.ends_with(&format!(".{d}"))
        })
    }
}

/// The lowercase host of an absolute http(s) URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next()?
    } else {
        host.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether `url` is an absolute http(s) URL the host will sign (printable ASCII, no
/// spaces, at most 2048 bytes): the rule of `sluice_track::trackable`, which the plugin
/// cannot link (it is host code), checked here so that a link the host would refuse stays
/// as it is instead of failing the recipient's whole rendering.
pub fn trackable(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let after = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        return false;
    };
    url.len() > after && url.len() <= 2048 && url.bytes().all(|b| b.is_ascii_graphic())
}

/// Decodes the character references an attribute value may hold (`&amp;`, `&#38;`,
/// `&#x26;`, and the few named ones URLs carry).
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|e| e + 1);
        let (name, consumed) = match end {
            Some(e) if rest[e..].starts_with(';') => (&rest[1..e], e + 1),
            Some(e) => (&rest[1..e], e),
            None => (&rest[1..], rest.len()),
        };
        let c = if let Some(num) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
            u32::from_str_radix(num, 16).ok().and_then(char::from_u32)
        } else if let Some(num) = name.strip_prefix('#') {
            num.parse().ok().and_then(char::from_u32)
        } else {
            match name {
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "sol" => Some('/'),
                "colon" => Some(':'),
                "quest" => Some('?'),
                "equals" => Some('='),
                "num" => Some('#'),
                "percnt" => Some('%'),
                _ => None,
            }
        };
        match c {
            Some(c) if !name.is_empty() => {
                out.push(c);
                rest = &rest[consumed..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Makes tracked URLs: the host's `tracking-url`, or a stand-in in unit tests.
pub trait Urls {
    /// The tracked URL for link number `link` (counted from 0 in the message).
    fn click(&mut self, link: u32, url: &str) -> Result<String, String>;
}

/// Rewrites the links of one HTML document; `next` is the number of the next link (it
/// goes on across parts). `pixel` is appended at the end of `<body>` (or of the document).
pub fn rewrite_html(
    html: &str,
    config: &Config,
    urls: &mut dyn Urls,
    next: &mut u32,
    pixel: Option<&str>,
) -> Result<String, String> {
    use lol_html::html_content::ContentType;
    use lol_html::{RewriteStrSettings, element, end, rewrite_str};
    /// What the handlers share.
    struct State<'a> {
        urls: &'a mut dyn Urls,
        next: u32,
        in_body: bool,
        failed: Option<String>,
    }
    let state = RefCell::new(State {
        urls,
        next: *next,
        in_body: false,
        failed: None,
    });
    let mut settings = RewriteStrSettings::new()
        .with_strict(false)
        .with_enable_esi_tags(false);
    if config.clicks {
        settings = settings.append_element_content_handler(element!("a[href]", |el| {
            if el
                .get_attribute("data-sluice-track")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("off"))
            {
                el.remove_attribute("data-sluice-track");
                return Ok(());
            }
            let href = decode_entities(el.get_attribute("href").unwrap_or_default().trim());
            if !trackable(&href) || config.excluded(&href) {
                return Ok(());
            }
            let mut s = state.borrow_mut();
            let link = s.next;
            match s.urls.click(link, &href) {
                Ok(tracked) => {
                    s.next += 1;
                    el.set_attribute("href", &tracked)?;
                }
                Err(e) => s.failed = Some(e),
            }
            Ok(())
        }));
    }
    if let Some(pixel) = pixel {
        settings = settings
            .append_element_content_handler(element!("body", |el| {
                el.append(pixel, ContentType::Html);
                state.borrow_mut().in_body = true;
                Ok(())
            }))
            .append_document_content_handler(end!(|end| {
                if !state.borrow().in_body {
                    end.append(pixel, ContentType::Html);
                }
                Ok(())
            }));
    }
    let out = rewrite_str(html, settings).map_err(|e| e.to_string())?;
    let s = state.into_inner();
    if let Some(e) = s.failed {
        return Err(e);
    }
    *next = s.next;
    Ok(out)
}

/// Rewrites the absolute http(s) URLs standing alone in plain text (after a space, a line
/// start, `<`, `(` or a quote); trailing punctuation stays outside the link.
pub fn rewrite_text(
    text: &str,
    config: &Config,
    urls: &mut dyn Urls,
    next: &mut u32,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let lower = text.to_ascii_lowercase();
    let mut offset = 0;
    while let Some(i) = find_url_start(&lower[offset..]) {
        let start = offset + i;
        let preceded_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '<' | '(' | '"' | '\'' | '['));
        let len = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
            .unwrap_or(text.len() - start);
        let url = text[start..start + len]
            .trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}', '\'']);
        let end = start + url.len();
        if preceded_ok && trackable(url) && !config.excluded(url) {
            out.push_str(&rest[..start - (text.len() - rest.len())]);
            out.push_str(&urls.click(*next, url)?);
            *next += 1;
            rest = &text[end..];
        }
        offset = end.max(start + 1);
    }
    out.push_str(rest);
    Ok(out)
}

fn find_url_start(lower: &str) -> Option<usize> {
    match (lower.find("http://"), lower.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct HostUrls<'a> {
    recipient: &'a str,
}

impl Urls for HostUrls<'_> {
    fn click(&mut self, link: u32, url: &str) -> Result<String, String> {
        host::tracking_url(TrackKind::Click, self.recipient, link, Some(url))
            .map_err(|e| format!("{e:?}"))
    }
}

fn config() -> Config {
    serde_json::from_str(&host::config()).unwrap_or_default()
}

/// The edits for one recipient.
fn render(message: &Message, recipient: &str, config: &Config) -> Result<Vec<Edit>, String> {
    let mut edits = Vec::new();
    let mut urls = HostUrls { recipient };
    let mut next = 0;
    let pixel = if config.opens {
        let src = host::tracking_url(TrackKind::Open, recipient, 0, None)
            .map_err(|e| format!("{e:?}"))?;
        Some(format!(
            "<img src=\"{src}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\">"
        ))
    } else {
        None
    };
    let parts = message.parts();
    // Parts of attached messages are theirs, not ours. Parents come before their children.
    let mut attached: std::collections::HashMap<u32, bool> = std::collections::HashMap::new();
    for p in &parts {
        let inside = p.parent.is_some_and(|parent| {
            attached.get(&parent).copied().unwrap_or(false)
                || parts
                    .iter()
                    .any(|q| q.id == parent && q.content_type == "message/rfc822")
        });
        attached.insert(p.id, inside);
    }
    let mut pixel_placed = false;
    for part in &parts {
        let attachment = part.disposition.as_deref() == Some("attachment");
        if attachment || attached[&part.id] {
            continue;
        }
        let html = part.content_type == "text/html";
        let plain = part.content_type == "text/plain";
        if !(html && (config.clicks || (pixel.is_some() && !pixel_placed)))
            && !(plain && config.text)
        {
            continue;
        }
        let Some(body) = message.part_text(part.id) else {
            continue;
        };
        let new = if html {
            // The pixel goes into the first HTML part only.
            let p = if pixel_placed { None } else { pixel.as_deref() };
            pixel_placed |= p.is_some();
            rewrite_html(&body, config, &mut urls, &mut next, p)?
        } else {
            rewrite_text(&body, config, &mut urls, &mut next)?
        };
        if new != body {
            edits.push(Edit::ReplacePart(PartBody {
                id: part.id,
                body: new,
            }));
        }
    }
    if config.unsubscribe {
        let u = host::tracking_url(TrackKind::Unsubscribe, recipient, 0, None)
            .map_err(|e| format!("{e:?}"))?;
        let value = match &config.unsubscribe_mailto {
            Some(m) => format!("<{u}>, <mailto:{m}?subject=unsubscribe>"),
            None => format!("<{u}>"),
        };
        edits.push(Edit::SetHeader(Header {
            name: "List-Unsubscribe".into(),
            value,
        }));
        edits.push(Edit::SetHeader(Header {
            name: "List-Unsubscribe-Post".into(),
            value: "List-Unsubscribe=One-Click".into(),
        }));
    }
    Ok(edits)
}

struct LinkTracking;

impl Filter for LinkTracking {
    const STAGES: &'static [Stage] = &[Stage::Render];

    fn configure(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        c.check()
    }

    fn on_render(message: &Message, recipient: String) -> Vec<Edit> {
        let c = config();
        match render(message, &recipient, &c) {
            Ok(edits) => edits,
            Err(e) => {
                // The message goes out as it is rather than not at all.
                host::log(
                    host::Level::Error,
                    &format!("not tracked for {recipient}: {e}"),
                );
                Vec::new()
            }
        }
    }
}

export_filter!(LinkTracking, reusable);

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Vec<(u32, String)>);

    impl Urls for Fake {
        fn click(&mut self, link: u32, url: &str) -> Result<String, String> {
            self.0.push((link, url.to_string()));
            Ok(format!("https://t.test/c/T{link}"))
        }
    }

    fn html(input: &str, config: &Config, pixel: Option<&str>) -> (String, Vec<(u32, String)>) {
        let mut f = Fake(Vec::new());
        let mut next = 0;
        let out = rewrite_html(input, config, &mut f, &mut next, pixel).unwrap();
        (out, f.0)
    }

    #[test]
    fn links_are_rewritten_and_everything_else_is_kept() {
        let input = concat!(
            "<html><body><p>Hi <a href=\"https://shop.example/p?a=1&amp;b=2\">shop</a>, ",
            "<a href='http://x.example/'>x</a> <a href=\"mailto:a@b.example\">mail</a> ",
            "<a href=\"#top\">top</a> <a href=\"/relative\">rel</a> ",
            "visit https://not-a-link.example now.</p>",
            "<!-- <a href=\"https://comment.example/\">c</a> -->",
            "<a data-sluice-track=\"off\" href=\"https://keep.example/\">keep</a>",
            "<a href=\"https://news.example.org/x\">excluded</a></body></html>"
        );
        let config = Config {
            exclude_domains: vec!["example.org".into()],
            ..Config::default()
        };
        let (out, seen) = html(input, &config, Some("<img src=\"P\">"));
        assert_eq!(
            seen,
            vec![
                (0, "https://shop.example/p?a=1&b=2".to_string()),
                (1, "http://x.example/".to_string())
            ]
        );
        assert!(
            out.contains("<a href=\"https://t.test/c/T0\">shop</a>"),
            "{out}"
        );
        assert!(
            out.contains("<a href=\"https://t.test/c/T1\">x</a>"),
            "{out}"
        );
        for kept in [
            "mailto:a@b.example",
            "href=\"#top\"",
            "/relative",
            "visit https://not-a-link.example now.",
            "<!-- <a href=\"https://comment.example/\">c</a> -->",
            "<a href=\"https://keep.example/\">keep</a>",
            "https://news.example.org/x",
        ] {
            assert!(out.contains(kept), "{kept} in {out}");
        }
        assert!(out.ends_with("<img src=\"P\"></body></html>"), "{out}");
    }

    #[test]
    fn the_pixel_goes_at_the_end_of_a_fragment_without_body() {
        let (out, _) = html("<p>hello</p>", &Config::default(), Some("<img>"));
        assert_eq!(out, "<p>hello</p><img>");
    }

    #[test]
    fn plain_text_urls_standing_alone_are_rewritten() {
        let mut f = Fake(Vec::new());
        let mut next = 5;
        let text = "See https://a.example/x. Or (http://b.example/y), not xhttp://c.example/ nor www.d.example.\n";
        let out = rewrite_text(text, &Config::default(), &mut f, &mut next).unwrap();
        assert_eq!(
            out,
            "See https://t.test/c/T5. Or (https://t.test/c/T6), not xhttp://c.example/ nor www.d.example.\n"
        );
        assert_eq!(next, 7);
    }

    #[test]
    fn entities_and_hosts() {
        assert_eq!(
            decode_entities("a&amp;b&#38;c&#x26;d&unknown;e&"),
            "a&b&c&d&unknown;e&"
        );
        assert_eq!(
            url_host("https://u:p@Sub.Example.org:8080/x"),
            Some("sub.example.org".into())
        );
        assert!(!trackable("javascript:alert(1)"));
        assert!(!trackable("https://a.example/x y"));
        assert!(trackable("HTTPS://a.example"));
    }
}
