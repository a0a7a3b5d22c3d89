//! Test harness: start a server under test, compute TURN REST credentials, run external
//! tools with a timeout.
//!
//! `Server::start` runs the `turnpike` binary of this crate. With the environment variable
//! `TURNPIKE_TEST_AGAINST=coturn` it runs coturn instead, through
//! `../shared/harness/coturn_reference.sh start --foreground ...`: the same tests then show
//! that they pass against the reference server, i.e. that the tests themselves are right.
//! Only the flags coturn has an equivalent for are translated (see `coturn_options`); a test
//! using a turnpike-only flag (quotas, nonce lifetime, static users, config files) panics in
//! coturn mode with a message saying so.
//!
//! External tools (coturn's `turnutils_*`, the aiortc venv) are installed by
//! `../shared/harness/setup.sh`. A test that needs a missing tool FAILS (never skips) and
//! says to run that script.
#![allow(dead_code)]

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// REST secret every test server is started with.
pub const SECRET: &str = "turnpike-test-secret";
/// Realm every test server is started with.
pub const REALM: &str = "turnpike.test";
/// How long a server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// After SIGTERM, how long a server may take to exit before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Default `turnpike run` arguments, as (flag, value) pairs. `Server::start` drops a default
/// whose flag the test passes itself.
pub const DEFAULT_ARGS: &[(&str, &str)] = &[
    ("--listen", "127.0.0.1:0"),
    ("--relay-ip", "127.0.0.1"),
    ("--allow-peer", "127.0.0.0/8"),
    ("--auth-secret", SECRET),
    ("--realm", REALM),
    // Parallel tests must not fight over the default 127.0.0.1:8080.
    ("--api-listen", "127.0.0.1:0"),
];

/// The default arguments minus the given flags, for `Server::start_raw`
/// (e.g. `default_args_without(&["--allow-peer"])`).
pub fn default_args_without(flags: &[&str]) -> Vec<String> {
    DEFAULT_ARGS
        .iter()
        .filter(|(flag, _)| !flags.contains(flag))
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
}

/// Which server the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Turnpike,
    Coturn,
}

/// `TURNPIKE_TEST_AGAINST=coturn` selects coturn; unset, empty or `turnpike` selects turnpike.
pub fn backend() -> Backend {
    match std::env::var("TURNPIKE_TEST_AGAINST") {
        Err(_) => Backend::Turnpike,
        Ok(v) if v.is_empty() || v == "turnpike" => Backend::Turnpike,
        Ok(v) if v == "coturn" => Backend::Coturn,
        Ok(v) => panic!("TURNPIKE_TEST_AGAINST={v:?}: expected `turnpike` or `coturn`"),
    }
}

pub fn against_coturn() -> bool {
    backend() == Backend::Coturn
}

/// `../shared/harness` next to the project (override: `TURNPIKE_HARNESS_DIR`).
pub fn harness_dir() -> PathBuf {
    let dir = match std::env::var_os("TURNPIKE_HARNESS_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/harness"),
    };
    dir.canonicalize().unwrap_or(dir)
}

/// `$HARNESS_HOME`, default `/var/tmp/turn-harness` (as in the harness scripts).
pub fn harness_home() -> PathBuf {
    std::env::var_os("HARNESS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/turn-harness"))
}

const SETUP_HINT: &str = "run ../shared/harness/setup.sh (from the project root) to install \
     the test tools; CI installs them, and tests needing them fail rather than skip";

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fails the test unless `name` (a program in `PATH`, or a path) is an executable file.
/// Returns its full path.
pub fn require_tool(name: &str) -> PathBuf {
    let found = if name.contains('/') {
        let p = PathBuf::from(name);
        is_executable(&p).then_some(p)
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| is_executable(p))
        })
    };
    found.unwrap_or_else(|| panic!("required tool `{name}` not found: {SETUP_HINT}"))
}

/// Fails the test unless the aiortc pair runner and its venv are installed; returns the path
/// of `run_pair.sh`.
pub fn require_run_pair() -> PathBuf {
    let script = harness_dir().join("run_pair.sh");
    require_tool(script.to_str().expect("harness path is UTF-8"));
    let python = aiortc_python();
    if !is_executable(&python) {
        panic!(
            "aiortc venv python `{}` not found: {SETUP_HINT}",
            python.display()
        );
    }
    script
}

