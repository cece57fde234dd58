//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for MX tests:
//! - `mx.test` MX 10 `mail.mx.test`, which has A 127.0.0.1;
//! - `implicit.test` has no MX but A 127.0.0.1 (the implicit MX);
//! - `nullmx.test` has the null MX (RFC 7505);
//! - `servfail.test` (and names under it) get SERVFAIL;
//! - `silent.test` (and names under it) get no answer at all;
//! - any other name does not exist.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use std::net::{Ipv4Addr, UdpSocket};

pub struct Dns {
    pub port: u16,
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn answer(q: &Name, t: RecordType) -> Option<Vec<Record>> {
    let q = q.to_ascii().to_ascii_lowercase();
    let mx =
        |pref, host: &str| Record::from_rdata(name(&q), 60, RData::MX(MX::new(pref, name(host))));
    let a = || Record::from_rdata(name(&q), 60, RData::A(A(Ipv4Addr::LOCALHOST)));
    match (q.as_str(), t) {
        ("mx.test.", RecordType::MX) => Some(vec![mx(10, "mail.mx.test.")]),
        ("nullmx.test.", RecordType::MX) => Some(vec![mx(0, ".")]),
        ("mail.mx.test." | "implicit.test.", RecordType::A) => Some(vec![a()]),
        ("mx.test." | "mail.mx.test." | "implicit.test." | "nullmx.test.", _) => Some(vec![]),
        _ => None,
    }
}

impl Dns {
    pub fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let Ok(req) = Message::from_bytes(&buf[..n]) else {
                    continue;
                };
                let mut resp = Message::new();
                resp.set_id(req.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(OpCode::Query)
                    .set_authoritative(true)
                    .set_recursion_desired(req.recursion_desired())
                    .set_recursion_available(true);
                resp.add_queries(req.queries().to_vec());
                let mut code = ResponseCode::NoError;
                let qname = |q: &hickory_proto::op::Query| q.name().to_ascii().to_ascii_lowercase();
                if req
                    .queries()
                    .iter()
                    .any(|q| qname(q).ends_with("silent.test."))
                {
                    continue;
                }
                if req
                    .queries()
                    .iter()
                    .any(|q| qname(q).ends_with("servfail.test."))
                {
                    code = ResponseCode::ServFail;
                }
                let failing = code != ResponseCode::NoError;
                for q in req.queries().iter().filter(|_| !failing) {
                    match answer(q.name(), q.query_type()) {
                        Some(records) => {
                            resp.add_answers(records);
                        }
                        None => code = ResponseCode::NXDomain,
                    }
                }
                resp.set_response_code(code);
                if let Ok(bytes) = resp.to_bytes() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Dns { port }
    }
}
