//! What the workers report to the management plane.
//!
//! Each worker publishes a copy of its counters and gauges a few times a second into its own
//! slot; readers (the metrics endpoint, tests) sum the slots. The packet path never touches
//! these locks: only the worker's periodic publish and the reader do.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::stats::Stats;
use crate::proto::Gauges;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub stats: Stats,
    pub gauges: Gauges,
    /// Datagrams the kernel refused to send (buffer full, unreachable, denied).
    pub send_errors: u64,
    /// Bytes allocated for stream clients' receive and send buffers.
    pub stream_buffer_bytes: u64,
}

#[derive(Debug)]
pub struct Telemetry {
    /// Each worker's last report and when it was published.
    workers: Vec<Mutex<(WorkerReport, Option<Instant>)>>,
}

impl Telemetry {
    pub fn new(workers: usize) -> Self {
        Self {
            workers: (0..workers).map(|_| Mutex::default()).collect(),
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
    }
}
