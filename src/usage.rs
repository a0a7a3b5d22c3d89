//! Usage records: one JSON object per ended allocation (who, from where, how long, how much
//! each way, why it ended), for billing and abuse review.
//!
//! A worker builds a [`UsageRecord`] from the core's `Event::AllocationEnded` and hands it to
//! [`UsageSinks::submit`], which offers it to every configured sink (log, file, webhook) with
//! a non-blocking `try_send` into that sink's bounded queue. Each sink drains its queue on
//! its own thread. A full queue drops the record and counts it
//! (`turnpike_usage_records_dropped_total{sink}`): a slow disk or a dead webhook never slows
//! relaying.
//!
//! What this module does not do: keep records across a crash (records still queued when the
//! process is killed are lost; a normal stop flushes them, within a bound), or deliver to a
//! webhook exactly once (a request whose answer is lost is sent again; `id` tells the copies
//! apart).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config;
use crate::proto::allocation::Usage;
use crate::proto::{EndReason, Event};
use crate::telemetry::Telemetry;

/// Records per webhook request: a batch of 100 is about 40 KB of JSON.
pub const WEBHOOK_BATCH: usize = 100;
/// First pause after a failed webhook request; it doubles up to [`WEBHOOK_MAX_BACKOFF`].
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between webhook attempts: a receiver back from an outage gets the backlog
/// within this.
const WEBHOOK_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A batch the receiver refuses this many times with a 4xx other than 408 or 429 is given
/// up: the receiver says the request itself is wrong, and retrying it would block the
/// records behind it for good.
const WEBHOOK_MAX_REFUSALS: u32 = 3;
/// How long stopping waits for the log and file sinks to write what is queued.
const LOCAL_FLUSH: Duration = Duration::from_secs(2);
/// At most one warning per sink this often about dropped records or failing deliveries.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One ended allocation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    /// `"{worker}-{allocation}"`: unique within one run of the daemon.
    pub id: String,
    pub username: String,
    pub realm: String,
    /// The client's address as the server saw it.
    pub client: SocketAddr,
    /// The listening address the client talked to.
    pub server: SocketAddr,
    /// `udp`, `tcp` or `tls`: how the client reached the server.
    pub transport: &'static str,
    /// The relayed transport addresses handed to the client (XOR-RELAYED-ADDRESS).
    pub relays: Vec<SocketAddr>,
    /// RFC 3339, UTC, whole seconds.
    pub start: String,
    pub end: String,
    /// From the monotonic clock, so a wall-clock step does not skew it.
    pub duration_secs: f64,
    /// Application bytes (the DATA or ChannelData payload) relayed to peers.
    pub to_peer_bytes: u64,
    pub to_peer_packets: u64,
    pub from_peer_bytes: u64,
    pub from_peer_packets: u64,
    /// `expired`, `deleted`, `connection_closed`, `shutdown`, `kicked` or `revoked`.
    pub reason: &'static str,
}

impl UsageRecord {
    /// The record of an `AllocationEnded` event (`None` for any other event), ended at
    /// `ended` (monotonic) and `ended_unix` (wall clock).
    pub fn from_event(
        event: &Event,
        worker: usize,
        realm: &str,
        ended: Instant,
        ended_unix: u64,
    ) -> Option<UsageRecord> {
        let Event::AllocationEnded {
            id,
            tuple,
            username,
            relays,
            usage,
            reason,
        } = event
        else {
            return None;
        };
        let Usage {
            started,
            started_unix,
            to_peer_packets,
            to_peer_bytes,
            from_peer_packets,
            from_peer_bytes,
        } = *usage;
        let duration = ended.saturating_duration_since(started);
        Some(UsageRecord {
            id: format!("{worker}-{id}"),
            username: username.clone(),
            realm: realm.to_owned(),
            client: tuple.client,
            server: tuple.server,
            transport: tuple.transport.as_str(),
            relays: relays.iter().map(|r| r.advertised).collect(),
            start: rfc3339(started_unix),
            // Never before the start, whatever the wall clock did meanwhile.
            end: rfc3339(ended_unix.max(started_unix)),
            // Milliseconds are plenty for billing and keep the JSON short.
            duration_secs: (duration.as_secs_f64() * 1000.0).round() / 1000.0,
            to_peer_bytes,
            to_peer_packets,
            from_peer_bytes,
            from_peer_packets,
            reason: EndReason::as_str(*reason),
        })
    }

