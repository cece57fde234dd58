//! The HTML tokenizer's rules that decide where tags are (WHATWG HTML, "Tokenization"),
//! and nothing else: what link tracking needs is every start and end tag with its
//! attributes' byte ranges, with the places where `<a href>` is not a tag skipped —
//! comments, `<!DOCTYPE>` and other markup declarations, CDATA sections in SVG and MathML,
//! and the text of `<script>` (with its escape states), `<style>`, `<textarea>`, `<title>`,
//! `<plaintext>` and the other raw-text elements. Like a browser (and like lol_html, which
//! the tests hold this scanner against), the text mode after a start tag follows a
//! simulation of the tree builder's namespace stack: SVG and MathML content is not raw
//! text, and leaving it follows the spec's breakout tags and integration points.
//!
//! Text is never decoded or rebuilt: the caller gets byte ranges into the input and edits
//! those, so everything it does not touch stays byte for byte. This replaced lol_html in
//! the plugin: lol_html runs a selector VM over a fully lexed token for every tag, which
//! cost ~17% of the sending relay's CPU on a 50 KB newsletter; this scanner looks at the
//! bytes between tags only with `memchr`.

use memchr::{memchr, memchr2, memmem};
use std::ops::Range;

/// One attribute of a tag.
#[derive(Clone, Debug)]
pub struct Attr {
    /// The name's bytes (as written; compare case-insensitively).
    pub name: Range<usize>,
    /// The value's bytes without its quotes; `None` for an attribute with no `=`.
    pub value: Option<Range<usize>>,
    /// The quote around the value, if any.
    pub quote: Option<u8>,
    /// From the name's first byte to the value's last (closing quote included).
    pub span: Range<usize>,
}

/// The tag names the scanner and its callers tell apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    A,
    Body,
    Svg,
    Math,
    Script,
    /// RAWTEXT or RCDATA elements: text up to the element's own end tag.
    Raw(&'static str),
    Plaintext,
    Other,
}

impl Kind {
    /// The kind of a tag name, any case. The name's length and first letter pick the one
    /// candidate to compare, so most tags (`p`, `div`, `td`...) cost no comparison: an
    /// integer key of the name (a `u128`) was 20% of the scanner's time in WebAssembly,
    /// whose 32-bit target shifts 128-bit integers with library calls.
    fn of(name: &[u8]) -> Kind {
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        let first = name.first().map_or(0, u8::to_ascii_lowercase);
        match (name.len(), first) {
            (1, b'a') => Kind::A,
            (3, b's') if is("svg") => Kind::Svg,
            (3, b'x') if is("xmp") => Kind::Raw("xmp"),
            (4, b'b') if is("body") => Kind::Body,
            (4, b'm') if is("math") => Kind::Math,
            (5, b's') if is("style") => Kind::Raw("style"),
            (5, b't') if is("title") => Kind::Raw("title"),
            (6, b's') if is("script") => Kind::Script,
            (6, b'i') if is("iframe") => Kind::Raw("iframe"),
            (7, b'n') if is("noembed") => Kind::Raw("noembed"),
            (8, b'n') if is("noframes") => Kind::Raw("noframes"),
            (8, b'n') if is("noscript") => Kind::Raw("noscript"),
            (8, b't') if is("textarea") => Kind::Raw("textarea"),
            (9, b'p') if is("plaintext") => Kind::Plaintext,
            _ => Kind::Other,
        }
    }
}

/// A start or end tag.
pub struct Tag<'a> {
    pub end_tag: bool,
    /// The tag name as written.
    pub name: &'a str,
    pub kind: Kind,
    /// From `<` to `>` inclusive.
    pub span: Range<usize>,
    pub self_closing: bool,
    pub attrs: &'a [Attr],
    src: &'a str,
}

