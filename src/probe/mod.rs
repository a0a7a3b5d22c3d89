//! `turnpike probe`: an operator's self-test of STUN/TURN servers from where it runs.
//!
//! For each URL: resolve, Binding (reflexive address and round-trip time), and for `turn:`
//! and `turns:` an authenticated Allocate, CreatePermission and ChannelBind for a second
//! local UDP socket, a sequence-numbered burst relayed both ways (round trips and loss),
//! then Refresh with lifetime 0. Afterwards one UDP socket sends Bindings to every distinct
//! server address (and an RFC 5780 OTHER-ADDRESS, if a server names one) to classify the
//! local NAT's mapping. The verdict names the reason when something fails.
//!
//! Blocking std sockets and rustls; no runtime. Modules: [`url`] parses URIs, [`conn`]
//! carries STUN over UDP/TCP/TLS, [`session`] runs the protocol, [`http`] fetches
//! credentials from `/api/v1/ice`, [`tls`] builds the client configuration.

pub mod conn;
pub mod http;
pub mod session;
pub mod tls;
pub mod url;

use crate::unix_now;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cli::ProbeArgs;
use crate::proto::auth::mint_rest_credential;
use conn::Conn;
use session::{binding, TurnSession, UserPass};
use tls::TlsOptions;
use url::{IceUrl, Transport};

/// Lifetime of a credential minted from `--secret`.
const MINTED_TTL_SECS: u64 = 3600;
/// User name in minted or fetched credentials when `--user` is not given.
const DEFAULT_USER: &str = "turnpike-probe";
/// Binding requests per URL (round-trip statistics for `stun:` URLs).
const BINDINGS: usize = 3;

/// Round-trip statistics in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RttStats {
    pub min: f64,
    pub p50: f64,
    pub max: f64,
    pub samples: usize,
}

impl RttStats {
    pub fn from(samples: &[Duration]) -> Option<RttStats> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        Some(RttStats {
            min: round(ms[0]),
            p50: round(ms[(ms.len() - 1) / 2]),
            max: round(ms[ms.len() - 1]),
            samples: ms.len(),
        })
    }

    fn show(&self) -> String {
        format!("{:.2}/{:.2}/{:.2}", self.min, self.p50, self.max)
    }
}

/// Relayed packet counts, each way.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Loss {
    /// Sent by the client into the allocation.
    pub sent: usize,
    /// Of those, received by the peer socket (client → peer).
    pub peer_received: usize,
    /// Echoed by the peer towards the relayed address.
    pub peer_sent: usize,
    /// Of those, received by the client (peer → client).
    pub client_received: usize,
    /// Lost packets over packets sent, both directions, in percent.
    pub percent: f64,
}

impl Loss {
    fn new(r: &session::RelayResult) -> Loss {
        let out_lost = r.sent.saturating_sub(r.peer_received);
        let back_lost = r.peer_sent.saturating_sub(r.client_received);
        let total = r.sent + r.peer_sent;
        let percent = if total == 0 {
            100.0
        } else {
            ((out_lost + back_lost) as f64 * 1000.0 / total as f64).round() / 10.0
        };
        Loss {
            sent: r.sent,
            peer_received: r.peer_received,
            peer_sent: r.peer_sent,
            client_received: r.client_received,
            percent,
        }
    }

    fn show(&self) -> String {
        format!(
            "{}% ({}/{} out, {}/{} back)",
            self.percent, self.peer_received, self.sent, self.client_received, self.peer_sent
        )
    }
}

