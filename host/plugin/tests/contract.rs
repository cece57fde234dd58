//! Contract 0.2, capability by capability, against the `probe` test plugin (and the
//! `hostile` and `old-contract` ones): the part tree, `replace-part`, edits composing across
//! steps, queue id and metadata, key-value with TTL, counters, scans and quotas, read-only
//! data, the blob store, events, per-recipient rendering, the durable `queued` stage, the
//! `event` stage, RCPT verdicts, the envelope capability and the version check.

use sluice_core::{
    Envelope, Event, EventKind, EventOutcome, MessageRef, Pipelines, Recipient, SessionInfo,
    Verdict,
};
use sluice_plugin::step::{CollectedEvents, Services};
use sluice_plugin::{Runtime, WasmPipeline};
use sluice_test_plugins::{HOSTILE, OLD_CONTRACT, PROBE, Plugin};
use std::sync::Arc;

fn step(name: &str, p: Plugin, extra: &str, config: &str) -> String {
    format!(
        "[[pipeline.step]]\nname = \"{name}\"\nplugin = \"{}\"\nsha256 = \"{}\"\n{extra}\n[pipeline.step.config]\n{config}\n",
        p.path, p.sha256
    )
}

fn probe(name: &str, mode: &str, extra: &str) -> String {
    step(name, PROBE, extra, &format!("mode = \"{mode}\""))
}

struct Loaded {
    _dir: tempfile::TempDir,
    pipeline: Arc<WasmPipeline>,
    services: Services,
    events: Arc<CollectedEvents>,
}

async fn try_load(chain_head: &str, body: &str) -> (tempfile::TempDir, Result<Loaded, String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        format!("[[pipeline]]\nname = \"test\"\n{chain_head}\n{body}"),
    )
    .unwrap();
    let (services, events) = Services::in_memory();
    let r = WasmPipeline::load(Runtime::new(None).unwrap(), &path, Some(services.clone())).await;
    let dir2 = tempfile::tempdir().unwrap();
    match r {
        Ok(pipeline) => (
            dir2,
            Ok(Loaded {
                _dir: dir,
                pipeline,
                services,
                events,
            }),
        ),
        Err(problems) => (
            dir2,
            Err(problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")),
        ),
    }
}

async fn load(body: &str) -> Loaded {
    load_with("", body).await
}

async fn load_with(head: &str, body: &str) -> Loaded {
    try_load(head, body)
        .await
        .1
        .unwrap_or_else(|e| panic!("{e}"))
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

fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: "a@example.com".into(),
        recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        ..Envelope::default()
    }
}

const MULTIPART: &str = concat!(
    "From: a@example.com\r\nTo: b@example.net\r\nSubject: =?utf-8?B?aMOpbGxv?=\r\n",
    "Message-ID: <m1@example.com>\r\nMIME-Version: 1.0\r\n",
    "Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n",
    "--b\r\nContent-Type: text/plain\r\n\r\nhello text\r\n",
    "--b\r\nContent-Type: text/html\r\n\r\n<p>hello <a href=\"https://x.example/{{rcpt}}\">you</a></p>\r\n",
    "--b--\r\n"
);

/// A header's value, unfolded and decoded.
fn header(msg: &[u8], name: &str) -> Option<String> {
    let m = mail_parser::MessageParser::default().parse(msg)?;
    m.header_raw(name).map(sluice_plugin::message::decode_value)
}

async fn data(l: &Loaded, rcpts: &[&str], msg: &str) -> (Verdict, Vec<u8>, Envelope) {
    let mut env = envelope(rcpts);
    let mut m = msg.as_bytes().to_vec();
    let v = l
        .pipeline
        .current()
        .data("Q42", &session(), &mut env, &mut m)
        .await;
    (v, m, env)
}

#[tokio::test]
async fn part_tree_replace_part_queue_id_and_metadata() {
    let l = load(&step(
        "parts",
        PROBE,
        "",
        "mode = \"parts\"\nvalue = \"broadcast\"",
    ))
    .await;
    let (v, msg, env) = data(&l, &["b@example.net"], MULTIPART).await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        header(&msg, "X-Parts").as_deref(),
        Some("0:-:multipart/alternative 1:0:text/plain 2:0:text/html")
    );
    assert_eq!(header(&msg, "X-Queue-Id").as_deref(), Some("Q42"));
    assert_eq!(env.meta("stream"), Some("broadcast"));
    let m = mail_parser::MessageParser::default().parse(&msg).unwrap();
    assert_eq!(
        m.body_html(0).unwrap().trim(),
        "<P>HELLO <A HREF=\"HTTPS://X.EXAMPLE/{{RCPT}}\">YOU</A></P>"
    );
    assert_eq!(m.body_text(0).unwrap().trim(), "hello text");
    assert_eq!(m.parts.len(), 3, "the part tree is unchanged");
}

