//! Records as one format-version byte followed by postcard: the outbox's entries and the
//! event history's events.

use crate::QueueError;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![version]).expect("records always serialize")
}

/// `what` names the record in errors (`unknown event format version 9`).
pub(crate) fn decode<T: DeserializeOwned>(
    id: &str,
    bytes: &[u8],
    version: u8,
    what: &str,
) -> Result<T, QueueError> {
    let corrupt = |reason: String| QueueError::Corrupt {
        id: id.to_string(),
        reason,
    };
    match bytes {
        [v, rest @ ..] if *v == version => {
            postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))
        }
        [v, ..] => Err(corrupt(format!("unknown {what} format version {v}"))),
        [] => Err(corrupt(format!("empty {what} record"))),
    }
}
