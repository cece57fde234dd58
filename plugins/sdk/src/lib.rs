//! The Rust SDK for Sluice plugins: bindings for `wit/sluice-plugin.wit`, a [`Filter`]
//! trait whose handlers all default to "continue", and helpers to build outcomes.
//!
//! A plugin is a `cdylib` built with `cargo build --release --target wasm32-wasip2`:
//!
//! ```ignore
//! use sluice_plugin_sdk::{Filter, Message, Outcome, Stage, export_filter};
//!
//! struct Tag;
//!
//! impl Filter for Tag {
//!     const STAGES: &'static [Stage] = &[Stage::Data];
//!     fn on_data(message: &Message) -> Outcome {
//!         Outcome::cont().add_header("X-Tagged", "yes")
//!     }
//! }
//!
//! export_filter!(Tag);
//! ```

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
    pub_export_macro: true,
    default_bindings_module: "sluice_plugin_sdk",
});

#[cfg(feature = "http")]
pub mod http;

pub use exports::sluice::plugin::filter::Guest;
pub use sluice::plugin::host;
pub use sluice::plugin::host::{Data, KvEntry, KvPage, NewEvent};
pub use sluice::plugin::types::{
    Attachment, Attribute, AuthResults, Edit, Envelope, Event, EventKind, Header, Message, Outcome,
    Part, PartBody, Reply, SessionInfo, Stage, Symbol, Verdict,
};

/// A plugin. Implement the handlers for the stages listed in `STAGES`; the host never calls
/// the others.
pub trait Filter {
    const STAGES: &'static [Stage];

    /// Checks the step's `config` table (JSON). An error is shown to the operator with the
    /// policy file and step.
    fn configure(_config: &str) -> Result<(), String> {
        Ok(())
    }
    fn on_connect(_session: SessionInfo) -> Outcome {
        Outcome::cont()
    }
    fn on_ehlo(_session: SessionInfo) -> Outcome {
        Outcome::cont()
    }
    fn on_mail(_session: SessionInfo, _envelope: Envelope) -> Outcome {
        Outcome::cont()
    }
    fn on_rcpt(_session: SessionInfo, _envelope: Envelope, _recipient: String) -> Outcome {
        Outcome::cont()
    }
    fn on_data(_message: &Message) -> Outcome {
        Outcome::cont()
    }
    fn on_queued(_message: &Message) -> Outcome {
        Outcome::cont()
    }
    fn on_delivery(_message: &Message, _recipients: Vec<String>) -> Outcome {
        Outcome::cont()
    }
    /// Per-recipient edits at delivery (headers and bodies only).
    fn on_render(_message: &Message, _recipient: String) -> Vec<Edit> {
        Vec::new()
    }
    /// `defer` asks the host to run this again later.
    fn on_event(_event: Event) -> Outcome {
        Outcome::cont()
    }
}

/// Exports a [`Filter`] as the component's `filter` interface.
///
/// `export_filter!(T, reusable)` also declares that the plugin keeps nothing from one call
/// in the next (no statics, thread-locals or caches holding message data), in a custom
/// section named [`REUSABLE_SECTION`]: the host then runs it in warm instances by default,
/// reused for up to `recycle_after` messages, instead of a fresh instance per call. Only
/// declare it for code you have checked; an operator can still force `instances = "fresh"`.
#[macro_export]
macro_rules! export_filter {
    ($t:ident, reusable) => {
        const _: () = {
            #[cfg(target_arch = "wasm32")]
            #[unsafe(link_section = "sluice:reusable")]
            #[used]
            static REUSABLE: [u8; 1] = [1];
        };
        $crate::export_filter!($t);
    };
    ($t:ident) => {
        const _: () = {
            use $crate::Filter as _F;
            impl $crate::Guest for $t {
                fn stages() -> ::std::vec::Vec<$crate::Stage> {
                    <$t as _F>::STAGES.to_vec()
                }
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    <$t as _F>::configure(&config)
                }
                fn on_connect(s: $crate::SessionInfo) -> $crate::Outcome {
                    <$t as _F>::on_connect(s)
                }
                fn on_ehlo(s: $crate::SessionInfo) -> $crate::Outcome {
                    <$t as _F>::on_ehlo(s)
                }
                fn on_mail(s: $crate::SessionInfo, e: $crate::Envelope) -> $crate::Outcome {
                    <$t as _F>::on_mail(s, e)
                }
                fn on_rcpt(
                    s: $crate::SessionInfo,
                    e: $crate::Envelope,
                    r: ::std::string::String,
                ) -> $crate::Outcome {
                    <$t as _F>::on_rcpt(s, e, r)
                }
                fn on_data(m: &$crate::Message) -> $crate::Outcome {
                    <$t as _F>::on_data(m)
                }
                fn on_queued(m: &$crate::Message) -> $crate::Outcome {
                    <$t as _F>::on_queued(m)
                }
                fn on_delivery(
                    m: &$crate::Message,
                    r: ::std::vec::Vec<::std::string::String>,
                ) -> $crate::Outcome {
                    <$t as _F>::on_delivery(m, r)
                }
                fn on_render(
                    m: &$crate::Message,
                    r: ::std::string::String,
                ) -> ::std::vec::Vec<$crate::Edit> {
                    <$t as _F>::on_render(m, r)
                }
                fn on_event(e: $crate::Event) -> $crate::Outcome {
                    <$t as _F>::on_event(e)
                }
            }
    $crate::export!($t with_types_in $crate);
        };
    };
}

