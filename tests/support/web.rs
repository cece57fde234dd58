//! A plain HTTP/1.1 client for the server's HTTP listener (one request per connection, as
//! a mail client following a link does), and the tracking links found in a message.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Response {
    pub status: u16,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request to 127.0.0.1:`port` (a form body when `body` is not empty).
pub fn request(port: u16, method: &str, path: &str, body: &str) -> Response {
    request_as(port, method, path, None, body)
}

/// [`request`] with an admin API key (`Authorization: Bearer`).
pub fn request_as(port: u16, method: &str, path: &str, key: Option<&str>, body: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test-agent/1.0\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let raw = String::from_utf8_lossy(&bytes);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The path of each tracking URL of one kind (`c`, `o`, `u`) on 127.0.0.1:`port` in `text`.
pub fn tracking_paths(text: &str, port: u16, kind: &str) -> Vec<String> {
    let prefix = format!("http://127.0.0.1:{port}/{kind}/");
    text.match_indices(&prefix)
        .map(|(i, _)| {
            let token: String = text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            format!("/{kind}/{token}")
        })
        .collect()
}