/// The harness venv's python (aiortc), `$PYTHON` if set; [`require_run_pair`] checks it.
pub fn aiortc_python() -> PathBuf {
    std::env::var_os("PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| harness_home().join("venv/bin/python"))
}

/// How long `run_pair.sh` may take.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs two aiortc peers with `run_pair.sh -- --turn URL --secret SECRET --policy relay`
/// and asserts on both result lines: ok, on a relay, `check` (extra per-peer assertions),
/// 1 MiB with a SHA-256, one offer and one answer, the same data echoed.
pub fn assert_relay_only_pair(
    url: &str,
    check: impl Fn(&serde_json::Value, &CmdOutput),
) -> CmdOutput {
    let run_pair = require_run_pair();
    let out = run_with_timeout(
        Command::new(run_pair).args(["--", "--turn", url, "--secret", SECRET, "--policy", "relay"]),
        PAIR_TIMEOUT,
    );
    assert!(out.success(), "run_pair.sh failed:\n{out}");
    let results: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("bad result line {l:?}: {e}\n{out}"))
        })
        .collect();
    assert_eq!(results.len(), 2, "expected two result lines:\n{out}");
    let mut roles = Vec::new();
    for r in &results {
        assert_eq!(r["ok"], serde_json::json!(true), "peer failed: {r}\n{out}");
        assert_eq!(r["local_type"], "relay", "peer not on a relay: {r}\n{out}");
        check(r, &out);
        assert_eq!(r["bytes"], 1_048_576, "wrong byte count: {r}\n{out}");
        assert!(
            r["sha256"].as_str().is_some_and(|s| s.len() == 64),
            "no sha256: {r}\n{out}"
        );
        roles.push(r["role"].as_str().unwrap_or("?").to_string());
    }
    roles.sort();
    assert_eq!(roles, ["answer", "offer"], "roles:\n{out}");
    assert_eq!(
        results[0]["sha256"], results[1]["sha256"],
        "the echoed data differs from what was sent:\n{out}"
    );
    out
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// TURN REST credentials (draft-uberti-behave-turn-rest):
/// `username = "<unix expiry>:<user>"`, `password = base64(HMAC-SHA1(secret, username))`,
/// from the one minter (the core's, through turnpike-client; checked against the draft's
/// example in `proto::auth`).
pub fn rest_credentials(secret: &str, user: &str, ttl_secs: u64) -> (String, String) {
    turnpike_client::mint_rest_credential(secret, user, ':', unix_now(), ttl_secs)
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &str, username: &str) -> String {
    turnpike_client::rest_password(secret, username)
}

/// A STUN Binding request (RFC 8489) with no attributes.
pub fn stun_binding_request(transaction_id: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&transaction_id);
    m
}

/// Sends Binding requests from a fresh UDP socket until one is answered with a Binding
/// success response carrying the same transaction ID, or `timeout` passes.
pub fn stun_binding_answered(server: SocketAddr, timeout: Duration) -> bool {
    let bind: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut n: u32 = 0;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        n += 1;
        let mut txid = [0x5a; 12];
        txid[..4].copy_from_slice(&n.to_be_bytes());
        if sock.send_to(&stun_binding_request(txid), server).is_err() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        while let Ok((len, from)) = sock.recv_from(&mut buf) {
            if from == server && len >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == txid {
                return true;
            }
        }
    }
    false
}

/// A port that is free on 127.0.0.1 for both UDP and TCP right now.
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both UDP and TCP found on 127.0.0.1");
}

type LogBuf = Arc<Mutex<Vec<u8>>>;

fn log_text(log: &LogBuf) -> String {
    String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
}

/// Copies everything `reader` produces into `log`; each complete line is also sent on `tx`.
fn spawn_reader<R: Read + Send + 'static>(
    reader: R,
    log: LogBuf,
    prefix: &'static str,
    tx: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    {
                        let mut log = log.lock().unwrap();
                        log.extend_from_slice(prefix.as_bytes());
                        log.extend_from_slice(&line);
                        if line.last() != Some(&b'\n') {
                            log.push(b'\n');
                        }
                    }
                    if let Some(tx) = &tx {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        let _ = tx.send(text);
                    }
                }
            }
        }
    })
}

