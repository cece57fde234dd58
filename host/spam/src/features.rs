//! Features of a message: each is a namespaced token hashed to 64 bits (FNV-1a with a final
//! mix, stable across platforms), deduplicated. Heuristics are also features (namespace
//! `sym`), so the trainer learns their weights, and are reported by name.

/// The version of what [`extract`] computes, written into every model: change it with any
/// change to the features or the hash, so that older models are refused instead of scoring
/// nonsense.
pub const VERSION: u32 = 3;

/// The message as the plugin contract exposes it (`headers`, `text-parts`, `html-parts`,
/// `attachments`, `parts`), decoded by the host.
#[derive(Debug, Default, Clone)]
pub struct View<'a> {
    /// Header fields in order, names as written, values unfolded and RFC 2047 decoded.
    pub headers: Vec<(&'a str, &'a str)>,
    /// Decoded text bodies (an HTML-only message gives its text rendering here).
    pub text_parts: Vec<&'a str>,
    /// Decoded HTML bodies.
    pub html_parts: Vec<&'a str>,
    /// Content types of every MIME part, lowercase.
    pub part_types: Vec<&'a str>,
    /// Charsets the parts declare.
    pub charsets: Vec<&'a str>,
    /// Attachments: file name, content type, size.
    pub attachments: Vec<(Option<&'a str>, &'a str, u64)>,
}

/// What [`extract`] found.
#[derive(Debug, Default, Clone)]
pub struct Features {
    /// Hashed features, sorted and deduplicated.
    pub hashes: Vec<u64>,
    /// The heuristics that fired, in a fixed order.
    pub symbols: Vec<&'static str>,
}

/// Text read per message at most (bytes of body text, of HTML): spam puts its words early,
/// and the cost must stay bounded.
const MAX_TEXT: usize = 64 * 1024;
/// Word bigrams are taken from the first words only.
const MAX_BIGRAM_WORDS: usize = 3000;
/// Character grams are taken from the first words only (more measured no better).
const MAX_GRAM_WORDS: usize = 300;

/// Headers whose values are read (plus the top-level `Content-Transfer-Encoding`, and
/// whether the [`PRESENT`] fields are there). Everything else (`Received`, `To`, `Cc`,
/// `Delivered-To`, `Return-Path`, `List-*`, `X-Spam-*`, `X-Keywords`, ...) describes the
/// recipient's mailbox or the path the mail took to it, not the message, and is never read.
const READ: [&str; 10] = [
    "subject",
    "from",
    "reply-to",
    "message-id",
    "date",
    "x-mailer",
    "user-agent",
    "content-type",
    "x-priority",
    "x-msmail-priority",
];

/// Header fields the sender's software writes (never the receiving side or a list), whose
/// presence is a feature.
const PRESENT: [&str; 10] = [
    "in-reply-to",
    "references",
    "mime-version",
    "organization",
    "x-originating-ip",
    "importance",
    "thread-index",
    "x-mimeole",
    "x-accept-language",
    "comments",
];

struct Acc {
    hashes: Vec<u64>,
    symbols: Vec<&'static str>,
}

impl Acc {
    fn add(&mut self, ns: &str, token: &str) {
        self.hashes.push(hash(ns, token));
    }

    fn sym(&mut self, name: &'static str) {
        if !self.symbols.contains(&name) {
            self.symbols.push(name);
            self.add("sym", name);
        }
    }

    /// Adds the words of a text and bigrams of its first `max_bigrams` words; returns how
    /// many words had bigrams.
    fn words(&mut self, ns: &str, ns2: &str, text: &str, max_bigrams: usize) -> usize {
        let mut prev: Option<String> = None;
        let mut n = 0;
        let mut pair = String::new();
        for w in words(text).flat_map(ideographic) {
            let w = normalize(w);
            self.add(ns, &w);
            if n < max_bigrams {
                if let Some(p) = &prev {
                    pair.clear();
                    pair.push_str(p);
                    pair.push(' ');
                    pair.push_str(&w);
                    self.add(ns2, &pair);
                }
                n += 1;
            }
            prev = Some(w);
        }
        n
    }
}

/// FNV-1a over the namespace, a separator and the token, then the splitmix64 finalizer so
/// that low and high bits both mix well.
pub fn hash(ns: &str, token: &str) -> u64 {
    mix(fnv(namespace(ns), token.as_bytes()))
}

/// The hash state after a namespace and its separator: tokens of one namespace continue
/// from it.
fn namespace(ns: &str) -> u64 {
    fnv(fnv(FNV_BASIS, ns.as_bytes()), &[0xff])
}

const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Computes the features of a message.
pub fn extract(view: &View<'_>) -> Features {
    let mut acc = Acc {
        hashes: Vec::with_capacity(2048),
        symbols: Vec::new(),
    };
    headers(&mut acc, view);
    bodies(&mut acc, view);
    acc.hashes.sort_unstable();
    acc.hashes.dedup();
    Features {
        hashes: acc.hashes,
        symbols: acc.symbols,
    }
}