#[tokio::test]
async fn a_later_step_sees_what_an_earlier_step_did() {
    let l = load(&format!(
        "{}{}",
        step("edit", HOSTILE, "", "mode = \"edit\""),
        probe("compose", "compose", "")
    ))
    .await;
    let (_, msg, _) = data(
        &l,
        &["b@example.net"],
        "Subject: s\r\nContent-Type: text/plain\r\n\r\noriginal\r\n",
    )
    .await;
    let saw = header(&msg, "X-Saw").unwrap();
    assert!(
        saw.starts_with("yes;rewritten ✓ ("),
        "the second step must see the first one's edits, saw {saw:?}"
    );
}

#[tokio::test]
async fn key_value_ttl_counters_batches_scans_and_quotas() {
    let l = load(&probe(
        "kv",
        "kv",
        "[pipeline.step.capabilities]\nkv = \"probe\"\nkv_limits = { max_value_bytes = 1024 }",
    ))
    .await;
    let (_, msg, _) = data(&l, &["b@example.net"], MULTIPART).await;
    assert_eq!(
        header(&msg, "X-Kv").as_deref(),
        Some(
            "set=true incr=Some(5) incr=Some(3) many=one+- scan=a/1+a/2+a/3 more=false deleted=Some(true) big=quota"
        )
    );
    // The TTL reached the store: a/2 expires, a/3 does not.
    assert!(l.services.kv.get("probe", "a/2").unwrap().is_some());
    let page = l.services.kv.scan("probe", "a/", None, 10).unwrap();
    assert_eq!(page.entries.len(), 2);
}

