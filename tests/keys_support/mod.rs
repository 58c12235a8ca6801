//! What the key lifecycle tests share: a key's store record by its ApiKey's name, and the store's clock.
#![allow(dead_code)]

use orgkeeper::store::{KeyRecord, Store};

pub async fn record(store: &Store, api_key: &str) -> KeyRecord {
    store
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|key| key.api_key == api_key)
        .expect("the key is in the store")
}

/// Seconds since the Unix epoch, the store's time unit.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