fn header<'a>(view: &View<'a>, name: &str) -> Option<&'a str> {
    debug_assert!(READ.contains(&name));
    view.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

fn headers(acc: &mut Acc, view: &View<'_>) {
    match header(view, "subject") {
        None => acc.sym("SUBJ_MISSING"),
        Some(s) if s.trim().is_empty() => acc.sym("SUBJ_EMPTY"),
        Some(s) => subject(acc, s),
    }
    let from = header(view, "from").unwrap_or("");
    // Raw 8-bit bytes in a header are not allowed (RFC 2047 exists for that); the parser
    // leaves replacement characters where they were.
    if from.contains('\u{fffd}') || header(view, "subject").is_some_and(|s| s.contains('\u{fffd}'))
    {
        acc.sym("HEADER_RAW_8BIT");
    }
    let (name, addr) = split_address(from);
    let from_domain = addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    if name.is_empty() {
        acc.sym("FROM_NO_NAME");
    } else {
        acc.words("fn", "fn2", name, 8);
        if name.contains('@') {
            acc.sym("FROM_NAME_HAS_ADDRESS");
        }
        let letters = || name.chars().filter(|c| c.is_alphabetic());
        if letters().count() >= 6 && letters().all(char::is_uppercase) {
            acc.sym("FROM_NAME_CAPS");
        }
    }
    match addr.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = domain.to_ascii_lowercase();
            acc.add("fd", registered_domain(&domain));
            acc.add("ft", tld(&domain));
            acc.add("fl", &shape(local));
            if local.bytes().filter(u8::is_ascii_digit).count() >= 3 {
                acc.sym("FROM_LOCAL_DIGITS");
            }
            if consonant_run(local) >= 5 {
                acc.sym("FROM_LOCAL_RANDOM");
            }
            // `shop.example.com@bulk.example.net`: a brand's domain as a mailbox name.
            if local.contains('.')
                && local.rsplit('.').next().is_some_and(|t| {
                    ["com", "net", "org", "biz", "info"].contains(&t.to_ascii_lowercase().as_str())
                })
            {
                acc.sym("FROM_LOCAL_IS_DOMAIN");
            }
        }
        None => acc.sym("FROM_NO_ADDRESS"),
    }
    if let Some(rt) = header(view, "reply-to") {
        let (_, a) = split_address(rt);
        let rd = a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        if rd.as_deref().map(registered_domain) != from_domain.as_deref().map(registered_domain) {
            acc.sym("REPLYTO_OTHER_DOMAIN");
        }
    }
    match header(view, "message-id") {
        None => acc.sym("MSGID_MISSING"),
        Some(id) => {
            let id = id.trim().trim_start_matches('<').trim_end_matches('>');
            match id.rsplit_once('@') {
                None => acc.sym("MSGID_NO_DOMAIN"),
                Some((local, d)) => {
                    acc.add("ml", &shape(local));
                    let d = d.to_ascii_lowercase();
                    if from_domain.as_deref().map(registered_domain) == Some(registered_domain(&d))
                    {
                        acc.sym("MSGID_FROM_DOMAIN");
                    }
                }
            }
        }
    }
    match header(view, "date") {
        None => acc.sym("DATE_MISSING"),
        Some(d) => {
            if !plausible_zone(d) {
                acc.sym("DATE_BAD_ZONE");
            }
        }
    }
    let mailer = header(view, "x-mailer").or_else(|| header(view, "user-agent"));
    match mailer {
        None => acc.add("xm", "-none-"),
        Some(m) => {
            for w in words(m).take(6) {
                acc.add("xm", &normalize(w));
            }
            // A mailer name that is one random mixed-case word (`ArHA8IFlSSFNGzAMo`).
            let m = m.trim();
            if m.len() >= 10
                && !m.contains([' ', '.', '/'])
                && m.bytes().any(|b| b.is_ascii_uppercase())
                && m.bytes().any(|b| b.is_ascii_lowercase())
            {
                acc.sym("MAILER_RANDOM");
            }
        }
    }
    if let Some(ct) = header(view, "content-type") {
        let lower = ct.to_ascii_lowercase();
        let ty = lower.split(';').next().unwrap_or("").trim();
        acc.add("ct", ty);
        if let Some(cs) = param(&lower, "charset") {
            acc.add("cs", &cs);
            acc.add("csc", charset_class(&cs));
        }
    } else {
        acc.add("ct", "-none-");
    }
    for (name, value) in &view.headers {
        let lower = name.to_ascii_lowercase();
        if PRESENT.contains(&lower.as_str()) {
            acc.add("hp", &lower);
        }
        if lower == "content-transfer-encoding" {
            acc.add("cte", &value.trim().to_ascii_lowercase());
        }
    }
    for name in ["x-priority", "x-msmail-priority"] {
        if let Some(v) = header(view, name) {
            acc.add("xp", &format!("{name}={}", v.trim().to_ascii_lowercase()));
        }
    }
}