#[tokio::test]
async fn read_only_data_is_loaded_once_checked_and_read_in_slices() {
    let dir = tempfile::tempdir().unwrap();
    let model: Vec<u8> = b"MODL"
        .iter()
        .copied()
        .chain((0..(1 << 20)).map(|i: u32| (i % 251) as u8))
        .collect();
    let path = dir.path().join("model.bin");
    std::fs::write(&path, &model).unwrap();
    let sha = sha256(&model);
    let extra = format!(
        "[pipeline.step.data.model]\npath = \"{}\"\nsha256 = \"{sha}\"",
        path.display()
    );
    let l = load(&step("data", PROBE, &extra, "mode = \"data\"\ntimes = 100")).await;
    let (_, msg, _) = data(&l, &["b@example.net"], MULTIPART).await;
    let size = model.len() as u64;
    let expected: u64 = (0..100u64)
        .map(|i| (i * 7919 * 8) % size)
        .flat_map(|o| model[o as usize..(o as usize + 8).min(model.len())].to_vec())
        .map(u64::from)
        .sum();
    assert_eq!(
        header(&msg, "X-Data"),
        Some(format!("{size} {expected} MODL"))
    );
    // Slots that do not fit the 16 MiB cap whole are left out (this used to panic the host).
    let l = load(&step(
        "data",
        PROBE,
        &extra,
        "mode = \"data\"\nvalue = \"huge\"",
    ))
    .await;
    let (v, msg, _) = data(&l, &["b@example.net"], MULTIPART).await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(header(&msg, "X-Data-Huge").as_deref(), Some("16777215"));
    // A data file whose digest differs is refused at load, naming the file.
    let bad = extra.replace(&sha, &"0".repeat(64));
    let (_d, r) = try_load("", &step("data", PROBE, &bad, "mode = \"data\"")).await;
    let err = r.err().expect("refused");
    assert!(
        err.contains("model.bin has sha256") && err.contains("data"),
        "{err}"
    );
    // A step without the data entry is denied.
    let l = load(&probe("data", "data", "")).await;
    let (_, msg, _) = data(&l, &["b@example.net"], MULTIPART).await;
    let denied = header(&msg, "X-Data").unwrap();
    assert!(
        denied.contains("Denied") && denied.contains("data `model`"),
        "{denied}"
    );
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn the_blob_store_keeps_the_raw_message_without_the_guest_copying_it() {
    let l = load(&probe(
        "archive",
        "blob",
        "[pipeline.step.capabilities]\nblobs = \"archive\"",
    ))
    .await;
    let (_, msg, _) = data(&l, &["b@example.net"], MULTIPART).await;
    let id = header(&msg, "X-Blob").unwrap();
    let (meta, body) = l
        .services
        .blobs
        .get("archive", &id)
        .unwrap()
        .expect("stored");
    assert_eq!(
        body,
        MULTIPART.as_bytes(),
        "the raw message as the step saw it"
    );
    let attr = |k: &str| {
        meta.attributes
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    // The host records the message's facts; the step adds its own attributes.
    assert_eq!(attr("subject"), ["héllo"], "decoded by the host");
    assert_eq!(attr("probe-subject"), ["héllo"]);
    assert_eq!(attr("recipient"), ["b@example.net"]);
    assert_eq!(attr("size"), [MULTIPART.len().to_string()]);
    assert_eq!(attr("queue-id").len(), 1);
    assert_eq!(meta.expires - meta.created, 45 * 86400);
    // Not granted: denied.
    let l = load(&probe("archive", "blob", "")).await;
    let (_, msg, _) = data(&l, &["b@example.net"], MULTIPART).await;
    let denied = header(&msg, "X-Blob").unwrap();
    assert!(
        denied.contains("Denied") && denied.contains("blobs"),
        "{denied}"
    );
}

#[tokio::test]
async fn emitted_events_carry_the_message_facts() {
    let l = load(&step(
        "emit",
        PROBE,
        "[pipeline.step.capabilities]\nevents = true",
        "mode = \"emit\"\nvalue = \"hi\"",
    ))
    .await;
    let (_, msg, _) = data(&l, &["b@example.net"], MULTIPART).await;
    let events = l.events.take();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(header(&msg, "X-Event").as_deref(), Some(e.id.as_str()));
    assert_eq!(e.kind, EventKind::Other("probe".into()));
    assert_eq!(e.queue_id.as_deref(), Some("Q42"));
    assert_eq!(e.message_id.as_deref(), Some("m1@example.com"));
    assert_eq!(e.sender, "a@example.com");
    assert_eq!(e.listener.as_deref(), Some("mx"));
    assert_eq!(e.authenticated, Some(false));
    assert_eq!(e.attributes, vec![("note".to_string(), "hi".to_string())]);
}

fn message_ref<'a>(
    env: &'a Envelope,
    body: &'a Arc<Vec<u8>>,
    s: &'a SessionInfo,
) -> MessageRef<'a> {
    MessageRef {
        id: "Q7",
        session: Some(s),
        envelope: env,
        body,
    }
}

