//! Usage records (issue 15): one JSON record per ended allocation, in the file sink, the
//! webhook sink and the log, checked against what the tests relayed themselves and what
//! coturn's `turnutils_uclient` reports. Also: logrotate (rename + SIGHUP), a webhook that
//! is down and then comes up, a webhook that stalls (bounded queue, drops counted, relaying
//! unaffected, exit bounded), and hostile `[usage]` keys through `check-config`.
//! turnpike-specific: coturn writes no such records.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hardening::metrics;
use crate::harness::{
    rest_credentials, run_with_timeout, stun_binding_answered, temp_dir, CmdOutput, Server,
    TempDir, REALM, SECRET,
};
use crate::stun_client::{TcpTurn, UdpTurn};
use crate::uclient::{uclient, uclient_stats};

/// How long a record may take to reach a sink.
const RECORD_WAIT: Duration = Duration::from_secs(10);
const CHANNEL: u16 = 0x4000;

/// A server whose config file holds `toml` (a `[usage]` section, say) beside the default
/// flags; the directory holds the config and the usage file.
fn start(toml: &str, extra: &[&str]) -> (Server, TempDir) {
    let dir = temp_dir("usage");
    let config = dir.path().join("turnpike.toml");
    std::fs::write(&config, toml).unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Server::start(&args), dir)
}

fn file_sink(dir: &TempDir) -> PathBuf {
    dir.path().join("usage.jsonl")
}

/// `[usage]` with the file sink at `dir/usage.jsonl` and `more` keys.
fn usage_section(dir: &Path, more: &str) -> String {
    format!(
        "[usage]\nfile = {:?}\n{more}",
        dir.join("usage.jsonl").display()
    )
}

/// The records in a JSON-lines file (none if it does not exist); every line must parse.
fn read_records(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad record line {line:?}: {e}"))
        })
        .collect()
}

