//! What the workers report to the management plane.
//!
//! Each worker publishes a copy of its counters and gauges a few times a second into its own
//! slot; readers (the metrics endpoint, tests) sum the slots. The packet path never touches
//! these locks: only the worker's periodic publish and the reader do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::stats::Stats;
use crate::proto::Gauges;
use crate::usage::Sink;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub stats: Stats,
    pub gauges: Gauges,
    /// Datagrams the kernel refused to send (buffer full, unreachable, denied).
    pub send_errors: u64,
    /// Bytes allocated for stream clients' receive and send buffers.
    pub stream_buffer_bytes: u64,
    /// What the XDP program relayed and passed (worker 0 reports it; src/net/xdp.rs).
    pub kernel: crate::net::xdp::KernelTotals,
}

#[derive(Debug)]
pub struct Telemetry {
    /// Each worker's last report and when it was published.
    workers: Vec<Mutex<(WorkerReport, Option<Instant>)>>,
    /// Ended allocations and their usage records; updated in place (atomics), since the
    /// sink threads count into it too.
    pub usage: UsageMetrics,
}

impl Telemetry {
    pub fn new(workers: usize) -> Self {
        Self {
            workers: (0..workers).map(|_| Mutex::default()).collect(),
            usage: UsageMetrics::default(),
        }
    }

    pub fn publish(&self, worker: usize, report: &WorkerReport, now: Instant) {
        if let Some(slot) = self.workers.get(worker) {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.0.clone_from(report);
            slot.1 = Some(now);
        }
    }

    /// Whether every worker has published within `max_age` of `now`: a stuck or dead worker
    /// stops publishing, so this is what the systemd watchdog pings on.
    pub fn all_workers_alive(&self, now: Instant, max_age: Duration) -> bool {
        self.workers.iter().all(|slot| {
            let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.1
                .is_some_and(|at| now.saturating_duration_since(at) <= max_age)
        })
    }

    /// The reports of all workers added up.
    pub fn total(&self) -> WorkerReport {
        let mut total = WorkerReport::default();
        for slot in &self.workers {
            let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            total.add(&slot.0);
        }
        total
    }
}

impl WorkerReport {
    fn add(&mut self, other: &WorkerReport) {
        self.stats.add(&other.stats);
        for (sum, n) in self
            .gauges
            .allocations
            .iter_mut()
            .zip(other.gauges.allocations)
        {
            *sum += n;
        }
        self.gauges.permissions += other.gauges.permissions;
        self.gauges.channels += other.gauges.channels;
        self.send_errors += other.send_errors;
        self.stream_buffer_bytes += other.stream_buffer_bytes;
        self.kernel.add(&other.kernel);
    }
}

/// Upper bounds of `turnpike_allocation_duration_seconds`: powers of 4 from 1 s to 18 h, so
/// failed calls (seconds), calls (minutes to an hour) and leaks (hours) land apart.
pub const DURATION_BUCKETS: [f64; 9] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];
/// Upper bounds of `turnpike_allocation_bytes`: powers of 8 from 1 KiB (an ICE check or two)
/// to 16 GiB (hours of video).
pub const BYTES_BUCKETS: [f64; 9] = [
    1024.0,
    8192.0,
    65536.0,
    524_288.0,
    4_194_304.0,
    33_554_432.0,
    268_435_456.0,
    2_147_483_648.0,
    17_179_869_184.0,
];

/// Usage counters and the two per-allocation histograms, kept in atomics: workers observe
/// an ended allocation and sink threads count records without taking a lock.
#[derive(Debug, Default)]
pub struct UsageMetrics {
    delivered: [AtomicU64; Sink::ALL.len()],
    dropped: [AtomicU64; Sink::ALL.len()],
    /// Sum in microseconds.
    duration: AtomicHistogram<{ DURATION_BUCKETS.len() + 1 }>,
    bytes: AtomicHistogram<{ BYTES_BUCKETS.len() + 1 }>,
}