/// Everything the probe learnt about one URL.
#[derive(Debug, Clone, Serialize)]
pub struct UrlReport {
    pub url: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: &'static str,
    /// `true` for `turn:`/`turns:` (relay tested).
    pub turn: bool,
    pub server: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub reflexive: Option<SocketAddr>,
    pub relayed: Option<SocketAddr>,
    /// The second local socket the relay test sent to.
    pub peer: Option<SocketAddr>,
    pub realm: Option<String>,
    /// Allocation lifetime the server granted, seconds.
    pub lifetime: Option<u32>,
    pub binding_rtt_ms: Option<RttStats>,
    /// Client → relay → peer → relay → client round trips.
    pub relay_rtt_ms: Option<RttStats>,
    pub loss: Option<Loss>,
    /// For TLS: whether the certificate was verified (`false` with `--insecure`).
    pub tls_verified: Option<bool>,
    pub ok: bool,
    /// `OK` or `FAIL: <reason>`.
    pub verdict: String,
    pub error: Option<String>,
}

impl UrlReport {
    fn new(url: &str, transport: &'static str, turn: bool) -> UrlReport {
        UrlReport {
            url: url.to_owned(),
            transport,
            turn,
            server: None,
            local: None,
            reflexive: None,
            relayed: None,
            peer: None,
            realm: None,
            lifetime: None,
            binding_rtt_ms: None,
            relay_rtt_ms: None,
            loss: None,
            tls_verified: None,
            ok: false,
            verdict: String::new(),
            error: None,
        }
    }

    fn finish(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok = true;
                self.verdict = "OK".to_owned();
            }
            Err(reason) => {
                self.verdict = format!("FAIL: {reason}");
                self.error = Some(reason);
            }
        }
    }
}

/// What the NAT test concluded.
#[derive(Debug, Clone, Serialize)]
pub struct NatReport {
    /// `no-nat`, `endpoint-independent`, `endpoint-dependent` or `unknown`.
    pub mapping: &'static str,
    pub summary: String,
    pub local: Option<SocketAddr>,
    /// `[server, mapped address]` per server asked.
    pub mappings: Vec<(SocketAddr, SocketAddr)>,
}

/// Everything the probe prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub results: Vec<UrlReport>,
    pub nat: NatReport,
}

/// Probe settings, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeout: Duration,
    pub packets: usize,
    pub tls: TlsOptions,
}