/// The custom section by which a component declares it may be reused across messages (see
/// [`export_filter!`]). Components from other toolchains may carry it too, at the top level.
pub const REUSABLE_SECTION: &str = "sluice:reusable";

impl EventKind {
    /// The kind's name, as in the event JSON (`other` kinds by their own name).
    pub fn name(&self) -> &str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Rejected => "rejected",
            EventKind::Quarantined => "quarantined",
            EventKind::Opened => "opened",
            EventKind::Clicked => "clicked",
            EventKind::Unsubscribed => "unsubscribed",
            EventKind::Complained => "complained",
            EventKind::Other(s) => s,
        }
    }
}

impl Outcome {
    /// Continue, with no symbols or edits.
    pub fn cont() -> Outcome {
        Outcome {
            verdict: Verdict::Continue,
            symbols: Vec::new(),
            edits: Vec::new(),
        }
    }

    pub fn reject(code: u16, enhanced: &str, text: &str) -> Outcome {
        Outcome::cont().verdict(Verdict::Reject(reply(code, enhanced, text)))
    }

    pub fn defer(code: u16, enhanced: &str, text: &str) -> Outcome {
        Outcome::cont().verdict(Verdict::Defer(reply(code, enhanced, text)))
    }

    pub fn verdict(mut self, v: Verdict) -> Outcome {
        self.verdict = v;
        self
    }

    pub fn symbol(mut self, name: &str, score: f64) -> Outcome {
        self.symbols.push(Symbol {
            name: name.into(),
            score,
            description: None,
        });
        self
    }

    pub fn edit(mut self, e: Edit) -> Outcome {
        self.edits.push(e);
        self
    }

    pub fn add_header(self, name: &str, value: &str) -> Outcome {
        self.edit(Edit::AddHeader(Header {
            name: name.into(),
            value: value.into(),
        }))
    }

    pub fn set_header(self, name: &str, value: &str) -> Outcome {
        self.edit(Edit::SetHeader(Header {
            name: name.into(),
            value: value.into(),
        }))
    }

    /// Sets a metadata key on the message (kept in the queue, copied into its events).
    pub fn set_meta(self, key: &str, value: &str) -> Outcome {
        self.edit(Edit::SetMeta(Attribute {
            key: key.into(),
            value: value.into(),
        }))
    }

    /// Replaces the decoded content of a text part (an id from `Message::parts`).
    pub fn replace_part(self, id: u32, body: &str) -> Outcome {
        self.edit(Edit::ReplacePart(PartBody {
            id,
            body: body.into(),
        }))
    }
}

impl NewEvent {
    /// An event of this kind; what is left empty comes from the message being handled.
    pub fn new(kind: EventKind) -> NewEvent {
        NewEvent {
            kind,
            queue_id: None,
            message_id: None,
            sender: None,
            recipient: None,
            reply: None,
            attributes: Vec::new(),
        }
    }

    pub fn recipient(mut self, r: &str) -> NewEvent {
        self.recipient = Some(r.into());
        self
    }

    pub fn attribute(mut self, key: &str, value: &str) -> NewEvent {
        self.attributes.push(Attribute {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

fn reply(code: u16, enhanced: &str, text: &str) -> Reply {
    Reply {
        code,
        enhanced: enhanced.into(),
        text: text.into(),
    }
}

/// Chunk size of [`read_message`] and [`read_part`]: one host call per MiB.
const READ_CHUNK: u32 = 1 << 20;

/// The raw message, at most its first `max` bytes, read in chunks (one host call per MiB).
pub fn read_message(message: &Message, max: u64) -> Vec<u8> {
    let size = message.size().min(max);
    let mut raw = Vec::with_capacity(size as usize);
    while (raw.len() as u64) < size {
        let want = (size - raw.len() as u64).min(u64::from(READ_CHUNK)) as u32;
        let chunk = message.bytes(raw.len() as u64, want);
        if chunk.is_empty() {
            break;
        }
        raw.extend_from_slice(&chunk);
    }
    raw
}

/// The decoded content of part `id` (an id from `message.parts()`).
pub fn read_part(message: &Message, id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = message.part_bytes(id, out.len() as u64, READ_CHUNK);
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

/// The step's `config` table as JSON (what `configure` validated).
pub fn config_json() -> String {
    host::config()
}

/// The step's `config` table parsed into `T`, once per instance: an instance serves one
/// step (a warm one is never shared between steps, and a reload starts new ones), so its
/// config never changes, and keeping it parsed is not state carried between messages.
/// A plugin uses one `T` (asking for another type panics); a config that does not parse is
/// not kept, so every call reports it.
#[cfg(feature = "config")]
pub fn config<T>() -> Result<&'static T, String>
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    use std::any::Any;
    use std::sync::OnceLock;
    static CONFIG: OnceLock<Box<dyn Any + Send + Sync>> = OnceLock::new();
    let parsed = match CONFIG.get() {
        Some(c) => c,
        None => {
            let c: T = serde_json::from_str(&host::config()).map_err(|e| e.to_string())?;
            CONFIG.get_or_init(|| Box::new(c))
        }
    };
    Ok(parsed
        .downcast_ref::<T>()
        .expect("config::<T>() with one T per plugin"))
}

/// Logs through the host, with the plugin and step names attached.
pub fn log(level: host::Level, message: &str) {
    host::log(level, message)
}
