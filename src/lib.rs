//! turnpike: a STUN/TURN server.
//!
//! [`proto`] is the sans-IO protocol core; [`net`] owns sockets, threads and the clock;
//! [`start`] wires them together from a [`config::Config`] so tests drive the real server.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod net;
pub mod proto;
pub mod telemetry;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use net::worker::{RelaySettings, Settings, Worker, WorkerShared};
use proto::auth::{Credentials, NonceKey, Password};
use proto::peer_filter::PeerFilter;
use proto::{Quotas, ServerConfig};

/// A running server: its bound addresses and worker threads.
pub struct Running {
    /// The UDP listening addresses, with the real ports when port 0 was asked for.
    pub udp: Vec<SocketAddr>,
    pub relay_ips: Vec<IpAddr>,
    shared: Arc<WorkerShared>,
    quotas: Arc<Quotas>,
    /// Kept across reloads so nonces already handed out stay valid.
    nonce_key: NonceKey,
    wakers: Vec<Arc<mio::Waker>>,
    workers: Vec<JoinHandle<io::Result<()>>>,
}

impl Running {
    pub fn telemetry(&self) -> Arc<telemetry::Telemetry> {
        self.shared.telemetry.clone()
    }

    /// Applies a new configuration's secrets, users, peer lists, limits and relay port range
    /// without touching live allocations. Listening and relay addresses need a restart.
    pub fn reload(&self, config: &config::Config) {
        let settings = Settings {
            server: Arc::new(server_config(
                config,
                &self.udp,
                &self.relay_ips,
                &self.nonce_key,
            )),
            relay: RelaySettings {
                ips: self.relay_ips.clone(),
                ports: config.port_range.clone(),
            },
        };
        self.quotas
            .set_limits(config.max_allocations, config.max_allocations_per_user);
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

    /// Stops every worker, freeing all allocations, and waits for them.
    pub fn stop(self) -> io::Result<()> {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for worker in self.workers {
            worker
                .join()
                .map_err(|_| io::Error::other("worker thread panicked"))??;
        }
        Ok(())
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
        realm: config.realm.clone(),
        software: config.software.clone(),
        credentials: Credentials {
            secrets: config.secrets.iter().map(password).collect(),
            separator: config.separator,
            static_users: config
                .static_users
                .iter()
                .map(|(name, secret)| (name.clone(), password(secret)))
                .collect(),
        },
        nonce_key: nonce_key.clone(),
        nonce_lifetime: config.nonce_lifetime,
        default_lifetime: config.default_lifetime,
        max_lifetime: config.max_lifetime,
        max_permissions_per_allocation: config.max_permissions_per_allocation,
        max_channels_per_allocation: config.max_channels_per_allocation,
        bandwidth_per_allocation: config.bandwidth_per_allocation,
        peer_filter: PeerFilter::new(config.allow_peers.clone(), config.deny_peers.clone()),
        own_addresses: listen.to_vec(),
        external_ip: config.external_ip,
        relay_ipv4: relay_ips.iter().any(IpAddr::is_ipv4),
        relay_ipv6: relay_ips.iter().any(IpAddr::is_ipv6),
    }
}

/// Relay addresses: the configured ones, else the specific listening addresses, else the
/// address this host would use to reach the internet (found with a connected UDP socket,
/// which sends nothing), else loopback.
pub fn resolve_relay_ips(config: &config::Config) -> Vec<IpAddr> {
    if !config.relay_ips.is_empty() {
        return config.relay_ips.clone();
    }
    let mut ips: Vec<IpAddr> = config
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

/// Binds every socket and starts the workers. When this returns, the server is serving.
pub fn start(config: &config::Config) -> io::Result<Running> {
    let workers = config.workers.max(1);
    let mut groups = Vec::new();
    for addr in &config.listen {
        groups.push(net::udp::bind_listener_group(*addr, workers)?);
    }
    let udp: Vec<SocketAddr> = groups
        .iter()
        .map(|group| group[0].local_addr())
        .collect::<io::Result<_>>()?;
    let relay_ips = resolve_relay_ips(config);
    let nonce_key = NonceKey::new(rand::random());
    let settings = Settings {
        server: Arc::new(server_config(config, &udp, &relay_ips, &nonce_key)),
        relay: RelaySettings {
            ips: relay_ips.clone(),
            ports: config.port_range.clone(),
        },
    };
    let quotas = Arc::new(Quotas::new(
        config.max_allocations,
        config.max_allocations_per_user,
    ));
    let shared = Arc::new(WorkerShared {
        shutdown: Default::default(),
        reservations: Default::default(),
        telemetry: Arc::new(telemetry::Telemetry::new(workers)),
        generation: Default::default(),
        settings: RwLock::new(Arc::new(settings)),
    });
    let mut wakers = Vec::new();
    let mut handles = Vec::new();
    for index in 0..workers {
        let listeners = groups.iter_mut().map(|g| g.remove(0)).collect();
        let (worker, waker) = Worker::new(index, listeners, quotas.clone(), shared.clone())?;
        wakers.push(waker);
        handles.push(
            std::thread::Builder::new()
                .name(format!("turnpike-worker-{index}"))
                .spawn(move || worker.run())?,
        );
    }
    Ok(Running {
        udp,
        relay_ips,
        shared,
        quotas,
        nonce_key,
        wakers,
        workers: handles,
    })
}
