//! Message authentication for Sluice: the checks of received mail (SPF at MAIL FROM, our own
//! evaluator; DKIM, ARC and DMARC at the end of data, mail-auth's) with the
//! `Authentication-Results` header they produce (RFC 8601), and DKIM signing of sent mail
//! (`sign`).
//!
//! Invariants: a check never fails the caller, it yields `temperror` (DNS down or slow) or
//! `permerror`; the whole of a message's checks is bounded by one deadline; an
//! `Authentication-Results` header claiming our authserv-id that came from outside is removed
//! before ours is added (RFC 8601 section 5).

mod arc_syntax;
mod canon;
mod digest;
mod sign;
mod spf;
mod spf_syntax;

pub use sign::{KeyError, SignKey, Signer};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult, dmarc::Policy,
};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
}

/// What a policy asks of DMARC failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmarcAction {
    /// Nothing: the result is recorded only.
    #[default]
    None,
    Quarantine,
    Reject,
}

/// The results as plugins and metadata see them: RFC 8601 result names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub spf: String,
    pub dkim: String,
    pub dmarc: String,
    pub arc: String,
}

impl Summary {
    pub fn none() -> Summary {
        Summary {
            spf: "none".into(),
            dkim: "none".into(),
            dmarc: "none".into(),
            arc: "none".into(),
        }
    }
}

/// The SPF check of one MAIL FROM (or of the HELO name for the null sender).
#[derive(Debug, Clone)]
pub struct SpfCheck {
    output: SpfOutput,
    /// The domain checked: the sender's, or the HELO name's for `<>`.
    pub domain: String,
    pub helo: String,
    pub sender: String,
}

impl SpfCheck {
    pub fn result(&self) -> &'static str {
        spf_name(self.output.result())
    }
}

/// The result of one DKIM signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureResult {
    /// `d=` and `s=` (empty when the signature could not be parsed).
    pub domain: String,
    pub selector: String,
    pub result: &'static str,
}

/// The checks of one message.
#[derive(Debug, Clone)]
pub struct Checked {
    pub summary: Summary,
    /// Every DKIM signature's result, in header order.
    pub signatures: Vec<SignatureResult>,
    /// The full `Authentication-Results:` header line(s), CRLF terminated.
    pub header: String,
    /// The From: domain DMARC evaluated, when there was one.
    pub dmarc_domain: Option<String>,
    /// What the From: domain's DMARC record asks for this failing message (`None` when DMARC
    /// passed or there is no record).
    pub dmarc_action: DmarcAction,
    /// The record's `pct`: the share of failing mail the action applies to.
    pub dmarc_pct: u8,
}

/// The checks, with the resolver they use and our authserv-id.
#[derive(Clone)]
pub struct Verifier {
    auth: MessageAuthenticator,
    authserv_id: String,
    /// The server's own name, for the `%{r}` SPF macro.
    host: String,
    deadline: Duration,
}