fn subject(acc: &mut Acc, s: &str) {
    // A leading `[tag]` is a mailing list's mark: which lists a mailbox reads says nothing
    // about whether a message is spam.
    let s = match s
        .trim_start()
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
    {
        Some((tag, rest)) if tag.len() <= 30 && !tag.contains(' ') => rest,
        _ => s,
    };
    acc.words("s", "s2", s, 64);
    let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
    let upper = letters.iter().filter(|c| c.is_uppercase()).count();
    if letters.len() >= 8 && upper * 10 >= letters.len() * 8 {
        acc.sym("SUBJ_ALL_CAPS");
    }
    if s.contains('!') {
        acc.sym("SUBJ_EXCLAIM");
    }
    if s.contains('$') || s.contains('%') {
        acc.sym("SUBJ_MONEY");
    }
    // Bulk senders end the subject with a tracking number or a random tag.
    let last = s.trim_end().rsplit(|c: char| c.is_whitespace()).next();
    if let Some(last) = last {
        let t = last.trim_matches(|c: char| "[]()#-_.".contains(c));
        let digits = t.bytes().filter(u8::is_ascii_digit).count();
        if t.len() >= 4 && digits >= 3 && s.trim_end().len() > t.len() {
            acc.sym("SUBJ_TRAILING_ID");
        }
    }
    if !s.is_ascii() {
        acc.sym("SUBJ_8BIT");
    }
    if words(s).any(looks_random) {
        acc.sym("SUBJ_RANDOM_WORD");
    }
}

fn bodies(acc: &mut Acc, view: &View<'_>) {
    let mut text_len = 0;
    let mut left = MAX_TEXT;
    let mut bigrams = MAX_BIGRAM_WORDS;
    let mut urls = 0;
    for t in &view.text_parts {
        let t = without_list_footers(cut(t, left));
        left -= t.len();
        text_len += t.len();
        bigrams -= acc.words("b", "b2", t, bigrams);
        char_grams(acc, t);
        urls += links(acc, t);
        emails(acc, t);
        text_shape(acc, t);
    }
    undeclared_8bit(acc, view);
    let has_plain = view.part_types.contains(&"text/plain");
    let has_html = !view.html_parts.is_empty();
    if has_html && !has_plain {
        acc.sym("HTML_ONLY");
    }
    let mut left = MAX_TEXT;
    for h in &view.html_parts {
        let h = cut(h, left);
        left -= h.len();
        urls += html(acc, h);
    }
    acc.add("un", &bin(urls).to_string());
    acc.add("len", &bin(text_len).to_string());
    if text_len < 20 && view.attachments.is_empty() {
        acc.sym("BODY_EMPTY");
    }
    for t in &view.part_types {
        acc.add("pt", t);
    }
    for c in &view.charsets {
        let c = c.to_ascii_lowercase();
        acc.add("cs", &c);
        acc.add("csc", charset_class(&c));
    }
    acc.add("np", &bin(view.part_types.len()).to_string());
    for (name, ty, size) in &view.attachments {
        acc.add("at", &ty.to_ascii_lowercase());
        acc.add("as", &bin(*size as usize).to_string());
        if let Some(ext) = name.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e) {
            let ext = ext.to_ascii_lowercase();
            acc.add("ax", &ext);
            if ["exe", "scr", "pif", "bat", "com", "vbs", "js", "cpl", "lnk"].contains(&&*ext) {
                acc.sym("ATTACH_EXECUTABLE");
            }
        }
    }
}

/// Marks of mailing-list software in a footer.
const LIST_MARKS: [&str; 7] = [
    "listinfo",
    "mailman",
    "majordomo",
    "listserv",
    "yahoogroups",
    "groups.yahoo.com",
    "lists.sourceforge.net",
];

/// The text without the footers mailing lists append (a separator line of `_`, `-` or `=`,
/// then at most 1,500 bytes naming the list software): which lists a mailbox reads says
/// nothing about whether a message is spam, and spam sent through a list carries them too.
fn without_list_footers(mut t: &str) -> &str {
    for _ in 0..3 {
        let Some(sep) = t.rmatch_indices('\n').take(40).map(|(i, _)| i).find(|&i| {
            let line = t[i + 1..].lines().next().unwrap_or("").trim();
            line.len() >= 10 && line.chars().all(|c| matches!(c, '_' | '-' | '='))
        }) else {
            break;
        };
        let tail = t[sep..].to_ascii_lowercase();
        if tail.len() > 1500 || !LIST_MARKS.iter().any(|m| tail.contains(m)) {
            break;
        }
        t = &t[..sep];
    }
    t
}

