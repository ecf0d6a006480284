//! WatchPresence places per API key on a replica (`--max-watchers-per-key`).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tonic::Status;

use crate::downstream::ForwardedStream;

/// Open WatchPresence streams per API key, capped: one key cannot take every watcher
/// place of the presence replicas.
#[derive(Clone)]
pub struct WatchCaps {
    open: Arc<Mutex<HashMap<String, usize>>>,
    max: usize,
}

/// Holds one watch place of a key until dropped (with its stream).
pub struct WatchPlace {
    caps: WatchCaps,
    key: String,
}

impl WatchCaps {
    pub fn new(max: usize) -> Self {
        Self { open: Default::default(), max }
    }

    pub fn take(&self, key: String) -> Result<WatchPlace, Status> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key.clone()).or_default();
        if *n >= self.max {
            let max = self.max;
            return Err(Status::resource_exhausted(format!(
                "this API key already has {max} open WatchPresence streams on this replica (--max-watchers-per-key)"
            )));
        }
        *n += 1;
        Ok(WatchPlace { caps: self.clone(), key })
    }
}

impl WatchPlace {
    /// `events`, holding this place for as long as the stream lives.
    pub fn hold<T: Send + 'static>(self, events: ForwardedStream<T>) -> ForwardedStream<T> {
        Box::pin(tokio_stream::StreamExt::map(events, move |item| {
            let _held = &self;
            item
        }))
    }
}

impl Drop for WatchPlace {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}
