//! SPF evaluation (RFC 7208 `check_host()`), over the resolver the other checks use.
//!
//! mail-auth's evaluator gave results the RFC 7208 test suite does not allow in 21 cases
//! (`/0` CIDR lengths overflowing a shift, macro-made names the resolver refused to send
//! reported as `temperror`, no void-lookup limit, `exp` DNS errors failing the check,
//! `ptr` without a domain, domain-specs with `:` or `/`). This one follows the RFC:
//! the record grammar is checked first ([`crate::spf_syntax`]: any break is `permerror`),
//! then the terms are evaluated left to right with the limits of section 4.6.4 (10
//! DNS-querying terms, 2 void lookups, 10 MX or PTR names). `exp` only explains a `fail`
//! and is not fetched: the result is the same with or without it.

use crate::spf_syntax;
use mail_auth::SpfResult;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;

/// DNS-querying terms one evaluation may use (include, a, mx, ptr, exists, redirect).
const MAX_LOOKUPS: u32 = 10;
/// Lookups answering no record or NXDOMAIN one evaluation may see.
const MAX_VOID: u32 = 2;
/// Names of one `mx` or `ptr` term looked up.
const MAX_NAMES: usize = 10;

/// What one evaluation knows and counts.
pub(crate) struct Spf<'a> {
    resolver: &'a TokioResolver,
    /// IPv4-mapped IPv6 addresses are evaluated as the IPv4 address.
    ip: IpAddr,
    /// `local@domain`; `postmaster@<helo>` for the null sender.
    sender: String,
    helo: String,
    /// The receiving host's name (`%{r}`).
    receiver: String,
    lookups: u32,
    voids: u32,
    /// `%{p}`, looked up at its first use.
    validated: Option<String>,
}

enum Answer {
    Records(Vec<RData>),
    /// NXDOMAIN or no record of the type.
    Void,
    Error,
}

type Eval<'b> = Pin<Box<dyn Future<Output = SpfResult> + Send + 'b>>;

