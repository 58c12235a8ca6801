//! When each key was last used, gathered in memory on the request path and written to the store in the
//! background, so that `keys list --unused-for` can find the keys nobody uses.
//!
//! A request costs one atomic load on the key's own entry in the ring (the one its check just found,
//! [`crate::store::KeyUseCell`]) and, at most once a second per key, an atomic store: no second lookup, no
//! allocation, no I/O, no waiting on the store. Before each flush the ring gathers the noted uses into the
//! map below (bounded by the keys the ring knows: only authenticated keys are recorded), and a key that
//! leaves the ring hands its use over at once. A flush (every minute by default,
//! and once more at shutdown) hands the whole map to [`Store::record_key_use`] in one statement per 500
//! keys; a key this process wrote less than a minute ago is not sent, and the store itself moves a row
//! only by a minute or more (other replicas write too), so the store sees at most one write per active
//! key per minute however busy the key is, and no statement at all when nothing was used. A flush
//! that fails puts its uses back, so a store outage loses nothing but freshness.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use foldhash::HashMap;

use crate::store::{KEY_USE_RESOLUTION, Store, StoreError, now};

/// How often the sidecar writes the uses it gathered: the store's own resolution, so a busy key costs one
/// write per flush.
pub const DEFAULT_KEY_USE_FLUSH_INTERVAL: Duration = KEY_USE_RESOLUTION;

/// Key id -> the latest use seen since the last flush (seconds since the epoch).
#[derive(Default)]
pub struct KeyUses {
    latest: RwLock<HashMap<String, AtomicI64>>,
    /// Key id -> the use this process last wrote, for keys written less than [`KEY_USE_RESOLUTION`] ago:
    /// the store would not move them, so they are not even sent. Touched only by flushes.
    written: Mutex<HashMap<String, i64>>,
}

impl KeyUses {
    /// Notes that `key_id` was used at `at`. Cheap and never blocks on I/O.
    pub fn record(&self, key_id: &str, at: i64) {
        if let Some(latest) = self.latest.read().unwrap_or_else(|e| e.into_inner()).get(key_id) {
            // A plain load first: within the same second, nothing is written and the cache line stays shared.
            if latest.load(Ordering::Relaxed) < at {
                latest.fetch_max(at, Ordering::Relaxed);
            }
            return;
        }
        // The first use of a key since the last flush.
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key_id.to_owned())
            .or_insert_with(|| AtomicI64::new(at))
            .fetch_max(at, Ordering::Relaxed);
    }

    /// Takes everything gathered since the last call.
    fn take(&self) -> Vec<(String, i64)> {
        let taken = std::mem::take(&mut *self.latest.write().unwrap_or_else(|e| e.into_inner()));
        taken.into_iter().map(|(key, at)| (key, at.into_inner())).collect()
    }

    /// Writes the gathered uses to the store; returns how many keys' rows moved. Nothing due (nothing
    /// used, or only keys written within the last minute): no statement at all. On failure the uses are
    /// kept for the next flush.
    pub async fn flush(&self, store: &Store) -> Result<u64, StoreError> {
        let resolution = i64::try_from(KEY_USE_RESOLUTION.as_secs()).unwrap_or(i64::MAX);
        let due: Vec<(String, i64)> = {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let horizon = now().saturating_sub(resolution);
            written.retain(|_, at| *at > horizon);
            self.take()
                .into_iter()
                .filter(|(key_id, at)| {
                    written
                        .get(key_id)
                        .is_none_or(|last| *at >= last.saturating_add(resolution))
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(0);
        }
        match store.record_key_use(&due).await {
            Ok(moved) => {
                self.written.lock().unwrap_or_else(|e| e.into_inner()).extend(due);
                Ok(moved)
            }
            Err(error) => {
                for (key_id, at) in &due {
                    self.record(key_id, *at);
                }
                Err(error)
            }
        }
    }

    /// How many keys were used since the last flush.
    pub fn pending(&self) -> usize {
        self.latest.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_keeps_its_latest_use_until_taken() {
        let uses = KeyUses::default();
        uses.record("k1", 100);
        uses.record("k1", 90);
        uses.record("k1", 130);
        uses.record("k2", 50);
        let mut taken = uses.take();
        taken.sort();
        assert_eq!(taken, vec![("k1".to_owned(), 130), ("k2".to_owned(), 50)]);
        assert!(uses.take().is_empty(), "taken once");
        assert_eq!(uses.pending(), 0);
    }
}
