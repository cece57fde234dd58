//! A plugin that misbehaves on purpose, for containment tests. `config.mode` picks how:
//! `loop`, `memory`, `trap`, `giant`, `kv` (ungranted key-value), `tcp` (ungranted network
//! to `config.target`), `http` (a GET of `config.target`, `http://host:port/path`), `state` (counts calls in a static), `score` (a symbol worth
//! `config.score`), `edit` (replaces the text part and tags the message), `reject`,
//! `sleep` (sleeps 30 s in a WASI call), `million` (a million empty edits), `symbols`
//! (5,000 symbols), `inject` (a reject whose enhanced code and text carry CR LF and an
//! extra SMTP reply), `boundary` (replaces the HTML part with text holding the message's
//! MIME boundary), `header` (a header whose value is a 5,000-character word and runs of
//! spaces), `relay` (adds the recipient `config.target`, for relay checks), `tcp-flood`
//! (100 TCP connections to `config.target`, all kept open) and `http-flood` (30 GETs of
//! `config.target`), each reporting how many went through.

use serde::Deserialize;
use sluice_plugin_sdk::{Edit, Filter, Message, Outcome, Stage, export_filter, host};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    score: f64,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static CALLS: AtomicU32 = AtomicU32::new(0);

struct Hostile;

fn config() -> &'static Config {
    CONFIG.get().expect("configured")
}

impl Filter for Hostile {
    const STAGES: &'static [Stage] = &[Stage::Data];

    fn configure(c: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(c).map_err(|e| format!("bad config: {e}"))?;
        const MODES: &[&str] = &[
            "loop",
            "memory",
            "trap",
            "giant",
            "kv",
            "tcp",
            "http",
            "state",
            "score",
            "edit",
            "reject",
            "sleep",
            "million",
            "symbols",
            "inject",
            "boundary",
            "header",
            "relay",
            "tcp-keep",
            "tcp-flood",
            "http-flood",
        ];
        if !MODES.contains(&c.mode.as_str()) {
            return Err(format!("unknown mode `{}`", c.mode));
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_data(message: &Message) -> Outcome {
        // Each call is a fresh instance: `configure` ran on another one.
        if CONFIG.get().is_none() {
            let c = serde_json::from_str(&sluice_plugin_sdk::config_json()).expect("configured");
            let _ = CONFIG.set(c);
        }
        match config().mode.as_str() {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("deliberate trap"),
            "giant" => Outcome::cont().add_header("X-Giant", &"x".repeat(8 << 20)),
            "kv" => match host::kv_set("k", b"v", None) {
                Ok(()) => Outcome::cont().add_header("X-Kv", "granted"),
                Err(e) => Outcome::cont().add_header("X-Kv", &format!("{e:?}")),
            },
            "tcp" => match std::net::TcpStream::connect(&config().target) {
                Ok(_) => Outcome::cont().add_header("X-Tcp", "connected"),
                Err(e) => Outcome::cont().add_header("X-Tcp", &format!("refused: {e}")),
            },
            // A connection left open after the call.
            "tcp-keep" => match std::net::TcpStream::connect(&config().target) {
                Ok(s) => {
                    std::mem::forget(s);
                    Outcome::cont().add_header("X-Tcp", "kept")
                }
                Err(e) => Outcome::cont().add_header("X-Tcp", &format!("refused: {e}")),
            },
            "http" => match http_get(&config().target) {
                Ok(status) => Outcome::cont().add_header("X-Http", &format!("status {status}")),
                Err(e) => Outcome::cont().add_header("X-Http", &format!("refused: {e}")),
            },
            "state" => {
                let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
                Outcome::cont().add_header("X-Calls", &n.to_string())
            }
            "score" => Outcome::cont().symbol("TEST_SCORE", config().score),
            "edit" => Outcome::cont()
                .edit(Edit::ReplaceText(format!(
                    "rewritten ✓ ({} bytes before)",
                    message.size()
                )))
                .set_header("X-Edited", "yes"),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                Outcome::cont().add_header("X-Slept", "yes")
            }
            "million" => {
                let mut o = Outcome::cont();
                o.edits = vec![Edit::RemoveHeader(String::new()); 1_000_000];
                o
            }
            "symbols" => {
                let mut o = Outcome::cont();
                for i in 0..5000 {
                    o = o.symbol(&format!("S{i}"), 0.0);
                }
                o
            }
            "inject" => Outcome::reject(
                550,
                "5.7.1\r\n250 2.0.0 injected-line",
                "refused\r\n250 2.0.0 also injected",
            ),
            "boundary" => {
                let html = message
                    .parts()
                    .into_iter()
                    .find(|p| p.content_type == "text/html");
                match html {
                    Some(p) => Outcome::cont().replace_part(
                        p.id,
                        "<p>hi</p>\n--b\nContent-Type: application/x-evil\n\nEVIL\n--b--\n",
                    ),
                    None => Outcome::cont(),
                }
            }
            "header" => Outcome::cont().add_header(
                "X-Long",
                &format!("{}   {}     end", "w".repeat(5000), "x".repeat(80)),
            ),
            "relay" => Outcome::cont().edit(Edit::AddRecipient(config().target.clone())),
            "tcp-flood" => {
                let mut open = Vec::new();
                for _ in 0..100 {
                    if let Ok(s) = std::net::TcpStream::connect(&config().target) {
                        open.push(s);
                    }
                }
                Outcome::cont().add_header("X-Connected", &open.len().to_string())
            }
            "http-flood" => {
                let ok = (0..30)
                    .filter(|_| http_get(&config().target).is_ok())
                    .count();
                Outcome::cont().add_header("X-Requests", &ok.to_string())
            }
            _ => Outcome::reject(550, "5.7.1", "refused by the hostile plugin"),
        }
    }
}

export_filter!(Hostile);

/// A GET through wasi:http; the status code, or the error the host gave.
fn http_get(url: &str) -> Result<u16, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, OutgoingRequest, Scheme};
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        (
            Scheme::Http,
            url.strip_prefix("http://").ok_or("only http(s):// here")?,
        )
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&scheme)).map_err(|_| "scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|_| "authority")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| "path")?;
    let response = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(r))) => Ok(r.status()),
        Some(Ok(Err(e))) => Err(format!("{e:?}")),
        Some(Err(())) | None => Err("no response".into()),
    }
}