/// A point-in-time copy of [`UsageMetrics`] for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSnapshot {
    /// Records delivered, per sink.
    pub delivered: [(Sink, u64); Sink::ALL.len()],
    /// Records dropped (queue full, or given up), per sink.
    pub dropped: [(Sink, u64); Sink::ALL.len()],
    pub duration: HistogramSnapshot,
    pub bytes: HistogramSnapshot,
}

/// A histogram's sum, count and per-bucket (not cumulative) counts, the last bucket's bound
/// being +Inf.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl UsageMetrics {
    pub fn delivered(&self, sink: Sink, records: u64) {
        self.delivered[sink as usize].fetch_add(records, Ordering::Relaxed);
    }

    pub fn dropped(&self, sink: Sink, records: u64) {
        self.dropped[sink as usize].fetch_add(records, Ordering::Relaxed);
    }

    /// One ended allocation: how long it lived and what it relayed, both ways together.
    pub fn observe(&self, duration: Duration, bytes: u64) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.duration
            .observe(bucket(&DURATION_BUCKETS, duration.as_secs_f64()), micros);
        self.bytes
            .observe(bucket(&BYTES_BUCKETS, bytes as f64), bytes);
    }

    pub fn snapshot(&self) -> UsageSnapshot {
        let per_sink = |counters: &[AtomicU64; Sink::ALL.len()]| {
            Sink::ALL.map(|sink| (sink, counters[sink as usize].load(Ordering::Relaxed)))
        };
        UsageSnapshot {
            delivered: per_sink(&self.delivered),
            dropped: per_sink(&self.dropped),
            duration: self.duration.snapshot(&DURATION_BUCKETS, 1e-6),
            bytes: self.bytes.snapshot(&BYTES_BUCKETS, 1.0),
        }
    }
}

/// The index of the first bucket whose bound is `>= value` (Prometheus' `le`), or the +Inf
/// bucket.
fn bucket(bounds: &[f64], value: f64) -> usize {
    bounds
        .iter()
        .position(|&bound| value <= bound)
        .unwrap_or(bounds.len())
}

/// Per-bucket counts, the count and the sum (in integer units) of a histogram.
#[derive(Debug)]
struct AtomicHistogram<const N: usize> {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Default for AtomicHistogram<N> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> AtomicHistogram<N> {
    fn observe(&self, bucket: usize, units: u64) {
        if let Some(counter) = self.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(units, Ordering::Relaxed);
    }

    /// `unit` converts the integer sum to the histogram's unit (1e-6 for microseconds).
    fn snapshot(&self, bounds: &[f64], unit: f64) -> HistogramSnapshot {
        let buckets = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect::<Vec<_>>();
        // The count is the buckets' total, so a scrape racing an observation stays
        // consistent (`le="+Inf"` equals `_count`).
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSnapshot {
            sum: self.sum.load(Ordering::Relaxed) as f64 * unit,
            count,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_put_values_in_le_buckets() {
        let metrics = UsageMetrics::default();
        metrics.observe(Duration::from_millis(500), 0);
        metrics.observe(Duration::from_secs(1), 1024);
        metrics.observe(Duration::from_secs(5), 1025);
        metrics.observe(Duration::from_secs(100_000), u64::MAX);
        let snap = metrics.snapshot();
        let counts = |h: &HistogramSnapshot| h.buckets.iter().map(|(_, n)| *n).collect::<Vec<_>>();
        assert_eq!(counts(&snap.duration), [2, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(counts(&snap.bytes), [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(snap.duration.count, 4);
        assert!((snap.duration.sum - 100_006.5).abs() < 1e-6);
        assert_eq!(snap.duration.buckets.last().unwrap().0, f64::INFINITY);
        metrics.dropped(Sink::Webhook, 3);
        metrics.delivered(Sink::File, 2);
        let snap = metrics.snapshot();
        assert_eq!(snap.dropped[Sink::Webhook as usize], (Sink::Webhook, 3));
        assert_eq!(snap.delivered[Sink::File as usize], (Sink::File, 2));
    }
}
