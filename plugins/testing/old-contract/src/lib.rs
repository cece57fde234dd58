//! A no-op plugin built against contract 0.1.0 (its WIT is kept beside it), so that tests
//! can check the host refuses components built for another contract version.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use exports::sluice::plugin::filter::Guest;
use sluice::plugin::types::{
    DeliveryEvent, Envelope, Message, Outcome, SessionInfo, Stage, Verdict,
};

struct Old;

fn cont() -> Outcome {
    Outcome {
        verdict: Verdict::Continue,
        symbols: Vec::new(),
        edits: Vec::new(),
    }
}

impl Guest for Old {
    fn stages() -> Vec<Stage> {
        vec![Stage::Data]
    }
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn on_connect(_s: SessionInfo) -> Outcome {
        cont()
    }
    fn on_ehlo(_s: SessionInfo) -> Outcome {
        cont()
    }
    fn on_mail(_s: SessionInfo, _e: Envelope) -> Outcome {
        cont()
    }
    fn on_rcpt(_s: SessionInfo, _e: Envelope, _r: String) -> Outcome {
        cont()
    }
    fn on_data(_m: &Message) -> Outcome {
        cont()
    }
    fn on_queued(_m: &Message) -> Outcome {
        cont()
    }
    fn on_delivery(_m: &Message, _r: Vec<String>) -> Outcome {
        cont()
    }
    fn on_event(_e: DeliveryEvent) -> Outcome {
        cont()
    }
}

export!(Old);
