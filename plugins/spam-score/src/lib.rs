//! Scores a message as spam with a trained model (`sluice spam train`) read through the
//! contract's read-only data, plus fixed-weight checks on the host's authentication
//! results; adds `X-Spam-Score` and `X-Spam-Status` and returns its score to the policy,
//! whose thresholds quarantine or reject.
//!
//! ```toml
//! [[pipeline.step]]
//! name = "spam"
//! plugin = "spam_score.wasm"
//! sha256 = "…"
//! stages = ["data"]
//! [pipeline.step.data]
//! model = { path = "spam.model", sha256 = "…" }
//! [pipeline.step.config]
//! required = 5.0      # X-Spam-Status: Yes at and above this score (default 5.0)
//! headers = true      # add X-Spam-Score / X-Spam-Status (default true)
//! ```
//!
//! The model is never parsed per message: `configure` checks its header, size and checksum
//! once when the policy loads; a message reads only the weights of its own features (one
//! `read-many` call).

use serde::Deserialize;
use sluice_plugin_sdk::{Data, Filter, Message, Outcome, Stage, export_filter, host};
use sluice_spam::model::{self, Checksum, HEADER_LEN, ModelHeader};
use sluice_spam::{View, extract};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_required")]
    required: f64,
    #[serde(default = "yes")]
    headers: bool,
    /// The name of the step's `data` entry holding the model.
    #[serde(default = "default_model")]
    model: String,
}

fn default_required() -> f64 {
    model::SCORE_OFFSET
}

fn yes() -> bool {
    true
}

fn default_model() -> String {
    "model".into()
}

fn config() -> &'static Config {
    sluice_plugin_sdk::config().expect("checked by configure")
}

/// Authentication results the model cannot learn from an archive corpus (it has none), with
/// fixed scores: failing the sender domain's own published policy is strong evidence.
const AUTH: [(&str, &str, &str, f64); 6] = [
    ("spf", "fail", "AUTH_SPF_FAIL", 1.0),
    ("spf", "softfail", "AUTH_SPF_SOFTFAIL", 0.5),
    ("dkim", "fail", "AUTH_DKIM_FAIL", 1.0),
    ("dmarc", "fail", "AUTH_DMARC_FAIL", 2.5),
    ("dmarc", "pass", "AUTH_DMARC_PASS", -0.5),
    ("arc", "fail", "AUTH_ARC_FAIL", 0.5),
];

fn open(name: &str) -> Result<(Data, ModelHeader), String> {
    let data = host::open_data(name).map_err(|e| format!("data `{name}`: {e:?}"))?;
    let header = ModelHeader::parse(&data.read(0, HEADER_LEN as u32))
        .map_err(|e| format!("data `{name}`: {e}"))?;
    Ok((data, header))
}

struct SpamScore;

impl Filter for SpamScore {
    const STAGES: &'static [Stage] = &[Stage::Data];

    fn configure(c: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(c).map_err(|e| e.to_string())?;
        if !c.required.is_finite() {
            return Err("`required` must be a number".into());
        }
        // The whole model is checked once, here: size and checksum.
        let (data, header) = open(&c.model)?;
        if data.size() != header.file_len() {
            return Err(format!(
                "data `{}`: {}",
                c.model,
                model::ModelError::Size {
                    expected: header.file_len(),
                    actual: data.size(),
                }
            ));
        }
        let mut sum = Checksum::default();
        let mut at = HEADER_LEN as u64;
        while at < data.size() {
            let chunk = data.read(at, 1 << 20);
            if chunk.is_empty() {
                break;
            }
            sum.update(&chunk);
            at += chunk.len() as u64;
        }
        if sum.value() != header.checksum {
            return Err(format!(
                "data `{}`: {}",
                c.model,
                model::ModelError::Checksum
            ));
        }
        Ok(())
    }

    fn on_data(message: &Message) -> Outcome {
        let c = config();
        let (data, header) = match open(&c.model) {
            Ok(x) => x,
            // Checked at load; a failure here is the host's, and the step's `on_error` decides.
            Err(e) => panic!("{e}"),
        };
        let headers: Vec<(String, String)> = message
            .headers()
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect();
        let text = message.text_parts();
        let html = message.html_parts();
        let parts = message.parts();
        let attachments = message.attachments();
        let view = View {
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            text_parts: text.iter().map(String::as_str).collect(),
            html_parts: html.iter().map(String::as_str).collect(),
            part_types: parts.iter().map(|p| p.content_type.as_str()).collect(),
            charsets: parts.iter().filter_map(|p| p.charset.as_deref()).collect(),
            attachments: attachments
                .iter()
                .map(|a| (a.filename.as_deref(), a.content_type.as_str(), a.size))
                .collect(),
        };
        let features = extract(&view);
        let (buckets, symbols) = model::buckets(&header, &features);
        let offsets: Vec<u64> = buckets.iter().map(|&b| header.offset(b)).collect();
        let bytes = data.read_many(&offsets, 4);
        let weights: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let scored = model::score(&header, &buckets, &weights, &symbols);

        // The text model's share is what the named heuristics do not explain.
        let named: f64 = scored.symbols.iter().map(|(_, s)| s).sum();
        let mut parts: Vec<(&str, f64)> = vec![("SPAM_MODEL", scored.score - named)];
        parts.extend(scored.symbols.iter().filter(|(_, s)| s.abs() >= 0.005));
        let auth = message.auth_results();
        for (method, result, name, score) in AUTH {
            let got = match method {
                "spf" => &auth.spf,
                "dkim" => &auth.dkim,
                "dmarc" => &auth.dmarc,
                _ => &auth.arc,
            };
            if got.eq_ignore_ascii_case(result) {
                parts.push((name, score));
            }
        }
        // The policy adds the symbols up: the headers show the same rounded figures.
        for p in &mut parts {
            p.1 = round2(p.1);
        }
        let total: f64 = parts.iter().map(|(_, s)| s).sum();
        let mut out = Outcome::cont();
        for (name, score) in &parts {
            out = out.symbol(name, *score);
        }
        if c.headers {
            let tests = parts
                .iter()
                .map(|(n, s)| format!("{n}={:.2}", s))
                .collect::<Vec<_>>()
                .join(",");
            out = out
                .set_header("X-Spam-Score", &format!("{total:.2}"))
                .set_header(
                    "X-Spam-Status",
                    &format!(
                        "{}, score={total:.2} required={:.2} tests={tests}",
                        if total >= c.required { "Yes" } else { "No" },
                        c.required
                    ),
                );
        }
        out
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

export_filter!(SpamScore, reusable);
