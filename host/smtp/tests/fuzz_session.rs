//! Property-based fuzzing of the SMTP session: random mixes of real commands, line-ending
//! junk (bare CR and LF, lone dots, NUL, 8-bit bytes), over-long lines and random bytes are
//! fed to a [`Session`] over an in-memory stream, in random chunk sizes.
//!
//! Properties: the session never panics and always ends (the client closing, QUIT, or a
//! timeout); every line it writes is a well-formed reply (`NNN` + space or dash, CRLF);
//! nothing it queued holds a bare CR, a bare LF or a NUL.
//!
//! CI runs `FUZZ_CASES` cases (default 64). A long run:
//! `FUZZ_CASES=20000 cargo test --release -p sluice-smtp --test fuzz_session`.

use proptest::prelude::*;
use sluice_core::{Fixed, PassThrough};
use sluice_queue::{MemQueue, Queue};
use sluice_smtp::ServerContext;
use sluice_smtp::session::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
hostname = "fuzz.test"
data_dir = "/nonexistent/sluice-fuzz"
local_domains = ["localhost"]

[[listener]]
name = "mx"
bind = "127.0.0.1:2525"
role = "mx"
max_message_size = 65536
max_recipients = 20
command_timeout = "1s"
data_timeout = "1s"
"#;

/// Messages queued over all cases: the generator must reach end of data sometimes.
static QUEUED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn piece() -> impl Strategy<Value = Vec<u8>> {
    let commands = prop::sample::select(vec![
        "EHLO client.test\r\n",
        "HELO client.test\r\n",
        "MAIL FROM:<a@example.com>\r\n",
        "MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME\r\n",
        "MAIL FROM:<>\r\n",
        "RCPT TO:<u@localhost>\r\n",
        "RCPT TO:<v@localhost> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;v@localhost\r\n",
        "RCPT TO:<x@elsewhere.example>\r\n",
        "DATA\r\n",
        "BDAT 10\r\n",
        "BDAT 0 LAST\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "VRFY u\r\n",
        "HELP\r\n",
        "STARTTLS\r\n",
        "AUTH PLAIN AGEAYg==\r\n",
        "AUTH LOGIN\r\n",
        "QUIT\r\n",
        "Subject: x\r\n\r\nbody\r\n.\r\n",
        "\r\n.\r\n",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    let junk = prop::sample::select(vec![
        &b"\r"[..],
        b"\n",
        b".",
        b"\n.\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\0",
        b"\xff\xfe",
        b"\xc3\x28",
        b"..\r\n",
    ])
    .prop_map(|s| s.to_vec());
    prop_oneof![
        6 => commands,
        3 => junk,
        2 => prop::collection::vec(any::<u8>(), 0..120),
        1 => (500usize..3000).prop_map(|n| vec![b'A'; n]),
    ]
}

fn well_formed(output: &[u8]) -> Result<(), String> {
    if output.is_empty() {
        return Ok(());
    }
    if !output.ends_with(b"\r\n") {
        return Err("output does not end with CRLF".into());
    }
    for line in output[..output.len() - 1].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").ok_or("a reply line without CR")?;
        let ok = line.len() >= 3
            && line[..3].iter().all(u8::is_ascii_digit)
            && matches!(line.get(3), None | Some(b' ' | b'-'));
        if !ok {
            return Err(format!(
                "malformed reply line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
    }
    Ok(())
}

async fn run_session(input: Vec<Vec<u8>>, chunk: usize) -> Result<(), String> {
    let settings = Arc::new(sluice_config::load_str(CONFIG, "fuzz.toml").expect("config"));
    let queue = Arc::new(MemQueue::new());
    let (handoff, _rx) = sluice_queue::handoff(16);
    let ctx = Arc::new(ServerContext {
        settings: settings.clone(),
        queue: queue.clone(),
        pipelines: Arc::new(Fixed(Arc::new(PassThrough))),
        tls: None,
        guard: Arc::new(sluice_smtp::protect::Guard::new(
            settings.protection.clone(),
        )),
        users: Arc::new(sluice_smtp::Users::new(std::path::Path::new(
            "/nonexistent/sluice-fuzz/users",
        ))),
        queued: handoff,
        auth: None,
    });
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let session = Session::new(
        server,
        "127.0.0.1".parse().unwrap(),
        ctx,
        Arc::new(settings.listeners[0].clone()),
        stop_rx,
    );
    let run = tokio::spawn(session.run());
    let (mut rd, mut wr) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    });
    // Piece by piece, yielding between writes so that the session reads what came so far
    // (a client that waits for replies, as DATA requires).
    'send: for piece in &input {
        for part in piece.chunks(chunk.max(1)) {
            if wr.write_all(part).await.is_err() {
                break 'send; // the server hung up
            }
            tokio::task::yield_now().await;
        }
    }
    let _ = wr.shutdown().await;
    drop(wr);
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "the session did not end".to_string())?
        .map_err(|e| format!("the session panicked: {e}"))?;
    let output = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .map_err(|_| "output never closed".to_string())?
        .map_err(|e| e.to_string())?;
    well_formed(&output)?;
    if !output.starts_with(b"220 ") {
        return Err(format!(
            "no greeting: {:?}",
            String::from_utf8_lossy(&output)
        ));
    }
    let queued = queue.list().map_err(|e| e.to_string())?;
    QUEUED.fetch_add(queued.len(), std::sync::atomic::Ordering::Relaxed);
    for m in queued {
        let body = queue
            .body(&m.id)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        for (i, &b) in body.iter().enumerate() {
            let bad = b == 0
                || (b == b'\r' && body.get(i + 1) != Some(&b'\n'))
                || (b == b'\n' && (i == 0 || body[i - 1] != b'\r'));
            if bad {
                return Err(format!("queued a body with a bare CR/LF or NUL at {i}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn sessions_survive_arbitrary_input(
        input in prop::collection::vec(piece(), 0..40),
        chunk in 1usize..4096,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = rt.block_on(run_session(input, chunk));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// The harness reaches end of data: a plain transaction, piece by piece, is queued (a
/// generator or harness that never got past DATA would prove nothing).
#[test]
fn a_plain_transaction_is_queued_through_the_harness() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let input: Vec<Vec<u8>> = [
        "EHLO a\r\n",
        "MAIL FROM:<a@example.com>\r\n",
        "RCPT TO:<u@localhost>\r\n",
        "DATA\r\n",
        "Subject: x\r\n\r\nbody\r\n.\r\n",
        "QUIT\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let before = QUEUED.load(std::sync::atomic::Ordering::Relaxed);
    rt.block_on(run_session(input, 7)).unwrap();
    assert_eq!(
        QUEUED.load(std::sync::atomic::Ordering::Relaxed),
        before + 1
    );
}