/// Waits up to `limit` for the reader threads to reach end of file.
fn join_readers(readers: Vec<JoinHandle<()>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !readers.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for h in readers {
        if h.is_finished() {
            let _ = h.join();
        }
    }
}

/// Sends `signal` (e.g. "TERM", "KILL") to `target`: a PID, or `-PGID` for a process group.
/// Only ever called with processes this harness started.
fn send_signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        // The child is not reaped yet, so its PID cannot have been reused.
        send_signal("TERM", &child.id().to_string());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

static NEXT_COTURN: AtomicU32 = AtomicU32::new(0);

/// A coturn instance started through `coturn_reference.sh start --foreground --name NAME`.
struct CoturnRun {
    name: String,
    dir: PathBuf,
}

/// A running server under test. Dropping it stops it (SIGTERM, SIGKILL after 3 s); if the
/// test is panicking, the server's log is printed.
pub struct Server {
    /// The first UDP listening address from the ready line.
    pub udp: SocketAddr,
    /// All UDP listening addresses from the ready line.
    pub udp_addrs: Vec<SocketAddr>,
    /// The relay IPs from the ready line.
    pub relay_ips: Vec<IpAddr>,
    /// The management API address from the ready line, when the server serves one.
    pub api: Option<SocketAddr>,
    /// The whole ready line (turnpike only; `Null` for coturn).
    pub ready: serde_json::Value,
    /// The server process (with coturn: the `coturn_reference.sh --foreground` script, which
    /// lives exactly as long as its turnserver).
    pub child: Child,
    /// Which server this is.
    pub backend: Backend,
    log: LogBuf,
    readers: Vec<JoinHandle<()>>,
    coturn: Option<CoturnRun>,
}

impl Server {
    /// The first TCP listening address: from the ready line, or (coturn) the UDP port, which
    /// coturn also serves on TCP.
    pub fn tcp(&self) -> SocketAddr {
        match self.backend {
            Backend::Coturn => self.udp,
            Backend::Turnpike => self.ready["tcp"][0]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no TCP address in the ready line: {}", self.ready)),
        }
    }

