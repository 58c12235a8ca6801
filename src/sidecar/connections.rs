//! Caps on client connections, so that a flood of connections (no key needed) cannot grow the sidecar past
//! its memory limit.
//!
//! Every connection is registered from accept to close and is, at any moment, either *serving* a request
//! (from the end of its headers until the last byte of its response has been written) or *waiting* for a
//! request's headers: a new connection, an idle keep-alive one, or one that has sent part of a request. Memory per connection is
//! bounded by the request-head limit, so two caps bound the whole:
//!
//! - `max_pending_headers`: connections waiting at once. Beyond it, the one that has waited longest is
//!   closed (silently when it sent nothing; with a 503 when it had sent part of a request). A client that
//!   holds connections half-sent therefore only ever displaces the oldest of its own kind, and a client
//!   that sends its request promptly is served;
//! - `max_connections`: connections open at once. At the cap, a new connection first makes room the same
//!   way; when every open connection is serving a request, the new one is answered 503 and closed at accept.
//!
//! A connection chosen to make room holds its memory until its task has run and closed it, on a worker
//! thread that a flood may keep busy. So the accept loop waits ([`Connections::wait_for_room`]) while more
//! than [`MAX_CLOSING`] of them are still open: the caps bound the connections that exist, not only the
//! ones counted as waiting.
//!
//! The choice of whom to close scans the table of connections, which happens only at a cap; the hot path
//! (a request's headers arriving, its response ending) is one atomic swap and a gauge update.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use foldhash::HashMap;
use tokio::sync::Notify;

use super::metrics::ConnectionMetrics;

/// The caps, from `--max-connections` and `--max-pending-headers`.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub max_connections: usize,
    pub max_pending_headers: usize,
}

/// `waiting_since` while a request is being served.
const SERVING: u64 = u64::MAX;
/// `waiting_since` once the response body has ended, until what is left of it has been written out.
const ENDING: u64 = u64::MAX - 1;
/// `waiting_since` once the connection was chosen to make room.
const EVICTED: u64 = u64::MAX - 2;

/// Connections chosen to make room that may still be open before the accept loop waits for them to close.
pub const MAX_CLOSING: usize = 64;

/// What the table knows of one connection.
struct Entry {
    /// Nanoseconds since the table's origin at which it started waiting for headers, or a sentinel.
    waiting_since: AtomicU64,
    evicted: Notify,
}

/// The connections being served.
pub struct Connections {
    caps: Caps,
    origin: Instant,
    next_id: AtomicU64,
    table: Mutex<HashMap<u64, Arc<Entry>>>,
    /// Connections chosen to make room and not closed yet.
    closing: AtomicUsize,
    /// Notified when one of those closes.
    closed: Notify,
    metrics: ConnectionMetrics,
}

impl Connections {
    pub fn new(caps: Caps, metrics: ConnectionMetrics) -> Arc<Self> {
        Arc::new(Connections {
            caps,
            origin: Instant::now(),
            next_id: AtomicU64::new(0),
            table: Mutex::default(),
            closing: AtomicUsize::new(0),
            closed: Notify::new(),
            metrics,
        })
    }

    fn now(&self) -> u64 {
        (self.origin.elapsed().as_nanos() as u64).min(EVICTED - 1)
    }

    /// Registers a connection just accepted (waiting for its first request's headers), first closing the
    /// connection waiting longest if a cap calls for it. `None`: at `max_connections` with every
    /// connection serving a request; the new one is to be refused.
    pub fn admit(self: &Arc<Self>) -> Option<Registration> {
        let open = self.metrics.open.get().max(0) as usize;
        let waiting = self.metrics.waiting.get().max(0) as usize;
        let full = open >= self.caps.max_connections;
        if (full || waiting >= self.caps.max_pending_headers) && self.evict_longest_waiting() {
            self.metrics.closed_waiting_longest.inc();
        } else if full {
            self.metrics.refused_at_capacity.inc();
            return None;
        }
        let entry = Arc::new(Entry {
            waiting_since: AtomicU64::new(self.now()),
            evicted: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, entry.clone());
        self.metrics.open.inc();
        self.metrics.waiting.inc();
        Some(Registration {
            id,
            entry,
            owner: self.clone(),
        })
    }

    /// Marks the connection that has waited longest for headers as evicted and wakes it. False when no
    /// connection is waiting.
    fn evict_longest_waiting(&self) -> bool {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let oldest = table
                .values()
                .filter_map(|entry| {
                    let since = entry.waiting_since.load(Ordering::Acquire);
                    (since < EVICTED).then_some((since, entry))
                })
                .min_by_key(|(since, _)| *since);
            let Some((since, entry)) = oldest else {
                return false;
            };
            // It may have started serving a request since it was read: then look again.
            if entry
                .waiting_since
                .compare_exchange(since, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.metrics.waiting.dec();
                self.closing.fetch_add(1, Ordering::AcqRel);
                entry.evicted.notify_one();
                return true;
            }
        }
    }

    /// Resolves once at most [`MAX_CLOSING`] of the connections chosen to make room are still open.
    pub async fn wait_for_room(&self) {
        while self.closing.load(Ordering::Acquire) > MAX_CLOSING {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so a close between the two is not missed.
            closed.as_mut().enable();
            if self.closing.load(Ordering::Acquire) <= MAX_CLOSING {
                return;
            }
            closed.await;
        }
    }

    /// An evicted connection has closed, or started a request after all (it is then served).
    fn no_longer_closing(&self) {
        self.closing.fetch_sub(1, Ordering::AcqRel);
        self.closed.notify_waiters();
    }
}

