//! A real SMTP server for Sluice to deliver to, reacting to magic recipients:
//! - `reject…@` gets `550 5.1.1` at RCPT;
//! - `tempfail…@` gets `451 4.3.0` the first time that address is seen, then `250`;
//! - `defer…@` always gets `451 4.2.1`;
//! - anything else is accepted. Messages are recorded with their parameters.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Received {
    pub mail_line: String,
    pub rcpt_lines: Vec<String>,
    pub recipients: Vec<String>,
    pub data: String,
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    tempfailed: HashSet<String>,
    connections: usize,
    rcpt_attempts: Vec<String>,
    /// Offer STARTTLS, then answer the handshake with garbage.
    broken_tls: bool,
    /// Do not announce 8BITMIME.
    seven_bit: bool,
    /// Read message data slowly (50 ms per 64 KB).
    slow_reader: bool,
    /// Wait this long before every reply after the greeting (a tarpit).
    tarpit: Option<std::time::Duration>,
    /// When each connection arrived.
    connected_at: Vec<std::time::Instant>,
}

#[derive(Clone)]
pub struct Sink {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_on(0)
    }

    /// A sink that offers STARTTLS but fails every handshake.
    pub fn start_broken_tls() -> Sink {
        let sink = Sink::start_on(0);
        sink.state.lock().unwrap().broken_tls = true;
        sink
    }

    /// A sink that waits `delay` before every reply after the greeting.
    pub fn start_tarpit(delay: std::time::Duration) -> Sink {
        let sink = Sink::start_on(0);
        sink.state.lock().unwrap().tarpit = Some(delay);
        sink
    }

    /// A sink that reads message data at about 1.3 MB/s.
    pub fn start_slow_reader() -> Sink {
        let sink = Sink::start_on(0);
        sink.state.lock().unwrap().slow_reader = true;
        sink
    }

    /// A sink that does not announce 8BITMIME.
    pub fn start_7bit() -> Sink {
        let sink = Sink::start_on(0);
        sink.state.lock().unwrap().seven_bit = true;
        sink
    }

    pub fn start_on(port: u16) -> Sink {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, st);
                });
            }
        });
        Sink { port, state }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// When each connection arrived, in order.
    pub fn connection_times(&self) -> Vec<std::time::Instant> {
        self.state.lock().unwrap().connected_at.clone()
    }

    /// Every RCPT address tried, in order, accepted or not.
    pub fn rcpt_attempts(&self) -> Vec<String> {
        self.state.lock().unwrap().rcpt_attempts.clone()
    }
}

fn address(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.find('>').unwrap_or(line.len());
    line[start..end].to_string()
}

fn serve(stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    {
        let mut st = state.lock().unwrap();
        st.connections += 1;
        st.connected_at.push(std::time::Instant::now());
    }
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 sink.test ESMTP test sink\r\n")?;
    let mut current: Option<Received> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let (broken_tls, seven_bit) = {
            let st = state.lock().unwrap();
            (st.broken_tls, st.seven_bit)
        };
        let reply: String = if upper.starts_with("EHLO") {
            let tls = if broken_tls { "250-STARTTLS\r\n" } else { "" };
            let eight = if seven_bit { "" } else { "250-8BITMIME\r\n" };
            format!(
                "250-sink.test\r\n{tls}250-PIPELINING\r\n250-SIZE 100000000\r\n{eight}250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES"
            )
        } else if upper == "STARTTLS" && broken_tls {
            out.write_all(b"220 2.0.0 go ahead\r\n")?;
            // Not a TLS server hello.
            out.write_all(b"this is not TLS\r\n")?;
            return Ok(());
        } else if upper.starts_with("HELO") {
            "250 sink.test".into()
        } else if upper.starts_with("MAIL FROM:") {
            current = Some(Received {
                mail_line: line.clone(),
                ..Received::default()
            });
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = address(&line);
            let mut st = state.lock().unwrap();
            st.rcpt_attempts.push(addr.clone());
            match current.as_mut() {
                None => "503 5.5.1 need MAIL".into(),
                Some(_) if addr.starts_with("reject") => "550 5.1.1 User unknown".into(),
                Some(_) if addr.starts_with("defer") => "451 4.2.1 Mailbox busy".into(),
                Some(_) if addr.starts_with("tempfail") && st.tempfailed.insert(addr.clone()) => {
                    "451 4.3.0 Try again later".into()
                }
                Some(c) => {
                    c.rcpt_lines.push(line.clone());
                    c.recipients.push(addr);
                    "250 2.1.5 ok".into()
                }
            }
        } else if upper == "DATA" {
            match &current {
                Some(c) if !c.recipients.is_empty() => {
                    out.write_all(b"354 go ahead\r\n")?;
                    let slow = state.lock().unwrap().slow_reader;
                    let mut data = String::new();
                    let mut paced = 0;
                    loop {
                        let mut l = String::new();
                        if reader.read_line(&mut l)? == 0 {
                            return Ok(());
                        }
                        if slow && data.len() >= paced + 64 * 1024 {
                            paced = data.len();
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        if l == ".\r\n" {
                            break;
                        }
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    }
                    let mut c = current.take().unwrap();
                    c.data = data;
                    state.lock().unwrap().messages.push(c);
                    "250 2.0.0 accepted by sink".into()
                }
                _ => "554 5.5.1 no valid recipients".into(),
            }
        } else if upper == "RSET" {
            current = None;
            "250 2.0.0 ok".into()
        } else if upper == "NOOP" {
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            "500 5.5.2 unknown command".into()
        };
        let tarpit = state.lock().unwrap().tarpit;
        if let Some(d) = tarpit {
            std::thread::sleep(d);
        }
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\r\n")?;
    }
}
