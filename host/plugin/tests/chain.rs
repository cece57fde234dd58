//! The plugin runtime against real components built from `plugins/`: verdicts, edits,
//! thresholds, containment of hostile plugins, policy errors and hot reload.

use sluice_core::{Envelope, Pipelines, Recipient, SessionInfo, Verdict};
use sluice_plugin::{Runtime, WasmPipeline};
use sluice_test_plugins::{HOSTILE, NOOP, PROBE, Plugin, TAG};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn step(name: &str, p: Plugin, extra: &str) -> String {
    format!(
        "[[pipeline.step]]\nname = \"{name}\"\nplugin = \"{}\"\nsha256 = \"{}\"\n{extra}\n",
        p.path, p.sha256
    )
}

fn hostile(name: &str, mode: &str, extra: &str) -> String {
    step(
        name,
        HOSTILE,
        &format!("{extra}\n[pipeline.step.config]\nmode = \"{mode}\"\n"),
    )
}

fn write_policy(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, format!("[[pipeline]]\nname = \"test\"\n{body}")).unwrap();
    path
}

fn runtime() -> Arc<Runtime> {
    Runtime::new(None).unwrap()
}

fn session() -> SessionInfo {
    SessionInfo {
        listener: "mx".into(),
        role: "mx".into(),
        client_ip: "127.0.0.1".parse().unwrap(),
        helo: Some("client.test".into()),
        tls: None,
        auth_user: None,
    }
}

fn envelope() -> Envelope {
    Envelope {
        sender: "a@example.com".into(),
        recipients: vec![Recipient::new("b@example.net")],
        ..Envelope::default()
    }
}

const MESSAGE: &str = "From: a@example.com\r\nTo: b@example.net\r\nSubject: Winner of free money\r\nContent-Type: text/plain\r\n\r\nhello\r\n";

async fn data(p: &WasmPipeline) -> (Verdict, Vec<u8>, Envelope) {
    let mut env = envelope();
    let mut msg = MESSAGE.as_bytes().to_vec();
    let v = p.current().data("T1", &session(), &mut env, &mut msg).await;
    (v, msg, env)
}

async fn load(body: &str) -> (tempfile::TempDir, Arc<WasmPipeline>) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), body);
    let p = WasmPipeline::load(runtime(), &path, None)
        .await
        .unwrap_or_else(|e| {
            panic!("{e:?}");
        });
    (dir, p)
}

/// Instances the pipeline `test`'s step `step` has created so far.
fn instances_made(step: &str) -> u64 {
    sluice_metrics::global()
        .plugin_instances
        .with_label_values(&["test", step])
        .get()
}

fn header(msg: &[u8], name: &str) -> Option<String> {
    let m = mail_parser::MessageParser::default().parse(msg)?;
    m.header_raw(name).map(|v| v.trim().to_string())
}

#[tokio::test]
async fn noop_and_tag_steps_with_config_edits_and_thresholds() {
    let body = format!(
        "[pipeline.thresholds]\nadd_header = 2.0\nquarantine = 5.0\nreject = 100.0\n{}{}",
        step("noop", NOOP, ""),
        step(
            "tag",
            TAG,
            "[pipeline.step.config]\nheader = \"X-Processed-By\"\nvalue = \"sluice\"\nwords = { winner = 3.0, \"free money\" = 2.5 }\n"
        )
    );
    let (_d, p) = load(&body).await;
    let (v, msg, _) = data(&p).await;
    assert_eq!(
        v,
        Verdict::Quarantine("score 5.50: SUBJECT_FREE_MONEY=2.50, SUBJECT_WINNER=3.00".into())
    );
    assert_eq!(header(&msg, "X-Processed-By").as_deref(), Some("sluice"));
    assert_eq!(header(&msg, "X-Sluice-Score").as_deref(), Some("5.50"));
    let parsed = mail_parser::MessageParser::default()
        .parse(&msg[..])
        .unwrap();
    assert_eq!(parsed.body_text(0).unwrap().trim(), "hello");
}