    /// Starts a server with `DEFAULT_ARGS` plus `extra_args` (a default is dropped when
    /// `extra_args` contains its flag) and waits for it to be ready.
    pub fn start(extra_args: &[&str]) -> Server {
        let given: Vec<&str> = extra_args
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap())
            .collect();
        let mut args: Vec<&str> = Vec::new();
        for (flag, value) in DEFAULT_ARGS {
            if !given.contains(flag) {
                args.push(flag);
                args.push(value);
            }
        }
        args.extend_from_slice(extra_args);
        Server::start_raw(&args)
    }

    /// Like [`Server::start`] with extra environment variables for the daemon (turnpike
    /// only: e.g. `NOTIFY_SOCKET`).
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args: Vec<&str> = Vec::new();
        for (flag, value) in DEFAULT_ARGS {
            if !extra_args.contains(flag) {
                args.push(flag);
                args.push(value);
            }
        }
        args.extend_from_slice(extra_args);
        Server::start_turnpike(&args, env)
    }

    /// Starts `turnpike run ARGS` with exactly these arguments and waits for it to be ready.
    pub fn start_raw<S: AsRef<str>>(args: &[S]) -> Server {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        match backend() {
            Backend::Turnpike => Server::start_turnpike(&args, &[]),
            Backend::Coturn => Server::start_coturn(&args),
        }
    }

    fn start_turnpike(args: &[&str], env: &[(&str, &str)]) -> Server {
        let bin = env!("CARGO_BIN_EXE_turnpike");
        let mut child = Command::new(bin)
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let log = LogBuf::default();
        let (tx, rx) = mpsc::channel();
        let readers = vec![
            spawn_reader(
                child.stdout.take().unwrap(),
                log.clone(),
                "[stdout] ",
                Some(tx),
            ),
            spawn_reader(child.stderr.take().unwrap(), log.clone(), "", None),
        ];
        let cmdline = format!("{bin} run {}", args.join(" "));
        let deadline = Instant::now() + READY_TIMEOUT;
        let failure = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => match parse_ready_line(&line) {
                    None => continue,
                    Some(Ok(ready)) => {
                        return Server {
                            udp: ready.udp[0],
                            udp_addrs: ready.udp,
                            relay_ips: ready.relay_ips,
                            api: ready.api,
                            ready: ready.raw,
                            child,
                            backend: Backend::Turnpike,
                            log,
                            readers,
                            coturn: None,
                        };
                    }
                    Some(Err(e)) => break format!("bad ready line {line:?}: {e}"),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        break format!("exited ({status}) before printing its ready line");
                    }
                    if Instant::now() > deadline {
                        break format!("no ready line within {READY_TIMEOUT:?}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let grace = Instant::now() + Duration::from_secs(1);
                    let status = loop {
                        match child.try_wait() {
                            Ok(Some(status)) => break status.to_string(),
                            _ if Instant::now() > grace => break "still running".to_string(),
                            _ => std::thread::sleep(Duration::from_millis(20)),
                        }
                    };
                    break format!("closed stdout without printing a ready line ({status})");
                }
            }
        };
        stop_child(&mut child, Duration::from_millis(500));
        join_readers(readers, Duration::from_secs(2));
        panic!(
            "turnpike {failure}\ncommand: {cmdline}\n---- turnpike output ----\n{}",
            log_text(&log)
        );
    }

    fn start_coturn(args: &[&str]) -> Server {
        require_tool("turnserver");
        let script = harness_dir().join("coturn_reference.sh");
        require_tool(script.to_str().expect("harness path is UTF-8"));
        let (opts, relay_ip) = coturn_options(args);
        let mut last_failure = String::new();
        for _attempt in 0..5 {
            let port = free_udp_tcp_port();
            let name = format!(
                "itest-{}-{}",
                std::process::id(),
                NEXT_COTURN.fetch_add(1, Ordering::Relaxed)
            );
            let dir = harness_home().join("coturn").join(&name);
            let mut cmd = Command::new(&script);
            cmd.args([
                "start",
                "--foreground",
                "--name",
                &name,
                "--listen",
                "127.0.0.1",
            ])
            .args(["--port", &port.to_string()])
            .args(&opts);
            let cmdline = format!("{cmd:?}");
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
            let log = LogBuf::default();
            let readers = vec![
                spawn_reader(child.stdout.take().unwrap(), log.clone(), "", None),
                spawn_reader(child.stderr.take().unwrap(), log.clone(), "", None),
            ];
            let udp = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let deadline = Instant::now() + READY_TIMEOUT;
            let failure = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break format!("exited ({status}) before it was ready");
                }
                if Instant::now() > deadline {
                    break format!("not answering on UDP and TCP within {READY_TIMEOUT:?}");
                }
                if stun_binding_answered(udp, Duration::from_millis(300))
                    && TcpStream::connect_timeout(&udp, Duration::from_millis(300)).is_ok()
                {
                    return Server {
                        udp,
                        udp_addrs: vec![udp],
                        relay_ips: vec![relay_ip],
                        api: None,
                        ready: serde_json::Value::Null,
                        child,
                        backend: Backend::Coturn,
                        log,
                        readers,
                        coturn: Some(CoturnRun { name, dir }),
                    };
                }
            };
            stop_child(&mut child, STOP_GRACE);
            join_readers(readers, Duration::from_secs(2));
            let text = log_text(&log);
            last_failure =
                format!("coturn {failure}\ncommand: {cmdline}\n---- coturn output ----\n{text}");
            if !text.contains("already in use") {
                break;
            }
            // Someone took the port between our check and the start: try another one.
        }
        panic!("{last_failure}");
    }

    pub fn port(&self) -> u16 {
        self.udp.port()
    }

    /// True while the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the server wrote so far: its stderr (turnpike's logs) and, prefixed with
    /// `[stdout] `, its stdout lines. With coturn: its log.
    pub fn stderr_log(&self) -> String {
        log_text(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // With coturn, the script's PID file names its turnserver (read before the script
        // removes it on exit).
        let coturn_pid = self.coturn.as_ref().and_then(|c| {
            std::fs::read_to_string(c.dir.join("turnserver.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        });
        stop_child(&mut self.child, STOP_GRACE);
        if let (Some(run), Some(pid)) = (&self.coturn, coturn_pid) {
            // The script's exit trap sends SIGTERM to turnserver; make sure it is gone.
            let conf = run.dir.join("turnserver.conf");
            let conf = conf.to_string_lossy().into_owned();
            let is_ours = || {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&conf))
                    .unwrap_or(false)
            };
            let deadline = Instant::now() + STOP_GRACE;
            while is_ours() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_ours() {
                send_signal("KILL", &pid.to_string());
            }
        }
        join_readers(std::mem::take(&mut self.readers), Duration::from_secs(2));
        if let Some(run) = &self.coturn {
            if run.name.starts_with("itest-") {
                let _ = std::fs::remove_dir_all(&run.dir);
            }
        }
        if std::thread::panicking() {
            let text = self.stderr_log();
            const TAIL: usize = 64 * 1024;
            let start = text.len().saturating_sub(TAIL);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            eprintln!(
                "---- {:?} server log (last {} bytes) ----\n{}\n---- end of server log ----",
                self.backend,
                text.len() - start,
                &text[start..]
            );
        }
    }
}

struct Ready {
    udp: Vec<SocketAddr>,
    relay_ips: Vec<IpAddr>,
    api: Option<SocketAddr>,
    raw: serde_json::Value,
}

/// `None` if `line` is not a ready event; otherwise the parsed addresses or what is wrong.
fn parse_ready_line(line: &str) -> Option<Result<Ready, String>> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("event")?.as_str()? != "ready" {
        return None;
    }
    Some(parse_ready_value(&value))
}

fn parse_ready_value(value: &serde_json::Value) -> Result<Ready, String> {
    fn list<T: std::str::FromStr>(v: &serde_json::Value, key: &str) -> Result<Vec<T>, String> {
        v.get(key)
            .and_then(|l| l.as_array())
            .ok_or_else(|| format!("no `{key}` array"))?
            .iter()
            .map(|item| {
                item.as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad `{key}` entry {item}"))
            })
            .collect()
    }
    let udp: Vec<SocketAddr> = list(value, "udp")?;
    if udp.is_empty() {
        return Err("empty `udp` list".into());
    }
    let relay_ips = list(value, "relay_ips")?;
    let api = match value.get("api") {
        None | Some(serde_json::Value::Null) => None,
        Some(api) => Some(
            api.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad `api` {api}"))?,
        ),
    };
    Ok(Ready {
        udp,
        relay_ips,
        api,
        raw: value.clone(),
    })
}

/// Translates `turnpike run` arguments into `coturn_reference.sh start` options.
/// Returns the options and the relay IP.
fn coturn_options(args: &[&str]) -> (Vec<String>, IpAddr) {
    let mut opts: Vec<String> = Vec::new();
    let mut relay_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg, None),
        };
        let mut value = || -> String {
            inline
                .map(str::to_string)
                .or_else(|| it.next().map(|s| s.to_string()))
                .unwrap_or_else(|| panic!("`{flag}` needs a value"))
        };
        match flag {
            "--listen" => {
                let v = value();
                if v != "127.0.0.1:0" {
                    panic!("coturn mode supports only `--listen 127.0.0.1:0`, not {v:?}");
                }
            }
            "--relay-ip" => {
                let v = value();
                relay_ip = v.parse().unwrap_or_else(|_| panic!("bad --relay-ip {v:?}"));
                opts.extend(["--relay-ip".to_string(), v]);
            }
            "--auth-secret" => opts.extend(["--secret".to_string(), value()]),
            // coturn has no management API here; the address is turnpike's concern.
            "--api-listen" => {
                value();
            }
            "--realm" => opts.extend(["--realm".to_string(), value()]),
            "--min-port" => opts.extend(["--min-port".to_string(), value()]),
            "--max-port" => opts.extend(["--max-port".to_string(), value()]),
            "--allow-peer" => {
                let v = value();
                let net: ipnet::Ipv4Net = v
                    .parse()
                    .unwrap_or_else(|_| panic!("coturn mode: unsupported --allow-peer {v:?}"));
                let loopback: ipnet::Ipv4Net = "127.0.0.0/8".parse().unwrap();
                if loopback.contains(&net) || net.contains(&loopback) {
                    opts.push("--allow-loopback-peers".to_string());
                }
                if !loopback.contains(&net) {
                    opts.extend([
                        "--allow-peer".to_string(),
                        format!("{}-{}", net.network(), net.broadcast()),
                    ]);
                }
            }
            other => panic!(
                "`{other}` has no equivalent in coturn_reference.sh: this test is \
                 turnpike-specific and cannot run with TURNPIKE_TEST_AGAINST=coturn"
            ),
        }
    }
    (opts, relay_ip)
}