/// Character 4-grams of the first words (with `^`/`$` at their ends): they carry what a
/// language and a register look like, so a message in words never seen still resembles
/// the mail it is like.
fn char_grams(acc: &mut Acc, t: &str) {
    const G: usize = 4;
    let seed = namespace("c4");
    // ASCII words (almost all) without allocating: `^word$` lowercased in a buffer.
    let mut buf = [0u8; 42];
    let mut wide = String::new();
    for w in words(t).take(MAX_GRAM_WORDS) {
        if w.is_ascii() {
            let n = w.len();
            if !(G..=40).contains(&n) {
                continue;
            }
            buf[0] = b'^';
            for (d, b) in buf[1..=n].iter_mut().zip(w.bytes()) {
                *d = b.to_ascii_lowercase();
            }
            buf[n + 1] = b'$';
            for g in buf[..n + 2].windows(G) {
                acc.hashes.push(mix(fnv(seed, g)));
            }
            continue;
        }
        wide.clear();
        wide.push('^');
        wide.extend(w.chars().take(40).flat_map(char::to_lowercase));
        wide.push('$');
        let idx: Vec<usize> = wide
            .char_indices()
            .map(|(i, _)| i)
            .chain([wide.len()])
            .collect();
        if idx.len() < G + 3 {
            continue;
        }
        for i in 0..idx.len() - G {
            acc.hashes
                .push(mix(fnv(seed, &wide.as_bytes()[idx[i]..idx[i + G]])));
        }
    }
}

/// Text that is not ASCII in a message that declares no charset other than ASCII (the
/// parser shows such bytes as Latin-1 or replacement characters), and text that is
/// mostly undecodable.
fn undeclared_8bit(acc: &mut Acc, view: &View<'_>) {
    let declared = view
        .charsets
        .iter()
        .any(|c| !matches!(c.to_ascii_lowercase().as_str(), "us-ascii" | "ascii"));
    let (mut chars, mut bad, mut wide) = (0, 0, false);
    // Only text with non-ASCII characters is walked character by character.
    for t in view.text_parts.iter().map(|t| cut(t, MAX_TEXT)) {
        if t.is_ascii() {
            chars += t.len();
            continue;
        }
        wide = true;
        for c in t.chars() {
            chars += 1;
            bad += usize::from(c == '\u{fffd}');
        }
    }
    if !declared && wide {
        acc.sym("BODY_8BIT_UNDECLARED");
    }
    if bad >= 5 && bad * 100 >= chars {
        acc.sym("BODY_UNDECODABLE");
    }
}

/// Counts of things in plain text that spam overuses.
fn text_shape(acc: &mut Acc, t: &str) {
    let exclaim = t.matches('!').count();
    if exclaim >= 10 {
        acc.sym("BODY_MANY_EXCLAIM");
    }
    let mut caps_words = 0;
    let mut all_words = 0;
    let mut random = false;
    for w in words(t).take(4000) {
        random |= looks_random(w);
        if w.chars().count() >= 3 && w.chars().any(char::is_alphabetic) {
            all_words += 1;
            if w.chars().all(|c| !c.is_lowercase()) {
                caps_words += 1;
            }
        }
    }
    if all_words >= 20 && caps_words * 4 >= all_words {
        acc.sym("BODY_SHOUTING");
    }
    if random {
        acc.sym("BODY_RANDOM_WORD");
    }
    // How much of the text is outside ASCII, binned: 0, <1%, <5%, <20%, more.
    let letters = t.chars().filter(|c| c.is_alphabetic()).count().max(1);
    let wide = t
        .chars()
        .filter(|c| c.is_alphabetic() && !c.is_ascii())
        .count();
    let share = match wide * 100 / letters {
        0 if wide == 0 => "0",
        0 => "1",
        1..=4 => "5",
        5..=19 => "20",
        _ => "more",
    };
    acc.add("na", share);
    let money = t.matches('$').count();
    if money >= 3 {
        acc.sym("BODY_MONEY");
    }
}

/// Features of the http(s) and `www.` links in a text; returns how many it found.
fn links(acc: &mut Acc, text: &str) -> usize {
    let lower = text.to_ascii_lowercase();
    let mut n = 0;
    let mut from = 0;
    while let Some(i) = next_link(&lower, from) {
        let (host, rest_at) = link_host(&lower, i);
        from = rest_at.max(i + 1);
        if host.is_empty() {
            continue;
        }
        n += 1;
        if n > 200 {
            break;
        }
        url_host(acc, host);
        let path: String = lower[rest_at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !"\"'<>()".contains(*c))
            .take(120)
            .collect();
        for w in path
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 2)
            .take(8)
        {
            acc.add("up", &normalize(w));
        }
    }
    n
}

fn next_link(lower: &str, from: usize) -> Option<usize> {
    ["http://", "https://", "www."]
        .iter()
        .filter_map(|p| lower[from..].find(p).map(|i| i + from))
        .min()
}