#[tokio::test]
async fn edits_produce_valid_mime_and_envelope_changes() {
    let (_d, p) = load(&hostile("edit", "edit", "")).await;
    let (v, msg, _) = data(&p).await;
    assert_eq!(v, Verdict::Continue);
    let parsed = mail_parser::MessageParser::default()
        .parse(&msg[..])
        .unwrap();
    assert!(
        parsed.body_text(0).unwrap().starts_with("rewritten ✓"),
        "{}",
        String::from_utf8_lossy(&msg)
    );
    assert_eq!(parsed.subject(), Some("Winner of free money"));
    assert_eq!(header(&msg, "X-Edited").as_deref(), Some("yes"));
    assert_eq!(
        header(&msg, "Content-Transfer-Encoding").as_deref(),
        Some("quoted-printable")
    );
}

#[tokio::test]
async fn hostile_plugins_are_contained_as_their_policy_says() {
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        fn(&Verdict) -> bool,
    );
    let cases: &[Case] = &[
        (
            "loop",
            "on_error = \"tempfail\"\ntimeout_ms = 100",
            "timeout -> 451",
            |v| matches!(v, Verdict::Defer(r) if r.code == 451 && r.enhanced == "4.3.0"),
        ),
        (
            "memory",
            "on_error = \"reject\"\nmemory_mb = 16",
            "memory -> 554",
            |v| matches!(v, Verdict::Reject(r) if r.code == 554 && r.enhanced == "5.7.0"),
        ),
        ("trap", "on_error = \"skip\"", "trap -> skipped", |v| {
            *v == Verdict::Continue
        }),
        (
            "giant",
            "on_error = \"tempfail\"\nmax_output_kb = 64",
            "giant output -> 451",
            |v| matches!(v, Verdict::Defer(r) if r.code == 451),
        ),
        (
            "reject",
            "",
            "plain reject",
            |v| matches!(v, Verdict::Reject(r) if r.code == 550 && r.enhanced == "5.7.1"),
        ),
    ];
    for (mode, extra, what, ok) in cases {
        let (_d, p) = load(&hostile(mode, mode, extra)).await;
        let start = Instant::now();
        let (v, _, _) = data(&p).await;
        assert!(ok(&v), "{what}: got {v:?}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            start.elapsed()
        );
    }
}

/// On the server's runtime (several workers), as `sluice serve` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_messages_keep_flowing_while_a_plugin_spins() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let looping = write_policy(dir.path(), &hostile("loop", "loop", "timeout_ms = 1000"));
    let spin = WasmPipeline::load(rt.clone(), &looping, None)
        .await
        .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let fine = write_policy(dir2.path(), &step("noop", NOOP, ""));
    let quick = WasmPipeline::load(rt, &fine, None).await.unwrap();
    let spinning = tokio::spawn(async move { data(&spin).await.0 });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(data(&quick).await.0, Verdict::Continue);
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "20 messages took {:?} beside a spinning plugin",
        start.elapsed()
    );
    assert!(matches!(spinning.await.unwrap(), Verdict::Defer(_)));
}

#[tokio::test]
async fn capabilities_are_denied_unless_granted_and_no_state_survives() {
    let (_d, p) = load(&hostile("kv", "kv", "")).await;
    let (_, msg, _) = data(&p).await;
    let kv = header(&msg, "X-Kv").unwrap();
    assert!(kv.contains("Denied(") && kv.contains("not granted"), "{kv}");

    let (_d, p) = load(&hostile(
        "kv",
        "kv",
        "[pipeline.step.capabilities]\nkv = \"ns\"",
    ))
    .await;
    let (_, msg, _) = data(&p).await;
    assert_eq!(header(&msg, "X-Kv").as_deref(), Some("granted"));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let body = step(
        "tcp",
        HOSTILE,
        &format!("[pipeline.step.config]\nmode = \"tcp\"\ntarget = \"{target}\"\n"),
    );
    let (_d, p) = load(&body).await;
    let (_, msg, _) = data(&p).await;
    let tcp = header(&msg, "X-Tcp").unwrap();
    assert!(tcp.starts_with("refused"), "{tcp}");
    assert!(listener.accept().is_err(), "the plugin reached the network");

    // Granted: exactly that address, nothing else.
    let body = step(
        "tcp",
        HOSTILE,
        &format!(
            "[pipeline.step.capabilities]\ntcp = [\"{target}\"]\n[pipeline.step.config]\nmode = \"tcp\"\ntarget = \"{target}\"\n"
        ),
    );
    let (_d, p) = load(&body).await;
    let (_, msg, _) = data(&p).await;
    assert_eq!(header(&msg, "X-Tcp").as_deref(), Some("connected"));
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let body = step(
        "tcp",
        HOSTILE,
        &format!(
            "[pipeline.step.capabilities]\ntcp = [\"{target}\"]\n[pipeline.step.config]\nmode = \"tcp\"\ntarget = \"{}\"\n",
            other.local_addr().unwrap()
        ),
    );
    let (_d, p) = load(&body).await;
    let (_, msg, _) = data(&p).await;
    assert!(header(&msg, "X-Tcp").unwrap().starts_with("refused"));

    let (_d, p) = load(&hostile("state", "state", "")).await;
    for _ in 0..3 {
        let (_, msg, _) = data(&p).await;
        assert_eq!(
            header(&msg, "X-Calls").as_deref(),
            Some("1"),
            "state leaked between messages"
        );
    }
}

