//! Cost of a plugin step per message: the `data` stage with no step, one no-op step and six
//! no-op steps (a fresh instance each), for 5 KB and 50 KB messages, measured side by side;
//! a step reading a 50 MB read-only data file (contract 0.2 `data`) against a no-op step;
//! the `spam-score` plugin with the trained model on real 5 KB messages of the corpus
//! (needs `scripts/build-plugins.sh` first: it trains `target/plugins/spam.model`).
//!
//! `cargo bench -p sluice-bench --bench plugin_step`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_core::{Envelope, Recipient, SessionInfo};
use sluice_plugin::{Runtime, WasmPipeline};
use sluice_test_plugins::{NOOP, PROBE, PY_SPAM_WORDS, SPAM_SCORE};
use std::sync::Arc;

fn policy(steps: usize) -> String {
    let mut p = String::from("[[pipeline]]\nname = \"bench\"\n");
    for i in 0..steps {
        p.push_str(&format!(
            "[[pipeline.step]]\nname = \"noop{i}\"\nplugin = \"{}\"\nsha256 = \"{}\"\n",
            NOOP.path, NOOP.sha256
        ));
    }
    if steps == 0 {
        // A chain with no step still parses the envelope and runs the stage machinery.
        p.push_str("[pipeline.thresholds]\n");
    }
    p
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    m
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runtime = Runtime::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let session = SessionInfo {
        listener: "mx".into(),
        role: "mx".into(),
        client_ip: "127.0.0.1".parse().unwrap(),
        helo: None,
        tls: None,
        auth_user: None,
    };
    let mut group = c.benchmark_group("data_stage");
    for steps in [0usize, 1, 6] {
        let path = dir.path().join(format!("p{steps}.toml"));
        std::fs::write(&path, policy(steps)).unwrap();
        let pipeline: Arc<WasmPipeline> = rt
            .block_on(WasmPipeline::load(runtime.clone(), &path, None))
            .unwrap_or_else(|e| panic!("{e:?}"));
        for size in [5_000usize, 50_000] {
            let msg = message(size);
            stage_bench(
                &mut group,
                BenchmarkId::new(format!("{steps}_steps"), size),
                &rt,
                &pipeline,
                &session,
                &msg,
            );
        }
    }
    group.finish();

    // Big read-only data: a 50 MB model read with 1 and with 500 lookups (one `read-many`
    // call) per message, against a no-op step.
    let model: Vec<u8> = (0..50u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let model_path = dir.path().join("model.bin");
    std::fs::write(&model_path, &model).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&model))
    };
    drop(model);
    let mut group = c.benchmark_group("data_file_50mb");
    let variants = [
        ("noop", String::new()),
        ("lookups_1", "1".into()),
        ("lookups_500", "500".into()),
    ];
    for (name, times) in variants {
        let step = if times.is_empty() {
            format!(
                "[[pipeline.step]]\nname = \"s\"\nplugin = \"{}\"\nsha256 = \"{}\"\n",
                NOOP.path, NOOP.sha256
            )
        } else {
            format!(
                "[[pipeline.step]]\nname = \"s\"\nplugin = \"{}\"\nsha256 = \"{}\"\n[pipeline.step.data.model]\npath = \"{}\"\nsha256 = \"{sha}\"\n[pipeline.step.config]\nmode = \"data\"\nvalue = \"quiet\"\ntimes = {times}\n",
                PROBE.path,
                PROBE.sha256,
                model_path.display()
            )
        };
        let path = dir.path().join(format!("data-{name}.toml"));
        std::fs::write(&path, format!("[[pipeline]]\nname = \"d\"\n{step}")).unwrap();
        let pipeline: Arc<WasmPipeline> = rt
            .block_on(WasmPipeline::load(runtime.clone(), &path, None))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let msg = message(5_000);
        stage_bench(
            &mut group,
            BenchmarkId::new(name, 5_000),
            &rt,
            &pipeline,
            &session,
            &msg,
        );
    }
    group.finish();

    spam_score(c, &rt, &runtime, dir.path(), &session);

    // A Python plugin (componentize-py): a fresh instance per message against warm ones.
    let mut group = c.benchmark_group("python_step");
    for mode in ["fresh", "warm"] {
        let path = dir.path().join(format!("py-{mode}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[pipeline]]\nname = \"py\"\n[[pipeline.step]]\nname = \"py\"\nplugin = \"{}\"\nsha256 = \"{}\"\nmemory_mb = 200\ntimeout_ms = 2000\ninstances = \"{mode}\"\n[pipeline.step.config]\ntag = \"X-Checked\"\nwords = {{ fox = 1.0 }}\n",
                PY_SPAM_WORDS.path, PY_SPAM_WORDS.sha256
            ),
        )
        .unwrap();
        let pipeline: Arc<WasmPipeline> = rt
            .block_on(WasmPipeline::load(runtime.clone(), &path, None))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let msg = message(5_000);
        stage_bench(
            &mut group,
            BenchmarkId::new(mode, 5_000),
            &rt,
            &pipeline,
            &session,
            &msg,
        );
    }
    group.finish();
}