/// `turnpike probe`: prints the report; exit 0 when every URL worked, 1 otherwise, 2 on
/// usage errors.
pub fn run(args: &ProbeArgs) -> ExitCode {
    let options = Options {
        timeout: Duration::from_secs_f64(args.timeout),
        packets: usize::from(args.packets),
        tls: TlsOptions {
            insecure: args.insecure,
            ca_file: args.ca_file.clone(),
        },
    };
    let user = args.user.as_deref().unwrap_or(DEFAULT_USER);
    let mut raw_urls = args.urls.clone();
    let credentials = if let Some(secret) = &args.secret {
        let (username, password) =
            mint_rest_credential(secret, user, args.separator, unix_now(), MINTED_TTL_SECS);
        Some(UserPass { username, password })
    } else if let (Some(username), Some(password)) = (&args.username, &args.password) {
        Some(UserPass {
            username: username.clone(),
            password: password.clone(),
        })
    } else if let Some(url) = &args.credentials_url {
        match http::fetch(
            url,
            user,
            args.api_token.as_deref(),
            options.timeout,
            &options.tls,
        ) {
            Ok(ice) => {
                if raw_urls.is_empty() {
                    raw_urls = ice.urls;
                }
                match (ice.username, ice.credential) {
                    (Some(username), Some(password)) => Some(UserPass { username, password }),
                    _ => None,
                }
            }
            Err(e) => {
                eprintln!("turnpike probe: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if raw_urls.is_empty() {
        eprintln!(
            "turnpike probe: no URL to test (give stun:/turn:/turns: URLs, or --credentials-url)"
        );
        return ExitCode::from(2);
    }
    let mut urls = Vec::new();
    for raw in &raw_urls {
        match IceUrl::parse(raw) {
            Ok(url) => urls.push(url),
            Err(e) => {
                eprintln!("turnpike probe: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let report = probe_all(&urls, credentials.as_ref(), &options);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("turnpike probe: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render_table(&report, &options));
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Probes every URL in turn, then classifies the NAT.
pub fn probe_all(urls: &[IceUrl], credentials: Option<&UserPass>, options: &Options) -> Report {
    // The TLS configuration is built once; its error is every TLS URL's verdict.
    let needs_tls = urls.iter().any(|u| u.transport == Transport::Tls);
    let tls_config = if needs_tls {
        Some(tls::client_config(&options.tls))
    } else {
        None
    };
    let results: Vec<UrlReport> = urls
        .iter()
        .map(|url| probe_url(url, credentials, options, tls_config.as_ref()))
        .collect();
    let nat = classify_nat(urls, &results, options.timeout);
    Report {
        ok: results.iter().all(|r| r.ok),
        results,
        nat,
    }
}

/// Probes one URL; never panics, always returns a verdict.
pub fn probe_url(
    url: &IceUrl,
    credentials: Option<&UserPass>,
    options: &Options,
    tls_config: Option<&Result<Arc<rustls::ClientConfig>, String>>,
) -> UrlReport {
    let mut report = UrlReport::new(&url.raw, url.transport.name(), url.turn);
    let outcome = probe_steps(url, credentials, options, tls_config, &mut report);
    report.finish(outcome);
    report
}

fn probe_steps(
    url: &IceUrl,
    credentials: Option<&UserPass>,
    options: &Options,
    tls_config: Option<&Result<Arc<rustls::ClientConfig>, String>>,
    report: &mut UrlReport,
) -> Result<(), String> {
    let timeout = options.timeout;
    let server = url.resolve()?;
    report.server = Some(server);
    let mut conn = match url.transport {
        Transport::Udp => Conn::udp(server).map_err(|e| format!("UDP socket: {e}"))?,
        Transport::Tcp => Conn::tcp(server, timeout)?,
        Transport::Tls => {
            let config = match tls_config {
                Some(Ok(config)) => config.clone(),
                Some(Err(e)) => return Err(e.clone()),
                None => tls::client_config(&options.tls)?,
            };
            report.tls_verified = Some(!options.tls.insecure);
            Conn::tls(server, tls::server_name(&url.host)?, config, timeout)?
        }
    };
    report.local = Some(conn.local);
    let mut rtts = Vec::new();
    for _ in 0..BINDINGS {
        let result = binding(&mut conn, timeout)?;
        report.reflexive = Some(result.mapped);
        rtts.push(result.rtt);
    }
    report.binding_rtt_ms = RttStats::from(&rtts);
    if !url.turn {
        return Ok(());
    }
    let mut session = TurnSession::new(&mut conn, timeout);
    let outcome = relay_test(&mut session, credentials, options.packets);
    // Free the allocation whatever happened after it was made.
    let released = if session.result.relayed.is_some() {
        session.release()
    } else {
        Ok(())
    };
    let result = &session.result;
    report.realm = result.realm.clone();
    report.relayed = result.relayed;
    report.peer = result.peer;
    report.lifetime = result.lifetime;
    report.relay_rtt_ms = RttStats::from(&result.rtts);
    if result.sent > 0 {
        report.loss = Some(Loss::new(result));
    }
    outcome?;
    released.map_err(|e| format!("Refresh (lifetime 0): {e}"))
}

fn relay_test(
    session: &mut TurnSession<'_>,
    credentials: Option<&UserPass>,
    packets: usize,
) -> Result<(), String> {
    let relayed = session.allocate(credentials)?;
    // The peer: a second UDP socket on the same local IP as the connection to the server.
    let local_ip = session_local_ip(session);
    let peer_socket =
        UdpSocket::bind((local_ip, 0)).map_err(|e| format!("peer socket on {local_ip}: {e}"))?;
    let peer = peer_socket
        .local_addr()
        .map_err(|e| format!("peer socket: {e}"))?;
    session.result.peer = Some(peer);
    session.create_permission(peer)?;
    session.channel_bind(peer)?;
    session.burst(&peer_socket, relayed, packets);
    let r = &session.result;
    if r.peer_received == 0 {
        return Err(format!(
            "relay: none of {} packets sent through {relayed} reached the peer {peer}",
            r.sent
        ));
    }
    if r.client_received == 0 {
        return Err(format!(
            "relay: the peer {peer} got {} of {} packets, but none of its {} replies came \
             back through {relayed}",
            r.peer_received, r.sent, r.peer_sent
        ));
    }
    Ok(())
}

fn session_local_ip(session: &TurnSession<'_>) -> std::net::IpAddr {
    session.local().ip()
}

/// Mapping behaviour (RFC 4787 §4.1) from one UDP socket's Bindings to every distinct
/// server address of the UDP URLs, plus a server's OTHER-ADDRESS (RFC 5780) if it has one.
pub fn classify_nat(urls: &[IceUrl], results: &[UrlReport], timeout: Duration) -> NatReport {
    let mut servers: Vec<SocketAddr> = Vec::new();
    for (url, result) in urls.iter().zip(results) {
        if url.transport == Transport::Udp && result.reflexive.is_some() {
            if let Some(server) = result.server {
                if !servers.contains(&server) {
                    servers.push(server);
                }
            }
        }
    }
    let unknown = |summary: &str| NatReport {
        mapping: "unknown",
        summary: summary.to_owned(),
        local: None,
        mappings: Vec::new(),
    };
    let Some(&first) = servers.first() else {
        return unknown("NAT mapping: not determined (no UDP server answered a Binding)");
    };
    let socket = match conn::local_ip_toward(first).and_then(|ip| UdpSocket::bind((ip, 0))) {
        Ok(socket) => socket,
        Err(e) => return unknown(&format!("NAT mapping: not determined ({e})")),
    };
    let local = socket.local_addr().ok();
    let mut mappings = Vec::new();
    let mut i = 0;
    while i < servers.len() && i < 8 {
        let server = servers[i];
        i += 1;
        let Ok(clone) = socket.try_clone() else {
            continue;
        };
        let Ok(mut conn) = Conn::udp_on(clone, server) else {
            continue;
        };
        if let Ok(result) = binding(&mut conn, timeout) {
            mappings.push((server, result.mapped));
            if let Some(other) = result.other_address {
                if !servers.contains(&other) {
                    servers.push(other);
                }
            }
        }
    }
    let (mapping, summary) = summarize_mappings(&mappings, local);
    NatReport {
        mapping,
        summary,
        local,
        mappings,
    }
}

/// The mapping behaviour from `(server, mapped address)` pairs seen by one local socket.
fn summarize_mappings(
    mappings: &[(SocketAddr, SocketAddr)],
    local: Option<SocketAddr>,
) -> (&'static str, String) {
    match mappings {
        [] => ("unknown", "NAT mapping: not determined (no Binding answered)".to_owned()),
        [(_, mapped), ..] if Some(*mapped) == local => (
            "no-nat",
            format!("no NAT: the mapped address {mapped} is the local address"),
        ),
        [(_, mapped)] => (
            "unknown",
            format!(
                "NAT present (local {} maps to {mapped}); NAT mapping: not determined (needs two server addresses)",
                local.map_or_else(|| "?".to_owned(), |l| l.to_string())
            ),
        ),
        [(_, first), rest @ ..] if rest.iter().all(|(_, m)| m == first) => (
            "endpoint-independent",
            format!(
                "endpoint-independent mapping: {} servers saw the same address {first}",
                mappings.len()
            ),
        ),
        _ => (
            "endpoint-dependent",
            format!(
                "endpoint-dependent mapping (symmetric NAT): {}",
                mappings
                    .iter()
                    .map(|(s, m)| format!("{s} saw {m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

/// The human-readable report: one row per URL, then the NAT line.
pub fn render_table(report: &Report, options: &Options) -> String {
    let header = [
        "URL",
        "TRANSPORT",
        "RTT ms (min/p50/max)",
        "REFLEXIVE",
        "RELAYED",
        "LOSS",
        "VERDICT",
    ];
    let opt = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let mut rows: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for r in &report.results {
        // TURN rows show relay round trips; STUN rows the Binding round trips.
        let rtt = r
            .relay_rtt_ms
            .or(if r.turn { None } else { r.binding_rtt_ms })
            .map_or_else(|| "-".to_owned(), |s| s.show());
        let mut transport = r.transport.to_owned();
        if r.tls_verified == Some(false) {
            transport.push_str(" (UNVERIFIED)");
        }
        rows.push([
            r.url.clone(),
            transport,
            rtt,
            opt(r.reflexive),
            opt(r.relayed),
            r.loss.map_or_else(|| "-".to_owned(), |l| l.show()),
            r.verdict.clone(),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&report.nat.summary);
    out.push('\n');
    if options.tls.insecure && report.results.iter().any(|r| r.tls_verified.is_some()) {
        out.push_str(
            "WARNING: --insecure: TLS certificates were NOT verified; clients will verify them.\n",
        );
    }
    let failed = report.results.iter().filter(|r| !r.ok).count();
    if failed == 0 {
        out.push_str(&format!("all {} URLs OK\n", report.results.len()));
    } else {
        out.push_str(&format!(
            "{failed} of {} URLs FAILED\n",
            report.results.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_mapping_classification() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let local = Some(a("10.0.0.2:5000"));
        let (s1, s2) = (a("198.51.100.1:3478"), a("198.51.100.2:3478"));
        let same = [(s1, a("203.0.113.9:6000")), (s2, a("203.0.113.9:6000"))];
        assert_eq!(summarize_mappings(&same, local).0, "endpoint-independent");
        let differ = [(s1, a("203.0.113.9:6000")), (s2, a("203.0.113.9:6001"))];
        let (kind, text) = summarize_mappings(&differ, local);
        assert_eq!(kind, "endpoint-dependent");
        assert!(
            text.starts_with("endpoint-dependent mapping (symmetric NAT)"),
            "{text}"
        );
        let (kind, text) = summarize_mappings(&same[..1], local);
        assert_eq!(kind, "unknown");
        assert!(text.ends_with("NAT mapping: not determined (needs two server addresses)"));
        let direct = [(s1, a("10.0.0.2:5000"))];
        assert_eq!(summarize_mappings(&direct, local).0, "no-nat");
        assert_eq!(summarize_mappings(&[], local).0, "unknown");
    }

    #[test]
    fn rtt_stats() {
        let ms = |v: u64| Duration::from_millis(v);
        let s = RttStats::from(&[ms(5), ms(1), ms(3), ms(9)]).unwrap();
        assert_eq!((s.min, s.p50, s.max, s.samples), (1.0, 3.0, 9.0, 4));
        assert!(RttStats::from(&[]).is_none());
    }

    #[test]
    fn loss_counts_both_directions() {
        let r = session::RelayResult {
            sent: 20,
            peer_received: 18,
            peer_sent: 18,
            client_received: 17,
            ..Default::default()
        };
        let loss = Loss::new(&r);
        assert_eq!(loss.percent, 7.9);
        assert_eq!(loss.show(), "7.9% (18/20 out, 17/18 back)");
    }

    #[test]
    fn unreachable_udp_server_times_out_with_its_address() {
        // A bound but silent socket: nothing answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let url = IceUrl::parse(&format!("stun:{addr}")).unwrap();
        let options = Options {
            timeout: Duration::from_millis(300),
            packets: 1,
            tls: TlsOptions::default(),
        };
        let report = probe_url(&url, None, &options, None);
        assert!(!report.ok);
        assert_eq!(
            report.verdict,
            format!("FAIL: timeout (no answer from {addr} in 0.3s)")
        );
    }
}
