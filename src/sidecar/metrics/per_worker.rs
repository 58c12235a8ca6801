//! The metrics every request updates (its duration, requests in flight), kept per worker thread and
//! summed when scraped.
//!
//! prometheus-client's `Histogram` is a mutex and its `Gauge` one atomic, each shared by every thread
//! that updates it. With several workers, every request then takes the same lock and writes the same
//! cache lines, so those lines move between cores on each request, and a worker preempted while holding
//! the histogram's lock stalls the others (on the 2-core benchmark, two workers cost more per request
//! than one because of it). Here each worker owns a [`WorkerShard`] on cache lines of its own, so a
//! request writes only lines its own core holds; a scrape, which is rare, reads and adds every shard.
//!
//! [`SpreadGauge`] is the same idea for a gauge that no single worker owns (a connection is counted in
//! by the thread that accepts it and out by the worker that serves it): a cell per thread, added up
//! when read.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Request-duration bucket bounds in seconds: 0.25 ms doubling to about 8 s (then `+Inf`).
const BOUNDS: [f64; 16] = {
    let mut bounds = [0.000_25; 16];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 2.0;
        i += 1;
    }
    bounds
};

/// One worker's share. Aligned to 128 bytes (two cache lines, for the adjacent-line prefetcher) so that
/// no other shard shares its lines.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerShard {
    in_flight: AtomicI64,
    count: AtomicU64,
    /// The sum of the durations, as the bits of an `f64`.
    sum: AtomicU64,
    /// Per bucket, not cumulative; the last is above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
}

impl WorkerShard {
    /// Counts one request of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let bucket = BOUNDS.partition_point(|bound| *bound < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // Only this worker writes here, so the exchange succeeds the first time.
        let _ = self.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + seconds).to_bits())
        });
    }

    /// A request started: in flight until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Counts a request out of flight when dropped (its response body finished or was dropped).
pub struct InFlight(Arc<WorkerShard>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every worker's shard, for the scrape.
#[derive(Clone, Default)]
pub struct Shards(Arc<Mutex<Vec<Arc<WorkerShard>>>>);

impl Shards {
    /// A new shard, for one worker.
    pub fn add(&self) -> Arc<WorkerShard> {
        let shard = Arc::new(WorkerShard::default());
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(shard.clone());
        shard
    }

    fn each(&self) -> Vec<Arc<WorkerShard>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Debug for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards").finish_non_exhaustive()
    }
}

/// `sidecar_request_duration_seconds`: the shards' histograms, added.
#[derive(Clone, Debug)]
pub struct DurationHistogram(pub Shards);

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (mut sum, mut count) = (0.0, 0);
        let mut buckets: Vec<(f64, u64)> = BOUNDS.iter().copied().chain([f64::INFINITY]).map(|b| (b, 0)).collect();
        for shard in self.0.each() {
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
            count += shard.count.load(Ordering::Relaxed);
            for (total, bucket) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += bucket.load(Ordering::Relaxed);
            }
        }
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `sidecar_in_flight_requests`: the shards' requests in flight, added.
#[derive(Clone, Debug)]
pub struct InFlightGauge(pub Shards);

impl EncodeMetric for InFlightGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let in_flight: i64 = self.0.each().iter().map(|s| s.in_flight.load(Ordering::Relaxed)).sum();
        encoder.encode_gauge(&in_flight)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Cells of a [`SpreadGauge`]: threads beyond this many share cells (still correct, only less spread).
const SPREAD_CELLS: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Cell(AtomicI64);

/// A gauge that many threads move: each thread adds to a cell of its own, on lines of their own, and a
/// read adds the cells up. A cell may go below zero (counted in on one thread, out on another); the sum
/// is the gauge's value.
#[derive(Clone, Default)]
pub struct SpreadGauge(Arc<[Cell; SPREAD_CELLS]>);

impl SpreadGauge {
    fn cell(&self) -> &AtomicI64 {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) as usize % SPREAD_CELLS;
        }
        &self.0[MINE.with(|cell| *cell)].0
    }

    pub fn inc(&self) {
        self.cell().fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.cell().fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.iter().map(|cell| cell.0.load(Ordering::Relaxed)).sum()
    }
}

impl fmt::Debug for SpreadGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpreadGauge").field(&self.get()).finish()
    }
}

impl EncodeMetric for SpreadGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    fn scrape(shards: &Shards) -> String {
        let mut registry = Registry::default();
        registry.register("duration_seconds", "d", DurationHistogram(shards.clone()));
        registry.register("in_flight", "f", InFlightGauge(shards.clone()));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_scrape_adds_every_workers_share() {
        let shards = Shards::default();
        let (first, second) = (shards.add(), shards.add());
        first.observe(0.0001);
        first.observe(0.0003);
        second.observe(0.0003);
        second.observe(100.0);
        let held = first.enter();
        let _also = second.enter();
        drop(second.enter());

        let text = scrape(&shards);
        assert!(text.contains("duration_seconds_count 4\n"), "{text}");
        assert!(text.contains("duration_seconds_sum 100.0007"), "{text}");
        // Cumulative: one at or under 0.25 ms, three at or under 0.5 ms, the 100 s one only in +Inf.
        assert!(text.contains("duration_seconds_bucket{le=\"0.00025\"} 1\n"), "{text}");
        assert!(text.contains("duration_seconds_bucket{le=\"0.0005\"} 3\n"), "{text}");
        assert!(text.contains("duration_seconds_bucket{le=\"8.192\"} 3\n"), "{text}");
        assert!(text.contains("duration_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("in_flight 2\n"), "{text}");
        drop(held);
        assert!(scrape(&shards).contains("in_flight 1\n"));
    }

    #[test]
    fn a_spread_gauge_counted_in_on_one_thread_and_out_on_others_adds_up() {
        let gauge = SpreadGauge::default();
        for _ in 0..8 {
            gauge.inc();
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let gauge = gauge.clone();
                std::thread::spawn(move || {
                    gauge.dec();
                    gauge.dec();
                    gauge.inc();
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(gauge.get(), 4);
        let mut registry = Registry::default();
        registry.register("waiting", "w", gauge.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("\nwaiting 4\n"), "{text}");
    }

    #[test]
    fn a_duration_on_a_bound_counts_in_that_bucket() {
        let shards = Shards::default();
        shards.add().observe(0.0005);
        let text = scrape(&shards);
        assert!(text.contains("duration_seconds_bucket{le=\"0.00025\"} 0\n"), "{text}");
        assert!(text.contains("duration_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
    }
}