impl Tag<'_> {
    /// The first attribute of that name (HTML drops later duplicates).
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs
            .iter()
            .find(|a| self.src[a.name.clone()].eq_ignore_ascii_case(name))
    }

    /// An attribute's raw value (character references not decoded); "" without a value.
    pub fn value(&self, attr: &Attr) -> &str {
        attr.value.clone().map_or("", |v| &self.src[v])
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ns {
    Html,
    Svg,
    MathMl,
}

/// HTML start tags that end SVG or MathML content (the tree builder's "in foreign
/// content" breakout list).
const BREAKOUT: &[&str] = &[
    "b",
    "big",
    "blockquote",
    "body",
    "br",
    "center",
    "code",
    "dd",
    "div",
    "dl",
    "dt",
    "em",
    "embed",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "hr",
    "i",
    "img",
    "li",
    "listing",
    "menu",
    "meta",
    "nobr",
    "ol",
    "p",
    "pre",
    "ruby",
    "s",
    "small",
    "span",
    "strong",
    "strike",
    "sub",
    "sup",
    "table",
    "tt",
    "u",
    "ul",
    "var",
];

const SVG_HTML_POINTS: &[&str] = &["desc", "title", "foreignobject"];
const MATHML_TEXT_POINTS: &[&str] = &["mi", "mo", "mn", "ms", "mtext"];

fn one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

/// Calls `on_tag` for every start and end tag of `html`, in order. A tag cut off by the
/// end of the input is not a tag (the spec drops it), nor is anything after it.
pub fn scan(html: &str, mut on_tag: impl FnMut(&Tag<'_>)) {
    let b = html.as_bytes();
    let mut ns = vec![Ns::Html];
    let mut attrs = Vec::new();
    let mut i = 0;
    while let Some(at) = memchr(b'<', &b[i..]) {
        let lt = i + at;
        let foreign = *ns.last().unwrap_or(&Ns::Html) != Ns::Html;
        i = match b.get(lt + 1) {
            Some(b'!') => markup_declaration(b, lt, foreign),
            Some(b'?') => after_gt(b, lt + 2),
            Some(b'/') => match b.get(lt + 2) {
                Some(c) if c.is_ascii_alphabetic() => {
                    let Some(tag) = tag(html, lt, true, &mut attrs) else {
                        return;
                    };
                    end_tag_feedback(&mut ns, tag.name);
                    on_tag(&tag);
                    tag.span.end
                }
                Some(b'>') => lt + 3,
                Some(_) => after_gt(b, lt + 2),
                None => return,
            },
            Some(c) if c.is_ascii_alphabetic() => {
                let Some(tag) = tag(html, lt, false, &mut attrs) else {
                    return;
                };
                let tag_end = tag.span.end;
                let text = start_tag_feedback(&mut ns, &tag);
                on_tag(&tag);
                match text {
                    Text::Data => tag_end,
                    Text::Raw(name) => raw_text_end(b, tag_end, name),
                    Text::Script => script_end(b, tag_end),
                    Text::Plain => return,
                }
            }
            _ => lt + 1,
        };
    }
}

/// How the text after a start tag is tokenized.
enum Text {
    Data,
    /// RAWTEXT or RCDATA: up to the element's own end tag.
    Raw(&'static str),
    Script,
    Plain,
}

fn start_tag_feedback(ns: &mut Vec<Ns>, tag: &Tag<'_>) -> Text {
    let name = tag.name;
    let current = *ns.last().unwrap_or(&Ns::Html);
    if let Kind::Svg | Kind::Math = tag.kind {
        if !tag.self_closing {
            ns.push(if tag.kind == Kind::Svg {
                Ns::Svg
            } else {
                Ns::MathMl
            });
        }
        return Text::Data;
    }
    if current != Ns::Html {
        let font_breakout = name.eq_ignore_ascii_case("font")
            && ["color", "face", "size"]
                .iter()
                .any(|a| tag.attr(a).is_some());
        if one_of(name, BREAKOUT) || font_breakout {
            leave(ns);
        } else if !tag.self_closing
            && ((current == Ns::Svg && one_of(name, SVG_HTML_POINTS))
                || (current == Ns::MathMl && one_of(name, MATHML_TEXT_POINTS))
                || (current == Ns::MathMl
                    && name.eq_ignore_ascii_case("annotation-xml")
                    && tag.attr("encoding").is_some_and(|a| {
                        let v = tag.value(a);
                        v.eq_ignore_ascii_case("text/html")
                            || v.eq_ignore_ascii_case("application/xhtml+xml")
                    })))
        {
            ns.push(Ns::Html);
        }
        return Text::Data;
    }
    match tag.kind {
        Kind::Raw(raw) => Text::Raw(raw),
        Kind::Script => Text::Script,
        Kind::Plaintext => Text::Plain,
        _ => Text::Data,
    }
}

fn end_tag_feedback(ns: &mut Vec<Ns>, name: &str) {
    if ns.len() == 1 {
        return;
    }
    let current = *ns.last().unwrap_or(&Ns::Html);
    match current {
        Ns::Html if ns.len() >= 2 => {
            let outer = ns[ns.len() - 2];
            if (outer == Ns::Svg && one_of(name, SVG_HTML_POINTS))
                || (outer == Ns::MathMl
                    && (one_of(name, MATHML_TEXT_POINTS)
                        || name.eq_ignore_ascii_case("annotation-xml")))
            {
                leave(ns);
            }
        }
        Ns::Html => {}
        Ns::Svg | Ns::MathMl => {
            let own = if current == Ns::Svg { "svg" } else { "math" };
            if name.eq_ignore_ascii_case(own)
                || name.eq_ignore_ascii_case("p")
                || name.eq_ignore_ascii_case("br")
            {
                leave(ns);
            }
        }
    }
}

fn leave(ns: &mut Vec<Ns>) {
    if ns.len() > 1 {
        ns.pop();
    }
}

/// After the first `>` at or after `from` (a bogus comment or a DOCTYPE), or the end.
fn after_gt(b: &[u8], from: usize) -> usize {
    memchr(b'>', &b[from.min(b.len())..]).map_or(b.len(), |p| from + p + 1)
}

/// `<!` at `lt`: a comment, a CDATA section (in SVG and MathML), or a declaration that
/// ends at the next `>`. Returns where text resumes.
fn markup_declaration(b: &[u8], lt: usize, foreign: bool) -> usize {
    let rest = &b[lt + 2..];
    if rest.starts_with(b"--") {
        let body = lt + 4;
        // `<!-->` and `<!--->` are (empty) comments.
        if b[body..].starts_with(b">") {
            return body + 1;
        }
        if b[body..].starts_with(b"->") {
            return body + 2;
        }
        let mut from = body;
        while let Some(p) = memchr(b'-', &b[from..]) {
            let dashes = from + p;
            let after = &b[dashes..];
            if after.starts_with(b"-->") {
                return dashes + 3;
            }
            if after.starts_with(b"--!>") {
                return dashes + 4;
            }
            from = dashes + 1;
        }
        b.len()
    } else if foreign && rest.starts_with(b"[CDATA[") {
        memmem::find(&b[lt + 9..], b"]]>").map_or(b.len(), |p| lt + 9 + p + 3)
    } else {
        after_gt(b, lt + 2)
    }
}

/// The tag whose `<` is at `lt` (`</` for an end tag), its attributes kept in `attrs`;
/// `None` when the input ends inside it.
fn tag<'a>(html: &'a str, lt: usize, end_tag: bool, attrs: &'a mut Vec<Attr>) -> Option<Tag<'a>> {
    let b = html.as_bytes();
    let name_start = lt + 1 + usize::from(end_tag);
    attrs.clear();
    let mut j = name_start;
    while j < b.len() && !is_space(b[j]) && b[j] != b'/' && b[j] != b'>' {
        j += 1;
    }
    let name = name_start..j;
    loop {
        while j < b.len() && is_space(b[j]) {
            j += 1;
        }
        let done = |end: usize, self_closing: bool, attrs: &'a [Attr]| Tag {
            end_tag,
            kind: Kind::of(&b[name.clone()]),
            name: &html[name.clone()],
            span: lt..end,
            self_closing,
            attrs,
            src: html,
        };
        match *b.get(j)? {
            b'>' => return Some(done(j + 1, false, attrs)),
            b'/' => {
                if b.get(j + 1) == Some(&b'>') {
                    return Some(done(j + 2, true, attrs));
                }
                j += 1;
                continue;
            }
            _ => {}
        }
        // An attribute name; a leading `=` belongs to it.
        let start = j;
        j += 1;
        while j < b.len() && !is_space(b[j]) && !matches!(b[j], b'/' | b'>' | b'=') {
            j += 1;
        }
        let attr_name = start..j;
        let mut k = j;
        while k < b.len() && is_space(b[k]) {
            k += 1;
        }
        if b.get(k) != Some(&b'=') {
            attrs.push(Attr {
                name: attr_name,
                value: None,
                quote: None,
                span: start..j,
            });
            continue;
        }
        k += 1;
        while k < b.len() && is_space(b[k]) {
            k += 1;
        }
        let (value, quote) = match *b.get(k)? {
            q @ (b'"' | b'\'') => {
                let close = k + 1 + memchr(q, &b[k + 1..])?;
                j = close + 1;
                (k + 1..close, Some(q))
            }
            // `name=>`: an empty value, and the tag ends.
            b'>' => {
                j = k;
                (k..k, None)
            }
            _ => {
                let mut e = k;
                while e < b.len() && !is_space(b[e]) && b[e] != b'>' {
                    e += 1;
                }
                j = e;
                (k..e, None)
            }
        };
        attrs.push(Attr {
            name: attr_name,
            value: Some(value),
            quote,
            span: start..j,
        });
    }
}

/// Whether an end tag for `name` starts at `at` (`</name` then a space, `/` or `>`).
fn end_tag_at(b: &[u8], at: usize, name: &str) -> bool {
    let n = name.len();
    b.len() > at + 2 + n
        && b[at + 1] == b'/'
        && b[at + 2..at + 2 + n].eq_ignore_ascii_case(name.as_bytes())
        && (is_space(b[at + 2 + n]) || matches!(b[at + 2 + n], b'/' | b'>'))
}

/// Where RAWTEXT or RCDATA text that starts at `from` ends: at the element's end tag.
fn raw_text_end(b: &[u8], from: usize, name: &str) -> usize {
    let mut i = from;
    while let Some(p) = memchr(b'<', &b[i..]) {
        if end_tag_at(b, i + p, name) {
            return i + p;
        }
        i += p + 1;
    }
    b.len()
}

/// Where script data that starts at `from` ends, with the escape states of the spec:
/// after `<!--`, a `<script>` inside opens a "double escaped" stretch in which
/// `</script>` does not end the element; `-->` leaves both.
fn script_end(b: &[u8], from: usize) -> usize {
    #[derive(PartialEq)]
    enum State {
        Data,
        Escaped,
        DoubleEscaped,
    }
    let mut state = State::Data;
    let mut i = from;
    while let Some(p) = memchr2(b'<', b'-', &b[i..]) {
        let at = i + p;
        i = at + 1;
        if b[at] == b'-' {
            if state != State::Data && b[at..].starts_with(b"-->") {
                state = State::Data;
                i = at + 3;
            }
            continue;
        }
        match state {
            State::Data => {
                if b[at..].starts_with(b"<!--") {
                    state = State::Escaped;
                    // `<!-->` and `<!--->` close at once.
                    i = at + 4;
                    if b[i..].starts_with(b">") || b[i..].starts_with(b"->") {
                        state = State::Data;
                    }
                } else if end_tag_at(b, at, "script") {
                    return at;
                }
            }
            State::Escaped => {
                if end_tag_at(b, at, "script") {
                    return at;
                }
                let n = "script".len();
                if b.len() > at + 1 + n
                    && b[at + 1..at + 1 + n].eq_ignore_ascii_case(b"script")
                    && (is_space(b[at + 1 + n]) || matches!(b[at + 1 + n], b'/' | b'>'))
                {
                    state = State::DoubleEscaped;
                }
            }
            State::DoubleEscaped => {
                if end_tag_at(b, at, "script") {
                    state = State::Escaped;
                }
            }
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn tag_kinds_in_any_case_and_near_misses() {
        let kinds = [
            ("a", Kind::A),
            ("body", Kind::Body),
            ("svg", Kind::Svg),
            ("math", Kind::Math),
            ("script", Kind::Script),
            ("style", Kind::Raw("style")),
            ("iframe", Kind::Raw("iframe")),
            ("xmp", Kind::Raw("xmp")),
            ("noembed", Kind::Raw("noembed")),
            ("noframes", Kind::Raw("noframes")),
            ("noscript", Kind::Raw("noscript")),
            ("textarea", Kind::Raw("textarea")),
            ("title", Kind::Raw("title")),
            ("plaintext", Kind::Plaintext),
        ];
        for (name, kind) in kinds {
            assert_eq!(Kind::of(name.as_bytes()), kind, "{name}");
            assert_eq!(Kind::of(name.to_uppercase().as_bytes()), kind, "{name}");
            let mixed: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            assert_eq!(Kind::of(mixed.as_bytes()), kind, "{mixed}");
            // One letter more, one less, one changed: another element.
            assert_eq!(Kind::of(format!("{name}x").as_bytes()), Kind::Other);
            assert_eq!(Kind::of(&name.as_bytes()[1..]), Kind::Other, "{name}");
            let mut changed = name.as_bytes().to_vec();
            *changed.last_mut().unwrap() ^= 0x01;
            assert_eq!(Kind::of(&changed), Kind::Other, "{name}");
        }
        for other in [
            "",
            "p",
            "b",
            "div",
            "td",
            "span",
            "scrip",
            "noscripts",
            "abbr",
        ] {
            assert_eq!(Kind::of(other.as_bytes()), Kind::Other, "{other}");
        }
    }
}