/// Waits until `path` holds at least `n` records.
fn wait_records(path: &Path, n: usize, server: &Server) -> Vec<Value> {
    let deadline = Instant::now() + RECORD_WAIT;
    loop {
        let records = read_records(path);
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {} records, expected {n}:\n{records:#?}\n---- log ----\n{}",
            path.display(),
            records.len(),
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the sample `series` (name with labels, as printed) in the metrics text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Polls `/metrics` until `series` reaches `want`; fails after `RECORD_WAIT`.
fn wait_sample(server: &Server, series: &str, want: f64) -> String {
    let deadline = Instant::now() + RECORD_WAIT;
    loop {
        let text = metrics(server);
        if sample(&text, series) == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {}, expected {want}\n---- log ----\n{}",
            sample(&text, series),
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP allocation with a channel to `peer`, for user `user`; returns the client, its
/// REST username and the relayed address.
fn udp_allocation(server: &Server, user: &str, peer: SocketAddr) -> (UdpTurn, String, SocketAddr) {
    let (username, password) = rest_credentials(SECRET, user, 3600);
    let mut client = UdpTurn::new(server.udp, &username, &password);
    let relayed = client.allocate().expect_success("Allocate").relayed();
    client
        .channel_bind(CHANNEL, peer)
        .expect_success("ChannelBind");
    (client, username, relayed)
}

/// Sends `count` datagrams of `to_peer` bytes through the channel and answers each from the
/// peer with `from_peer` bytes; every one must arrive.
fn relay_round_trips(
    client: &UdpTurn,
    peer: &UdpSocket,
    relayed: SocketAddr,
    count: usize,
    (to_peer, from_peer): (usize, usize),
) {
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..count {
        client.send_channel_data(CHANNEL, &vec![i as u8; to_peer]);
        let (n, from) = peer.recv_from(&mut buf).expect("datagram at the peer");
        assert_eq!((n, from), (to_peer, relayed));
        peer.send_to(&vec![0xa5; from_peer], relayed).unwrap();
        let frame = client.recv(Duration::from_secs(2)).expect("datagram back");
        assert_eq!(frame.len(), 4 + from_peer, "ChannelData back to the client");
    }
}

fn delete(client: &mut UdpTurn) {
    client.refresh(0).expect_success("Refresh with LIFETIME 0");
}

fn loopback_peer() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Checks `YYYY-MM-DDTHH:MM:SSZ` with this century's year; returns the seconds of the day.
fn assert_rfc3339(text: &Value) -> u64 {
    let s = text.as_str().expect("a string");
    let shape = s.len() == 20
        && s.ends_with('Z')
        && s.chars().enumerate().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape && s.starts_with("20"), "not RFC 3339 UTC: {s}");
    // Seconds of the day, to compare start and end.
    let (h, m, sec) = (&s[11..13], &s[14..16], &s[17..19]);
    h.parse::<u64>().unwrap() * 3600 + m.parse::<u64>().unwrap() * 60 + sec.parse::<u64>().unwrap()
}

/// UDP, deleted: the record names the user, realm, addresses and relay, and counts exactly
/// the datagrams and bytes relayed each way; the log sink and the metrics agree.
#[test]
fn deleted_udp_allocation_is_recorded_with_exact_counts() {
    let dir = temp_dir("usage-config");
    let (server, _config) = start(&usage_section(dir.path(), ""), &[]);
    let peer = loopback_peer();
    let (mut client, username, relayed) =
        udp_allocation(&server, "alice", peer.local_addr().unwrap());
    relay_round_trips(&client, &peer, relayed, 10, (100, 200));
    // A Send indication too: counted like ChannelData (payload bytes).
    client.send_indication(peer.local_addr().unwrap(), &[7; 50]);
    let mut buf = [0u8; 2048];
    assert_eq!(peer.recv_from(&mut buf).unwrap().0, 50);
    delete(&mut client);

    let records = wait_records(&file_sink(&dir), 1, &server);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["username"], username.as_str());
    assert_eq!(r["realm"], REALM);
    assert_eq!(r["client"], client.sock.local_addr().unwrap().to_string());
    assert_eq!(r["server"], server.udp.to_string());
    assert_eq!(r["transport"], "udp");
    assert_eq!(r["relays"], serde_json::json!([relayed.to_string()]));
    assert_eq!(r["reason"], "deleted");
    assert_eq!(r["to_peer_packets"], 11);
    assert_eq!(r["to_peer_bytes"], 10 * 100 + 50);
    assert_eq!(r["from_peer_packets"], 10);
    assert_eq!(r["from_peer_bytes"], 10 * 200);
    let id = r["id"].as_str().unwrap();
    let (worker, allocation) = id.split_once('-').expect("worker-allocation");
    assert!(
        worker.parse::<u32>().is_ok() && allocation.parse::<u64>().is_ok(),
        "{r}"
    );
    let duration = r["duration_secs"].as_f64().unwrap();
    assert!(duration > 0.0 && duration < 30.0, "{r}");
    let (start, end) = (assert_rfc3339(&r["start"]), assert_rfc3339(&r["end"]));
    assert!(end >= start && end - start <= duration as u64 + 1, "{r}");

    // The same record on the log target.
    let text = std::fs::read_to_string(file_sink(&dir)).unwrap();
    let json = text.trim_end();
    let text = wait_sample(&server, "turnpike_usage_records_total{sink=\"log\"}", 1.0);
    assert!(
        server
            .stderr_log()
            .lines()
            .any(|l| l.contains("turnpike::usage") && l.ends_with(json)),
        "no `turnpike::usage` line with {json}:\n{}",
        server.stderr_log()
    );
    assert_eq!(
        sample(&text, "turnpike_usage_records_total{sink=\"file\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "turnpike_usage_records_dropped_total{sink=\"file\"}"),
        0.0
    );
    assert_eq!(sample(&text, "turnpike_allocation_bytes_count"), 1.0);
    assert_eq!(sample(&text, "turnpike_allocation_bytes_sum"), 3050.0);
    assert_eq!(
        sample(&text, "turnpike_allocation_bytes_bucket{le=\"4194304.0\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "turnpike_allocation_bytes_bucket{le=\"1024.0\"}"),
        0.0
    );
    assert_eq!(
        sample(&text, "turnpike_allocation_duration_seconds_count"),
        1.0
    );
}

/// A lifetime that runs out: reason `expired`.
#[test]
fn expired_allocation_is_recorded() {
    let dir = temp_dir("usage-config");
    let (server, _config) = start(
        &usage_section(dir.path(), ""),
        &["--default-lifetime-secs", "1", "--max-lifetime-secs", "1"],
    );
    let peer = loopback_peer();
    let (client, _, relayed) = udp_allocation(&server, "expiring", peer.local_addr().unwrap());
    relay_round_trips(&client, &peer, relayed, 3, (40, 60));
    let records = wait_records(&file_sink(&dir), 1, &server);
    let r = &records[0];
    assert_eq!(r["reason"], "expired", "{r}");
    assert_eq!(
        (r["to_peer_packets"].as_u64(), r["to_peer_bytes"].as_u64()),
        (Some(3), Some(120))
    );
    assert_eq!(
        (
            r["from_peer_packets"].as_u64(),
            r["from_peer_bytes"].as_u64()
        ),
        (Some(3), Some(180))
    );
    let duration = r["duration_secs"].as_f64().unwrap();
    assert!((1.0..5.0).contains(&duration), "{r}");
}

/// TCP: the connection closes, so does the allocation: reason `connection_closed`.
#[test]
fn closed_tcp_connection_is_recorded() {
    let dir = temp_dir("usage-config");
    let (server, _config) = start(&usage_section(dir.path(), ""), &[]);
    let peer = loopback_peer();
    let mut client = TcpTurn::rest(server.tcp(), "tcp-user");
    let relayed = client.allocate().expect_success("Allocate").relayed();
    client
        .channel_bind(CHANNEL, peer.local_addr().unwrap())
        .expect_success("ChannelBind");
    let local = client.stream.local_addr().unwrap();
    for _ in 0..4 {
        client.send_channel_data(CHANNEL, &[1; 33]);
    }
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        assert_eq!(peer.recv_from(&mut buf).unwrap(), (33, relayed));
    }
    peer.send_to(&[2; 77], relayed).unwrap();
    let frame = client.read_frame().unwrap();
    assert_eq!(frame.len(), 4 + 77);
    drop(client);

    let records = wait_records(&file_sink(&dir), 1, &server);
    let r = &records[0];
    assert_eq!(r["reason"], "connection_closed", "{r}");
    assert_eq!(r["transport"], "tcp");
    assert_eq!(r["client"], local.to_string());
    assert_eq!(r["server"], server.tcp().to_string());
    assert_eq!(r["to_peer_bytes"], 4 * 33);
    assert_eq!(r["to_peer_packets"], 4);
    assert_eq!(r["from_peer_bytes"], 77);
    assert_eq!(r["from_peer_packets"], 1);
}

/// What a test webhook receiver does with a request.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// 200 (after `fail_first` requests got 503).
    Ok { fail_first: usize },
    /// Reads the request and never answers.
    Stall,
}

/// An HTTP/1.1 server on 127.0.0.1 for the webhook: keeps every accepted batch.
struct Receiver {
    addr: SocketAddr,
    /// The records of every batch answered with 200, in order.
    records: Arc<Mutex<Vec<Value>>>,
    /// Requests read whole (any answer).
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(listener: TcpListener, answer: Answer) -> Receiver {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let receiver = Receiver {
            addr,
            records: Arc::default(),
            requests: Arc::default(),
            stop: Arc::default(),
        };
        let (records, requests, stop) = (
            receiver.records.clone(),
            receiver.requests.clone(),
            receiver.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (records, requests, stop) =
                            (records.clone(), requests.clone(), stop.clone());
                        std::thread::spawn(move || {
                            serve(stream, answer, &records, &requests, &stop)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        receiver
    }

    fn ids(&self) -> Vec<String> {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn wait_records(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = self.records.lock().unwrap().clone();
            if records.len() >= n {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook got {} records, expected {n}",
                records.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection: requests one after another (keep-alive), each answered per `answer`.
fn serve(
    stream: TcpStream,
    answer: Answer,
    records: &Mutex<Vec<Value>>,
    requests: &AtomicUsize,
    stop: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut content_length = None;
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        assert!(request_line.starts_with("POST /usage "), "{request_line:?}");
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.trim().parse::<usize>().unwrap());
            }
            if name.eq_ignore_ascii_case("content-type") {
                assert_eq!(value.trim(), "application/json");
            }
        }
        let mut body = vec![0; content_length.expect("Content-Length")];
        reader.read_exact(&mut body).unwrap();
        let batch: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array of records");
        assert!(
            !batch.is_empty() && batch.len() <= 100,
            "batch of {}",
            batch.len()
        );
        let seen = requests.fetch_add(1, Ordering::SeqCst);
        match answer {
            Answer::Stall => {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Answer::Ok { fail_first } if seen < fail_first => {
                let _ = writer
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
            }
            Answer::Ok { .. } => {
                records.lock().unwrap().extend(batch);
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }
}

/// Creates and deletes `n` UDP allocations (no data).
fn end_allocations(server: &Server, n: usize, user: &str) {
    for i in 0..n {
        let (username, password) = rest_credentials(SECRET, &format!("{user}{i}"), 3600);
        let mut client = UdpTurn::new(server.udp, &username, &password);
        client.allocate().expect_success("Allocate");
        delete(&mut client);
    }
}

/// The webhook is down (its port closed) while allocations end, then comes up answering
/// 503 to its first request, then 200: every record arrives, exactly once.
#[test]
fn webhook_down_then_up_gets_every_record_exactly_once() {
    // A port that is free now and closed until the receiver binds it again.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "[usage]\nwebhook_url = \"http://127.0.0.1:{port}/usage\"\nwebhook_timeout_secs = 2\n"
    );
    let (server, _config) = start(&toml, &[]);
    end_allocations(&server, 5, "down");
    // Down: nothing delivered, nothing dropped (the queue holds them), retries logged.
    let text = wait_sample(&server, "turnpike_allocation_duration_seconds_count", 5.0);
    assert_eq!(
        sample(&text, "turnpike_usage_records_total{sink=\"webhook\"}"),
        0.0
    );
    let log = wait_for_log(&server, "usage webhook failed, retrying");
    assert!(
        log.contains("Connection refused") || log.contains("refused"),
        "{log}"
    );

    let listener = TcpListener::bind(("127.0.0.1", port)).expect("rebind the webhook port");
    let receiver = Receiver::start(listener, Answer::Ok { fail_first: 1 });
    receiver.wait_records(5);
    end_allocations(&server, 3, "up");
    let records = receiver.wait_records(8);
    // Give a duplicate the chance to show up.
    std::thread::sleep(Duration::from_millis(500));
    let ids = receiver.ids();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (8, 8), "{ids:?}");
    assert!(
        records.iter().all(|r| r["reason"] == "deleted"),
        "{records:#?}"
    );
    assert!(receiver.requests.load(Ordering::SeqCst) >= 2);
    let text = metrics(&server);
    assert_eq!(
        sample(&text, "turnpike_usage_records_total{sink=\"webhook\"}"),
        8.0
    );
    assert_eq!(
        sample(
            &text,
            "turnpike_usage_records_dropped_total{sink=\"webhook\"}"
        ),
        0.0
    );
}

/// Waits until the server's log contains `needle`.
fn wait_for_log(server: &Server, needle: &str) -> String {
    let deadline = Instant::now() + RECORD_WAIT;
    loop {
        let log = server.stderr_log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "no `{needle}` in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A webhook that accepts and never answers, with `queue_size = 3`: the first record is
/// in flight, three more wait in the queue and nothing is dropped; the next is dropped and
/// counted. Meanwhile Binding requests are answered and relayed datagrams flow at once.
#[test]
fn stalled_webhook_drops_only_past_the_queue_bound_and_relaying_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver = Receiver::start(listener, Answer::Stall);
    let toml = format!(
        "[usage]\nlog = false\nqueue_size = 3\nwebhook_timeout_secs = 60\nwebhook_url = \"http://{}/usage\"\n",
        receiver.addr
    );
    let (server, _config) = start(&toml, &[]);
    let dropped = "turnpike_usage_records_dropped_total{sink=\"webhook\"}";
    end_allocations(&server, 1, "first");
    // The sink has taken the first record and is stuck in its request.
    let deadline = Instant::now() + RECORD_WAIT;
    while receiver.requests.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the webhook got no request");
        std::thread::sleep(Duration::from_millis(10));
    }
    end_allocations(&server, 3, "queued");
    let text = wait_sample(&server, "turnpike_allocation_duration_seconds_count", 4.0);
    assert_eq!(sample(&text, dropped), 0.0, "within the queue bound");

    // Relaying and Binding are unaffected while the sink is stuck.
    let peer = loopback_peer();
    let (client, _, relayed) = udp_allocation(&server, "live", peer.local_addr().unwrap());
    let started = Instant::now();
    relay_round_trips(&client, &peer, relayed, 200, (100, 100));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "200 round trips took {elapsed:?}"
    );
    assert!(stun_binding_answered(server.udp, Duration::from_secs(1)));

    end_allocations(&server, 1, "over");
    wait_sample(&server, dropped, 1.0);
    end_allocations(&server, 2, "more");
    let text = wait_sample(&server, dropped, 3.0);
    assert_eq!(
        sample(&text, "turnpike_usage_records_total{sink=\"webhook\"}"),
        0.0
    );
    // Still relaying after the drops.
    relay_round_trips(&client, &peer, relayed, 20, (100, 100));
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 1);
}

/// SIGTERM with a webhook that never answers: the daemon still exits within about the
/// webhook timeout (2 s here), having tried to deliver the shutdown records.
#[test]
fn stalled_webhook_delays_exit_only_by_its_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver = Receiver::start(listener, Answer::Stall);
    let toml = format!(
        "[usage]\nwebhook_timeout_secs = 2\nwebhook_url = \"http://{}/usage\"\n",
        receiver.addr
    );
    let (mut server, _config) = start(&toml, &[]);
    let (username, password) = rest_credentials(SECRET, "live", 3600);
    let mut client = UdpTurn::new(server.udp, &username, &password);
    client.allocate().expect_success("Allocate");
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running {:?} after SIGTERM:\n{}",
            started.elapsed(),
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    assert!(exited.success(), "{exited}:\n{}", server.stderr_log());
    // The record was handed to the webhook, which had its 2 s; then the daemon went.
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 1);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "exit took {took:?}"
    );
}

/// Daemon stop: the live allocations end with reason `shutdown`, and those records reach
/// both the file and a working webhook before the process exits.
#[test]
fn shutdown_records_are_flushed_to_file_and_webhook() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver = Receiver::start(listener, Answer::Ok { fail_first: 0 });
    let dir = temp_dir("usage-config");
    let toml = usage_section(
        dir.path(),
        &format!("webhook_url = \"http://{}/usage\"\n", receiver.addr),
    );
    let (server, _config) = start(&toml, &[]);
    let peer = loopback_peer();
    let (client, username, relayed) = udp_allocation(&server, "stay", peer.local_addr().unwrap());
    relay_round_trips(&client, &peer, relayed, 5, (10, 20));
    let mut others = Vec::new();
    for i in 0..3 {
        let mut other = UdpTurn::rest(&server, &format!("other{i}"));
        other.allocate().expect_success("Allocate");
        others.push(other);
    }
    assert!(read_records(&file_sink(&dir)).is_empty());
    drop(server); // SIGTERM, waits for the exit
    let records = read_records(&file_sink(&dir));
    assert_eq!(records.len(), 4, "{records:#?}");
    assert!(
        records.iter().all(|r| r["reason"] == "shutdown"),
        "{records:#?}"
    );
    let mine = records
        .iter()
        .find(|r| r["username"] == username.as_str())
        .expect("the record of the relaying allocation");
    assert_eq!(
        (
            mine["to_peer_bytes"].as_u64(),
            mine["from_peer_bytes"].as_u64()
        ),
        (Some(50), Some(100))
    );
    let mut from_webhook = receiver.ids();
    let mut from_file: Vec<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    from_webhook.sort();
    from_file.sort();
    assert_eq!(from_webhook, from_file);
}

/// logrotate: the file is renamed, records go on into it until SIGHUP, after which they go
/// into a new file at the configured path. None is lost or written twice.
#[test]
fn renamed_file_is_reopened_on_sighup_without_losing_records() {
    let dir = temp_dir("usage-config");
    let (server, _config) = start(&usage_section(dir.path(), "log = false\n"), &[]);
    let path = file_sink(&dir);
    let rotated = dir.path().join("usage.jsonl.1");
    end_allocations(&server, 3, "before");
    wait_records(&path, 3, &server);
    std::fs::rename(&path, &rotated).unwrap();
    // Not reopened yet: these still land in the renamed file.
    end_allocations(&server, 2, "renamed");
    wait_records(&rotated, 5, &server);
    assert!(!path.exists());
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(&server, "usage file reopened");
    assert!(path.exists(), "SIGHUP creates the new file at once");
    end_allocations(&server, 4, "after");
    let new = wait_records(&path, 4, &server);
    let old = read_records(&rotated);
    assert_eq!((old.len(), new.len()), (5, 4));
    let user = |r: &Value| {
        r["username"]
            .as_str()
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert!(old
        .iter()
        .all(|r| user(r).starts_with("before") || user(r).starts_with("renamed")));
    assert!(new.iter().all(|r| user(r).starts_with("after")), "{new:#?}");
    let ids: BTreeSet<String> = old
        .iter()
        .chain(&new)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 9);
    assert!(server.stderr_log().contains("configuration reloaded"));
}

/// coturn's `turnutils_uclient` (channels, its clients talking to each other through their
/// relays): summed over its allocations' records, what went to peers and came back matches
/// what it reports sent and received, 170 bytes each.
#[test]
fn uclient_traffic_matches_its_usage_records() {
    let dir = temp_dir("usage-config");
    let (server, _config) = start(&usage_section(dir.path(), "log = false\n"), &[]);
    let out = uclient(
        SECRET,
        &["-n", "200", "-m", "2", "-l", "170"],
        server.port(),
        "127.0.0.1",
        Duration::from_secs(60),
    );
    assert!(out.success(), "uclient failed:\n{out}");
    let stats = uclient_stats(&out.stdout).unwrap_or_else(|| panic!("no summary:\n{out}"));
    assert!(stats.sent >= 400 && stats.lost == 0, "{stats:?}\n{out}");
    // uclient leaves its allocations behind (no delete) over UDP: stop the server so they
    // end (reason shutdown) and their records are written.
    drop(server);
    let records = read_records(&file_sink(&dir));
    assert!(!records.is_empty());
    let total = |key: &str| {
        records
            .iter()
            .map(|r| r[key].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(total("to_peer_packets"), stats.sent, "{records:#?}\n{out}");
    assert_eq!(total("from_peer_packets"), stats.received, "{records:#?}");
    assert_eq!(total("to_peer_bytes"), stats.sent * 170);
    assert_eq!(total("from_peer_bytes"), stats.received * 170);
    assert!(records
        .iter()
        .all(|r| r["username"].as_str().unwrap().ends_with(":harness")));
}

fn check_config(path: &Path) -> CmdOutput {
    run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike"))
            .arg("check-config")
            .arg(path),
        Duration::from_secs(20),
    )
}

/// Hostile `[usage]` values: check-config exits 2 with the key, its line and what is wrong.
#[test]
fn check_config_rejects_bad_usage_keys_naming_key_and_line() {
    let dir = temp_dir("usage-bounds");
    let a_dir = dir.path().to_str().unwrap().to_owned();
    for (value, expected) in [
        ("queue_size = 0", "usage.queue_size (line 3): must be 1 to 1000000 (got 0)"),
        ("queue_size = 1000001", "usage.queue_size (line 3): must be 1 to 1000000"),
        ("queue_size = -1", "usage.queue_size (line 3)"),
        ("webhook_timeout_secs = 0", "usage.webhook_timeout_secs (line 3): must be 1 to 60 seconds"),
        ("webhook_url = \"ftp://billing.example/usage\"", "usage.webhook_url (line 3): \"ftp://billing.example/usage\" is not an http:// or https:// URL"),
        ("webhook_url = \"file:///etc/passwd\"", "usage.webhook_url (line 3): \"file:///etc/passwd\" is not an http:// or https:// URL"),
        ("webhook_url = \"not a url\"", "usage.webhook_url (line 3): \"not a url\" is not an http:// or https:// URL"),
        ("file = \"/nonexistent-turnpike/usage.jsonl\"", "usage.file (line 3): directory /nonexistent-turnpike: No such file or directory"),
        (&format!("file = {a_dir:?}"), "is a directory"),
        ("file = \"/proc/self/status/x\"", "usage.file (line 3): "),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("[usage]\n# line 2\n{value}\n")).unwrap();
        let out = check_config(&path);
        assert_eq!(out.code(), Some(2), "{value}: {out}");
        assert!(out.stderr.contains(expected), "{value}: expected `{expected}` in:\n{out}");
        assert!(out.stderr.contains("usage."), "{value}: {out}");
        assert!(!out.combined().contains("panicked"), "{out}");
    }
    // A good section passes and is shown in the effective config.
    let path = dir.path().join("good.toml");
    let file = dir.path().join("usage.jsonl");
    std::fs::write(
        &path,
        format!(
            "[usage]\nfile = {:?}\nwebhook_url = \"https://billing.example/usage\"\n",
            file.display()
        ),
    )
    .unwrap();
    let out = check_config(&path);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains("webhook_url = \"https://billing.example/usage\""),
        "{out}"
    );
    assert!(!file.exists(), "check-config must not create the file");
}
