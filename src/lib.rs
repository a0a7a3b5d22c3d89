//! turnpike: a STUN/TURN server.
//!
//! [`proto`] is the sans-IO protocol core; [`net`] owns sockets, threads and the clock;
//! [`start`] wires them together from a [`config::Config`] so tests drive the real server.

#![forbid(unsafe_code)]

pub mod api;
pub mod api_client;
pub mod cli;
pub mod config;
pub mod drain;
pub mod ice_uri;
pub mod net;
pub mod probe;
pub use turnpike_proto as proto;
pub mod sessions;
pub mod sessions_cmd;
pub mod telemetry;
pub mod usage;

use std::any::Any;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use net::connections::ConnectionLimits;
use net::listeners::Listener;
use net::worker::{Command, RelaySettings, Settings, Worker, WorkerShared};
use proto::auth::{Credentials, NonceKey, Password};
use proto::peer_filter::PeerFilter;
use proto::{Quotas, ServerConfig};

/// A running server: its bound addresses and worker threads.
pub struct Running {
    /// The UDP listening addresses, with the real ports when port 0 was asked for.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners: one beside each UDP listener, on the same port.
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub relay_ips: Vec<IpAddr>,
    control: Arc<Control>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    deaths: Option<mpsc::Receiver<WorkerDeath>>,
}

/// Changes the settings the workers serve by: a reloaded configuration (SIGHUP) and drain
/// mode (the HTTP API). Both paths go through one lock, so a reload keeps a drain in force
/// and a drain keeps the reloaded configuration. Workers see a change at their next loop
/// turn (they are woken); the packet path never takes this lock.
pub struct Control {
    shared: Arc<WorkerShared>,
    quotas: Arc<Quotas>,
    /// The nonce key when no REST secret is configured; kept across reloads so nonces
    /// already handed out stay valid (see [`nonce_key`]).
    random_nonce_key: NonceKey,
    wakers: Vec<Arc<mio::Waker>>,
    /// Bound UDP and TLS listening addresses.
    own_addresses: Vec<SocketAddr>,
    relay_ips: Vec<IpAddr>,
    state: std::sync::Mutex<ControlState>,
    /// Each worker's command queue, by index ([`sessions`]).
    commands: Vec<mpsc::Sender<Command>>,
    revocations: std::sync::Mutex<sessions::RevocationStore>,
}

struct ControlState {
    /// The configuration last applied.
    config: config::Config,
    draining: bool,
}

/// What `GET /api/v1/drain` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DrainStatus {
    pub draining: bool,
    /// Allocations alive on this instance (all workers, all transports).
    pub allocations: usize,
    /// Where new Allocates are sent with 300 Try Alternate while draining; empty means they
    /// are refused with 508 Insufficient Capacity.
    pub alternate_servers: Vec<SocketAddr>,
}

impl Control {
    /// Applies a new configuration (see [`Running::reload`]).
    fn reload(&self, config: &config::Config) -> io::Result<()> {
        let tls = load_tls(config)?;
        let revocations = self
            .revocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reload(config.api.revocations_file.as_deref(), unix_now());
        if let Err(e) = &revocations {
            tracing::error!(error = %e, "revocations file not read; the revocations in force stay");
        }
        self.push_revocations();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.config = config.clone();
        self.quotas.set_limits(
            config.limits.max_allocations.get(),
            config.limits.max_allocations_per_user.get(),
        );
        self.quotas
            .set_max_challenges_per_sec(config.limits.max_challenges_per_sec.get() as u64);
        self.publish(Settings {
            tls,
            server: Arc::new(self.server_settings(&state)),
            relay: RelaySettings {
                ips: self.relay_ips.clone(),
                ports: config.relay.port_range(),
            },
        });
        Ok(())
    }

