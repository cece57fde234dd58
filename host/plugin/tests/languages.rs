//! The same `tag` plugin written in Rust (`plugins/examples/tag`), Python
//! (`plugins/python/tag`) and JavaScript (`plugins/js/tag`), built by the tests: each adds
//! the configured header, scores the same subject words, and refuses the same bad
//! configuration. This keeps `docs/plugins.md` honest.

use sluice_core::{Envelope, Pipelines, Recipient, SessionInfo, Verdict};
use sluice_plugin::{Runtime, WasmPipeline};
use sluice_test_plugins::{JS_TAG, PY_TAG, Plugin, TAG};

/// The step runs in warm instances, as heavy runtimes should (the Rust one declares it).
fn policy(lang: &str, p: Plugin, header: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"t-{lang}\"\n[pipeline.thresholds]\nadd_header = 0.5\n\
         [[pipeline.step]]\nname = \"tag\"\nplugin = \"{}\"\nsha256 = \"{}\"\nmemory_mb = 200\ntimeout_ms = 5000\ninstances = \"warm\"\n\
         [pipeline.step.config]\nheader = \"{header}\"\nvalue = \"sluice\"\nwords = {{ \"free money\" = 6.0, winner = 3.0, absent = 1.0 }}\n",
        p.path, p.sha256
    )
}

const MESSAGE: &str =
    "From: a@example.com\r\nSubject: You are a WINNER of free money\r\n\r\nhello\r\n";

#[tokio::test]
async fn the_tag_plugin_behaves_the_same_in_rust_python_and_javascript() {
    let runtime = Runtime::new(None).unwrap();
    let session = SessionInfo {
        listener: "mx".into(),
        role: "mx".into(),
        client_ip: "127.0.0.1".parse().unwrap(),
        helo: None,
        tls: None,
        auth_user: None,
    };
    let mut results = Vec::new();
    for (lang, p) in [("rust", TAG), ("python", PY_TAG), ("javascript", JS_TAG)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy(lang, p, "X-Processed-By")).unwrap();
        let pipeline = WasmPipeline::load(runtime.clone(), &path, None)
            .await
            .unwrap_or_else(|e| panic!("{lang}: {e:?}"));
        let mut env = Envelope {
            sender: "a@example.com".into(),
            recipients: vec![Recipient::new("b@example.net")],
            ..Envelope::default()
        };
        let mut msg = MESSAGE.as_bytes().to_vec();
        let v = pipeline
            .current()
            .data("L1", &session, &mut env, &mut msg)
            .await;
        assert_eq!(v, Verdict::Continue, "{lang}");
        let m = mail_parser::MessageParser::default().parse(&msg).unwrap();
        let get = |n: &str| m.header_raw(n).map(|v| v.trim().to_string());
        results.push((
            lang,
            get("X-Processed-By"),
            get("X-Sluice-Score"),
            get("X-Sluice-Symbols"),
        ));

        // The same bad configuration is refused the same way, with the plugin's reason.
        // Two more messages: one warm instance serves them all (the runtime leaves no host
        // resource open between calls, which would make the host drop it).
        for _ in 0..2 {
            let mut msg = MESSAGE.as_bytes().to_vec();
            let mut env = env.clone();
            pipeline
                .current()
                .data("L1", &session, &mut env, &mut msg)
                .await;
        }
        let created = sluice_metrics::global()
            .plugin_instances
            .with_label_values(&[&format!("t-{lang}"), "tag"])
            .get();
        assert_eq!(created, 1, "{lang}: {created} instances for 3 messages");

        std::fs::write(&path, policy(lang, p, "Bad Header:")).unwrap();
        let err = WasmPipeline::load(runtime.clone(), &path, None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{lang}: a bad header name must be refused"));
        let text = err[0].to_string();
        assert!(
            text.contains("plugin refused its configuration")
                && text.contains("`header` must be a header name"),
            "{lang}: {text}"
        );
    }
    for r in &results {
        assert_eq!(
            (&r.1, &r.2, &r.3),
            (
                &Some("sluice".to_string()),
                &Some("9.00".to_string()),
                &Some("SUBJECT_FREE_MONEY=6.00, SUBJECT_WINNER=3.00".to_string())
            ),
            "{}",
            r.0
        );
    }
}
