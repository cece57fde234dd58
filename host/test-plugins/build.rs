//! Builds the plugins in `plugins/` for wasm32-wasip2, once, into `target/plugins`, and
//! writes their paths and SHA-256 digests as constants.

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;

const PLUGINS: &[&str] = &[
    "noop",
    "hostile",
    "tag",
    "probe",
    "old-contract",
    "spam-score",
    "antivirus",
    "greylist",
    "suppression",
    "access",
    "link-tracking",
    "webhook",
    "bounces",
    "webhook-forward",
    "sender-policy",
    "send-window",
    "archive",
    "dmarc-reports",
];
/// Python plugins, each a folder of `plugins/python` with an `app.py`.
const PYTHON_PLUGINS: &[&str] = &["spam_words", "tag"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    for watched in [
        "plugins/Cargo.toml",
        "plugins/sdk",
        "plugins/examples",
        "plugins/testing",
        "plugins/testing/old-contract/wit",
        "plugins/spam-score",
        "plugins/antivirus",
        "plugins/greylist",
        "plugins/suppression",
        "plugins/access",
        "plugins/link-tracking",
        "plugins/webhook",
        "plugins/bounces",
        "plugins/webhook-forward",
        "plugins/sender-policy",
        "plugins/send-window",
        "plugins/archive",
        "plugins/dmarc-reports",
        "host/dmarc/src",
        "host/bounce/src",
        "host/spam/src",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // From plugins/, so that plugins/.cargo/config.toml applies.
    cmd.current_dir(root.join("plugins"));
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(root.join("plugins").join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the plugins");
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    // A plugin in a second language: Python, with componentize-py (scripts/setup.sh
    // installs it).
    println!(
        "cargo:rerun-if-changed={}",
        root.join("plugins/python").display()
    );
    // In OUT_DIR: componentize-py's output differs from build to build, so each build of
    // this crate (debug, release, scripts/build-plugins.sh) keeps its own copy.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut python = Vec::new();
    for name in PYTHON_PLUGINS {
        let out = out_dir.join(format!("{name}.wasm"));
        let status = Command::new("componentize-py")
            .arg("-d")
            .arg(root.join("wit"))
            .args(["-w", "plugin", "componentize", "-p"])
            .arg(root.join("plugins/python").join(name))
            .arg("app")
            .arg("-o")
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!(
                "building plugins/python/{name} with componentize-py failed ({other:?}); run scripts/setup.sh"
            ),
        }
        python.push((format!("py_{name}"), out));
    }
    // A third language: JavaScript, with jco/componentize-js from npm (plugins/js/tag/build.sh
    // installs them into a cache folder outside the repository).
    println!(
        "cargo:rerun-if-changed={}",
        root.join("plugins/js").display()
    );
    let js = out_dir.join("js_tag.wasm");
    let status = Command::new("bash")
        .arg(root.join("plugins/js/tag/build.sh"))
        .arg(&js)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "building plugins/js/tag with jco failed ({other:?}); run scripts/setup.sh (needs node and npm)"
        ),
    }
    let mut built: Vec<(String, PathBuf)> = PLUGINS
        .iter()
        .map(|n| {
            let p = target_dir
                .join("wasm32-wasip2")
                .join("release")
                .join(format!("{}.wasm", n.replace('-', "_")));
            (n.to_string(), p)
        })
        .collect();
    built.extend(python);
    built.push(("js_tag".into(), js));
    let mut out = String::new();
    for (name, path) in &built {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let sha = hex::encode(Sha256::digest(&bytes));
        out.push_str(&format!(
            "/// The `{name}` plugin.\npub const {}: Plugin = Plugin {{ path: {:?}, sha256: {:?} }};\n",
            name.to_uppercase().replace('-', "_"),
            path.display().to_string(),
            sha
        ));
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("plugins.rs");
    std::fs::write(dest, out).unwrap();
}