    /// Starts (`true`) or ends (`false`) draining: while draining, an Allocate that would
    /// create an allocation is answered with 300 Try Alternate towards
    /// `server.drain_alternate_servers` (this instance's own addresses skipped) or
    /// `server.alternate_servers`, or with 508 when there is none; existing allocations go
    /// on refreshing and relaying until they end.
    pub fn set_draining(&self, draining: bool) -> DrainStatus {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed = state.draining != draining;
        state.draining = draining;
        let current = self
            .shared
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.publish(Settings {
            tls: current.tls.clone(),
            server: Arc::new(self.server_settings(&state)),
            relay: current.relay.clone(),
        });
        let status = self.status(&state);
        if changed && draining {
            tracing::info!(
                allocations = status.allocations,
                alternates = ?status.alternate_servers,
                "draining: new allocations are redirected, existing ones keep relaying"
            );
        } else if changed {
            tracing::info!("drain ended: accepting new allocations");
        }
        status
    }

    pub fn drain_status(&self) -> DrainStatus {
        self.status(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn status(&self, state: &ControlState) -> DrainStatus {
        DrainStatus {
            draining: state.draining,
            allocations: self.quotas.total(),
            alternate_servers: self.drain_targets(&state.config),
        }
    }

    /// The configured alternates and drain alternates, without this instance's own
    /// addresses (so one fleet-wide list can be shared by every instance).
    fn drain_targets(&self, config: &config::Config) -> Vec<SocketAddr> {
        let own_ports: Vec<u16> = self.own_addresses.iter().map(SocketAddr::port).collect();
        let own_ip = |ip: IpAddr| {
            self.own_addresses.iter().any(|a| a.ip() == ip)
                || self.relay_ips.contains(&ip)
                || config.relay.external_ip == Some(ip)
                || config
                    .relay
                    .external_ip_map
                    .iter()
                    .any(|&(_, public)| public == ip)
        };
        let mut targets = config.server.alternate_servers.clone();
        for &addr in &config.server.drain_alternate_servers {
            let own = own_ports.contains(&addr.port()) && own_ip(addr.ip());
            if !own && !targets.contains(&addr) {
                targets.push(addr);
            }
        }
        targets
    }

    fn server_settings(&self, state: &ControlState) -> ServerConfig {
        let mut server = server_config(
            &state.config,
            &self.own_addresses,
            &self.relay_ips,
            &nonce_key(&state.config, &self.random_nonce_key),
        );
        if state.draining {
            server.draining = true;
            server.alternate_servers = self.drain_targets(&state.config);
        }
        server
    }

    fn publish(&self, settings: Settings) {
        *self
            .shared
            .settings
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }
}

/// A worker thread that ended while the server was meant to be serving: its sockets and
/// allocations are gone, so the daemon must not go on half alive.
#[derive(Debug)]
pub struct WorkerDeath {
    pub index: usize,
    pub cause: DeathCause,
}

#[derive(Debug)]
pub enum DeathCause {
    /// The panic message.
    Panicked(String),
    Failed(io::Error),
    /// `run` returned without the shutdown flag set.
    Stopped,
}

impl fmt::Display for WorkerDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index;
        match &self.cause {
            DeathCause::Panicked(message) => write!(f, "worker {index} panicked: {message}"),
            DeathCause::Failed(e) => write!(f, "worker {index} failed: {e}"),
            DeathCause::Stopped => write!(f, "worker {index} stopped unexpectedly"),
        }
    }
}

/// Runs a worker's loop on this thread. If it ends in any way, a panic included, while
/// `shutdown` is unset, that is reported on `deaths`; a panic becomes an error here.
fn supervise(
    index: usize,
    shutdown: &AtomicBool,
    deaths: &mpsc::Sender<WorkerDeath>,
    body: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    // Nothing of the worker is used after a panic: its state is dropped with the closure.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(body));
    let (result, cause) = match outcome {
        Ok(Ok(())) => (Ok(()), DeathCause::Stopped),
        Ok(Err(e)) => (
            Err(io::Error::new(e.kind(), e.to_string())),
            DeathCause::Failed(e),
        ),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            (
                Err(io::Error::other(format!("worker panicked: {message}"))),
                DeathCause::Panicked(message),
            )
        }
    };
    if !shutdown.load(Ordering::Relaxed) {
        let _ = deaths.send(WorkerDeath { index, cause });
    }
    result
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