#[tokio::test]
async fn bad_policies_are_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let wrong_sha = format!(
        "[[pipeline.step]]\nname = \"x\"\nplugin = \"{}\"\nsha256 = \"{}\"\n",
        NOOP.path,
        "0".repeat(64)
    );
    let bad_config = step(
        "tag",
        TAG,
        "[pipeline.step.config]\nheader = \"Bad Header\"\nvalue = \"v\"\n",
    );
    let unknown_mode = hostile("h", "sideways", "on_error = \"explode\"");
    let path = write_policy(
        dir.path(),
        &format!("{wrong_sha}{bad_config}{unknown_mode}"),
    );
    let problems = match WasmPipeline::load(runtime(), &path, None).await {
        Ok(_) => panic!("bad policy accepted"),
        Err(p) => p,
    };
    let got: Vec<(usize, String)> = problems.iter().map(|p| (p.line, p.key.clone())).collect();
    assert_eq!(
        got,
        vec![
            (6, "pipeline[0].step[0].sha256".to_string()),
            (11, "pipeline[0].step[1].config".to_string()),
            (19, "pipeline[0].step[2].on_error".to_string()),
            (20, "pipeline[0].step[2].config".to_string()),
        ],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("sha256"), "{}", problems[0]);
    assert!(
        problems[1]
            .message
            .contains("`header` must be a header name"),
        "{}",
        problems[1]
    );
    assert!(
        problems[3].message.contains("unknown mode `sideways`"),
        "{}",
        problems[3]
    );
    assert!(
        problems[0]
            .to_string()
            .starts_with(&format!("{}:6:", path.display()))
    );
}

#[tokio::test]
async fn reload_swaps_atomically_and_refuses_a_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), &hostile("r", "reject", ""));
    let p = WasmPipeline::load(runtime(), &path, None).await.unwrap();
    let before = p.current();
    assert!(matches!(data(&p).await.0, Verdict::Reject(_)));

    std::fs::write(&path, "[[pipeline]]\nname = \"broken\"\nnot_a_key = 1\n").unwrap();
    assert!(p.reload().await.is_err());
    assert!(
        matches!(data(&p).await.0, Verdict::Reject(_)),
        "the running policy stays"
    );

    write_policy(dir.path(), &step("noop", NOOP, ""));
    assert_eq!(p.reload().await.unwrap(), 1);
    assert_eq!(data(&p).await.0, Verdict::Continue);
    // A session that started before the reload keeps its chain.
    let mut env = envelope();
    let mut msg = MESSAGE.as_bytes().to_vec();
    assert!(matches!(
        before.data("T1", &session(), &mut env, &mut msg).await,
        Verdict::Reject(_)
    ));
}