/// One connection's place in the table, held by its task; dropping it unregisters the connection.
pub struct Registration {
    id: u64,
    entry: Arc<Entry>,
    owner: Arc<Connections>,
}

impl Registration {
    /// A request's headers have arrived.
    pub fn serving(&self) {
        self.stop_waiting();
    }

    /// Counts the connection out of the waiting (or evicted and closing) ones, once: a swap, not a load, so
    /// that an eviction racing with a request or a close cannot count it out twice.
    fn stop_waiting(&self) {
        let before = self.entry.waiting_since.swap(SERVING, Ordering::AcqRel);
        if before < EVICTED {
            self.owner.metrics.waiting.dec();
        } else if before == EVICTED {
            self.owner.no_longer_closing();
        }
    }

    /// The response body has ended (or was dropped); its last bytes may not be written out yet.
    pub fn ending(&self) {
        let _ = self
            .entry
            .waiting_since
            .compare_exchange(SERVING, ENDING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Everything written so far has been written out: after [`Registration::ending`], the connection
    /// waits for the next request's headers.
    pub fn flushed(&self) {
        let now = self.owner.now();
        if self
            .entry
            .waiting_since
            .compare_exchange(ENDING, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.owner.metrics.waiting.inc();
        }
    }

    /// Whether the connection waits for a request's headers (no response is being served or written).
    pub fn is_waiting(&self) -> bool {
        self.entry.waiting_since.load(Ordering::Acquire) <= EVICTED
    }

    /// Whether the connection was chosen to make room (and has not started a request since).
    pub fn is_evicted(&self) -> bool {
        self.entry.waiting_since.load(Ordering::Acquire) == EVICTED
    }

    /// Resolves when the connection is chosen to make room; check [`Registration::is_evicted`] then, as it
    /// may have started a request in the meantime.
    pub async fn evicted(&self) {
        self.entry.evicted.notified().await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop_waiting();
        self.owner.metrics.open.dec();
        self.owner
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn connections(max_connections: usize, max_pending_headers: usize) -> Arc<Connections> {
        Connections::new(
            Caps {
                max_connections,
                max_pending_headers,
            },
            ConnectionMetrics::default(),
        )
    }

    #[test]
    fn beyond_the_pending_cap_the_connection_waiting_longest_is_evicted() {
        let table = connections(100, 2);
        let first = table.admit().unwrap();
        let second = table.admit().unwrap();
        let third = table.admit().unwrap();
        assert!(first.is_evicted(), "the oldest made room");
        assert!(!second.is_evicted() && !third.is_evicted());
        assert_eq!(table.metrics.waiting.get(), 2);
        assert_eq!(table.metrics.open.get(), 3, "until it closes");
        drop(first);
        assert_eq!(table.metrics.open.get(), 2);
        assert_eq!(table.metrics.closed_waiting_longest.get(), 1);
    }

    #[test]
    fn a_connection_serving_a_request_is_never_evicted() {
        let table = connections(2, 100);
        let busy = table.admit().unwrap();
        busy.serving();
        let idle = table.admit().unwrap();
        let newcomer = table.admit().expect("room made by evicting the idle one");
        assert!(idle.is_evicted() && !busy.is_evicted() && !newcomer.is_evicted());
        drop(idle);
        newcomer.serving();
        assert!(table.admit().is_none(), "every open connection serves a request");
        busy.ending();
        assert!(table.admit().is_none(), "its response is not written out yet");
        busy.flushed();
        assert!(table.admit().is_some(), "a connection back to waiting can make room");
        assert_eq!(table.metrics.refused_at_capacity.get(), 2);
    }

    #[tokio::test]
    async fn the_accept_loop_waits_while_too_many_evicted_connections_are_still_open() {
        use futures::FutureExt;
        let table = connections(10_000, 1);
        let mut open: Vec<Registration> = (0..MAX_CLOSING + 2).map(|_| table.admit().unwrap()).collect();
        assert!(open[..MAX_CLOSING + 1].iter().all(Registration::is_evicted));
        assert!(
            table.wait_for_room().now_or_never().is_none(),
            "{} evicted connections still open",
            MAX_CLOSING + 1
        );
        let waiting = tokio::spawn({
            let table = table.clone();
            async move { table.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        drop(open.remove(0));
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("a close wakes the accept loop")
            .unwrap();
        // An evicted connection whose request arrived at the same moment is served, and no longer counts.
        let late = open.remove(0);
        assert!(late.is_evicted());
        late.serving();
        assert_eq!(table.closing.load(Ordering::Acquire), MAX_CLOSING - 1);
        drop(late);
        assert_eq!(
            table.closing.load(Ordering::Acquire),
            MAX_CLOSING - 1,
            "counted out once"
        );
    }

    #[test]
    fn the_gauges_follow_requests_and_closes() {
        let table = connections(10, 10);
        let a = table.admit().unwrap();
        let b = table.admit().unwrap();
        a.serving();
        assert_eq!((table.metrics.open.get(), table.metrics.waiting.get()), (2, 1));
        a.ending();
        assert!(!a.is_waiting(), "until the rest of the response is written");
        a.flushed();
        a.flushed();
        assert!(a.is_waiting());
        assert_eq!(table.metrics.waiting.get(), 2, "a second flush counts once");
        drop(a);
        drop(b);
        assert_eq!((table.metrics.open.get(), table.metrics.waiting.get()), (0, 0));
    }
}
