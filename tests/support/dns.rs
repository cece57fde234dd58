//! A tiny authoritative DNS server on 127.0.0.1 (UDP and TCP) for MX tests:
//! - `mx.test` MX 10 `mail.mx.test`, which has A 127.0.0.1;
//! - `implicit.test` has no MX but A 127.0.0.1 (the implicit MX);
//! - `nullmx.test` has the null MX (RFC 7505);
//! - `servfail.test` (and names under it) get SERVFAIL;
//! - `silent.test` (and names under it) get no answer at all;
//! - any other name does not exist.
//!
//! [`Dns::serve`] answers from a [`Zone`] instead (the authentication suites' DNS data).

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::Arc;

pub struct Dns {
    pub port: u16,
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// The fixed MX test data of [`Dns::start`].
fn mx_answer(q: &Name, t: RecordType) -> Answer {
    let q = q.to_ascii().to_ascii_lowercase();
    if q.ends_with("silent.test.") {
        return Answer::Silent;
    }
    if q.ends_with("servfail.test.") {
        return Answer::ServFail;
    }
    let mx =
        |pref, host: &str| Record::from_rdata(name(&q), 60, RData::MX(MX::new(pref, name(host))));
    let a = || Record::from_rdata(name(&q), 60, RData::A(A(Ipv4Addr::LOCALHOST)));
    match (q.as_str(), t) {
        ("mx.test.", RecordType::MX) => Answer::Records(vec![mx(10, "mail.mx.test.")]),
        ("nullmx.test.", RecordType::MX) => Answer::Records(vec![mx(0, ".")]),
        ("mail.mx.test." | "implicit.test.", RecordType::A) => Answer::Records(vec![a()]),
        ("mx.test." | "mail.mx.test." | "implicit.test." | "nullmx.test.", _) => {
            Answer::Records(vec![])
        }
        _ => Answer::NxDomain,
    }
}

/// One entry of a name in a [`Zone`].
#[derive(Debug, Clone)]
pub enum Entry {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, String),
    Ptr(String),
    Cname(String),
    /// Character-strings of one TXT record.
    Txt(Vec<Vec<u8>>),
    /// The same as TXT, with RR type SPF (99).
    Spf(Vec<Vec<u8>>),
    /// Queries for a type with no record before this entry get no answer at all (the SPF
    /// test suite's `TIMEOUT`).
    Timeout,
}

/// Names (lowercase, no trailing dot) and their entries, in order.
#[derive(Debug, Clone, Default)]
pub struct Zone(pub HashMap<String, Vec<Entry>>);

enum Answer {
    Records(Vec<Record>),
    NxDomain,
    ServFail,
    /// No response at all.
    Silent,
}

impl Zone {
    pub fn add(&mut self, name: &str, entry: Entry) {
        self.0
            .entry(name.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .push(entry);
    }

    fn answer(&self, q: &Name, t: RecordType, depth: u8) -> Answer {
        // The raw labels: `to_ascii` escapes characters a domain-spec may put in a name
        // (`:`, `/`, `%`, spaces), so such names would never match the zone's.
        let key = q
            .iter()
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(".")
            .to_ascii_lowercase();
        let Some(entries) = self.0.get(&key) else {
            return Answer::NxDomain;
        };
        let mut records = Vec::new();
        for e in entries {
            let rdata = match (e, t) {
                (Entry::Timeout, _) => {
                    if records.is_empty() {
                        return Answer::Silent;
                    }
                    break;
                }
                (Entry::A(ip), RecordType::A) => RData::A(A(*ip)),
                (Entry::Aaaa(ip), RecordType::AAAA) => RData::AAAA(AAAA(*ip)),
                (Entry::Mx(p, h), RecordType::MX) => RData::MX(MX::new(*p, fqdn(h))),
                (Entry::Ptr(h), RecordType::PTR) => RData::PTR(PTR(fqdn(h))),
                (Entry::Txt(v), RecordType::TXT) => {
                    RData::TXT(TXT::from_bytes(v.iter().map(|s| s.as_slice()).collect()))
                }
                (Entry::Spf(v), RecordType::Unknown(99)) => {
                    // Served as opaque TXT-format RDATA under type 99.
                    let mut wire = Vec::new();
                    for s in v {
                        wire.push(s.len() as u8);
                        wire.extend_from_slice(s);
                    }
                    RData::Unknown {
                        code: RecordType::Unknown(99),
                        rdata: hickory_proto::rr::rdata::NULL::with(wire),
                    }
                }
                (Entry::Cname(target), _) => {
                    records.push(Record::from_rdata(
                        q.clone(),
                        60,
                        RData::CNAME(CNAME(fqdn(target))),
                    ));
                    if t != RecordType::CNAME
                        && depth == 0
                        && let Answer::Records(more) = self.answer(&fqdn(target), t, 1)
                    {
                        records.extend(more);
                    }
                    continue;
                }
                _ => continue,
            };
            records.push(Record::from_rdata(q.clone(), 60, rdata));
        }
        Answer::Records(records)
    }
}

fn fqdn(s: &str) -> Name {
    // From raw labels first: zone data may name hosts with `:` or `/`, which the text
    // parsers refuse.
    let mut n = Name::from_labels(s.trim_end_matches('.').split('.').map(str::as_bytes))
        .or_else(|_| Name::from_utf8(s))
        .unwrap_or_else(|_| Name::root());
    n.set_fqdn(true);
    n
}

impl Dns {
    /// The fixed MX test data described at the top of this file.
    pub fn start() -> Dns {
        Dns::run(mx_answer)
    }

    /// Answers from `zone`: unknown names do not exist, known ones without the type have no
    /// data, and `Timeout` entries leave the query unanswered.
    pub fn serve(zone: Zone) -> Dns {
        Dns::run(move |q, t| zone.answer(q, t, 0))
    }

    fn run(lookup: impl Fn(&Name, RecordType) -> Answer + Send + Sync + 'static) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
        let respond = Arc::new(move |req: &Message| -> Option<Vec<u8>> {
            let mut resp = Message::new();
            resp.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_authoritative(true)
                .set_recursion_desired(req.recursion_desired())
                .set_recursion_available(true);
            resp.add_queries(req.queries().to_vec());
            let mut code = ResponseCode::NoError;
            for q in req.queries() {
                match lookup(q.name(), q.query_type()) {
                    Answer::Records(r) => {
                        resp.add_answers(r);
                    }
                    Answer::NxDomain => code = ResponseCode::NXDomain,
                    Answer::ServFail => {
                        code = ResponseCode::ServFail;
                        resp.take_answers();
                        break;
                    }
                    Answer::Silent => return None,
                }
            }
            resp.set_response_code(code);
            resp.to_bytes().ok()
        });
        if let Some(tcp) = tcp {
            let respond = respond.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                for conn in tcp.incoming() {
                    let Ok(mut conn) = conn else { return };
                    let respond = respond.clone();
                    std::thread::spawn(move || {
                        loop {
                            let mut len = [0u8; 2];
                            if conn.read_exact(&mut len).is_err() {
                                return;
                            }
                            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                            if conn.read_exact(&mut buf).is_err() {
                                return;
                            }
                            let Ok(req) = Message::from_bytes(&buf) else {
                                return;
                            };
                            if let Some(out) = respond(&req) {
                                let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                                framed.extend_from_slice(&out);
                                if conn.write_all(&framed).is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            });
        }
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let Ok(req) = Message::from_bytes(&buf[..n]) else {
                    continue;
                };
                if let Some(out) = respond(&req) {
                    let _ = socket.send_to(&out, from);
                }
            }
        });
        Dns { port }
    }
}