impl<'a> Spf<'a> {
    pub(crate) fn new(
        resolver: &'a TokioResolver,
        ip: IpAddr,
        helo: &str,
        sender: &str,
        receiver: &str,
    ) -> Spf<'a> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let sender = match sender.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() => format!("{local}@{domain}"),
            Some((_, domain)) => format!("postmaster@{domain}"),
            None if sender.is_empty() => format!("postmaster@{helo}"),
            None => format!("postmaster@{sender}"),
        };
        Spf {
            resolver,
            ip,
            sender,
            helo: helo.to_string(),
            receiver: receiver.to_string(),
            lookups: 0,
            voids: 0,
            validated: None,
        }
    }

    /// `check_host()` for `domain`: `none` without a lookup for a name no DNS query can carry
    /// (RFC 7208 section 4.3).
    pub(crate) fn check_host<'b>(&'b mut self, domain: &'b str) -> Eval<'b> {
        Box::pin(async move {
            if spf_syntax::malformed_domain(domain) {
                return SpfResult::None;
            }
            let records = match self.query(domain, RecordType::TXT).await {
                Answer::Error => return SpfResult::TempError,
                Answer::Void => return SpfResult::None,
                Answer::Records(r) => r,
            };
            let texts: Vec<String> = records
                .iter()
                .filter_map(|r| match r {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect();
            let record = match spf_syntax::select(&texts) {
                Err(_) => return SpfResult::PermError,
                Ok(None) => return SpfResult::None,
                Ok(Some(r)) => r.to_string(),
            };
            if spf_syntax::problem(&record).is_some() {
                return SpfResult::PermError;
            }
            self.evaluate(domain, &record).await
        })
    }

    async fn evaluate(&mut self, domain: &str, record: &str) -> SpfResult {
        let mut redirect = None;
        for term in record[6..].split(' ').filter(|t| !t.is_empty()) {
            let name_end = term.find(['=', ':', '/']).unwrap_or(term.len());
            if term[name_end..].starts_with('=') {
                if term[..name_end].eq_ignore_ascii_case("redirect") {
                    redirect = Some(term[name_end + 1..].to_string());
                }
                continue;
            }
            let (qualifier, mechanism) = match term.as_bytes()[0] {
                b'+' => (SpfResult::Pass, &term[1..]),
                b'-' => (SpfResult::Fail, &term[1..]),
                b'~' => (SpfResult::SoftFail, &term[1..]),
                b'?' => (SpfResult::Neutral, &term[1..]),
                _ => (SpfResult::Pass, term),
            };
            match self.mechanism(domain, mechanism).await {
                Ok(true) => return qualifier,
                Ok(false) => {}
                Err(result) => return result,
            }
        }
        let Some(target) = redirect else {
            return SpfResult::Neutral;
        };
        if let Err(e) = self.count_lookup() {
            return e;
        }
        let Some(target) = self.target(&target, domain).await else {
            return SpfResult::PermError;
        };
        match self.check_host(&target).await {
            SpfResult::None => SpfResult::PermError,
            r => r,
        }
    }

    /// Whether a mechanism matches; `Err` ends the evaluation with that result.
    async fn mechanism(&mut self, domain: &str, term: &str) -> Result<bool, SpfResult> {
        let name_end = term.find([':', '/']).unwrap_or(term.len());
        let name = term[..name_end].to_ascii_lowercase();
        let rest = &term[name_end..];
        let arg = rest.strip_prefix(':');
        match name.as_str() {
            "all" => Ok(true),
            "ip4" | "ip6" => {
                let (addr, v4, v6) = split_cidr(arg.unwrap_or(""));
                let len = if name == "ip4" { v4 } else { v4.or(v6) };
                let Ok(net) = addr.parse::<IpAddr>() else {
                    return Err(SpfResult::PermError);
                };
                Ok(in_network(self.ip, net, len))
            }
            "include" => {
                self.count_lookup()?;
                let target = match self.target(arg.unwrap_or(""), domain).await {
                    Some(t) => t,
                    None => return Err(SpfResult::PermError),
                };
                match self.check_host(&target).await {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(SpfResult::TempError),
                    SpfResult::PermError | SpfResult::None => Err(SpfResult::PermError),
                }
            }
            "a" | "mx" => {
                self.count_lookup()?;
                let (spec, v4, v6) = match arg {
                    Some(a) => split_cidr(a),
                    None => split_cidr(rest),
                };
                let target = if arg.is_some() {
                    match self.target(spec, domain).await {
                        Some(t) => t,
                        None => return Ok(false),
                    }
                } else {
                    domain.to_string()
                };
                let len = if self.ip.is_ipv4() { v4 } else { v6 };
                if name == "a" {
                    return self.address_matches(&target, len, true).await;
                }
                let exchanges = match self.query(&target, RecordType::MX).await {
                    Answer::Error => return Err(SpfResult::TempError),
                    Answer::Void => {
                        self.void()?;
                        return Ok(false);
                    }
                    Answer::Records(r) => r,
                };
                let hosts: Vec<String> = exchanges
                    .iter()
                    .filter_map(|r| match r {
                        RData::MX(mx) => Some(name_text(&mx.exchange)),
                        _ => None,
                    })
                    .collect();
                if hosts.len() > MAX_NAMES {
                    return Err(SpfResult::PermError);
                }
                for host in hosts {
                    if self.address_matches(&host, len, false).await? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            "ptr" => {
                self.count_lookup()?;
                let target = match arg {
                    Some(a) => match self.target(a, domain).await {
                        Some(t) => t,
                        None => return Ok(false),
                    },
                    None => domain.to_string(),
                };
                let target = target.trim_end_matches('.').to_ascii_lowercase();
                let names = self.validated_names(true).await?;
                Ok(names
                    .iter()
                    .any(|n| n == &target || n.ends_with(&format!(".{target}"))))
            }
            "exists" => {
                self.count_lookup()?;
                let Some(target) = self.target(arg.unwrap_or(""), domain).await else {
                    return Ok(false);
                };
                match self.query(&target, RecordType::A).await {
                    Answer::Error => Err(SpfResult::TempError),
                    Answer::Void => {
                        self.void()?;
                        Ok(false)
                    }
                    Answer::Records(r) => Ok(!r.is_empty()),
                }
            }
            // The grammar check refuses any other mechanism.
            _ => Err(SpfResult::PermError),
        }
    }

    /// Whether `host`'s addresses of the client's family include the client (within the
    /// CIDR length). `count_void`: the lookup is the term's own (`a`), not one of an MX's.
    async fn address_matches(
        &mut self,
        host: &str,
        len: Option<u8>,
        count_void: bool,
    ) -> Result<bool, SpfResult> {
        match self.query(host, self.address_type()).await {
            Answer::Error => Err(SpfResult::TempError),
            Answer::Void => {
                if count_void {
                    self.void()?;
                }
                Ok(false)
            }
            Answer::Records(records) => {
                Ok(addresses(&records).any(|a| in_network(self.ip, a, len)))
            }
        }
    }

    /// The client's validated host names (RFC 7208 section 5.5), lowercased, without the
    /// trailing dot; none when the PTR lookup fails. `count_void`: an empty PTR answer counts
    /// against the void-lookup limit (the `ptr` mechanism's, not `%{p}`'s).
    async fn validated_names(&mut self, count_void: bool) -> Result<Vec<String>, SpfResult> {
        let reverse = reverse_name(self.ip);
        let names = match self.query(&reverse, RecordType::PTR).await {
            Answer::Records(r) => r,
            Answer::Void => {
                if count_void {
                    self.void()?;
                }
                return Ok(Vec::new());
            }
            Answer::Error => return Ok(Vec::new()),
        };
        let rtype = self.address_type();
        let mut validated = Vec::new();
        for name in names
            .iter()
            .filter_map(|r| match r {
                RData::PTR(p) => Some(name_text(&p.0)),
                _ => None,
            })
            .take(MAX_NAMES)
        {
            if let Answer::Records(addrs) = self.query(&name, rtype).await
                && addresses(&addrs).any(|a| a == self.ip)
            {
                validated.push(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        Ok(validated)
    }

    /// The address records of the client's family.
    fn address_type(&self) -> RecordType {
        if self.ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        }
    }

    fn count_lookup(&mut self) -> Result<(), SpfResult> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            Err(SpfResult::PermError)
        } else {
            Ok(())
        }
    }

    fn void(&mut self) -> Result<(), SpfResult> {
        self.voids += 1;
        if self.voids > MAX_VOID {
            Err(SpfResult::PermError)
        } else {
            Ok(())
        }
    }

    /// A domain-spec with its macros expanded and shortened to 253 characters (RFC 7208
    /// section 7.3); none when the result is no possible DNS name (such a target matches
    /// nothing).
    async fn target(&mut self, spec: &str, domain: &str) -> Option<String> {
        let mut name = self.expand(spec, domain).await?;
        while name.trim_end_matches('.').len() > 253 {
            name = name.split_once('.')?.1.to_string();
        }
        let name = name.trim_end_matches('.').to_string();
        if name.is_empty() || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return None;
        }
        Some(name)
    }

    /// Macro expansion (RFC 7208 section 7); none on a malformed macro.
    async fn expand(&mut self, spec: &str, domain: &str) -> Option<String> {
        let mut out = String::with_capacity(spec.len());
        let mut rest = spec;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            match rest.chars().next()? {
                '%' => out.push('%'),
                '_' => out.push(' '),
                '-' => out.push_str("%20"),
                '{' => {
                    let end = rest.find('}')?;
                    let body = &rest[1..end];
                    out.push_str(&self.macro_value(body, domain).await?);
                    rest = &rest[end + 1..];
                    continue;
                }
                _ => return None,
            }
            rest = &rest[1..];
        }
        out.push_str(rest);
        Some(out)
    }

    /// One `%{...}` body: letter, digits, `r`, delimiters.
    async fn macro_value(&mut self, body: &str, domain: &str) -> Option<String> {
        let mut chars = body.chars();
        let letter = chars.next()?;
        let rest: String = chars.collect();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let mut tail = &rest[digits.len()..];
        let reverse = tail.starts_with(['r', 'R']);
        if reverse {
            tail = &tail[1..];
        }
        if !tail.chars().all(|c| ".-+,/_=".contains(c)) {
            return None;
        }
        let delimiters: Vec<char> = if tail.is_empty() {
            vec!['.']
        } else {
            tail.chars().collect()
        };
        let (local, sender_domain) = self.sender.rsplit_once('@').unwrap_or(("", ""));
        let value = match letter.to_ascii_lowercase() {
            's' => self.sender.clone(),
            'l' => local.to_string(),
            'o' => sender_domain.to_string(),
            'd' => domain.to_string(),
            'i' => dotted(self.ip),
            'c' => self.ip.to_string(),
            'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            'h' => self.helo.clone(),
            'r' => self.receiver.clone(),
            't' => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
            'p' => self.p_macro(domain).await,
            _ => return None,
        };
        let mut parts: Vec<&str> = value.split(|c| delimiters.contains(&c)).collect();
        if reverse {
            parts.reverse();
        }
        if !digits.is_empty() {
            let n: usize = digits.parse().ok()?;
            if n == 0 {
                return None;
            }
            if parts.len() > n {
                parts = parts.split_off(parts.len() - n);
            }
        }
        let joined = parts.join(".");
        Some(if letter.is_ascii_uppercase() {
            url_escape(&joined)
        } else {
            joined
        })
    }

    /// `%{p}`: a validated name of the client, the domain itself or a subdomain of it
    /// preferred; `unknown` when there is none.
    async fn p_macro(&mut self, domain: &str) -> String {
        if let Some(p) = &self.validated {
            return p.clone();
        }
        let names = self.validated_names(false).await.unwrap_or_default();
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let p = names
            .iter()
            .find(|n| **n == domain)
            .or_else(|| names.iter().find(|n| n.ends_with(&format!(".{domain}"))))
            .or_else(|| names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string());
        self.validated = Some(p.clone());
        p
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Answer {
        // From labels: a domain-spec may make names with any visible character (`:`, `/`,
        // `%`, spaces from `%_`), which the resolver's text parser refuses.
        let Ok(name) = Name::from_labels(name.trim_end_matches('.').split('.').map(str::as_bytes))
        else {
            return Answer::Void;
        };
        match self.resolver.lookup(name, rtype).await {
            Ok(lookup) => {
                let records: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if records.is_empty() {
                    Answer::Void
                } else {
                    Answer::Records(records)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Answer::Void,
            Err(_) => Answer::Error,
        }
    }
}

/// A name's labels as they are (`to_ascii` escapes characters such as `:` and `/`).
fn name_text(name: &Name) -> String {
    name.iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

/// The address or domain-spec of a term, and its `/n` (IPv4) and `//n` (IPv6) lengths.
/// A `/` followed by anything but digits belongs to the domain-spec.
fn split_cidr(s: &str) -> (&str, Option<u8>, Option<u8>) {
    let (head, cidr) = s.split_at(spf_syntax::cidr_start(s));
    let (v4, v6) = cidr.split_once("//").unwrap_or((cidr, ""));
    let length = |t: &str| t.strip_prefix('/').unwrap_or(t).parse::<u8>().ok();
    (head, length(v4), length(v6))
}

/// The addresses of A and AAAA records.
fn addresses(records: &[RData]) -> impl Iterator<Item = IpAddr> + '_ {
    records.iter().filter_map(|r| match r {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    })
}

/// Whether `ip` is in `net`/`len` (the whole address without a length); addresses of
/// different families never match.
fn in_network(ip: IpAddr, net: IpAddr, len: Option<u8>) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let len = u32::from(len.unwrap_or(32).min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let len = u32::from(len.unwrap_or(128).min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// `%{i}`: dotted quad, or the 32 nibbles of an IPv6 address separated by dots.
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => nibbles(v6).join("."),
    }
}

fn nibbles(v6: Ipv6Addr) -> Vec<String> {
    v6.octets()
        .iter()
        .flat_map(|b| [b >> 4, b & 15])
        .map(|n| format!("{n:x}"))
        .collect()
}

fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut n = nibbles(v6);
            n.reverse();
            format!("{}.ip6.arpa", n.join("."))
        }
    }
}

/// Characters an uppercase macro leaves as they are (RFC 3986 unreserved).
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Uppercase macros are URL-escaped (RFC 7208 section 7.3).
fn url_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn cidr_lengths_and_domain_specs() {
        assert_eq!(split_cidr("1.2.3.4/0"), ("1.2.3.4", Some(0), None));
        assert_eq!(
            split_cidr("foo:bar/baz.example.com"),
            ("foo:bar/baz.example.com", None, None)
        );
        assert_eq!(
            split_cidr("e.example.com/24//64"),
            ("e.example.com", Some(24), Some(64))
        );
        assert_eq!(split_cidr("//64"), ("", None, Some(64)));
        assert!(in_network(
            IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9)),
            IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
            Some(0)
        ));
        assert!(!in_network(
            IpAddr::V4(Ipv4Addr::new(1, 2, 4, 4)),
            IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
            Some(24)
        ));
    }

    #[test]
    fn addresses_for_macros() {
        let v6: IpAddr = "2001:db8::cb01".parse().unwrap();
        assert_eq!(
            dotted(v6),
            "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1"
        );
        assert_eq!(
            reverse_name(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3))),
            "3.2.0.192.in-addr.arpa"
        );
        assert_eq!(url_escape("a b/c"), "a%20b%2Fc");
    }
}