/// The spam-score plugin with the model `scripts/build-plugins.sh` trains, on a real spam and
/// a real ham of about 5 KB from the corpus, against a no-op step.
fn spam_score(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    runtime: &Arc<Runtime>,
    dir: &std::path::Path,
    session: &SessionInfo,
) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("target/plugins/spam.model");
    let corpus = std::env::var("SLUICE_CORPUS_DIR").map_or_else(
        |_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/sluice/spam-assassin")
        },
        std::path::PathBuf::from,
    );
    let Ok(bytes) = std::fs::read(&model) else {
        eprintln!(
            "spam_score: no {} (run scripts/build-plugins.sh): skipped",
            model.display()
        );
        return;
    };
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    // The first message of each group between 4.5 and 5.5 KB, as SMTP carries it.
    let pick = |group: &str| -> Vec<u8> {
        let mut files: Vec<_> = std::fs::read_dir(corpus.join(group))
            .unwrap_or_else(|e| panic!("{group}: {e} (run scripts/spam-corpus.sh)"))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let raw = files
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .find(|b| (4_500..5_500).contains(&b.len()))
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        let text = text.split_once('\n').map_or(&*text, |(_, rest)| rest);
        text.replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes()
    };
    let mut group = c.benchmark_group("spam_score");
    for (name, step) in [
        (
            "noop",
            format!(
                "[[pipeline.step]]\nname = \"s\"\nplugin = \"{}\"\nsha256 = \"{}\"\n",
                NOOP.path, NOOP.sha256
            ),
        ),
        (
            "spam_score",
            format!(
                "[[pipeline.step]]\nname = \"s\"\nplugin = \"{}\"\nsha256 = \"{}\"\n[pipeline.step.data.model]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
                SPAM_SCORE.path,
                SPAM_SCORE.sha256,
                model.display()
            ),
        ),
    ] {
        let path = dir.join(format!("spam-{name}.toml"));
        std::fs::write(&path, format!("[[pipeline]]\nname = \"d\"\n{step}")).unwrap();
        let pipeline: Arc<WasmPipeline> = rt
            .block_on(WasmPipeline::load(runtime.clone(), &path, None))
            .unwrap_or_else(|e| panic!("{e:?}"));
        for kind in ["spam-1", "easy-ham-1"] {
            let msg = pick(kind);
            stage_bench(
                &mut group,
                BenchmarkId::new(name, kind),
                rt,
                &pipeline,
                session,
                &msg,
            );
        }
    }
    group.finish();
}

/// Times the data stage of `pipeline` on `msg`.
fn stage_bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    rt: &tokio::runtime::Runtime,
    pipeline: &Arc<WasmPipeline>,
    session: &SessionInfo,
    msg: &[u8],
) {
    group.bench_with_input(id, msg, |b, msg| {
        b.to_async(rt).iter(|| {
            let snapshot = pipeline.snapshot();
            let mut env = Envelope {
                sender: "a@example.com".into(),
                recipients: vec![Recipient::new("b@example.net")],
                ..Envelope::default()
            };
            let mut m = msg.to_vec();
            async move { snapshot.data_stage("B1", session, &mut env, &mut m).await }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
