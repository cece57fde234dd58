//! Exercises every capability of contract 0.2, for the host's tests. `config.mode` picks
//! what it does:
//!
//! - `parts` (data): lists the part tree in `X-Parts`, upper-cases the first HTML part with
//!   `replace-part`, tags `X-Queue-Id`, and sets metadata `stream` = `config.value`.
//! - `compose` (data): reports in `X-Saw` the `X-Edited` header and the text an earlier
//!   step left.
//! - `kv` (data): TTL, counters, batch get and paged scans, reported in `X-Kv`.
//! - `data` (data): reads the data file `model` (`X-Data`: size and a checksum of
//!   `config.times` 8-byte slots read with `read-many`; with `config.value = "quiet"` only
//!   a symbol, for benchmarks).
//! - `blob` (data): stores the message (`X-Blob`: the id).
//! - `emit` (data and event): emits an `other("probe")` event with `config.value`.
//! - `render` (render): a per-recipient header and HTML part (`{{rcpt}}` replaced), or
//!   with `config.value = "same"` one header identical for every recipient.
//! - `queued` (queued): defers until it has run `config.times` times (counted in kv), then
//!   emits an event and sets metadata `forwarded` = the number of runs.
//! - `events` (event): records every event it sees in kv under `seen/<kind>/<recipient>`
//!   and defers the first `config.times` runs of each event.
//! - `rcpt` (rcpt): quarantines `hold…@` recipients, discards `drop…@` ones.
//! - `envelope` (data): adds the recipient `config.value`.
//! - `hold` (delivery): quarantines every message at the delivery stage.
//! - `reuse` (data): counts its calls in a static, in `X-Calls`, and keeps `config.times`
//!   MiB more memory each call; with `config.value` `trap` or `bad-edit` its first call
//!   traps or returns an edit the host refuses (a header name with a colon); with `leak`
//!   every call leaves the data file `model` open. The probe declares itself reusable
//!   (`export_filter!(Probe, reusable)`), so this shows whether the host reused an
//!   instance; no other mode keeps anything between calls.

use serde::Deserialize;
use sluice_plugin_sdk::{
    Edit, Event, EventKind, Filter, Message, NewEvent, Outcome, Stage, Verdict, export_filter, host,
};

#[derive(Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    times: u32,
}

fn config() -> Config {
    serde_json::from_str(&host::config()).expect("checked by configure")
}

struct Probe;

fn kind_name(k: &EventKind) -> String {
    k.name().to_string()
}