impl Running {
    pub fn telemetry(&self) -> Arc<telemetry::Telemetry> {
        self.control.shared.telemetry.clone()
    }

    /// The handle the HTTP API drains through.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Reports of workers that ended before [`Running::stop`]; `None` after the first call.
    /// The channel closes once every worker has ended.
    pub fn take_worker_deaths(&mut self) -> Option<mpsc::Receiver<WorkerDeath>> {
        self.deaths.take()
    }

    /// Applies a new configuration's secrets, users, peer lists, limits, relay port range and
    /// TLS certificate without touching live allocations. Listening and relay addresses need
    /// a restart. A certificate that fails to load keeps the old one (and is an error).
    pub fn reload(&self, config: &config::Config) -> io::Result<()> {
        self.control.reload(config)
    }

    /// Has the usage file sink reopen its file (SIGHUP, after logrotate renamed it).
    pub fn reopen_usage_file(&self) {
        self.control.shared.usage.reopen();
    }

    /// Stops every worker, freeing all allocations, and waits for them; then lets the usage
    /// sinks deliver the last records (reason `shutdown`), waiting about the webhook
    /// timeout at most.
    pub fn stop(self) -> io::Result<()> {
        self.control.shared.shutdown.store(true, Ordering::Relaxed);
        for waker in &self.control.wakers {
            let _ = waker.wake();
        }
        let mut result = Ok(());
        for worker in self.workers {
            let outcome = worker
                .join()
                .map_err(|_| io::Error::other("worker thread panicked"))
                .and_then(|r| r);
            if result.is_ok() {
                result = outcome;
            }
        }
        self.control.shared.usage.close();
        result
    }
}

/// The key nonces are issued and checked with: derived from the first REST secret, so every
/// instance sharing the secret accepts the others' nonces. A client sent elsewhere by 300
/// Try Alternate keeps its nonce (libwebrtc does, and gives up on a 438 to an Allocate).
/// It changes with the first secret, which costs clients one 438 each; without a secret
/// (static users only) it is `fallback`.
pub fn nonce_key(config: &config::Config, fallback: &NonceKey) -> NonceKey {
    use hmac::{Hmac, Mac};
    match config.auth.secrets.first() {
        Some(secret) => {
            let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(b"turnpike nonce key v1");
            NonceKey::new(mac.finalize().into_bytes().into())
        }
        None => fallback.clone(),
    }
}