#[tokio::test]
async fn render_makes_one_variant_per_distinct_result() {
    let rcpts = ["x@example.net", "y@example.net", "z@example.org"];
    let env = envelope(&rcpts);
    let body = Arc::new(MULTIPART.as_bytes().to_vec());
    let s = session();
    let recipients: Vec<Recipient> = env.recipients.clone();

    let l = load(&probe("track", "render", "stages = [\"render\"]")).await;
    let p = l.pipeline.current();
    let r = p
        .render(message_ref(&env, &body, &s), &recipients)
        .await
        .expect("the chain renders");
    assert!(r.failed.is_empty());
    assert_eq!(r.variants.len(), 3, "a token per recipient");
    for v in &r.variants {
        assert_eq!(v.recipients.len(), 1);
        let rcpt = rcpts[v.recipients[0]];
        let m = mail_parser::MessageParser::default()
            .parse(&v.body[..])
            .unwrap();
        assert!(
            m.body_html(0)
                .unwrap()
                .contains(&format!("https://x.example/{rcpt}"))
        );
        assert!(header(&v.body, "X-Rcpt-Token").is_some());
        assert_eq!(m.parts.len(), 3);
    }

    let l = load(&step(
        "same",
        PROBE,
        "stages = [\"render\"]",
        "mode = \"render\"\nvalue = \"same\"",
    ))
    .await;
    let p = l.pipeline.current();
    let r = p
        .render(message_ref(&env, &body, &s), &recipients)
        .await
        .unwrap();
    assert_eq!(
        r.variants.len(),
        1,
        "identical results share one transaction"
    );
    assert_eq!(r.variants[0].recipients, vec![0, 1, 2]);
    assert_eq!(
        header(&r.variants[0].body, "X-Rendered").as_deref(),
        Some("same for all")
    );

    // No render step: the host sends the body as queued.
    let l = load(&probe("parts", "parts", "stages = [\"data\"]")).await;
    assert!(
        l.pipeline
            .current()
            .render(message_ref(&env, &body, &s), &recipients)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn the_queued_stage_defers_until_it_passes_and_keeps_metadata() {
    let l = load(&step(
        "forward",
        PROBE,
        "stages = [\"queued\"]\n[pipeline.step.capabilities]\nkv = \"fwd\"\nevents = true",
        "mode = \"queued\"\ntimes = 3",
    ))
    .await;
    let mut env = envelope(&["b@example.net"]);
    env.set_meta("tenant", "t1");
    let body = Arc::new(MULTIPART.as_bytes().to_vec());
    let s = session();
    let p = l.pipeline.current();
    assert!(p.wants_queued(Some(&s), &env));
    let mut meta = Vec::new();
    for _ in 0..2 {
        let v = p.queued(message_ref(&env, &body, &s), &mut meta).await;
        assert!(
            matches!(v, Verdict::Defer(ref r) if r.code == 451 && r.enhanced == "4.4.1"),
            "{v:?}"
        );
    }
    let v = p.queued(message_ref(&env, &body, &s), &mut meta).await;
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        meta,
        vec![
            ("tenant".to_string(), "t1".to_string()),
            ("forwarded".to_string(), "3".to_string())
        ]
    );
    let events = l.events.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Other("forwarded".into()));
    assert_eq!(events[0].queue_id.as_deref(), Some("Q7"));
    assert!(
        events[0]
            .attributes
            .contains(&("tenant".into(), "t1".into()))
    );
}

fn event(kind: EventKind, listener: Option<&str>) -> Event {
    let mut e = Event::new(kind, "a@example.com");
    e.recipient = Some("b@example.net".into());
    e.queue_id = Some("Q9".into());
    e.attributes = vec![("stream".into(), "outbound".into())];
    e.listener = listener.map(str::to_string);
    e.authenticated = listener.map(|_| true);
    e
}

#[tokio::test]
async fn event_steps_defer_until_they_acknowledge() {
    let l = load(&step(
        "hooks",
        PROBE,
        "stages = [\"event\"]\n[pipeline.step.capabilities]\nkv = \"hooks\"",
        "mode = \"events\"\ntimes = 2",
    ))
    .await;
    let p = l.pipeline.current();
    assert!(p.wants_events());
    let e = event(EventKind::Bounced, None);
    for _ in 0..2 {
        assert!(matches!(p.event(&e).await, EventOutcome::Retry(_)));
    }
    assert_eq!(p.event(&e).await, EventOutcome::Ack);
    let seen = l
        .services
        .kv
        .get("hooks", "seen/bounced/b@example.net")
        .unwrap()
        .expect("recorded");
    assert_eq!(
        String::from_utf8(seen).unwrap(),
        format!("{} 3 stream=outbound", e.id)
    );
}

#[tokio::test]
async fn event_chains_match_on_the_session_the_message_came_from() {
    let l = load_with(
        "listeners = [\"submission\"]\nauthenticated = true",
        &probe(
            "hooks",
            "events",
            "stages = [\"event\"]\n[pipeline.step.capabilities]\nkv = \"hooks\"",
        ),
    )
    .await;
    let snap = l.pipeline.snapshot();
    assert!(
        snap.event_chain(&event(EventKind::Delivered, Some("submission")))
            .is_some()
    );
    assert!(
        snap.event_chain(&event(EventKind::Delivered, Some("mx")))
            .is_none()
    );
    assert!(
        snap.event_chain(&event(EventKind::Opened, None)).is_none(),
        "a chain for authenticated sessions does not see events without a session"
    );
}

#[tokio::test]
async fn rcpt_verdicts_hold_or_drop_one_recipient() {
    let l = load(&probe("gate", "rcpt", "stages = [\"rcpt\"]")).await;
    let p = l.pipeline.current();
    let env = envelope(&[]);
    let v = |r: &str| {
        let p = p.clone();
        let env = env.clone();
        let r = Recipient::new(r);
        async move { p.rcpt(&session(), &env, &r).await }
    };
    assert_eq!(
        v("hold@example.net").await,
        Verdict::Quarantine("held by probe".into())
    );
    assert_eq!(v("drop@example.net").await, Verdict::Discard);
    assert_eq!(v("ok@example.net").await, Verdict::Continue);
}

