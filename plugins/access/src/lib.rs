//! Allow and deny lists: client networks at connect, senders at MAIL, recipients at RCPT
//! refused (`554 5.7.1` / `550 5.7.1`); allowed clients or senders skip the rest of the data
//! stage (an `accept` verdict: spam and content checks after this step do not run).
//!
//! ```toml
//! [[pipeline.step]]
//! name = "access"
//! plugin = "access.wasm"
//! sha256 = "…"
//! stages = ["connect", "mail", "rcpt", "data"]   # put it first in the chain
//! [pipeline.step.config]
//! allow_clients = ["192.0.2.0/24"]
//! deny_clients = ["203.0.113.0/24", "2001:db8::/32"]
//! allow_senders = ["ceo@partner.example", "@trusted.example"]   # @domain: the domain and its subdomains
//! deny_senders = ["@spammer.example"]
//! deny_recipients = ["old-alias@example.com"]
//! ```
//!
//! Deny wins over allow. Addresses compare case-insensitively.

use serde::Deserialize;
use sluice_plugin_sdk::{
    Envelope, Filter, Message, Outcome, SessionInfo, Stage, Verdict, export_filter,
};
use std::net::IpAddr;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    allow_clients: Vec<String>,
    deny_clients: Vec<String>,
    allow_senders: Vec<String>,
    deny_senders: Vec<String>,
    deny_recipients: Vec<String>,
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
}

/// `addr/len` (or a bare address: the host alone).
fn parse_net(s: &str) -> Result<(IpAddr, u32), String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an address or network"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{s}`: bad prefix length"))?,
    };
    Ok((ip, len))
}

fn in_net(ip: IpAddr, (net, len): (IpAddr, u32)) -> bool {
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    // An IPv4-mapped IPv6 client matches IPv4 networks.
    let ip = match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let ((a, wa), (b, wb)) = (bits(ip), bits(net));
    if wa != wb {
        return false;
    }
    if len == 0 {
        return true;
    }
    let shift = wa - len;
    (a >> shift) == (b >> shift)
}

fn client_in(list: &[String], ip: &str) -> bool {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    list.iter()
        .filter_map(|n| parse_net(n).ok())
        .any(|n| in_net(ip, n))
}

/// `user@domain` exactly, or `@domain`: that domain and its subdomains.
fn address_in(list: &[String], address: &str) -> bool {
    let a = address.trim().to_ascii_lowercase();
    let domain = a.rsplit_once('@').map_or("", |(_, d)| d);
    list.iter().any(|e| {
        let e = e.trim().to_ascii_lowercase();
        match e.strip_prefix('@') {
            Some(d) => domain == d || domain.ends_with(&format!(".{d}")),
            None => a == e,
        }
    })
}

struct Access;

impl Filter for Access {
    const STAGES: &'static [Stage] = &[Stage::Connect, Stage::Mail, Stage::Rcpt, Stage::Data];

    fn configure(c: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(c).map_err(|e| e.to_string())?;
        for n in c.allow_clients.iter().chain(&c.deny_clients) {
            parse_net(n)?;
        }
        for a in c
            .allow_senders
            .iter()
            .chain(&c.deny_senders)
            .chain(&c.deny_recipients)
        {
            if !a.contains('@') {
                return Err(format!("`{a}` is neither an address nor @domain"));
            }
        }
        Ok(())
    }

    fn on_connect(session: SessionInfo) -> Outcome {
        let c = config();
        if client_in(&c.deny_clients, &session.client_ip) {
            return Outcome::reject(554, "5.7.1", "Access denied for your network");
        }
        Outcome::cont()
    }

    fn on_mail(_session: SessionInfo, envelope: Envelope) -> Outcome {
        let c = config();
        if address_in(&c.deny_senders, &envelope.sender) {
            return Outcome::reject(550, "5.7.1", "Sender address refused by policy");
        }
        Outcome::cont()
    }

    fn on_rcpt(_session: SessionInfo, _envelope: Envelope, recipient: String) -> Outcome {
        let c = config();
        if address_in(&c.deny_recipients, &recipient) {
            return Outcome::reject(550, "5.7.1", "Recipient refused by policy");
        }
        Outcome::cont()
    }

    fn on_data(message: &Message) -> Outcome {
        let c = config();
        let session = message.session();
        let sender = message.envelope().sender;
        if client_in(&c.allow_clients, &session.client_ip) {
            return Outcome::cont()
                .symbol("ACCESS_ALLOW_CLIENT", 0.0)
                .verdict(Verdict::Accept);
        }
        if address_in(&c.allow_senders, &sender) {
            return Outcome::cont()
                .symbol("ACCESS_ALLOW_SENDER", 0.0)
                .verdict(Verdict::Accept);
        }
        Outcome::cont()
    }
}

export_filter!(Access, reusable);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_addresses() {
        let nets = vec!["192.0.2.0/24".to_string(), "2001:db8::/32".to_string()];
        assert!(client_in(&nets, "192.0.2.77"));
        assert!(client_in(&nets, "::ffff:192.0.2.1"));
        assert!(!client_in(&nets, "192.0.3.1"));
        assert!(client_in(&nets, "2001:db8:1::5"));
        assert!(!client_in(&nets, "2001:db9::1"));
        assert!(client_in(&["0.0.0.0/0".to_string()], "10.1.2.3"));
        let list = vec!["@example.org".to_string(), "Boss@Corp.example".to_string()];
        assert!(address_in(&list, "a@example.org"));
        assert!(address_in(&list, "a@mail.example.org"));
        assert!(!address_in(&list, "a@badexample.org"));
        assert!(address_in(&list, "boss@corp.example"));
        assert!(!address_in(&list, "other@corp.example"));
        assert!(parse_net("300.1.1.1/8").is_err() && parse_net("10.0.0.0/33").is_err());
    }
}
