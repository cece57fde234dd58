//! The in-memory model of the queue: what must hold after any restart.

use crate::{MessageMeta, Queue, QueueError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A queue in a `BTreeMap`. It is the model the sled queue is checked against, and a
/// queue for tests that do not need durability.
#[derive(Debug, Default)]
pub struct MemQueue {
    inner: Mutex<BTreeMap<String, (MessageMeta, Vec<u8>)>>,
}

impl MemQueue {
    pub fn new() -> MemQueue {
        MemQueue::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (MessageMeta, Vec<u8>)>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Queue for MemQueue {
    async fn enqueue(&self, meta: &MessageMeta, body: &[u8]) -> Result<(), QueueError> {
        self.map()
            .insert(meta.id.clone(), (meta.clone(), body.to_vec()));
        Ok(())
    }

    fn update(&self, meta: &MessageMeta) -> Result<(), QueueError> {
        if let Some(entry) = self.map().get_mut(&meta.id) {
            entry.0 = meta.clone();
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), QueueError> {
        self.map().remove(id);
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<MessageMeta>, QueueError> {
        Ok(self.map().get(id).map(|e| e.0.clone()))
    }

    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self.map().get(id).map(|e| e.1.clone()))
    }

    fn list(&self) -> Result<Vec<MessageMeta>, QueueError> {
        Ok(self.map().values().map(|e| e.0.clone()).collect())
    }

    async fn sync(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