/// The host of the link at `i` and where the rest of it starts.
fn link_host(lower: &str, i: usize) -> (&str, usize) {
    let start = if lower[i..].starts_with("http://") {
        i + 7
    } else if lower[i..].starts_with("https://") {
        i + 8
    } else {
        i
    };
    let end = lower[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '@'))
        .map_or(lower.len(), |e| start + e);
    let host = &lower[start..end];
    // user@host: the part after the last `@` is the host.
    let host = host.rsplit('@').next().unwrap_or(host).trim_matches('.');
    (host, end)
}

fn url_host(acc: &mut Acc, host: &str) {
    if host.split('.').count() == 4 && host.split('.').all(|p| p.parse::<u8>().is_ok()) {
        acc.sym("URL_NUMERIC_IP");
        return;
    }
    acc.add("uh", host);
    acc.add("ud", registered_domain(host));
    acc.add("ut", tld(host));
    if host.split('.').count() >= 5 {
        acc.sym("URL_DEEP_HOST");
    }
}

/// Domains of e-mail addresses in a text (never the local part: a mailbox's own address
/// must not be learned).
fn emails(acc: &mut Acc, text: &str) {
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('@').take(200) {
        let before = bytes[..i]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || b"._-+".contains(b))
            .count();
        if before == 0 {
            continue;
        }
        let domain: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
            .collect::<String>()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if domain.contains('.') {
            acc.add("ed", registered_domain(&domain));
        }
    }
}

/// Features of an HTML body: tags, attribute names, links (with the anchor text compared to
/// the target), images, comments and how much text there is; returns how many links.
fn html(acc: &mut Acc, h: &str) -> usize {
    let lower = h.to_ascii_lowercase();
    let mut links = 0;
    let mut images = 0;
    let mut comments = 0;
    let mut markup = 0;
    let mut i = 0;
    let b = lower.as_bytes();
    let mut open_href: Option<String> = None;
    let mut anchor_text = String::new();
    while let Some(off) = lower[i..].find('<') {
        let start = i + off;
        if lower[start..].starts_with("<!--") {
            comments += 1;
            let end = lower[start..]
                .find("-->")
                .map_or(lower.len(), |e| start + e + 3);
            markup += end - start;
            i = end;
            continue;
        }
        let end = lower[start..]
            .find('>')
            .map_or(lower.len(), |e| start + e + 1);
        if open_href.is_some() {
            anchor_text.push_str(&h[i..start]);
        }
        let tag = &lower[start + 1..end.saturating_sub(1).max(start + 1)];
        markup += end - start;
        i = end;
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        if name.is_empty() {
            continue;
        }
        if tag.starts_with('/') {
            if name == "a" {
                if let Some(href) = open_href.take() {
                    anchor_mismatch(acc, &href, &anchor_text);
                }
                anchor_text.clear();
            }
            continue;
        }
        acc.add("h", &name);
        for attr in attributes(tag).take(16) {
            acc.add("ha", &format!("{name}.{attr}"));
        }
        match name.as_str() {
            "a" => {
                if let Some(href) = attr_value(tag, "href") {
                    if href.starts_with("http") || href.starts_with("www.") {
                        links += 1;
                        let (host, rest) = link_host(href, 0);
                        if !host.is_empty() {
                            url_host(acc, host);
                        }
                        for w in href[rest..]
                            .split(|c: char| !c.is_alphanumeric())
                            .filter(|w| w.len() >= 2)
                            .take(8)
                        {
                            acc.add("up", &normalize(w));
                        }
                        open_href = Some(host.to_string());
                        anchor_text.clear();
                    } else if href.starts_with("mailto:") {
                        acc.add("h", "a-mailto");
                    }
                }
            }
            "img" => images += 1,
            "style" | "script" => {
                let close = format!("</{name}");
                let skip = lower[i..].find(&close).map_or(lower.len(), |e| i + e);
                markup += skip - i;
                i = skip;
            }
            _ => {}
        }
        if tag.contains("display:none") || tag.contains("visibility:hidden") {
            acc.sym("HTML_HIDDEN_TEXT");
        }
        if tag.contains("color=\"#ffffff\"") || tag.contains("color=#ffffff") {
            acc.sym("HTML_WHITE_TEXT");
        }
    }
    let _ = b;
    let text = h.len().saturating_sub(markup);
    if h.len() > 500 && text * 10 < h.len() {
        acc.sym("HTML_LITTLE_TEXT");
    }
    if images > 0 && text < 400 {
        acc.sym("HTML_IMAGE_ONLY");
    }
    if comments >= 10 {
        acc.sym("HTML_MANY_COMMENTS");
    }
    acc.add("hi", &bin(images).to_string());
    links
}

/// Anchor text that shows a link to another domain than the one it goes to.
fn anchor_mismatch(acc: &mut Acc, href_host: &str, text: &str) {
    let t = text.trim().to_ascii_lowercase();
    if let Some(i) = next_link(&t, 0) {
        let (shown, _) = link_host(&t, i);
        if !shown.is_empty()
            && !href_host.is_empty()
            && registered_domain(shown) != registered_domain(href_host)
        {
            acc.sym("HTML_LINK_MISMATCH");
        }
    }
}

