//! RFC 7208's record grammar (section 12), checked on every SPF record [`crate::spf`]
//! evaluates (bad CIDR lengths, `/032`, five-part IPv4 addresses, numeric or missing top
//! labels, non-ASCII or control characters, empty or malformed modifier names,
//! `redirect`/`exp` given twice or without a valid domain, `c`/`r`/`t` macros outside
//! `exp` text, two `v=spf1` records): a record found malformed is a `permerror`, as the
//! RFC asks.

/// The SPF record among a name's TXT strings: none when there is none; an error when
/// there are several (RFC 7208 section 4.5: permerror).
pub fn select(records: &[String]) -> Result<Option<&str>, String> {
    let spf: Vec<&str> = records
        .iter()
        .map(String::as_str)
        .filter(|r| {
            let lower = r.to_ascii_lowercase();
            lower == "v=spf1" || lower.starts_with("v=spf1 ")
        })
        .collect();
    match spf.len() {
        0 => Ok(None),
        1 => Ok(Some(spf[0])),
        n => Err(format!("{n} SPF records")),
    }
}

/// Why the record breaks the grammar; none when it follows it.
pub fn problem(record: &str) -> Option<String> {
    if !record.is_ascii() {
        return Some("non-ASCII characters".into());
    }
    if record.bytes().any(|b| b.is_ascii_control()) {
        return Some("control characters".into());
    }
    let rest = &record[6..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Some("no space after v=spf1".into());
    }
    let (mut redirect, mut exp) = (false, false);
    for term in rest.split(' ').filter(|t| !t.is_empty()) {
        if let Some(why) = term_problem(term, &mut redirect, &mut exp) {
            return Some(format!("`{term}`: {why}"));
        }
    }
    None
}

fn term_problem(term: &str, redirect: &mut bool, exp: &mut bool) -> Option<&'static str> {
    // A modifier: name "=" ...; a mechanism never has "=" before any ":" or "/".
    let name_end = term.find(['=', ':', '/']).unwrap_or(term.len());
    if term[name_end..].starts_with('=') {
        let name = &term[..name_end];
        let value = &term[name_end + 1..];
        let mut chars = name.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Some("not a modifier name");
        }
        return match name.to_ascii_lowercase().as_str() {
            "redirect" | "exp" => {
                let seen = if name.eq_ignore_ascii_case("redirect") {
                    redirect
                } else {
                    exp
                };
                if std::mem::replace(seen, true) {
                    return Some("modifier given twice");
                }
                (!domain_spec(value)).then_some("not a domain-spec")
            }
            _ => (!macro_string(value)).then_some("not a macro-string"),
        };
    }
    let term = term.strip_prefix(['+', '-', '?', '~']).unwrap_or(term);
    let (name, arg) = match term.find([':', '/']) {
        Some(i) => (&term[..i], &term[i..]),
        None => (term, ""),
    };
    match name.to_ascii_lowercase().as_str() {
        "all" => (!arg.is_empty()).then_some("all takes no argument"),
        "include" | "exists" => match arg.strip_prefix(':') {
            Some(d) if domain_spec(d) => None,
            _ => Some("needs :domain-spec"),
        },
        "ptr" => match arg.strip_prefix(':') {
            None if arg.is_empty() => None,
            Some(d) if domain_spec(d) => None,
            _ => Some("bad ptr argument"),
        },
        "a" | "mx" => {
            // A domain-spec may contain `/` (and `:`): the dual-cidr is the suffix of
            // `/digits` and `//digits`, if there is one.
            let (domain, cidr) = match arg.strip_prefix(':') {
                Some(rest) => {
                    let at = cidr_start(rest);
                    (Some(&rest[..at]), &rest[at..])
                }
                None => (None, arg),
            };
            if domain.is_some_and(|d| !domain_spec(d)) {
                return Some("not a domain-spec");
            }
            (!dual_cidr(cidr)).then_some("bad CIDR length")
        }
        "ip4" => {
            let Some(rest) = arg.strip_prefix(':') else {
                return Some("needs :address");
            };
            let (ip, cidr) = rest
                .split_once('/')
                .map_or((rest, None), |(a, c)| (a, Some(c)));
            if !ip4(ip) {
                return Some("not an IPv4 address");
            }
            cidr.is_some_and(|c| !cidr_len(c, 32))
                .then_some("bad CIDR length")
        }
        "ip6" => {
            let Some(rest) = arg.strip_prefix(':') else {
                return Some("needs :address");
            };
            let (ip, cidr) = match rest.rfind('/') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Some("not an IPv6 address");
            }
            cidr.is_some_and(|c| !cidr_len(c, 128))
                .then_some("bad CIDR length")
        }
        _ => Some("unknown mechanism"),
    }
}

