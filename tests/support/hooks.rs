//! A real HTTP receiver for webhooks on 127.0.0.1: records every request (method, path,
//! headers with lowercased names, body; Content-Length or chunked bodies) and answers what
//! its responder says (by default 503 to the first `fail_first` requests, 200 after).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Responder = Box<dyn Fn(&Request, usize) -> (u16, String) + Send>;

struct State {
    /// Each request with the status it got.
    requests: Vec<(Request, u16)>,
    respond: Responder,
}

#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    pub fn start_on(port: u16, fail_first: usize) -> Receiver {
        Receiver::start_with(port, move |_, n| {
            if n <= fail_first {
                (503, "try later".into())
            } else {
                (200, "ok".into())
            }
        })
    }

    /// `respond` gets each request and its number (from 1) and gives status and body.
    pub fn start_with(
        port: u16,
        respond: impl Fn(&Request, usize) -> (u16, String) + Send + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            respond: Box::new(respond),
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Receiver { port, state }
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Request> {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .filter(|(_, status)| (200..300).contains(status))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Every request, refused ones included.
    pub fn all(&self) -> Vec<Request> {
        let s = self.state.lock().unwrap();
        s.requests.iter().map(|(r, _)| r.clone()).collect()
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or_default().to_string();
        let path = words.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body = vec![0; n];
            reader.read_exact(&mut body)?;
        }
        let request = Request {
            method,
            path,
            headers,
            body,
        };
        let (status, text) = {
            let mut s = state.lock().unwrap();
            let n = s.requests.len() + 1;
            let (status, text) = (s.respond)(&request, n);
            s.requests.push((request, status));
            (status, text)
        };
        write!(
            writer,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{text}",
            text.len()
        )?;
        writer.flush()?;
    }
}