/// Attribute names in a tag's text (after the tag name).
fn attributes(tag: &str) -> impl Iterator<Item = &str> {
    let mut rest = tag
        .trim_start_matches(|c: char| c.is_ascii_alphanumeric())
        .trim_end_matches('/');
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                return None;
            }
            let n = rest
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = &rest[..n];
            rest = &rest[n..];
            if let Some(r) = rest.trim_start().strip_prefix('=') {
                let r = r.trim_start();
                rest = match r.chars().next() {
                    Some(q @ ('"' | '\'')) => r[1..].find(q).map_or("", |e| &r[e + 2..]),
                    _ => r.find(char::is_whitespace).map_or("", |e| &r[e..]),
                };
            }
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Some(name);
            }
        }
    })
}

fn attr_value<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut at = 0;
    while let Some(off) = tag[at..].find(name) {
        let i = at + off;
        at = i + name.len();
        let before_ok = i == 0 || tag.as_bytes()[i - 1].is_ascii_whitespace();
        let rest = tag[at..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let v = rest[1..].trim_start();
        return Some(match v.chars().next() {
            Some(q @ ('"' | '\'')) => v[1..].split(q).next().unwrap_or(""),
            _ => v.split(char::is_whitespace).next().unwrap_or(""),
        });
    }
    None
}

/// Words: runs of letters, digits and `$ ' -` (inner); ASCII ones at most 40 bytes. The
/// local parts of e-mail addresses are not words: a mailbox's own address (which a
/// corpus may have anonymised differently per folder) must not be learned.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let skip = local_parts(text);
    let base = text.as_ptr() as usize;
    text.split(|c: char| !(c.is_alphanumeric() || c == '$' || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-'))
        .filter(|w| !w.is_empty() && (w.len() <= 40 || !w.is_ascii()))
        .filter(move |w| {
            let at = w.as_ptr() as usize - base;
            !skip.iter().any(|&(a, b)| (a..b).contains(&at))
        })
}

/// Byte ranges of the local parts of e-mail addresses in a text (at most 200).
fn local_parts(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for (i, _) in text.match_indices('@').take(200) {
        let before = bytes[..i]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || b"._-+=".contains(b))
            .count();
        if before > 0 && bytes.get(i + 1).is_some_and(u8::is_ascii_alphanumeric) {
            out.push((i - before, i));
        }
    }
    out
}

/// Scripts written without spaces (Chinese, Japanese, Korean) give no words: runs of their
/// characters become overlapping character pairs, the usual unit for them.
fn ideographic(w: &str) -> Box<dyn Iterator<Item = &str> + '_> {
    if w.is_ascii() || !w.chars().any(is_cjk) {
        return Box::new(std::iter::once(w).filter(|w| w.len() <= 40));
    }
    let idx: Vec<usize> = w.char_indices().map(|(i, _)| i).chain([w.len()]).collect();
    let n = idx.len() - 1;
    Box::new((0..n.saturating_sub(1).max(1)).take(200).map(move |i| {
        let end = idx[(i + 2).min(n)];
        &w[idx[i]..end]
    }))
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff | 0xff00..=0xffef)
}

/// Lowercase; digits collapsed so that amounts and ids generalise (`$1000` and `$5000`
/// are the same word, `mp3` stays apart from `mp`).
fn normalize(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut last_digit = false;
    for c in w.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('0');
            }
            last_digit = true;
        } else {
            last_digit = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The character classes of a string: `a` letters, `0` digits, other characters as they
/// are; runs collapsed (`12a1mailbot1` → `0a0a0`).
fn shape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(64) {
        let k = if c.is_alphabetic() {
            'a'
        } else if c.is_ascii_digit() {
            '0'
        } else {
            c
        };
        if !out.ends_with(k) {
            out.push(k);
        }
    }
    out
}

