//! Does nothing at the data and queued stages: the cost of a step, for benchmarks.

use sluice_plugin_sdk::{Filter, Message, Outcome, Stage, export_filter};

struct Noop;

impl Filter for Noop {
    const STAGES: &'static [Stage] = &[Stage::Data, Stage::Queued];

    fn on_data(_message: &Message) -> Outcome {
        Outcome::cont()
    }

    fn on_queued(_message: &Message) -> Outcome {
        Outcome::cont()
    }
}

export_filter!(Noop, reusable);
