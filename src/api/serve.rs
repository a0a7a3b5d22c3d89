//! The API's accept loop and its connections, bounded in number and in time so that HTTP
//! clients, with or without a token, cannot take the file descriptors TURN needs for relay
//! sockets and TCP/TLS clients (issue 12), nor hold the API itself.
//!
//! * At most `max_connections` connections are open, at most `max_per_source` from one IP.
//!   A connection over either cap gets a 503 and is closed at once, so a flood holds no
//!   descriptor beyond the cap. The slot belongs to the socket, so a WebSocket upgraded from
//!   a connection keeps counting until it closes.
//! * A request head must arrive within `request_timeout` (hyper's `header_read_timeout`),
//!   which also bounds how long a keep-alive connection waits idle for its next request.
//!   Handling a request, body included, is bounded by the router (see `mod.rs`), and a
//!   response write that makes no progress for `request_timeout` ends the connection.
//! * A failed accept (EMFILE, ENFILE, ENOBUFS) pauses accepting for [`ACCEPT_BACKOFF`]: the
//!   loop neither spins on a pending connection it cannot take nor gives up.
//!
//! axum's `serve` does none of this (no timer, so no header timeout; no cap), hence hyper's
//! HTTP/1 connection directly, as `axum::serve` itself uses it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::config::Config;

/// How long in-flight requests may take to finish once shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed accept. Short, so the API answers again soon after descriptors
/// free up; long enough that a pending connection the process cannot take costs nothing.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one warning about refused connections per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The API's connection bounds, from `api.request_timeout_secs`, `api.max_connections` and
/// `api.max_connections_per_source`; fixed until restart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_per_source: usize,
}