impl Filter for Probe {
    const STAGES: &'static [Stage] = &[
        Stage::Rcpt,
        Stage::Data,
        Stage::Queued,
        Stage::Delivery,
        Stage::Render,
        Stage::Event,
    ];

    fn configure(c: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(c).map_err(|e| format!("bad config: {e}"))?;
        const MODES: &[&str] = &[
            "parts", "compose", "kv", "data", "blob", "emit", "render", "queued", "events", "rcpt",
            "envelope", "hold", "reuse",
        ];
        if !MODES.contains(&c.mode.as_str()) {
            return Err(format!("unknown mode `{}`", c.mode));
        }
        Ok(())
    }

    fn on_rcpt(
        _s: sluice_plugin_sdk::SessionInfo,
        _e: sluice_plugin_sdk::Envelope,
        rcpt: String,
    ) -> Outcome {
        if config().mode != "rcpt" {
            return Outcome::cont();
        }
        if rcpt.starts_with("hold") {
            Outcome::cont().verdict(Verdict::Quarantine("held by probe".into()))
        } else if rcpt.starts_with("drop") {
            Outcome::cont().verdict(Verdict::Discard)
        } else {
            Outcome::cont()
        }
    }

    fn on_delivery(_m: &Message, _recipients: Vec<String>) -> Outcome {
        if config().mode == "hold" {
            Outcome::cont().verdict(Verdict::Quarantine("held at delivery by probe".into()))
        } else {
            Outcome::cont()
        }
    }

    fn on_data(m: &Message) -> Outcome {
        let c = config();
        match c.mode.as_str() {
            "parts" => {
                let parts = m.parts();
                let list: Vec<String> = parts
                    .iter()
                    .map(|p| {
                        let parent = p.parent.map_or("-".to_string(), |x| x.to_string());
                        format!("{}:{}:{}", p.id, parent, p.content_type)
                    })
                    .collect();
                let mut out = Outcome::cont()
                    .add_header("X-Parts", &list.join(" "))
                    .add_header("X-Queue-Id", &m.queue_id())
                    .set_meta("stream", &c.value);
                if let Some(p) = parts.iter().find(|p| p.content_type == "text/html")
                    && let Some(t) = m.part_text(p.id)
                {
                    out = out.replace_part(p.id, &t.to_uppercase());
                }
                out
            }
            "compose" => {
                let edited = m.header("X-Edited").join(",");
                let text = m.text_parts().join("|");
                Outcome::cont().add_header("X-Saw", &format!("{edited};{}", text.trim()))
            }
            "kv" => Outcome::cont().add_header("X-Kv", &kv_report()),
            "reuse" => {
                static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                // Held until the instance goes: memory a warm instance would keep.
                std::mem::forget(vec![1u8; (c.times as usize) << 20]);
                match (n, c.value.as_str()) {
                    (1, "trap") => panic!("first call traps"),
                    (1, "bad-edit") => return Outcome::cont().add_header("X-Bad:Name", "x"),
                    // A host resource never dropped: the data file `model`, left open.
                    (_, "leak") => std::mem::forget(host::open_data("model")),
                    _ => {}
                }
                Outcome::cont().add_header("X-Calls", &n.to_string())
            }
            "data" => {
                let report = match host::open_data("model") {
                    Ok(d) => {
                        let size = d.size();
                        let n = u64::from(c.times.max(1));
                        let offsets: Vec<u64> =
                            (0..n).map(|i| (i * 7919 * 8) % size.max(8)).collect();
                        let bytes = d.read_many(&offsets, 8);
                        let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
                        if c.value == "huge" {
                            // Two slots of almost 16 MiB: only whole slots come back.
                            let got = d.read_many(&[0, 0], 16_777_215).len();
                            return Outcome::cont().add_header("X-Data-Huge", &got.to_string());
                        }
                        if c.value == "quiet" {
                            // For benchmarks: no edit to apply, only a symbol.
                            return Outcome::cont().symbol("DATA", (sum % 2) as f64 * 0.0);
                        }
                        let head = d.read(0, 4);
                        format!("{size} {sum} {}", String::from_utf8_lossy(&head))
                    }
                    Err(e) => format!("{e:?}"),
                };
                Outcome::cont().add_header("X-Data", &report)
            }
            "blob" => {
                let r = host::store_message(
                    m,
                    &[sluice_plugin_sdk::Attribute {
                        key: "probe-subject".into(),
                        value: m.header("Subject").join(" "),
                    }],
                    45,
                );
                match r {
                    Ok(id) => Outcome::cont().add_header("X-Blob", &id),
                    Err(e) => Outcome::cont().add_header("X-Blob", &format!("{e:?}")),
                }
            }
            "emit" => match host::emit(
                &NewEvent::new(EventKind::Other("probe".into())).attribute("note", &c.value),
            ) {
                Ok(id) => Outcome::cont().add_header("X-Event", &id),
                Err(e) => Outcome::cont().add_header("X-Event", &format!("{e:?}")),
            },
            "envelope" => Outcome::cont().edit(Edit::AddRecipient(c.value)),
            _ => Outcome::cont(),
        }
    }

    fn on_queued(m: &Message) -> Outcome {
        let c = config();
        if c.mode != "queued" {
            return Outcome::cont();
        }
        let runs = match host::kv_incr(&format!("queued/{}", m.queue_id()), 1, Some(3600)) {
            Ok(n) => n,
            Err(e) => return Outcome::defer(451, "4.3.0", &format!("kv: {e:?}")),
        };
        if runs < i64::from(c.times) {
            return Outcome::defer(451, "4.4.1", "receiver not ready");
        }
        let _ = host::emit(
            &NewEvent::new(EventKind::Other("forwarded".into()))
                .attribute("runs", &runs.to_string()),
        );
        Outcome::cont().set_meta("forwarded", &runs.to_string())
    }

    fn on_render(m: &Message, rcpt: String) -> Vec<Edit> {
        if config().value == "same" {
            return vec![Edit::AddHeader(sluice_plugin_sdk::Header {
                name: "X-Rendered".into(),
                value: "same for all".into(),
            })];
        }
        let token: u32 = rcpt
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let mut edits = vec![Edit::AddHeader(sluice_plugin_sdk::Header {
            name: "X-Rcpt-Token".into(),
            value: format!("{token:08x}"),
        })];
        if let Some(p) = m.parts().iter().find(|p| p.content_type == "text/html")
            && let Some(t) = m.part_text(p.id)
        {
            edits.push(Edit::ReplacePart(sluice_plugin_sdk::PartBody {
                id: p.id,
                body: t.replace("{{rcpt}}", &rcpt),
            }));
        }
        edits
    }

    fn on_event(e: Event) -> Outcome {
        let c = config();
        match c.mode.as_str() {
            "events" => {
                let kind = kind_name(&e.kind);
                let rcpt = e.recipient.clone().unwrap_or_default();
                let runs = host::kv_incr(&format!("runs/{}", e.id), 1, None).unwrap_or(0);
                if runs <= i64::from(c.times) {
                    return Outcome::defer(451, "4.4.1", "webhook receiver down");
                }
                let meta: Vec<String> = e
                    .attributes
                    .iter()
                    .map(|a| format!("{}={}", a.key, a.value))
                    .collect();
                let _ = host::kv_set(
                    &format!("seen/{kind}/{rcpt}"),
                    format!("{} {} {}", e.id, runs, meta.join(",")).as_bytes(),
                    None,
                );
                Outcome::cont()
            }
            "emit" => {
                let _ = host::emit(
                    &NewEvent::new(EventKind::Other("echo".into())).attribute("of", &e.id),
                );
                Outcome::cont()
            }
            _ => Outcome::cont(),
        }
    }
}