/// What a command did, from `run_with_timeout`.
pub struct CmdOutput {
    pub cmdline: String,
    /// `None` if it had to be killed after the timeout.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    /// Exited on its own with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// The exit code, if it exited on its own (not killed by a signal or the timeout).
    pub fn code(&self) -> Option<i32> {
        if self.timed_out {
            None
        } else {
            self.status.and_then(|s| s.code())
        }
    }

    /// stdout followed by stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.cmdline)?;
        match (&self.status, self.timed_out) {
            (_, true) => writeln!(f, "status: KILLED after timeout ({:?})", self.elapsed)?,
            (Some(s), false) => writeln!(f, "status: {s} after {:?}", self.elapsed)?,
            (None, false) => writeln!(f, "status: unknown")?,
        }
        writeln!(f, "---- stdout ----\n{}", self.stdout.trim_end())?;
        write!(f, "---- stderr ----\n{}", self.stderr.trim_end())
    }
}

impl fmt::Debug for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `cmd` (stdin closed) in its own process group and captures its output. After
/// `timeout` the whole group gets SIGTERM, then SIGKILL 3 s later.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let cmdline = std::iter::once(program.clone())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e} ({SETUP_HINT})"));
    let out = LogBuf::default();
    let err = LogBuf::default();
    let readers = vec![
        spawn_reader(child.stdout.take().unwrap(), out.clone(), "", None),
        spawn_reader(child.stderr.take().unwrap(), err.clone(), "", None),
    ];
    // The child leads its own process group, whose ID is its PID.
    let group = format!("-{}", child.id());
    let deadline = started + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for `{cmdline}`: {e}"),
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // Not reaped yet, so the group ID is still ours.
            send_signal("TERM", &group);
            let grace = Instant::now() + STOP_GRACE;
            while Instant::now() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            send_signal("KILL", &group);
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    // Leftover members of the group (descendants) may still hold the pipes open.
    let drain = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain && !readers.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !readers.iter().all(|h| h.is_finished()) {
        // A process group ID stays allocated while any member lives: these are ours.
        send_signal("KILL", &group);
    }
    join_readers(readers, Duration::from_secs(2));
    CmdOutput {
        cmdline,
        status,
        timed_out,
        stdout: log_text(&out),
        stderr: log_text(&err),
        elapsed,
    }
}

pub use tempfile::TempDir;

/// A fresh temporary directory named after `what`, removed when dropped.
pub fn temp_dir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("turnpike-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

/// A self-signed leaf certificate for `localhost` and 127.0.0.1 in a fresh temporary
/// directory: `(dir, cert path, key path)`. Keep `dir` alive while the files are used.
pub fn self_signed_cert() -> (TempDir, String, String) {
    let dir = temp_dir("tls");
    let cert = dir.path().join("cert.pem").to_string_lossy().into_owned();
    let key = dir.path().join("key.pem").to_string_lossy().into_owned();
    let mut params =
        rcgen::CertificateParams::new(["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("valid subject names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    // A leaf, not a CA: webpki refuses a CA certificate as the server's own.
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let key_pair = rcgen::KeyPair::generate().expect("key generation");
    let certificate = params.self_signed(&key_pair).expect("self-signing");
    std::fs::write(&cert, certificate.pem()).expect("write cert.pem");
    std::fs::write(&key, key_pair.serialize_pem()).expect("write key.pem");
    (dir, cert, key)
}