#[tokio::test]
async fn a_plugin_written_in_python_runs_in_the_chain() {
    let body = step(
        "py",
        sluice_test_plugins::PY_SPAM_WORDS,
        "memory_mb = 200\n[pipeline.step.config]\ntag = \"X-Checked-By\"\nwords = { money = 2.5, winner = 1.5, absent = 9.0 }\n",
    );
    let (_d, p) = load(&format!("[pipeline.thresholds]\nadd_header = 1.0\n{body}")).await;
    let (v, msg, _) = data(&p).await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(header(&msg, "X-Checked-By").as_deref(), Some("python"));
    assert_eq!(
        header(&msg, "X-Sluice-Symbols").as_deref(),
        Some("PY_WORD_MONEY=2.50, PY_WORD_WINNER=1.50")
    );
    // In warm instances (as the shipped policy runs it) one instance serves every message:
    // the interpreter leaves no host resource open between calls.
    let warm = step(
        "py-warm",
        sluice_test_plugins::PY_SPAM_WORDS,
        "memory_mb = 200\ninstances = \"warm\"\n[pipeline.step.config]\ntag = \"X-Checked-By\"\nwords = { money = 2.5 }\n",
    );
    let (_d, p) = load(&warm).await;
    for _ in 0..3 {
        let (_, msg, _) = data(&p).await;
        assert_eq!(header(&msg, "X-Checked-By").as_deref(), Some("python"));
    }
    let created = instances_made("py-warm");
    assert_eq!(
        created, 1,
        "a warm Python step made {created} instances for 3 messages"
    );
    // Its configure check reaches the operator too.
    let dir = tempfile::tempdir().unwrap();
    let bad = step(
        "py",
        sluice_test_plugins::PY_SPAM_WORDS,
        "[pipeline.step.config]\nwords = { x = 1 }\n",
    );
    let path = write_policy(dir.path(), &bad);
    let problems = match WasmPipeline::load(runtime(), &path, None).await {
        Ok(_) => panic!("accepted a config without `tag`"),
        Err(p) => p,
    };
    assert!(problems[0].message.contains("`tag`"), "{}", problems[0]);
}

#[tokio::test]
async fn chains_are_chosen_by_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let text = format!(
        "[[pipeline]]\nname = \"to-a\"\nrecipient_domains = [\"a.test\"]\n{}\n\
         [[pipeline]]\nname = \"submitted\"\nauthenticated = true\nlisteners = [\"submission\"]\n{}\n\
         [[pipeline]]\nname = \"rest\"\n{}",
        hostile("r", "reject", ""),
        step(
            "tag",
            TAG,
            "[pipeline.step.config]\nheader = \"X-Chain\"\nvalue = \"submitted\"\n"
        ),
        step(
            "tag",
            TAG,
            "[pipeline.step.config]\nheader = \"X-Chain\"\nvalue = \"rest\"\n"
        ),
    );
    std::fs::write(&path, text).unwrap();
    let p = WasmPipeline::load(runtime(), &path, None).await.unwrap();
    let run = |rcpt: &str, auth: bool| {
        let p = p.clone();
        let rcpt = rcpt.to_string();
        async move {
            let mut s = session();
            if auth {
                s.listener = "submission".into();
                s.auth_user = Some("app".into());
            }
            let mut env = Envelope {
                sender: "a@example.com".into(),
                recipients: vec![Recipient::new(rcpt)],
                ..Envelope::default()
            };
            let mut msg = MESSAGE.as_bytes().to_vec();
            let v = p.current().data("T1", &s, &mut env, &mut msg).await;
            (v, header(&msg, "X-Chain"))
        }
    };
    assert!(matches!(run("x@a.test", false).await.0, Verdict::Reject(_)));
    assert_eq!(run("x@b.test", true).await.1.as_deref(), Some("submitted"));
    assert_eq!(run("x@b.test", false).await.1.as_deref(), Some("rest"));
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), &step("noop", NOOP, ""));
    let count = || std::fs::read_dir(cache.path()).unwrap().count();
    WasmPipeline::load(Runtime::new(Some(cache.path())).unwrap(), &path, None)
        .await
        .unwrap();
    assert_eq!(count(), 1, "one compiled component in the cache");
    // A new engine (a restart) loads it from there; a damaged file is compiled again.
    WasmPipeline::load(Runtime::new(Some(cache.path())).unwrap(), &path, None)
        .await
        .unwrap();
    assert_eq!(count(), 1);
    let file = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&file, b"garbage").unwrap();
    let p = WasmPipeline::load(Runtime::new(Some(cache.path())).unwrap(), &path, None)
        .await
        .unwrap();
    assert_eq!(data(&p).await.0, Verdict::Continue);
    assert!(
        std::fs::metadata(&file).unwrap().len() > 1000,
        "recompiled into the cache"
    );
}