impl Verifier {
    /// `nameservers` empty: the system's resolver configuration.
    pub fn new(
        nameservers: &[SocketAddr],
        authserv_id: &str,
        host: &str,
        deadline: Duration,
    ) -> Result<Verifier, AuthError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3).min(deadline);
        opts.attempts = 2;
        let auth = if nameservers.is_empty() {
            MessageAuthenticator::new_system_conf()
        } else {
            let servers = nameservers
                .iter()
                .map(|a| {
                    let conn = |protocol| {
                        let mut c = ConnectionConfig::new(protocol);
                        c.port = a.port();
                        c
                    };
                    NameServerConfig::new(
                        a.ip(),
                        true,
                        vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
                    )
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], servers), opts)
        }
        .map_err(|e| AuthError::Resolver(e.to_string()))?;
        Ok(Verifier {
            auth,
            authserv_id: authserv_id.to_string(),
            host: host.to_string(),
            deadline,
        })
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// SPF for MAIL FROM `sender` (RFC 7208): the sender's domain, or for the null sender
    /// the HELO name (`postmaster@<helo>`).
    pub async fn spf(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfCheck {
        let domain = match sender.rsplit_once('@') {
            Some((_, d)) if !sender.is_empty() => d.to_string(),
            _ => helo.to_string(),
        };
        // A name no DNS query can carry is `none` without a lookup (`check_host`).
        let output = self.evaluate_spf(ip, helo, sender, &domain).await;
        SpfCheck {
            output,
            domain,
            helo: helo.to_string(),
            sender: sender.to_string(),
        }
    }

    /// `check_host()` for `domain` ([`spf`]), within the deadline.
    async fn evaluate_spf(&self, ip: IpAddr, helo: &str, sender: &str, domain: &str) -> SpfOutput {
        let mut check = spf::Spf::new(self.auth.resolver(), ip, helo, sender, &self.host);
        let result = tokio::time::timeout(self.deadline, check.check_host(domain))
            .await
            .unwrap_or(SpfResult::TempError);
        SpfOutput::new(domain.to_string()).with_result(result)
    }

    /// DKIM, ARC and DMARC over `raw` (the message as received, before our trace headers),
    /// and the `Authentication-Results` header with those and `spf`.
    pub async fn message(&self, raw: &[u8], ip: IpAddr, spf: &SpfCheck) -> Checked {
        match tokio::time::timeout(self.deadline, self.message_checks(raw, ip, spf)).await {
            Ok(c) => c,
            Err(_) => {
                let summary = Summary {
                    spf: spf.result().into(),
                    dkim: "temperror".into(),
                    dmarc: "temperror".into(),
                    arc: "temperror".into(),
                };
                let header = format!(
                    "Authentication-Results: {};\r\n\tspf={} smtp.mailfrom={};\r\n\tdkim=temperror (timed out);\r\n\tdmarc=temperror (timed out)\r\n",
                    self.authserv_id,
                    summary.spf,
                    mailfrom(spf)
                );
                Checked {
                    summary,
                    signatures: Vec::new(),
                    header,
                    dmarc_domain: None,
                    dmarc_action: DmarcAction::None,
                    dmarc_pct: 100,
                }
            }
        }
    }

    async fn message_checks(&self, raw: &[u8], ip: IpAddr, spf: &SpfCheck) -> Checked {
        let Some(message) = authenticated(raw) else {
            let summary = Summary {
                spf: spf.result().into(),
                ..Summary::none()
            };
            let header = format!(
                "Authentication-Results: {};\r\n\tspf={} smtp.mailfrom={}\r\n",
                self.authserv_id,
                summary.spf,
                mailfrom(spf)
            );
            return Checked {
                summary,
                signatures: Vec::new(),
                header,
                dmarc_domain: None,
                dmarc_action: DmarcAction::None,
                dmarc_pct: 100,
            };
        };
        let dkim = self.auth.verify_dkim(&message).await;
        let arc = self.auth.verify_arc(&message).await;
        let mail_from_domain = spf.domain.clone();
        let dmarc = self
            .auth
            .verify_dmarc(
                mail_auth::dmarc::verify::DmarcParameters::new(
                    &message,
                    &dkim,
                    &mail_from_domain,
                    &spf.output,
                )
                .with_domain_suffix_fn(|d| psl::domain_str(d).unwrap_or(d)),
            )
            .await;
        let from = message.from().to_string();
        let mut results =
            AuthenticationResults::new(&self.authserv_id).with_dkim_results(&dkim, &from);
        results = if spf.sender.is_empty() {
            results.with_spf_ehlo_result(&spf.output, ip, &spf.helo)
        } else {
            results.with_spf_mailfrom_result(&spf.output, ip, &spf.sender, &spf.helo)
        };
        let dmarc_evaluated = !dmarc.domain().is_empty();
        let dmarc_pass = matches!(dmarc.spf_result(), DmarcResult::Pass)
            || matches!(dmarc.dkim_result(), DmarcResult::Pass);
        // With a record, nothing aligned with a pass is a DMARC fail, even when mail-auth
        // reports both sides as "none" (nothing passed to align).
        let dmarc_name = if !dmarc_evaluated {
            "none"
        } else if dmarc_pass {
            "pass"
        } else {
            match (dmarc.spf_result(), dmarc.dkim_result()) {
                (DmarcResult::TempError(_), _) | (_, DmarcResult::TempError(_)) => "temperror",
                (DmarcResult::PermError(_), _) | (_, DmarcResult::PermError(_)) => "permerror",
                (DmarcResult::None, DmarcResult::None) if dmarc.dmarc_record().is_none() => "none",
                _ => "fail",
            }
        };
        let dmarc_action = if dmarc_name == "fail" {
            match dmarc.policy() {
                Policy::Reject => DmarcAction::Reject,
                Policy::Quarantine => DmarcAction::Quarantine,
                _ => DmarcAction::None,
            }
        } else {
            DmarcAction::None
        };
        // Sets mail-auth would accept but RFC 8617's grammar and structure refuse.
        let arc_name = match arc_syntax::problem(raw) {
            Some(why) => {
                tracing::debug!(%why, "malformed ARC set");
                "fail"
            }
            None => arc_cv(arc.result()),
        };
        let summary = Summary {
            spf: spf.result().into(),
            dkim: dkim_summary(&dkim).into(),
            dmarc: dmarc_name.into(),
            arc: arc_name.into(),
        };
        // The DMARC and ARC clauses are written here rather than by mail-auth: it says
        // `dmarc=none` for a message failing a published policy when neither identifier
        // passed, and ARC results other than the three RFC 8617 knows.
        let mut header = results.to_header().trim_end().to_string();
        if dmarc_evaluated {
            let policy = match dmarc.policy() {
                Policy::Reject => "reject",
                Policy::Quarantine => "quarantine",
                _ => "none",
            };
            header.push_str(&format!(
                ";\r\n\tdmarc={dmarc_name} header.from={} policy.dmarc={policy}",
                dmarc.domain()
            ));
        }
        if arc_name != "none" {
            // A chain that does not validate for any reason (mail-auth's neutral, permerror,
            // temperror) is `fail`; the reason goes in a comment.
            let reason = match arc.result() {
                DkimResult::Pass | DkimResult::None => String::new(),
                other => format!(" ({})", comment(&format!("{other:?}"))),
            };
            header.push_str(&format!(
                ";\r\n\tarc={arc_name}{reason} smtp.remote-ip={}",
                pvalue_ip(ip)
            ));
        }
        header.push_str("\r\n");
        let signatures = dkim
            .iter()
            .map(|o| SignatureResult {
                domain: o.signature().map(|s| s.d.clone()).unwrap_or_default(),
                selector: o.signature().map(|s| s.s.clone()).unwrap_or_default(),
                result: dkim_name(o.result()),
            })
            .collect();
        Checked {
            summary,
            signatures,
            header,
            dmarc_domain: dmarc_evaluated.then(|| dmarc.domain().to_string()),
            dmarc_action,
            dmarc_pct: dmarc.dmarc_record().map_or(100, |r| r.pct()),
        }
    }
}