    /// Relayed bytes, both directions.
    pub fn bytes(&self) -> u64 {
        self.to_peer_bytes.saturating_add(self.from_peer_bytes)
    }

    pub fn duration(&self) -> Duration {
        Duration::try_from_secs_f64(self.duration_secs).unwrap_or_default()
    }
}

/// Unix seconds as RFC 3339 UTC with second precision (`2024-02-29T13:05:09Z`).
pub fn rfc3339(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`,
/// shifted so the year starts in March and leap days come last).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A place records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Log = 0,
    File = 1,
    Webhook = 2,
}

impl Sink {
    pub const ALL: [Sink; 3] = [Sink::Log, Sink::File, Sink::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Log => "log",
            Sink::File => "file",
            Sink::Webhook => "webhook",
        }
    }
}

enum Message {
    Record(Arc<UsageRecord>),
    /// Reopen the file (SIGHUP); the flag says so too, in case the queue was full.
    Reopen,
}

struct Queue {
    sink: Sink,
    tx: SyncSender<Message>,
    /// Unix seconds of the last warning about drops.
    last_warning: AtomicU64,
}

/// The running sinks. Shared by the workers, which only ever `try_send` into the queues.
pub struct UsageSinks {
    /// `None` once closed: dropping the senders is what tells the sink threads to finish.
    queues: RwLock<Option<Vec<Queue>>>,
    telemetry: Arc<Telemetry>,
    /// Set by [`UsageSinks::reopen`], taken by the file sink before its next write.
    reopen: Arc<AtomicBool>,
    /// When [`UsageSinks::close`] began: the webhook stops retrying and has until the
    /// webhook timeout past it to deliver what is left.
    closing: Arc<OnceLock<Instant>>,
    threads: Mutex<Vec<(Sink, JoinHandle<()>)>>,
    /// How long [`UsageSinks::close`] waits for the threads.
    flush_wait: Duration,
}

impl UsageSinks {
    /// No sink: records are only counted in the histograms.
    pub fn none(telemetry: Arc<Telemetry>) -> UsageSinks {
        UsageSinks {
            queues: RwLock::new(Some(Vec::new())),
            telemetry,
            reopen: Arc::default(),
            closing: Arc::default(),
            threads: Mutex::default(),
            flush_wait: Duration::ZERO,
        }
    }

    /// Opens the file and starts a thread per configured sink. The error names the key.
    pub fn start(config: &config::Usage, telemetry: Arc<Telemetry>) -> io::Result<UsageSinks> {
        let mut sinks = UsageSinks::none(telemetry.clone());
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        let mut spawn = |sink: Sink, body: Box<dyn FnOnce(Receiver<Message>) + Send>| {
            let (tx, rx) = sync_channel(config.queue_size.get());
            let handle = std::thread::Builder::new()
                .name(format!("turnpike-usage-{}", sink.as_str()))
                .spawn(move || body(rx))?;
            queues.push(Queue {
                sink,
                tx,
                last_warning: AtomicU64::new(0),
            });
            threads.push((sink, handle));
            io::Result::Ok(())
        };
        if config.log {
            let telemetry = telemetry.clone();
            spawn(Sink::Log, Box::new(move |rx| log_sink(rx, &telemetry)))?;
        }
        if let Some(path) = &config.file {
            let file = open_append(path).map_err(|e| {
                io::Error::new(e.kind(), format!("usage.file {}: {e}", path.display()))
            })?;
            let (path, reopen, telemetry) = (path.clone(), sinks.reopen.clone(), telemetry.clone());
            spawn(
                Sink::File,
                Box::new(move |rx| FileSink { path, file, reopen }.run(rx, &telemetry)),
            )?;
        }
        let mut flush_wait = LOCAL_FLUSH;
        if let Some(url) = &config.webhook_url {
            let webhook = Webhook::new(url, config.webhook_timeout_secs.get())
                .map_err(|e| io::Error::other(format!("usage.webhook_url {url}: {e}")))?;
            let (closing, telemetry) = (sinks.closing.clone(), telemetry.clone());
            spawn(
                Sink::Webhook,
                Box::new(move |rx| webhook.run(rx, &closing, &telemetry)),
            )?;
            // The webhook gets one request's time to take what is left.
            flush_wait = flush_wait.max(config.webhook_timeout_secs.get() + Duration::from_secs(1));
        }
        sinks.queues = RwLock::new(Some(queues));
        sinks.threads = Mutex::new(threads);
        sinks.flush_wait = flush_wait;
        Ok(sinks)
    }

    /// Counts the allocation in the histograms and offers its record to every sink without
    /// waiting: a sink whose queue is full loses this record (counted).
    pub fn submit(&self, record: UsageRecord) {
        self.telemetry
            .usage
            .observe(record.duration(), record.bytes());
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        let Some(queues) = queues.as_ref().filter(|q| !q.is_empty()) else {
            return;
        };
        let record = Arc::new(record);
        for queue in queues {
            match queue.tx.try_send(Message::Record(record.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.telemetry.usage.dropped(queue.sink, 1);
                    if warn_now(&queue.last_warning) {
                        tracing::warn!(
                            sink = queue.sink.as_str(),
                            "usage record dropped: the sink's queue is full (usage.queue_size)"
                        );
                    }
                }
            }
        }
    }

    /// Has the file sink reopen its file before its next write (SIGHUP, for logrotate).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        for queue in queues.iter().flatten() {
            if queue.sink == Sink::File {
                // Full: the flag is seen before the next queued record is written.
                let _ = queue.tx.try_send(Message::Reopen);
            }
        }
    }

    /// Closes the queues and waits, at most about the webhook timeout, for the sinks to
    /// deliver what was queued (the workers have handed over their last records by now).
    pub fn close(&self) {
        let _ = self.closing.set(Instant::now());
        drop(
            self.queues
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let deadline = Instant::now() + self.flush_wait;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for (sink, handle) in threads {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::warn!(
                    sink = sink.as_str(),
                    "usage sink did not finish in time; its remaining records are lost"
                );
            }
        }
    }
}

/// Whether a rate-limited warning may go out now (at most one per [`WARN_INTERVAL`]).
fn warn_now(last: &AtomicU64) -> bool {
    let now = crate::unix_now();
    let previous = last.load(Ordering::Relaxed);
    now >= previous + WARN_INTERVAL.as_secs()
        && last
            .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

fn log_sink(rx: Receiver<Message>, telemetry: &Telemetry) {
    for message in rx {
        if let Message::Record(record) = message {
            match serde_json::to_string(&*record) {
                Ok(json) => {
                    tracing::info!(target: "turnpike::usage", "{json}");
                    telemetry.usage.delivered(Sink::Log, 1);
                }
                Err(e) => {
                    tracing::error!("cannot encode a usage record: {e}");
                    telemetry.usage.dropped(Sink::Log, 1);
                }
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct FileSink {
    path: PathBuf,
    file: File,
    reopen: Arc<AtomicBool>,
}

impl FileSink {
    fn run(mut self, rx: Receiver<Message>, telemetry: &Telemetry) {
        let last_warning = AtomicU64::new(0);
        for message in rx {
            if self.reopen.swap(false, Ordering::AcqRel) {
                match open_append(&self.path) {
                    Ok(file) => {
                        self.file = file;
                        tracing::info!(path = %self.path.display(), "usage file reopened");
                    }
                    // Records go on into the old file (renamed or not): none is lost.
                    Err(e) => tracing::error!(
                        path = %self.path.display(),
                        "cannot reopen the usage file, still writing to the old one: {e}"
                    ),
                }
            }
            let Message::Record(record) = message else {
                continue;
            };
            let written = serde_json::to_vec(&*record)
                .map_err(io::Error::from)
                .and_then(|mut line| {
                    line.push(b'\n');
                    // One write(2) per record with O_APPEND: a reader never sees half a line
                    // from this writer.
                    self.file.write_all(&line)
                });
            match written {
                Ok(()) => telemetry.usage.delivered(Sink::File, 1),
                Err(e) => {
                    telemetry.usage.dropped(Sink::File, 1);
                    if warn_now(&last_warning) {
                        tracing::error!(path = %self.path.display(), "cannot write a usage record: {e}");
                    }
                }
            }
        }
        let _ = self.file.sync_data();
    }
}

/// Why one webhook request failed.
enum Failure {
    /// Not reachable, timed out, or a 5xx/408/429: try again later.
    Transient(String),
    /// A 4xx the receiver will answer again: the request itself is refused.
    Refused(String),
}

struct Webhook {
    url: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl Webhook {
    fn new(url: &str, timeout: Duration) -> Result<Webhook, String> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .user_agent("turnpike");
        if url.starts_with("https:") {
            config = config.tls_config(crate::probe::http::tls_config(
                &crate::probe::tls::TlsOptions::default(),
            )?);
        }
        Ok(Webhook {
            url: url.to_owned(),
            agent: ureq::Agent::new_with_config(config.build()),
            timeout,
        })
    }

    /// Sends batches until the queue is closed and empty. While running, a failed batch is
    /// retried with backoff; once closing, what is left must go within one timeout of the
    /// start of the close, and the first failure gives up the rest.
    fn run(self, rx: Receiver<Message>, closing: &OnceLock<Instant>, telemetry: &Telemetry) {
        let last_warning = AtomicU64::new(0);
        let mut batch: Vec<Arc<UsageRecord>> = Vec::with_capacity(WEBHOOK_BATCH);
        loop {
            // Wait for a first record, then take what else is queued, up to a batch.
            match rx.recv() {
                Ok(Message::Record(record)) => batch.push(record),
                Ok(Message::Reopen) => continue,
                Err(_) => return,
            }
            while batch.len() < WEBHOOK_BATCH {
                match rx.try_recv() {
                    Ok(Message::Record(record)) => batch.push(record),
                    Ok(Message::Reopen) => {}
                    Err(_) => break,
                }
            }
            let mut backoff = WEBHOOK_BACKOFF;
            let mut refusals = 0;
            loop {
                let closing_at = closing.get().copied();
                let shutting_down = closing_at.is_some();
                let budget = closing_at.map_or(self.timeout, |at| {
                    (at + self.timeout).saturating_duration_since(Instant::now())
                });
                let result = if budget.is_zero() {
                    Err(Failure::Transient("no time left at shutdown".to_owned()))
                } else {
                    self.post(&batch, budget)
                };
                let why = match result {
                    Ok(()) => {
                        telemetry.usage.delivered(Sink::Webhook, batch.len() as u64);
                        batch.clear();
                        break;
                    }
                    Err(Failure::Refused(why)) => {
                        refusals += 1;
                        if refusals >= WEBHOOK_MAX_REFUSALS {
                            tracing::error!(
                                url = %self.url,
                                records = batch.len(),
                                "usage webhook refused a batch {refusals} times, giving it up: {why}"
                            );
                            telemetry.usage.dropped(Sink::Webhook, batch.len() as u64);
                            batch.clear();
                            break;
                        }
                        why
                    }
                    Err(Failure::Transient(why)) => why,
                };
                if shutting_down {
                    // Stopping: no retries; what is left is lost (counted).
                    let left = batch.len() as u64 + drain(&rx);
                    telemetry.usage.dropped(Sink::Webhook, left);
                    tracing::warn!(
                        url = %self.url,
                        records = left,
                        "usage webhook failed while stopping, its remaining records are lost: {why}"
                    );
                    return;
                }
                if warn_now(&last_warning) {
                    tracing::warn!(
                        url = %self.url,
                        records = batch.len(),
                        retry_in = ?backoff,
                        "usage webhook failed, retrying: {why}"
                    );
                }
                sleep_unless(closing, backoff);
                backoff = (backoff * 2).min(WEBHOOK_MAX_BACKOFF);
            }
        }
    }

    fn post(&self, batch: &[Arc<UsageRecord>], budget: Duration) -> Result<(), Failure> {
        let records: Vec<&UsageRecord> = batch.iter().map(|r| &**r).collect();
        let body = serde_json::to_vec(&records).map_err(|e| Failure::Refused(e.to_string()))?;
        let response = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(budget.min(self.timeout)))
            .build()
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500.. => Err(Failure::Transient(format!("HTTP {status}"))),
            _ => Err(Failure::Refused(format!("HTTP {status}"))),
        }
    }
}

/// Empties the queue, returning how many records it held.
fn drain(rx: &Receiver<Message>) -> u64 {
    rx.try_iter()
        .filter(|m| matches!(m, Message::Record(_)))
        .count() as u64
}

/// Sleeps `pause`, waking early once `closing` is set.
fn sleep_unless(closing: &OnceLock<Instant>, pause: Duration) {
    let end = Instant::now() + pause;
    while closing.get().is_none() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::allocation::RelayAddress;
    use crate::proto::{FiveTuple, Transport};

    #[test]
    fn rfc3339_formats_civil_dates() {
        // Values checked against Python's datetime.utcfromtimestamp.
        for (unix, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_868_800, "2000-03-01T00:00:00Z"),
            (1_709_211_909, "2024-02-29T13:05:09Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(unix), text, "{unix}");
        }
    }

    fn ended(reason: EndReason) -> Event {
        let started = Instant::now();
        Event::AllocationEnded {
            id: 42,
            tuple: FiveTuple {
                client: "192.0.2.1:5000".parse().unwrap(),
                server: "[2001:db8::1]:3478".parse().unwrap(),
                transport: Transport::Tcp,
            },
            username: "1700000000:alice".to_owned(),
            relays: vec![RelayAddress {
                local: "10.0.0.1:50000".parse().unwrap(),
                advertised: "203.0.113.9:50000".parse().unwrap(),
            }],
            usage: Usage {
                started,
                started_unix: 1_709_211_909,
                to_peer_packets: 3,
                to_peer_bytes: 300,
                from_peer_packets: 4,
                from_peer_bytes: 4000,
            },
            reason,
        }
    }

    #[test]
    fn record_of_an_ended_allocation() {
        let event = ended(EndReason::ConnectionClosed);
        let Event::AllocationEnded { usage, .. } = &event else {
            unreachable!()
        };
        let at = usage.started + Duration::from_millis(61_234);
        let record = UsageRecord::from_event(&event, 3, "example.org", at, 1_709_211_970).unwrap();
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "3-42",
                "username": "1700000000:alice",
                "realm": "example.org",
                "client": "192.0.2.1:5000",
                "server": "[2001:db8::1]:3478",
                "transport": "tcp",
                "relays": ["203.0.113.9:50000"],
                "start": "2024-02-29T13:05:09Z",
                "end": "2024-02-29T13:06:10Z",
                "duration_secs": 61.234,
                "to_peer_bytes": 300,
                "to_peer_packets": 3,
                "from_peer_bytes": 4000,
                "from_peer_packets": 4,
                "reason": "connection_closed",
            })
        );
        assert_eq!(record.bytes(), 4300);
        // A wall clock stepped back does not end it before it started.
        let record = UsageRecord::from_event(&event, 0, "r", at, 5).unwrap();
        assert_eq!(record.end, record.start);
        assert!(UsageRecord::from_event(
            &Event::RelayReleased {
                relay: "10.0.0.1:50000".parse().unwrap()
            },
            0,
            "r",
            at,
            0
        )
        .is_none());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let telemetry = Arc::new(Telemetry::new(1));
        let (tx, rx) = sync_channel(2);
        let sinks = UsageSinks::none(telemetry.clone());
        *sinks.queues.write().unwrap() = Some(vec![Queue {
            sink: Sink::File,
            tx,
            last_warning: AtomicU64::new(0),
        }]);
        let event = ended(EndReason::Deleted);
        let record = UsageRecord::from_event(&event, 0, "r", Instant::now(), 0).unwrap();
        for _ in 0..5 {
            sinks.submit(record.clone());
        }
        let snapshot = telemetry.usage.snapshot();
        assert_eq!(snapshot.dropped[Sink::File as usize].1, 3);
        assert_eq!(snapshot.duration.count, 5);
        assert_eq!(rx.try_iter().count(), 2);
    }
}