/// Where a trailing `[ "/" 1*DIGIT ] [ "//" 1*DIGIT ]` starts (the end when there is none).
pub(crate) fn cidr_start(s: &str) -> usize {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mut end = s.len();
    if let Some(i) = s.rfind("//")
        && digits(&s[i + 2..])
    {
        end = i;
    }
    if let Some(i) = s[..end].rfind('/')
        && digits(&s[i + 1..end])
        && !s[..i].ends_with('/')
    {
        end = i;
    }
    end
}

/// `"0" / %x31-39 *DIGIT`, at most `max`.
fn cidr_len(s: &str, max: u32) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
        && s.len() <= 3
        && s.parse::<u32>().is_ok_and(|n| n <= max)
}

/// `[ "/" ip4-cidr ] [ "//" ip6-cidr ]`.
fn dual_cidr(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    if let Some(v6) = s.strip_prefix("//") {
        return cidr_len(v6, 128);
    }
    let Some(rest) = s.strip_prefix('/') else {
        return false;
    };
    match rest.split_once("//") {
        Some((v4, v6)) => cidr_len(v4, 32) && cidr_len(v6, 128),
        None => cidr_len(rest, 32),
    }
}

/// Four decimal numbers 0-255 without leading zeros.
fn ip4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && (*p == "0" || !p.starts_with('0'))
                && p.parse::<u32>().is_ok_and(|n| n <= 255)
        })
}

/// `*( macro-expand / macro-literal )`; the position after each macro-expand recorded.
fn macro_tokens(s: &str) -> Option<Vec<(usize, bool)>> {
    macro_tokens_of(s, "slodiphcrtv")
}

