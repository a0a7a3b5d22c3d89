//! A worker's listening sockets: its member of each `SO_REUSEPORT` group the process bound
//! (UDP, TCP and TLS), registered under tokens `0..len`. Owns accepting stream connections,
//! including the retry of an `accept` that failed for want of descriptors or memory; what a
//! datagram or a new connection means is the worker's business.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use super::is_connection_error;
use crate::proto::server::LogBudget;
use crate::proto::Transport;

/// After `accept` fails for want of descriptors or memory, try again this much later: the
/// backlog is not announced again by an edge-triggered poll.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A listening socket of this worker.
pub enum Listener {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
    Tls(std::net::TcpListener),
}

enum Bound {
    Udp(UdpSocket, SocketAddr),
    Stream(TcpListener, Transport),
}

/// What a listener's token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Udp,
    Stream,
}

/// A connection taken from a stream listener.
pub(super) struct Accepted {
    pub stream: TcpStream,
    pub client: SocketAddr,
    pub transport: Transport,
}

pub(super) struct Listeners {
    /// Listener `i` is registered as `Token(i)`.
    bound: Vec<Bound>,
    /// Listeners whose `accept` failed, to be tried again at the instant given.
    retry: Option<(Instant, Vec<Token>)>,
    log: LogBudget,
}

impl Listeners {
    pub(super) fn register(registry: &Registry, listeners: Vec<Listener>) -> io::Result<Self> {
        let mut bound = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let token = Token(i);
            let listener_is_tls = matches!(listener, Listener::Tls(_));
            match listener {
                Listener::Udp(socket) => {
                    let addr = socket.local_addr()?;
                    let mut socket = UdpSocket::from_std(socket);
                    registry.register(&mut socket, token, Interest::READABLE)?;
                    bound.push(Bound::Udp(socket, addr));
                }
                Listener::Tcp(listener) | Listener::Tls(listener) => {
                    let transport = if listener_is_tls {
                        Transport::Tls
                    } else {
                        Transport::Tcp
                    };
                    let mut listener = TcpListener::from_std(listener);
                    registry.register(&mut listener, token, Interest::READABLE)?;
                    bound.push(Bound::Stream(listener, transport));
                }
            }
        }
        Ok(Self {
            bound,
            retry: None,
            log: LogBudget::default(),
        })
    }

    /// What listener `index` is, if there is one.
    pub(super) fn kind(&self, index: usize) -> Option<Kind> {
        match self.bound.get(index)? {
            Bound::Udp(..) => Some(Kind::Udp),
            Bound::Stream(..) => Some(Kind::Stream),
        }
    }

    /// The descriptor and local address of UDP listener `index`.
    #[inline]
    pub(super) fn udp(&self, index: usize) -> Option<(RawFd, SocketAddr)> {
        match self.bound.get(index)? {
            Bound::Udp(socket, addr) => Some((socket.as_raw_fd(), *addr)),
            Bound::Stream(..) => None,
        }
    }

    /// The descriptor of the UDP listener bound to `server`: where a UDP client's data leaves
    /// from.
    #[inline]
    pub(super) fn udp_fd(&self, server: SocketAddr) -> Option<RawFd> {
        self.bound.iter().find_map(|listener| match listener {
            Bound::Udp(socket, addr) if *addr == server => Some(socket.as_raw_fd()),
            _ => None,
        })
    }

    /// Takes one connection from stream listener `index`: `Ok(None)` when it went away before
    /// it was taken (take the next), `WouldBlock` when there is none to take now.
    pub(super) fn accept(&mut self, index: usize) -> io::Result<Option<Accepted>> {
        let Some(Bound::Stream(listener, transport)) = self.bound.get(index) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let transport = *transport;
        match listener.accept() {
            Ok((stream, client)) => Ok(Some(Accepted {
                stream,
                client,
                transport,
            })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // The connection went away before it was taken (ECONNABORTED and the like): take
            // the next one.
            Err(e) if is_connection_error(&e) => Ok(None),
            // Out of descriptors or memory: leave the rest in the backlog and come back to it
            // soon (no new readiness event would announce it).
            Err(e) => {
                let now = Instant::now();
                if let Some(suppressed) = self.log.allow(now) {
                    tracing::warn!(error = %e, suppressed, "accept failed; retrying");
                }
                let (_, tokens) = self
                    .retry
                    .get_or_insert_with(|| (now + ACCEPT_RETRY, Vec::new()));
                if !tokens.contains(&Token(index)) {
                    tokens.push(Token(index));
                }
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    /// When listeners whose `accept` failed are to be tried again.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry.as_ref().map(|(at, _)| *at)
    }

    /// The listeners to try again, once their retry is due at `now`.
    pub(super) fn due_retries(&mut self, now: Instant) -> Option<Vec<Token>> {
        if self.retry_at().is_some_and(|at| now >= at) {
            self.retry.take().map(|(_, tokens)| tokens)
        } else {
            None
        }
    }
}