/// Exercises the key-value calls and describes what came back.
fn kv_report() -> String {
    let mut r = Vec::new();
    r.push(format!(
        "set={:?}",
        host::kv_set("a/1", b"one", None).is_ok()
    ));
    let _ = host::kv_set("a/2", b"two", Some(3600));
    let _ = host::kv_set("a/3", b"three", None);
    let _ = host::kv_set("b/1", b"other", None);
    r.push(format!("incr={:?}", host::kv_incr("n", 5, None).ok()));
    r.push(format!("incr={:?}", host::kv_incr("n", -2, None).ok()));
    let many = host::kv_get_many(&["a/1".into(), "none".into()]).unwrap_or_default();
    r.push(format!(
        "many={}",
        many.iter()
            .map(|v| v
                .as_ref()
                .map_or("-".into(), |v| String::from_utf8_lossy(v).into_owned()))
            .collect::<Vec<_>>()
            .join("+")
    ));
    let p1 = host::kv_scan("a/", None, 2).expect("scan");
    let p2 = host::kv_scan("a/", p1.next.as_deref(), 2).expect("scan");
    let keys: Vec<String> = p1
        .entries
        .iter()
        .chain(&p2.entries)
        .map(|e| e.key.clone())
        .collect();
    r.push(format!("scan={}", keys.join("+")));
    r.push(format!("more={}", p2.next.is_some()));
    r.push(format!("deleted={:?}", host::kv_delete("a/1").ok()));
    let big = vec![0u8; 1 << 20];
    r.push(format!(
        "big={}",
        match host::kv_set("big", &big, None) {
            Err(host::Error::Quota(_)) => "quota",
            Ok(()) => "stored",
            Err(_) => "error",
        }
    ));
    r.join(" ")
}

export_filter!(Probe, reusable);