fn mailfrom(spf: &SpfCheck) -> String {
    if spf.sender.is_empty() {
        format!("postmaster@{}", spf.helo)
    } else {
        spf.sender.clone()
    }
}

/// RFC 8601 names of SPF results.
pub fn spf_name(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// RFC 8601 names of DKIM (and ARC) results.
pub fn dkim_name(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// The ARC chain validation status (`cv`, RFC 8617): none, pass or fail.
pub fn arc_cv(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::None => "none",
        _ => "fail",
    }
}

/// An IP address as an RFC 8601 pvalue (IPv6 has colons: quoted).
fn pvalue_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"{v6}\""),
    }
}

/// Text safe inside an RFC 5322 comment.
fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '(' | ')' | '\\' | '\r' | '\n'))
        .take(120)
        .collect()
}

/// One word for all signatures: `pass` when any passed, else the first signature's result.
fn dkim_summary(outputs: &[mail_auth::DkimOutput<'_>]) -> &'static str {
    if outputs.iter().any(|o| o.result() == &DkimResult::Pass) {
        return "pass";
    }
    outputs.first().map_or("none", |o| dkim_name(o.result()))
}

/// Removes `Authentication-Results` header fields whose authserv-id is ours (compared
/// case-insensitively): only we may write those. `None` when there was none.
pub fn strip_ours(raw: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    let end = sluice_core::envelope::header_end(raw);
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < end {
        let next = raw[pos..end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(end, |i| pos + i + 1);
        let continues = next < end && matches!(raw[next], b' ' | b'\t');
        if !continues {
            fields.push((start, next));
            start = next;
        }
        pos = next;
    }
    let ours = |field: &[u8]| {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            return false;
        };
        if !field[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"authentication-results")
        {
            return false;
        }
        let value = String::from_utf8_lossy(&field[colon + 1..]);
        let id = authserv_id_of(&value);
        id.eq_ignore_ascii_case(authserv_id)
    };
    if !fields.iter().any(|&(s, e)| ours(&raw[s..e])) {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    for &(s, e) in &fields {
        if !ours(&raw[s..e]) {
            out.extend_from_slice(&raw[s..e]);
        }
    }
    out.extend_from_slice(&raw[end..]);
    Some(out)
}

/// The authserv-id of an `Authentication-Results` value: its first token, comments (CFWS)
/// skipped, up to `;` or white space.
fn authserv_id_of(value: &str) -> String {
    let mut depth = 0;
    let mut id = String::new();
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            ';' => break,
            c if c.is_whitespace() => {
                if !id.is_empty() {
                    break;
                }
            }
            c => id.push(c),
        }
    }
    id.trim_matches('"').to_string()
}

/// `AuthenticatedMessage::parse`, with the body hashes computed through a buffer (mail-auth
/// hashes the canonical body one byte at a time: 11% of the inbound relay's CPU at 50 KB).
/// The header section is parsed on its own, so that mail-auth hashes an empty body, and the
/// real body's hashes are filled in; if mail-auth places the body elsewhere than after the
/// first empty line, the whole message is parsed as before.
fn authenticated(raw: &[u8]) -> Option<AuthenticatedMessage<'_>> {
    let Some(cut) = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return AuthenticatedMessage::parse(raw);
    };
    let mut message = AuthenticatedMessage::parse(&raw[..cut])?;
    if message.body_offset as usize != cut {
        return AuthenticatedMessage::parse(raw);
    }
    message.raw_message = raw;
    let body = &raw[cut..];
    for (canonicalization, algorithm, length, hash) in &mut message.body_hashes {
        // Relaxed bodies by RFC 6376 (`canon`: mail-auth keeps whitespace-only last lines,
        // so a conforming signature over such a body failed here); an `l=` cut is
        // mail-auth's.
        *hash = if *canonicalization == mail_auth::dkim::Canonicalization::Relaxed && *length == 0 {
            digest::hash(*algorithm, canon::RelaxedBody(body))
        } else {
            digest::hash(*algorithm, canonicalization.canonical_body(body, *length))
        };
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_hashes_match_mail_auths_own() {
        let sig = |c: &str, a: &str, l: &str| {
            format!(
                "DKIM-Signature: v=1; a={a}; c={c}; d=example.com; s=s1; h=from:subject;{l}\r\n bh=AAAA; b=AAAA\r\n"
            )
        };
        let mut raw = String::new();
        raw.push_str(&sig("relaxed/relaxed", "rsa-sha256", ""));
        raw.push_str(&sig("simple/simple", "rsa-sha1", ""));
        raw.push_str(&sig("relaxed/simple", "ed25519-sha256", ""));
        // Refused in strict parsing (an `l=` tag): no body hash.
        raw.push_str(&sig("simple/relaxed", "rsa-sha256", " l=100;"));
        raw.push_str("ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;\r\n s=a; h=from; bh=AAAA; b=AAAA\r\n");
        raw.push_str("From: a@example.com\r\nSubject: hi\r\n\r\n");
        for i in 0..2000 {
            raw.push_str(&format!("line {i} \t with  blanks  \r\n"));
            if i % 9 == 0 {
                raw.push_str("\r\n");
            }
        }
        raw.push_str("\r\n\r\n");
        let raw = raw.as_bytes();
        let ours = authenticated(raw).unwrap();
        let theirs = AuthenticatedMessage::parse(raw).unwrap();
        assert_eq!(theirs.body_hashes.len(), 3);
        assert_eq!(ours.body_hashes, theirs.body_hashes);
        assert_eq!(ours.body_offset, theirs.body_offset);
        assert_eq!(ours.raw_message, theirs.raw_message);
        assert_eq!(ours.headers, theirs.headers);
        assert_eq!(ours.from, theirs.from);
        // Whitespace-only last lines are empty lines, and empty last lines do not count
        // (RFC 6376, 3.4.4; mail-auth's own hash keeps them).
        let tail = b"From: a@example.com\r\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s1; h=from; bh=AAAA; b=AAAA\r\n\r\nhi  there \r\n \r\n\t\r\n";
        let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"hi there\r\n");
        assert_eq!(
            authenticated(tail).unwrap().body_hashes[0].3,
            expected.as_ref()
        );
        assert_ne!(
            AuthenticatedMessage::parse(tail).unwrap().body_hashes[0].3,
            expected.as_ref()
        );
        // No body at all, and LF-only line ends: parsed as mail-auth parses them.
        for raw in [
            &b"From: a@example.com\r\n"[..],
            b"From: a@example.com\n\nbody\n",
        ] {
            let ours = authenticated(raw).unwrap();
            let theirs = AuthenticatedMessage::parse(raw).unwrap();
            assert_eq!(ours.body_hashes, theirs.body_hashes);
            assert_eq!(ours.body_offset, theirs.body_offset);
        }
    }

    #[test]
    fn strips_only_our_authentication_results() {
        let raw = b"Authentication-Results: mx.example.org;\r\n spf=pass\r\nAuthentication-Results: (c) MX.Example.org ; dkim=pass\r\nAuthentication-Results: other.example; dmarc=pass\r\nSubject: x\r\n\r\nAuthentication-Results: mx.example.org; body\r\n";
        let out = strip_ours(raw, "mx.example.org").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Authentication-Results: other.example; dmarc=pass\r\nSubject: x\r\n\r\nAuthentication-Results: mx.example.org; body\r\n"
        );
        assert!(strip_ours(b"Subject: y\r\n\r\nbody", "mx.example.org").is_none());
    }

    #[test]
    fn authserv_id_skips_comments_and_quotes() {
        assert_eq!(authserv_id_of(" (x) a.example (y); spf=pass"), "a.example");
        assert_eq!(authserv_id_of(" \"a.example\";"), "a.example");
        assert_eq!(authserv_id_of(" a.example 1; none"), "a.example");
    }
}
