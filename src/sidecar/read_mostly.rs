//! A map read on every request and written rarely: an environment's limiter state or counters (written
//! once per environment).
//!
//! Worker threads share it, so a lock on it, even a read lock, is a cache line that every request of
//! every worker writes to: with two workers that line moves between cores on each request, and a worker
//! preempted while holding an exclusive lock stalls the other one. Reading here writes nothing shared: the
//! map is published through [`ArcSwap`] (`arc-swap`, already in the tree through `redis`), whose loads
//! touch only the reading thread's own slots. Writing copies the map (O(entries), once per entry made
//! and once per forgetting), which is why it suits only read-mostly data; with keys such as `Arc<str>`
//! a copy allocates nothing per entry (1,000 environments seen for the first time cost half a million
//! reference counts, not half a million strings).

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use foldhash::HashMap;

pub struct ReadMostlyMap<K, V> {
    current: ArcSwap<HashMap<K, Arc<V>>>,
    /// Serialises writers, so that two copies made at once do not lose one another's entry.
    writing: Mutex<()>,
}

impl<K, V> Default for ReadMostlyMap<K, V> {
    fn default() -> Self {
        ReadMostlyMap {
            current: ArcSwap::from_pointee(HashMap::default()),
            writing: Mutex::new(()),
        }
    }
}

impl<K: Hash + Eq + Clone, V> ReadMostlyMap<K, V> {
    /// The entry of `key`, made by `make` the first time.
    pub fn get_or_insert_with<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> Arc<V>
    where
        K: Borrow<Q> + for<'q> From<&'q Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.current.load().get(key) {
            return value.clone();
        }
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        if let Some(value) = current.get(key) {
            return value.clone();
        }
        let value = Arc::new(make());
        let mut copy = HashMap::clone(&current);
        copy.insert(K::from(key), value.clone());
        self.current.store(Arc::new(copy));
        value
    }

    /// Forgets the entries `keep` refuses (in one copy, however many go).
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        if current.keys().all(&keep) {
            return;
        }
        let kept = current
            .iter()
            .filter(|(key, _)| keep(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        self.current.store(Arc::new(kept));
    }

    pub fn len(&self) -> usize {
        self.current.load().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn an_entry_is_made_once_and_shared_until_it_is_forgotten() {
        let map = ReadMostlyMap::<Arc<str>, AtomicUsize>::default();
        let first = map.get_or_insert_with("env1", || AtomicUsize::new(1));
        let again = map.get_or_insert_with("env1", || AtomicUsize::new(99));
        assert!(Arc::ptr_eq(&first, &again), "the second look-up finds the first entry");
        map.get_or_insert_with("env2", || AtomicUsize::new(2));
        assert_eq!(map.len(), 2);

        map.retain(|key| &**key != "env1");
        assert_eq!(map.len(), 1);
        let remade = map.get_or_insert_with("env1", || AtomicUsize::new(3));
        assert_eq!(remade.load(Ordering::Relaxed), 3, "a forgotten entry starts afresh");
        assert_eq!(
            map.get_or_insert_with("env2", || AtomicUsize::new(0))
                .load(Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn threads_inserting_at_once_lose_no_entry() {
        let map = Arc::new(ReadMostlyMap::<Arc<str>, usize>::default());
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        map.get_or_insert_with(format!("env{}", i * 4 + thread).as_str(), || i);
                        map.get_or_insert_with(format!("env{i}").as_str(), || i);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(map.len(), 800);
    }
}