/// The longest run of consonants (ASCII letters other than vowels and `y`): generated
/// mailbox names (`smgrdphcv`, `vcqztr`) have long ones, people's names rarely five.
fn consonant_run(s: &str) -> usize {
    let mut best = 0;
    let mut run = 0;
    for c in s.chars() {
        if c.is_ascii_alphabetic() && !"aeiouyAEIOUY".contains(c) {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// A run of ASCII letters that no language writes: hash-busting filler
/// (`gcoakgwnibgafjecarccjbjii`) has long consonant runs or almost no vowels.
fn looks_random(w: &str) -> bool {
    let n = w.len();
    if n < 8 || !w.bytes().all(|b| b.is_ascii_lowercase()) {
        return false;
    }
    let vowels = w.bytes().filter(|b| b"aeiouy".contains(b)).count();
    consonant_run(w) >= 6 || (n >= 12 && vowels * 5 < n)
}

/// The family of a declared charset: a model that saw GB2312 and Big5 spam learns
/// something about ISO-2022-JP too.
fn charset_class(cs: &str) -> &'static str {
    let cs = cs.trim().trim_matches('"');
    let cjk = [
        "gb2312",
        "gbk",
        "gb18030",
        "big5",
        "iso-2022-jp",
        "shift_jis",
        "sjis",
        "euc-jp",
        "euc-kr",
        "ks_c_5601",
        "iso-2022-kr",
        "euc-cn",
        "euc-tw",
        "hz-gb",
    ];
    let bare = cs.strip_prefix("x-").unwrap_or(cs);
    if cjk.iter().any(|p| bare.starts_with(p)) {
        "cjk"
    } else if ["koi8", "windows-1251", "iso-8859-5", "cp1251"]
        .iter()
        .any(|p| cs.starts_with(p))
    {
        "cyrillic"
    } else if cs.starts_with("unknown") || cs.starts_with("x-unknown") || cs == "default" {
        "unknown"
    } else if cs.starts_with("iso-8859")
        || cs.starts_with("windows-125")
        || cs.starts_with("cp125")
        || cs == "us-ascii"
        || cs == "ascii"
        || cs.starts_with("utf")
    {
        "common"
    } else {
        "other"
    }
}

/// A display name and address from a `From`-like value.
fn split_address(v: &str) -> (&str, &str) {
    match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => (v[..a].trim().trim_matches('"').trim(), v[a + 1..b].trim()),
        _ => {
            // `addr (Name)` or a bare address.
            let (addr, name) = match v.find('(') {
                Some(p) => (v[..p].trim(), v[p..].trim_matches(['(', ')', ' '])),
                None => (v.trim(), ""),
            };
            (name, addr)
        }
    }
}

fn param(ct: &str, name: &str) -> Option<String> {
    ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The last two labels (three under a two-letter second level such as `co.uk`).
pub fn registered_domain(host: &str) -> &str {
    let host = host.trim_end_matches('.');
    let mut dots = host.rmatch_indices('.').map(|(i, _)| i);
    let (Some(last), Some(second)) = (dots.next(), dots.next()) else {
        return host;
    };
    let sld = &host[second + 1..last];
    if sld.len() <= 3 && ["co", "com", "net", "org", "ac", "gov", "ne", "or"].contains(&sld) {
        match dots.next() {
            Some(third) => &host[third + 1..],
            None => host,
        }
    } else {
        &host[second + 1..]
    }
}

fn tld(host: &str) -> &str {
    host.rsplit('.').next().unwrap_or(host)
}

/// A numeric zone east or west of UTC by at most 14 hours and a whole quarter hour.
fn plausible_zone(date: &str) -> bool {
    let Some(z) = date
        .split_whitespace()
        .find(|w| (w.starts_with('+') || w.starts_with('-')) && w.len() == 5)
    else {
        return true;
    };
    let (Ok(h), Ok(m)) = (z[1..3].parse::<u32>(), z[3..5].parse::<u32>()) else {
        return false;
    };
    h <= 14 && m % 15 == 0
}

/// log2 bins: 0, 1, 2-3, 4-7, ...
fn bin(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &[(&'a str, &'a str)], text: &'a str) -> View<'a> {
        View {
            headers: headers.to_vec(),
            text_parts: vec![text],
            part_types: vec!["text/plain"],
            ..View::default()
        }
    }

    #[test]
    fn hashes_are_stable() {
        // The model files depend on these values: changing the hash invalidates them.
        assert_eq!(hash("b", "free"), 0x48d9_f644_8570_0dd9);
    }

    #[test]
    fn collection_headers_are_not_read() {
        let a = extract(&view(&[("Subject", "hi")], "hello there"));
        let b = extract(&view(
            &[
                ("Subject", "hi"),
                ("To", "zzzz@example.com"),
                ("X-Keywords", ""),
                ("List-Id", "<x.example>"),
                ("Received", "from a by b"),
                ("X-Spam-Status", "Yes"),
            ],
            "hello there",
        ));
        assert_eq!(a.hashes, b.hashes);
    }

    #[test]
    fn address_local_parts_are_not_learned() {
        let a = extract(&view(&[], "mail zzzz@example.com now"));
        let b = extract(&view(&[], "mail yyyy@example.com now"));
        // Neither as words nor as part of the address feature.
        assert!(a.hashes.contains(&hash("ed", "example.com")));
        assert_eq!(a.hashes, b.hashes);
    }

    #[test]
    fn heuristics_fire() {
        let f = extract(&View {
            headers: vec![
                ("Subject", "MAKE MONEY FAST!!! 48213"),
                ("From", "12a1mailbot1@web.de"),
                ("Date", "Wed, 21 Aug 2002 20:31:57 -1600"),
            ],
            html_parts: vec![
                "<html><body><a href=\"http://1.2.3.4/x\">http://www.paypal.com</a>\
                 <a href=\"http://evil.example/login\">www.bank.com</a><img src=x></body></html>",
            ],
            part_types: vec!["text/html"],
            ..View::default()
        });
        for s in [
            "SUBJ_ALL_CAPS",
            "SUBJ_EXCLAIM",
            "SUBJ_TRAILING_ID",
            "FROM_NO_NAME",
            "FROM_LOCAL_DIGITS",
            "MSGID_MISSING",
            "DATE_BAD_ZONE",
            "HTML_ONLY",
            "URL_NUMERIC_IP",
            "HTML_LINK_MISMATCH",
            "HTML_IMAGE_ONLY",
        ] {
            assert!(f.symbols.contains(&s), "{s} missing from {:?}", f.symbols);
        }
    }

    #[test]
    fn filler_charsets_and_undeclared_bytes() {
        let f = extract(&View {
            headers: vec![
                ("Subject", "kennst mich noch? nehrbqxtwz"),
                (
                    "From",
                    "\"JOHN Q PUBLIC\" <WebDesignHQ.com@mailer.example.net>",
                ),
                ("X-Mailer", "ArHA8IFlSSFNGzAMo"),
            ],
            text_parts: vec!["Hallo, \u{e0}\u{b8}\u{ab} gcoakgwnibgafjecarccjbjii"],
            part_types: vec!["text/plain"],
            charsets: vec!["us-ascii"],
            ..View::default()
        });
        for s in [
            "SUBJ_RANDOM_WORD",
            "BODY_RANDOM_WORD",
            "FROM_NAME_CAPS",
            "FROM_LOCAL_IS_DOMAIN",
            "MAILER_RANDOM",
            "BODY_8BIT_UNDECLARED",
        ] {
            assert!(f.symbols.contains(&s), "{s} missing from {:?}", f.symbols);
        }
        // Ordinary words, names and mailers fire none of them.
        let f = extract(&View {
            headers: vec![
                ("Subject", "Re: strengths of the new scheduler"),
                ("From", "Jane Doe <jane.doe@example.org>"),
                ("X-Mailer", "Microsoft Outlook Express 6.00.2600.0000"),
            ],
            text_parts: vec!["Straightforward Schwarzschild rhythms, bookkeeping."],
            part_types: vec!["text/plain"],
            charsets: vec!["iso-8859-1"],
            ..View::default()
        });
        assert_eq!(f.symbols, ["MSGID_MISSING", "DATE_MISSING"]);
        assert_eq!(charset_class("GB2312".to_ascii_lowercase().as_str()), "cjk");
        assert_eq!(charset_class("\"iso-2022-jp\""), "cjk");
        assert_eq!(charset_class("koi8-r"), "cyrillic");
        assert_eq!(charset_class("unknown-8bit"), "unknown");
        assert_eq!(charset_class("windows-1252"), "common");
    }

    #[test]
    fn character_grams_of_the_first_words() {
        let f = extract(&view(&[], "Socijalisticka partija"));
        for g in ["^soc", "cka$", "part", "tija"] {
            assert!(f.hashes.contains(&hash("c4", g)), "{g}");
        }
        // Words shorter than a gram give none.
        let f = extract(&view(&[], "is a an"));
        assert!(!f.hashes.iter().any(|h| *h == hash("c4", "^is$")));
    }

    #[test]
    fn list_footers_are_dropped() {
        let t = "Buy now\nreally\n_______________________________________________\nIrish Linux Users' Group: ilug@linux.ie\nhttp://www.linux.ie/mailman/listinfo/ilug for (un)subscription information.\n";
        assert_eq!(without_list_footers(t), "Buy now\nreally");
        let own = "Hello\n----------\nTo unsubscribe click here\n";
        assert_eq!(without_list_footers(own), own);
    }

    #[test]
    fn generated_mailbox_names() {
        assert!(consonant_run("smgrdphcv") >= 5 && consonant_run("vcqztr_2gk1525") >= 5);
        assert!(consonant_run("schmidt") < 5 && consonant_run("jm") < 5);
    }

    #[test]
    fn registered_domains() {
        assert_eq!(registered_domain("www.example.co.uk"), "example.co.uk");
        assert_eq!(registered_domain("a.b.example.com"), "example.com");
        assert_eq!(registered_domain("example.com"), "example.com");
        assert_eq!(registered_domain("localhost"), "localhost");
    }

    #[test]
    fn words_and_shapes() {
        assert_eq!(normalize("$1000"), "$0");
        assert_eq!(normalize("MP3"), "mp0");
        assert_eq!(shape("12a1mailbot1"), "0a0a0");
        let w: Vec<_> = words("Hello, world -- it's $5 'quoted'").collect();
        assert_eq!(w, ["Hello", "world", "it's", "$5", "quoted"]);
    }

    #[test]
    fn attribute_names() {
        let a: Vec<_> = attributes("font color=\"#ff0000\" face='a b' size=5 bold").collect();
        assert_eq!(a, ["color", "face", "size", "bold"]);
        assert_eq!(
            attr_value("a href=\"http://x.example/\"", "href"),
            Some("http://x.example/")
        );
    }
}