/// Derives the core's protocol settings. `secrets` must already hold at least one secret
/// when no static user is configured (the daemon generates one).
pub fn server_config(
    config: &config::Config,
    listen: &[SocketAddr],
    relay_ips: &[IpAddr],
    nonce_key: &NonceKey,
) -> ServerConfig {
    let password = |s: &config::Secret| Password(s.expose().to_owned());
    ServerConfig {
        realm: config.server.realm.clone(),
        software: config.server.software().map(str::to_owned),
        credentials: Credentials {
            secrets: config.auth.secrets.iter().map(password).collect(),
            separator: config.auth.separator,
            static_users: config
                .auth
                .users
                .iter()
                .map(|(name, secret)| (name.clone(), password(secret)))
                .collect(),
        },
        nonce_key: nonce_key.clone(),
        nonce_lifetime: config.auth.nonce_lifetime_secs.get(),
        default_lifetime: config.limits.default_lifetime_secs.get(),
        max_lifetime: config.limits.max_lifetime_secs.get(),
        max_permissions_per_allocation: config.limits.max_permissions_per_allocation.get(),
        max_channels_per_allocation: config.limits.max_channels_per_allocation.get(),
        bandwidth_per_allocation: config.limits.bandwidth_per_allocation.get(),
        // The relay's own addresses, configured and advertised, are denied peers in every
        // form (NAT64 and the like carry IPv4 inside), before any allocation has used them;
        // an `allow_peers` range that names one still opens it. The core lets the exact
        // address through on relay ports all the same (relay-to-relay, from `relay_ips`).
        peer_filter: PeerFilter::new(
            config.relay.allow_peers.clone(),
            config
                .relay
                .deny_peers
                .iter()
                .copied()
                .chain(
                    relay_ips
                        .iter()
                        .chain(config.relay.external_ip.iter())
                        .chain(
                            config
                                .relay
                                .external_ip_map
                                .iter()
                                .map(|(_, public)| public),
                        )
                        .map(|&ip| ipnet::IpNet::from(ip)),
                )
                .collect(),
        ),
        own_addresses: listen.to_vec(),
        relay_ips: relay_ips.to_vec(),
        relay_ports: config.relay.port_range(),
        // Specific mappings first: the core takes the first entry naming the relay IP, else
        // the first catch-all of the same family.
        external_ips: config
            .relay
            .external_ip_map
            .iter()
            .map(|&(private, public)| (Some(private), public))
            .chain(config.relay.external_ip.map(|ip| (None, ip)))
            .collect(),
        alternate_servers: config.server.alternate_servers.clone(),
        draining: false,
        relay_ipv4: relay_ips.iter().any(IpAddr::is_ipv4),
        relay_ipv6: relay_ips.iter().any(IpAddr::is_ipv6),
    }
}

/// Relay addresses: the configured ones, else the specific listening addresses, else the
/// address this host would use to reach the internet (found with a connected UDP socket,
/// which sends nothing), else loopback.
pub fn resolve_relay_ips(config: &config::Config) -> Vec<IpAddr> {
    if !config.relay.ips.is_empty() {
        return config.relay.ips.clone();
    }
    let mut ips: Vec<IpAddr> = config
        .server
        .listen
        .iter()
        .map(SocketAddr::ip)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    ips.dedup();
    if ips.is_empty() {
        // connect() on UDP only picks a route; no packet leaves the host.
        let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
            .and_then(|s| s.local_addr());
        match routed {
            Ok(addr) => ips.push(addr.ip()),
            Err(_) => {
                tracing::warn!("no route found; relaying from 127.0.0.1 (set relay.ips)");
                ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
        }
    }
    ips
}

/// The TLS configuration, when TLS listeners are configured.
fn load_tls(config: &config::Config) -> io::Result<Option<Arc<rustls::ServerConfig>>> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) if !config.tls.listen.is_empty() => {
            net::tls::load(cert, key).map(Some)
        }
        _ => Ok(None),
    }
}