impl Bounds {
    pub(crate) fn from_config(config: &Config) -> Self {
        Bounds {
            request_timeout: config.api.request_timeout_secs.get(),
            max_connections: config.api.max_connections.get(),
            max_per_source: config.api.max_connections_per_source.get(),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` becomes true (or its sender is dropped),
/// then lets open requests finish for up to [`SHUTDOWN_GRACE`].
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = shutdown.clone();
    let slots = Slots::new(bounds.max_connections, bounds.max_per_source);
    let mut connections = JoinSet::new();
    let mut refusals = RefusalLog::default();
    let mut accept_failing = false;
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!("HTTP API connection task failed: {e}");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if accept_failing {
                        tracing::info!("HTTP API accepting connections again");
                        accept_failing = false;
                    }
                    match slots.claim(peer.ip()) {
                        Ok(slot) => {
                            let stream = ApiStream::new(stream, slot, bounds.request_timeout);
                            connections.spawn(serve_connection(
                                stream,
                                app.clone(),
                                bounds.request_timeout,
                                stop.clone(),
                            ));
                        }
                        Err(refusal) => {
                            refusals.note(refusal, bounds);
                            refuse(&stream, refusal);
                        }
                    }
                }
                // The client gave up before we took the connection: nothing to wait for.
                Err(e) if crate::net::is_connection_error(&e) => {}
                Err(e) => {
                    if !accept_failing {
                        tracing::warn!(
                            "HTTP API cannot accept connections: {e}; retrying every {ACCEPT_BACKOFF:?}"
                        );
                        accept_failing = true;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("HTTP API requests still running after {SHUTDOWN_GRACE:?}; dropped");
    }
}

/// Once shutdown is asked for, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One HTTP/1.1 connection (WebSocket upgrades included) until it ends; on shutdown, the
/// request in progress is finished and the connection closed.
async fn serve_connection(
    stream: ApiStream,
    app: Router,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = http
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    // Timeouts, resets and malformed requests end here; they are the client's doing.
    if let Err(e) = result {
        tracing::debug!("HTTP API connection closed: {e}");
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// `api.max_connections` connections are open.
    Total,
    /// `api.max_connections_per_source` connections from this IP are open.
    Source,
}

/// Best effort, without waiting: a 503 naming the cap, then the socket is closed (dropped).
fn refuse(stream: &TcpStream, refusal: Refusal) {
    let body = match refusal {
        Refusal::Total => r#"{"error":"too many HTTP API connections (api.max_connections)"}"#,
        Refusal::Source => {
            r#"{"error":"too many HTTP API connections from this address (api.max_connections_per_source)"}"#
        }
    };
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// Counts refusals and warns at most once per [`REFUSAL_LOG_INTERVAL`].
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn note(&mut self, refusal: Refusal, bounds: Bounds) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        let cap = match refusal {
            Refusal::Total => format!("api.max_connections = {}", bounds.max_connections),
            Refusal::Source => {
                format!("api.max_connections_per_source = {}", bounds.max_per_source)
            }
        };
        tracing::warn!(
            "HTTP API connection refused with 503: {cap} reached ({} more refused since the last warning)",
            self.suppressed
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Open connections, in total and per source IP. Only the API's thread touches it, when a
/// connection opens or closes.
#[derive(Clone)]
struct Slots(Arc<Mutex<SlotTable>>);

struct SlotTable {
    max_total: usize,
    max_per_source: usize,
    total: usize,
    /// Only sources with open connections: the table is at most `max_total` long.
    per_source: HashMap<IpAddr, usize>,
}

/// A claimed slot, given back when dropped (when its socket closes).
struct Slot {
    slots: Slots,
    source: IpAddr,
}

impl Slots {
    fn new(max_total: usize, max_per_source: usize) -> Self {
        Slots(Arc::new(Mutex::new(SlotTable {
            max_total,
            max_per_source,
            total: 0,
            per_source: HashMap::new(),
        })))
    }

    fn claim(&self, source: IpAddr) -> Result<Slot, Refusal> {
        // An IPv4 client of a dual-stack listener is the same source as over IPv4, and an
        // IPv6 /64 is one source, as for TURN connections.
        let source = crate::net::source_of(source);
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if table.total >= table.max_total {
            return Err(Refusal::Total);
        }
        let max_per_source = table.max_per_source;
        let count = table.per_source.entry(source).or_insert(0);
        if *count >= max_per_source {
            return Err(Refusal::Source);
        }
        *count += 1;
        table.total += 1;
        Ok(Slot {
            slots: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        table.total -= 1;
        if let Some(count) = table.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                table.per_source.remove(&self.source);
            }
        }
    }
}

/// An accepted connection: it holds its [`Slot`] for as long as the socket is open, and a
/// write that makes no progress for `write_timeout` fails with `TimedOut` (a client that
/// stops reading cannot pin the connection).
struct ApiStream {
    stream: TcpStream,
    _slot: Slot,
    write_timeout: Duration,
    /// Running while a write is pending; reset by any progress.
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl ApiStream {
    fn new(stream: TcpStream, slot: Slot, write_timeout: Duration) -> Self {
        ApiStream {
            stream,
            _slot: slot,
            write_timeout,
            write_stall: None,
        }
    }

    /// After the socket said Pending: Pending until the stall lasted `write_timeout`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.write_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {timeout:?}"),
        ))
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.write_stall = None;
                done
            }
        }
    }
}

impl AsyncRead for ApiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.progress(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn slots_cap_each_source_and_the_total_and_come_back_when_dropped() {
        let slots = Slots::new(3, 2);
        let a1 = slots.claim(A).unwrap();
        let _a2 = slots.claim(A).unwrap();
        assert_eq!(slots.claim(A).err(), Some(Refusal::Source));
        let b1 = slots.claim(B).unwrap();
        assert_eq!(slots.claim(B).err(), Some(Refusal::Total));
        let open = |slots: &Slots| slots.0.lock().unwrap().total;
        assert_eq!(open(&slots), 3);
        drop(a1);
        assert_eq!(open(&slots), 2);
        let _a3 = slots.claim(A).unwrap();
        drop(b1);
        // B's entry is gone with its last connection: the table only holds open sources.
        assert_eq!(slots.0.lock().unwrap().per_source.len(), 1);
        let _b2 = slots.claim(B).unwrap();
    }

    /// The router's deadline (`mod.rs`) on a route that reads its body: a body that never
    /// arrives gets a 408 at the timeout instead of holding the connection.
    #[test]
    fn a_request_whose_body_never_arrives_gets_408_at_the_timeout() {
        use std::io::{Read, Write};

        let timeout = Duration::from_secs(1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let app = Router::new()
            .route(
                "/echo",
                axum::routing::post(|body: String| async move { body }),
            )
            .layer(axum::middleware::from_fn_with_state(
                timeout,
                super::super::deadline,
            ));
        let bounds = Bounds {
            request_timeout: timeout,
            max_connections: 4,
            max_per_source: 4,
        };
        let (stop, shutdown) = watch::channel(false);
        let server = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                run(listener, app, bounds, shutdown).await;
            });
        });

        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let sent = std::time::Instant::now();
        client
            .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n10 of 100.")
            .unwrap();
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("api.request_timeout_secs"), "{answer}");
        let took = sent.elapsed();
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(2),
            "{took:?}"
        );
        stop.send(true).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_source() {
        let slots = Slots::new(10, 1);
        let _v4 = slots.claim(A).unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(slots.claim(mapped).err(), Some(Refusal::Source));
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let slots = Slots::new(10, 1);
        let _first = slots.claim("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(slots.claim(same_64).err(), Some(Refusal::Source));
        assert!(slots.claim("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }
}