/// A minimal HTTP server on loopback: answers 204 and counts requests.
fn http_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (origin, hits)
}

#[tokio::test]
async fn http_only_to_granted_origins() {
    let (origin, hits) = http_server();
    let target = format!("{origin}/check");
    let policy = |grant: &str| {
        step(
            "http",
            HOSTILE,
            &format!(
                "[pipeline.step.capabilities]\nhttp = [{grant}]\n[pipeline.step.config]\nmode = \"http\"\ntarget = \"{target}\"\n"
            ),
        )
    };
    let (_d, p) = load(&policy("")).await;
    let (_, msg, _) = data(&p).await;
    let h = header(&msg, "X-Http").unwrap();
    assert!(
        h.starts_with("refused") && h.contains("HttpRequestDenied"),
        "{h}"
    );

    let (_d, p) = load(&policy("\"http://127.0.0.1:1\"")).await;
    let (_, msg, _) = data(&p).await;
    assert!(header(&msg, "X-Http").unwrap().starts_with("refused"));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a denied request went out"
    );

    let (_d, p) = load(&policy(&format!("\"{origin}\""))).await;
    let (_, msg, _) = data(&p).await;
    assert_eq!(header(&msg, "X-Http").as_deref(), Some("status 204"));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A grant by name that resolves to a loopback address is refused (DNS rebinding):
    // internal services are granted by IP literal.
    let by_name = origin.replace("127.0.0.1", "localhost");
    let target = format!("{by_name}/check");
    let (_d, p) = load(&step(
        "http",
        HOSTILE,
        &format!(
            "[pipeline.step.capabilities]\nhttp = [\"{by_name}\"]\n[pipeline.step.config]\nmode = \"http\"\ntarget = \"{target}\"\n"
        ),
    ))
    .await;
    let (_, msg, _) = data(&p).await;
    let h = header(&msg, "X-Http").unwrap();
    assert!(h.contains("HttpRequestDenied"), "{h}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing went out"
    );
}

/// Requests of later calls reuse the connection of earlier ones (a keep-alive server that
/// counts connections and requests).
#[tokio::test]
async fn http_connections_are_kept_alive_between_calls() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (connections.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut reader = BufReader::new(s);
                loop {
                    // Read one request head (the probe sends no body).
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    if w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (_d, p) = load(&step(
        "http",
        HOSTILE,
        &format!(
            "[pipeline.step.capabilities]\nhttp = [\"{origin}\"]\n[pipeline.step.config]\nmode = \"http\"\ntarget = \"{origin}/check\"\n"
        ),
    ))
    .await;
    for _ in 0..5 {
        let (_, msg, _) = data(&p).await;
        assert_eq!(header(&msg, "X-Http").as_deref(), Some("status 204"));
    }
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "each call opened its own connection"
    );
}