/// Seconds since the Unix epoch (0 for a clock set before it): the time REST credentials
/// expire in.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Binds every socket and starts the workers. When this returns, the server is serving.
pub fn start(config: &config::Config) -> io::Result<Running> {
    let workers = config.server.workers.get();
    let tls_config = load_tls(config)?;
    // One listener group per address; each worker takes one member of every group.
    let mut groups: Vec<Vec<Listener>> = Vec::new();
    let (mut udp, mut tcp, mut tls) = (Vec::new(), Vec::new(), Vec::new());
    for addr in &config.server.listen {
        let (udp_group, tcp_group) = net::udp::bind_udp_and_tcp_groups(*addr, workers)?;
        udp.push(udp_group[0].local_addr()?);
        tcp.push(tcp_group[0].local_addr()?);
        groups.push(udp_group.into_iter().map(Listener::Udp).collect());
        groups.push(tcp_group.into_iter().map(Listener::Tcp).collect());
    }
    for addr in &config.tls.listen {
        let group = net::udp::bind_tcp_listener_group(*addr, workers)?;
        tls.push(group[0].local_addr()?);
        groups.push(group.into_iter().map(Listener::Tls).collect());
    }
    let relay_ips = resolve_relay_ips(config);
    let revocations =
        sessions::RevocationStore::open(config.api.revocations_file.as_deref(), unix_now())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let random_nonce_key = NonceKey::new(rand::random());
    let mut own_addresses = udp.clone();
    own_addresses.extend(&tls);
    let settings = Settings {
        server: Arc::new(server_config(
            config,
            &own_addresses,
            &relay_ips,
            &nonce_key(config, &random_nonce_key),
        )),
        relay: RelaySettings {
            ips: relay_ips.clone(),
            ports: config.relay.port_range(),
        },
        tls: tls_config,
    };
    let quotas = Arc::new(Quotas::new(
        config.limits.max_allocations.get(),
        config.limits.max_allocations_per_user.get(),
    ));
    quotas.set_max_challenges_per_sec(config.limits.max_challenges_per_sec.get() as u64);
    let telemetry = Arc::new(telemetry::Telemetry::new(workers));
    let usage = usage::UsageSinks::start(&config.usage, telemetry.clone())?;
    let shared = Arc::new(WorkerShared {
        shutdown: Default::default(),
        reservations: Default::default(),
        telemetry,
        usage,
        // Bounds on stream connections (DESIGN "quotas on everything"); fixed until restart.
        connections: ConnectionLimits::new(
            config.limits.max_connections.get(),
            config.limits.max_connections_per_source.get(),
        ),
        generation: Default::default(),
        settings: RwLock::new(Arc::new(settings)),
        xdp: net::xdp::start(config.relay.xdp_interface.as_deref(), config.relay.xdp_mode),
        live_relays: Default::default(),
    });
    let mut wakers = Vec::new();
    let mut commands = Vec::new();
    let mut handles = Vec::new();
    let (death_tx, deaths) = mpsc::channel();
    for index in 0..workers {
        let listeners = groups.iter_mut().map(|g| g.remove(0)).collect();
        let (quotas, shared) = (quotas.clone(), shared.clone());
        let death_tx = death_tx.clone();
        let (command_tx, command_rx) = mpsc::channel();
        commands.push(command_tx);
        // The worker is built on its own thread: its batched-I/O buffers hold raw pointers
        // and never leave it. It hands back the waker that stops it.
        let (ready, waker) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("turnpike-worker-{index}"))
            .spawn(move || {
                match Worker::new(index, listeners, quotas, shared.clone(), command_rx) {
                    Ok((worker, waker)) => {
                        let _ = ready.send(Ok(waker));
                        supervise(index, &shared.shutdown, &death_tx, || worker.run())
                    }
                    Err(e) => {
                        let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                        Err(e)
                    }
                }
            })?;
        let waker = waker
            .recv()
            .map_err(|_| io::Error::other("worker thread died while starting"))??;
        wakers.push(waker);
        handles.push(handle);
    }
    let control = Arc::new(Control {
        shared,
        quotas,
        random_nonce_key,
        wakers,
        own_addresses,
        relay_ips: relay_ips.clone(),
        state: std::sync::Mutex::new(ControlState {
            config: config.clone(),
            draining: false,
        }),
        commands,
        revocations: std::sync::Mutex::new(revocations),
    });
    // Workers answer their queue before their first packet: no revoked user allocates.
    control.push_revocations();
    Ok(Running {
        udp,
        tcp,
        tls,
        relay_ips,
        control,
        workers: handles,
        deaths: Some(deaths),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `body` under [`supervise`] on its own thread, as `start` does.
    fn supervised(
        shutdown: bool,
        body: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> (io::Result<()>, Option<WorkerDeath>) {
        let (tx, rx) = mpsc::channel();
        let flag = Arc::new(AtomicBool::new(shutdown));
        let handle = std::thread::spawn(move || supervise(7, &flag, &tx, body));
        let result = handle.join().expect("supervise catches the panic");
        (result, rx.recv_timeout(Duration::from_secs(5)).ok())
    }

    #[test]
    fn instances_sharing_a_secret_accept_each_others_nonces() {
        let with = |secrets: &[&str]| {
            let mut config = config::Config::default();
            config.auth.secrets = secrets
                .iter()
                .map(|s| config::Secret::new(s.to_string()))
                .collect();
            config
        };
        let client: std::net::SocketAddr = "198.51.100.7:4000".parse().unwrap();
        // Each instance has its own random fallback; the secret decides.
        let a = nonce_key(&with(&["fleet", "old"]), &NonceKey::new([1; 32]));
        let b = nonce_key(&with(&["fleet"]), &NonceKey::new([2; 32]));
        let other = nonce_key(&with(&["elsewhere"]), &NonceKey::new([1; 32]));
        let nonce = a.issue(client, 10_000);
        use proto::auth::NonceCheck;
        assert_eq!(b.check(&nonce, client, 10_001, 600), NonceCheck::Valid);
        assert_eq!(other.check(&nonce, client, 10_001, 600), NonceCheck::Stale);
        // Static users only: the instance's own random key.
        let fallback = NonceKey::new([3; 32]);
        let own = nonce_key(&with(&[]), &fallback).issue(client, 10_000);
        assert_eq!(fallback.check(&own, client, 10_000, 600), NonceCheck::Valid);
    }

    /// Before any allocation has used them, the relay's own addresses are denied peers to the
    /// filter, in the IPv6 forms that carry them too; `allow_peers` still opens them. The
    /// core gets the relay IPs and ports, to let relay-to-relay through.
    #[test]
    fn relay_addresses_are_denied_peers_from_the_start() {
        let relay: IpAddr = "1.2.3.4".parse().unwrap();
        let mut config = config::Config::default();
        config.relay.external_ip = Some("5.6.7.8".parse().unwrap());
        let server = server_config(&config, &[], &[relay], &NonceKey::new([0; 32]));
        // The core lets the exact relay IPs through on relay ports (relay-to-relay).
        assert_eq!(server.relay_ips, [relay]);
        assert_eq!(server.relay_ports, 49152..=65535);
        let filter = server.peer_filter;
        for denied in ["1.2.3.4", "64:ff9b::102:304", "::ffff:1.2.3.4", "5.6.7.8"] {
            assert!(!filter.is_allowed(denied.parse().unwrap()), "{denied}");
        }
        assert!(filter.is_allowed("1.2.3.5".parse().unwrap()));
        let mut open = config::Config::default();
        open.relay.allow_peers = vec!["1.2.3.0/24".parse().unwrap()];
        let filter = server_config(&open, &[], &[relay], &NonceKey::new([0; 32])).peer_filter;
        assert!(filter.is_allowed(relay));
    }

    #[test]
    fn a_panicking_worker_is_reported_with_its_message() {
        let (result, death) = supervised(false, || panic!("overflow when adding {}", "duration"));
        assert!(result.is_err());
        let death = death.expect("reported");
        assert_eq!(death.index, 7);
        assert_eq!(
            death.to_string(),
            "worker 7 panicked: overflow when adding duration"
        );
        let (_, death) = supervised(false, || panic!("plain"));
        assert_eq!(death.unwrap().to_string(), "worker 7 panicked: plain");
    }

    #[test]
    fn a_failing_or_returning_worker_is_reported_unless_shutting_down() {
        let (_, death) = supervised(false, || Err(io::Error::other("epoll gone")));
        assert_eq!(death.unwrap().to_string(), "worker 7 failed: epoll gone");
        let (_, death) = supervised(false, || Ok(()));
        assert_eq!(death.unwrap().to_string(), "worker 7 stopped unexpectedly");
        // After the shutdown flag, ending is the plan: nothing is reported.
        let (result, death) = supervised(true, || Ok(()));
        assert!(result.is_ok() && death.is_none());
        let (result, death) = supervised(true, || panic!("late"));
        assert!(result.is_err() && death.is_none());
    }
}
