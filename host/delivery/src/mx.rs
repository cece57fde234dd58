//! Next-hop resolution: MX records by preference, the implicit MX (the domain's own
//! address records) when there are none, and null MX (RFC 7505).

use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::{ResolveError, TokioResolver};
use sluice_core::Reply;
use std::net::{IpAddr, SocketAddr};

/// One host to try, with its addresses.
#[derive(Debug, Clone)]
pub struct Hop {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

/// What a failed lookup says about the name.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// NXDOMAIN: the name does not exist. Permanent.
    NoSuchName,
    /// The name exists without records of the type asked for.
    NoData,
    /// SERVFAIL, REFUSED, a timeout, no server reachable...: try again later (4.4.3).
    Temporary,
}

/// hickory reports SERVFAIL and REFUSED as "no records found" too: only the response code
/// tells a missing name from a failing server.
fn classify(e: &ResolveError) -> Failure {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => match *response_code {
            ResponseCode::NXDomain => Failure::NoSuchName,
            ResponseCode::NoError => Failure::NoData,
            _ => Failure::Temporary,
        },
        _ => Failure::Temporary,
    }
}

/// Resolves a host name (or IP literal) to socket addresses.
pub async fn host_addrs(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Reply> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match resolver.lookup_ip(host).await {
        Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        Err(e) if classify(&e) != Failure::Temporary => Err(Reply::new(
            550,
            "5.1.2",
            format!("host {host} has no address records"),
        )),
        Err(e) => Err(Reply::new(
            451,
            "4.4.3",
            format!("DNS lookup of {host} failed: {e}"),
        )),
    }
}

/// The hosts to try for a domain, best first.
pub async fn mx_hops(resolver: &TokioResolver, domain: &str, port: u16) -> Result<Vec<Hop>, Reply> {
    let names: Vec<String> = match resolver.mx_lookup(domain).await {
        Ok(mx) => {
            let mut records: Vec<(u16, String)> = mx
                .iter()
                .map(|r| {
                    (
                        r.preference(),
                        r.exchange().to_utf8().trim_end_matches('.').to_string(),
                    )
                })
                .collect();
            if records.len() == 1 && records[0].1.is_empty() {
                return Err(Reply::new(
                    556,
                    "5.1.10",
                    format!("domain {domain} accepts no mail (null MX)"),
                ));
            }
            records.sort();
            records
                .into_iter()
                .map(|(_, n)| n)
                .filter(|n| !n.is_empty())
                .collect()
        }
        Err(e) if classify(&e) == Failure::NoSuchName => {
            return Err(Reply::new(
                550,
                "5.1.2",
                format!("domain {domain} does not exist"),
            ));
        }
        Err(e) if classify(&e) == Failure::NoData => vec![domain.to_string()],
        Err(e) => {
            return Err(Reply::new(
                451,
                "4.4.3",
                format!("MX lookup for {domain} failed: {e}"),
            ));
        }
    };
    let mut hops = Vec::new();
    let mut last_err = None;
    for name in names {
        match host_addrs(resolver, &name, port).await {
            Ok(addrs) if !addrs.is_empty() => hops.push(Hop { name, addrs }),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    if hops.is_empty() {
        return Err(last_err.unwrap_or_else(|| {
            Reply::new(451, "4.4.4", format!("no usable mail host for {domain}"))
        }));
    }
    Ok(hops)
}