/// HTTPS through the pool: a receiver whose certificate comes from a private CA is reached
/// when the server trusts that CA (`[plugins] http_ca`), and refused when it does not.
#[tokio::test]
async fn https_to_a_receiver_signed_by_a_configured_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("https://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, h) = (acceptor.clone(), h.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = tls
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        dir.path(),
        &step(
            "http",
            HOSTILE,
            &format!(
                "[pipeline.step.capabilities]\nhttp = [\"{origin}\"]\n[pipeline.step.config]\nmode = \"http\"\ntarget = \"{origin}/check\"\n"
            ),
        ),
    );
    let load = |roots: Vec<Vec<u8>>| {
        let path = path.clone();
        async move {
            let (mut services, _) = sluice_plugin::step::Services::in_memory();
            services.http = sluice_plugin::http_client::HttpClient::with_roots(&roots).unwrap();
            WasmPipeline::load(runtime(), &path, Some(services))
                .await
                .unwrap_or_else(|e| panic!("{e:?}"))
        }
    };

    let untrusting = load(Vec::new()).await;
    let (_, msg, _) = data(&untrusting).await;
    let h = header(&msg, "X-Http").unwrap();
    assert!(h.starts_with("refused"), "{h}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a request went past TLS");

    let trusting = load(vec![ca.der().to_vec()]).await;
    let (_, msg, _) = data(&trusting).await;
    assert_eq!(header(&msg, "X-Http").as_deref(), Some("status 204"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_plugin_that_declares_itself_reusable_runs_warm_unless_the_policy_says_fresh() {
    // The probe declares `sluice:reusable` (and, in mode `reuse`, counts calls in a static
    // to show it); the hostile plugin declares nothing and stays fresh (test above).
    // The step's settings, then the probe's config beyond `mode = "reuse"`.
    let probe = |settings: &str, config: &str| {
        step(
            "p",
            PROBE,
            &format!("{settings}\n[pipeline.step.config]\nmode = \"reuse\"\n{config}\n"),
        )
    };
    let calls = |p: Arc<WasmPipeline>| async move {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (_, msg, _) = data(&p).await;
            seen.push(header(&msg, "X-Calls").unwrap());
        }
        seen
    };
    // (step settings, probe config, X-Calls of four messages, what it shows)
    for (settings, config, want, what) in [
        ("recycle_after = 3", "", "1 2 3 1", "declared: warm"),
        ("instances = \"fresh\"", "", "1 1 1 1", "forced fresh"),
        // An instance that grew by 20 MiB is dropped, not kept with that memory.
        ("", "times = 20", "1 1 1 1", "grown instances dropped"),
        ("", "times = 1", "1 2 3 4", "kept while under the bound"),
    ] {
        let (_d, p) = load(&probe(settings, config)).await;
        assert_eq!(calls(p).await.join(" "), want, "{what}");
    }
    // An instance that left a host resource open (the data file, never dropped) is not
    // kept: what it holds would outlive the call it was counted against.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.bin");
    std::fs::write(&model, b"MODL").unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"MODL"));
    let data_file = format!(
        "[pipeline.step.data.model]\npath = \"{}\"\nsha256 = \"{sha}\"",
        model.display()
    );
    let (_d, p) = load(&probe(&data_file, "value = \"leak\"")).await;
    assert_eq!(
        calls(p).await,
        ["1", "1", "1", "1"],
        "leaky instances dropped"
    );
    // An instance whose call failed, in the guest or in the host's check of its edits, is
    // not reused: the next call runs in a new instance, where it is the first call again
    // and fails the same way; a reused one would count 2 and succeed.
    for failure in ["trap", "bad-edit"] {
        let (_d, p) = load(&probe(
            "on_error = \"skip\"",
            &format!("value = \"{failure}\""),
        ))
        .await;
        for call in 0..3 {
            let (verdict, msg, _) = data(&p).await;
            assert_eq!(verdict, Verdict::Continue);
            assert_eq!(
                header(&msg, "X-Calls"),
                None,
                "{failure}: call {call} ran in the instance that failed"
            );
        }
    }
}

#[tokio::test]
async fn a_warm_instance_that_closed_its_sockets_is_reused_one_that_left_one_open_is_not() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    for (name, mode, said, want) in [
        ("tcp-warm", "tcp", "connected", 1),
        ("tcp-kept", "tcp-keep", "kept", 3),
    ] {
        let (_d, p) = load(&step(
            name,
            HOSTILE,
            &format!(
                "instances = \"warm\"\n[pipeline.step.capabilities]\ntcp = [\"{target}\"]\n[pipeline.step.config]\nmode = \"{mode}\"\ntarget = \"{target}\"\n"
            ),
        ))
        .await;
        for _ in 0..3 {
            let (_, msg, _) = data(&p).await;
            assert_eq!(header(&msg, "X-Tcp").as_deref(), Some(said));
        }
        let created = instances_made(name);
        assert_eq!(created, want, "{name}: {created} instances for 3 messages");
    }
}

#[tokio::test]
async fn warm_instances_are_reused_then_recycled() {
    let (_d, p) = load(&hostile(
        "state",
        "state",
        "instances = \"warm\"\nwarm_pool = 1\nrecycle_after = 3",
    ))
    .await;
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (_, msg, _) = data(&p).await;
        calls.push(header(&msg, "X-Calls").unwrap());
    }
    assert_eq!(calls, ["1", "2", "3", "1", "2"]);
    // A failed warm instance is not reused: a trapping step starts afresh each time.
    let (_d, p) = load(&hostile(
        "t",
        "trap",
        "instances = \"warm\"\non_error = \"skip\"",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(data(&p).await.0, Verdict::Continue);
    }
}