/// [`macro_tokens`] allowing only the macro `letters` (RFC 7208 section 7.1: `c`, `r` and
/// `t` only in `exp` text, never in a domain-spec).
fn macro_tokens_of(s: &str, letters: &str) -> Option<Vec<(usize, bool)>> {
    // (end offset, whether the token was a macro-expand)
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match b.get(i + 1) {
                Some(b'%' | b'_' | b'-') => {
                    i += 2;
                    out.push((i, true));
                }
                Some(b'{') => {
                    let close = s[i..].find('}')? + i;
                    let inner = &s[i + 2..close];
                    let mut chars = inner.chars();
                    let letter = chars.next()?.to_ascii_lowercase();
                    if !letters.contains(letter) {
                        return None;
                    }
                    let rest: String = chars.collect();
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let mut tail = &rest[digits..];
                    if tail.starts_with(['r', 'R']) {
                        tail = &tail[1..];
                    }
                    if !tail.bytes().all(|c| b".-+,/_=".contains(&c)) {
                        return None;
                    }
                    i = close + 1;
                    out.push((i, true));
                }
                _ => return None,
            },
            0x21..=0x7e => {
                i += 1;
                out.push((i, false));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn macro_string(s: &str) -> bool {
    macro_tokens(s).is_some()
}

/// `macro-string domain-end`, domain-end being `"." toplabel ["."]` or a macro-expand.
fn domain_spec(s: &str) -> bool {
    let Some(tokens) = macro_tokens_of(s, "slodiphv") else {
        return false;
    };
    if tokens.last().is_some_and(|&(_, expand)| expand) {
        return true;
    }
    let body = s.strip_suffix('.').unwrap_or(s);
    let Some(dot) = body.rfind('.') else {
        return false;
    };
    // The top label must be plain text, not cut through a macro.
    let top = &body[dot + 1..];
    if top.contains(['%', '{', '}']) {
        return false;
    }
    // Grammatical, but a name no DNS query can carry (an empty label, one over 63
    // characters): RFC 7208 leaves fail or permerror open; without a macro that could
    // explain it, we call it the record's error.
    toplabel(top) && (s.contains('%') || !malformed_domain(s))
}

/// `( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
fn toplabel(t: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if t.is_empty() || !t.chars().all(|c| alnum(c) || c == '-') {
        return false;
    }
    if t.contains('-') {
        t.chars().next().is_some_and(alnum) && t.chars().last().is_some_and(alnum)
    } else {
        t.chars().any(|c| c.is_ascii_alphabetic())
    }
}

/// Whether `check_host()` may look `domain` up at all (RFC 7208 section 4.3): a domain
/// literal, an empty label inside the name or a label longer than 63 characters is
/// malformed, and the result is `none` without a query.
pub fn malformed_domain(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    d.is_empty()
        || d.starts_with('[')
        || d.len() > 253
        || d.split('.').any(|l| l.is_empty() || l.len() > 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_domains() {
        for d in [
            "[1.2.3.5]",
            "A...example.com",
            "",
            ".example.com",
            &format!("{}.example.com", "a".repeat(64)),
        ] {
            assert!(malformed_domain(d), "{d}");
        }
        for d in [
            "example.com",
            "example.com.",
            "A2345678",
            &format!("{}.example.com", "a".repeat(63)),
        ] {
            assert!(!malformed_domain(d), "{d}");
        }
    }

    #[test]
    fn real_world_records_follow_the_grammar() {
        for r in [
            "v=spf1 -all",
            "v=spf1",
            "v=spf1 include:_spf.google.com ~all",
            "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.7 ip6:2001:db8::/32 a mx -all",
            "v=spf1 a:mail.example.com/24//64 mx/30 ?all",
            "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all",
            "v=spf1 redirect=_spf.example.com",
            "v=spf1 include:spf.protection.outlook.com exp=explain.%{d} -all",
            "v=spf1 ptr:example.org ~all",
            "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",
            "v=spf1 a:example.com. -all",
            // A domain-spec may hold `:` and `/`; the dual-cidr is the trailing `/n//m`.
            "v=spf1 a:foo:bar/baz.example.com",
            "v=spf1 mx:foo:bar/baz.example.com/24//64 -all",
        ] {
            assert_eq!(problem(r), None, "{r}");
        }
    }

    #[test]
    fn malformed_records_are_named() {
        for (r, want) in [
            ("v=spf1 ip4:1.2.3.4/33 -all", "CIDR"),
            ("v=spf1 ip4:1.2.3.4/032 -all", "CIDR"),
            ("v=spf1 ip4:1.2.3.4.5 -all", "IPv4"),
            ("v=spf1 ip6:::1/129 -all", "CIDR"),
            ("v=spf1 a/33 -all", "CIDR"),
            ("v=spf1 a:foo.1.2.3.4 -all", "domain-spec"),
            ("v=spf1 a:museum -all", "domain-spec"),
            ("v=spf1 a:example.com/abc", "domain-spec"),
            ("v=spf1 -all exp=%{r}.example.com", "domain-spec"),
            ("v=spf1 exists:%{t}.example.com -all", "domain-spec"),
            ("v=spf1 =foo -all", "modifier name"),
            ("v=spf1 redirect=a.example redirect=b.example", "twice"),
            ("v=spf1 exp=%{x} -all", "domain-spec"),
            ("v=spf1 -all \u{7f}", "control"),
            ("v=spf1 a:ex\u{e4}mple.com -all", "non-ASCII"),
            ("v=spf1 foo -all", "unknown mechanism"),
        ] {
            let p = problem(r).unwrap_or_default();
            assert!(p.contains(want), "{r}: {p}");
        }
        assert!(select(&["v=spf1 -all".into(), "v=spf1 +all".into()]).is_err());
        assert_eq!(select(&["hello".into()]), Ok(None));
    }
}