#[tokio::test]
async fn envelope_edits_need_the_capability() {
    let cfg = "mode = \"envelope\"\nvalue = \"bcc@example.org\"";
    let l = load(&step("bcc", PROBE, "on_error = \"tempfail\"", cfg)).await;
    let (v, _, env) = data(&l, &["b@example.net"], MULTIPART).await;
    assert!(matches!(v, Verdict::Defer(ref r) if r.code == 451), "{v:?}");
    assert_eq!(env.recipients.len(), 1);
    let l = load(&step(
        "bcc",
        PROBE,
        "[pipeline.step.capabilities]\nenvelope = true",
        cfg,
    ))
    .await;
    let (v, _, env) = data(&l, &["b@example.net"], MULTIPART).await;
    assert_eq!(v, Verdict::Continue);
    let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["b@example.net", "bcc@example.org"]);
}

#[tokio::test]
async fn a_component_built_for_another_contract_version_is_refused() {
    let (_d, r) = try_load("", &step("old", OLD_CONTRACT, "", "")).await;
    let err = r.err().expect("refused");
    assert!(
        err.contains("sluice:plugin@0.1.0") && err.contains("sluice:plugin@0.2.0"),
        "{err}"
    );
    assert!(
        err.contains("policy.toml:"),
        "names the file and line: {err}"
    );
}

#[tokio::test]
async fn policy_test_cases_run_before_a_policy_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("winner.eml"),
        "From: a@example.com\nSubject: you are a winner\nX-Old: 1\n\nhello\n",
    )
    .unwrap();
    let policy = |score: f64| {
        format!(
            "[[pipeline]]\nname = \"p\"\n[pipeline.thresholds]\nquarantine = 5.0\n{}\n\n{}",
            step(
                "score",
                HOSTILE,
                "",
                &format!("mode = \"score\"\nscore = {score}")
            ),
            "[[test]]\nname = \"a winner is quarantined\"\nmessage = \"winner.eml\"\nexpect = \"quarantine\"\nscore_min = 5.0\n\n\
             [[test]]\nname = \"nothing is removed\"\nmessage = \"winner.eml\"\nfrom = \"x@example.org\"\nto = [\"y@example.net\"]\nexpect = \"quarantine\"\nheaders_added = [\"X-Nope\"]\n"
        )
    };
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy(6.0)).unwrap();
    let err = WasmPipeline::load(Runtime::new(None).unwrap(), &path, None)
        .await
        .err()
        .expect("the second case fails");
    assert_eq!(err.len(), 1, "{err:?}");
    let p = err[0].to_string();
    assert!(
        p.contains("policy.toml:")
            && p.contains("test[1]")
            && p.contains("test `nothing is removed` failed: header X-Nope was not added"),
        "{p}"
    );
    // Without the failing case the policy loads; a change that breaks the first case is
    // then refused at reload, and the running policy stays.
    let good = policy(6.0);
    let good = &good[..good.find("\n[[test]]\nname = \"nothing").unwrap()];
    std::fs::write(&path, good).unwrap();
    let pipeline = WasmPipeline::load(Runtime::new(None).unwrap(), &path, None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let worse = policy(1.0);
    std::fs::write(
        &path,
        &worse[..worse.find("\n[[test]]\nname = \"nothing").unwrap()],
    )
    .unwrap();
    let refused = pipeline.reload().await.expect_err("refused");
    assert!(
        refused[0]
            .to_string()
            .contains("expected quarantine, got accept"),
        "{:?}",
        refused
    );
    assert!(
        refused[0]
            .to_string()
            .contains("score 1.00 outside [5, +inf]"),
        "{refused:?}"
    );
    let (v, _, _) = {
        let mut env = envelope(&["b@example.net"]);
        let mut m = b"Subject: s\r\n\r\nx\r\n".to_vec();
        let v = pipeline
            .current()
            .data("Q1", &session(), &mut env, &mut m)
            .await;
        (v, m, env)
    };
    assert!(
        matches!(v, Verdict::Quarantine(_)),
        "the running policy stays: {v:?}"
    );
}
