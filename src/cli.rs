//! Command line: `turnpike run`, `turnpike credentials`, `turnpike probe`, `turnpike drain`,
//! `turnpike sessions`, `turnpike check-config`.
//!
//! Every configuration key has a flag (the kebab-case of its name). Flags for list keys
//! are repeatable and add to the list the config file sets; when the file does not set
//! that key, they replace the built-in default instead (so `--listen 127.0.0.1:3478`
//! alone does not also bind `0.0.0.0:3478`). Scalar flags override the file. Values
//! that need more than `FromStr` (CIDRs, `NAME=PASSWORD`, the separator) are kept as
//! strings here and parsed by [`crate::config::Config::apply_flags`], whose errors name
//! the flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, DEFAULT_CREDENTIAL_TTL_SECS, DEFAULT_SEPARATOR};

/// turnpike: a STUN/TURN server with time-limited credentials and safe defaults.
#[derive(Debug, Clone, Parser)]
#[command(name = "turnpike", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup, so the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server.
    Run(RunArgs),
    /// Print a time-limited REST API credential as JSON.
    Credentials(CredentialsArgs),
    /// Test STUN/TURN servers from this host: Binding, Allocate, relay both ways, verdict.
    Probe(ProbeArgs),
    /// Drain a running server through its HTTP API: new Allocates go to other instances
    /// (300 Try Alternate), existing allocations keep relaying; `--wait` until none is left.
    Drain(DrainArgs),
    /// See and end live sessions, revoke users (through the HTTP API).
    Sessions(SessionsArgs),
    /// Validate a config file and print the effective configuration (secrets redacted).
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
    },
}

/// Flags of `turnpike run`. `Default` is "no flags given", for tests that build it directly.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML config file; without it the built-in defaults apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    // [server]
    /// Serve STUN/TURN over UDP and TCP on this address (repeatable; adds to server.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Authentication realm (server.realm).
    #[arg(long, value_name = "REALM")]
    pub realm: Option<String>,
    /// SOFTWARE attribute value; "" omits it (server.software).
    #[arg(long, value_name = "TEXT")]
    pub software: Option<String>,
    /// Worker threads; 0 = one per CPU core (server.workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Log format (server.log_format).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Redirect Allocate requests to this server with 300 Try Alternate (repeatable; adds
    /// to server.alternate_servers).
    #[arg(long, value_name = "IP:PORT")]
    pub alternate_server: Vec<SocketAddr>,
    /// Redirect new Allocates here while draining (repeatable; adds to
    /// server.drain_alternate_servers).
    #[arg(long, value_name = "IP:PORT")]
    pub drain_alternate_server: Vec<SocketAddr>,

    // [auth]
    /// REST API shared secret (repeatable; adds to auth.secrets; the first one signs).
    #[arg(long, value_name = "SECRET")]
    pub auth_secret: Vec<String>,
    /// Separator between expiry and user in REST usernames (auth.separator).
    #[arg(long, value_name = "CHAR")]
    pub separator: Option<String>,
    /// Nonce lifetime in seconds before 438 Stale Nonce (auth.nonce_lifetime_secs).
    #[arg(long, value_name = "SECONDS")]
    pub nonce_lifetime_secs: Option<u64>,
    /// Default lifetime of issued credentials in seconds (auth.credential_ttl_secs).
    #[arg(long, value_name = "SECONDS")]
    pub credential_ttl_secs: Option<u64>,
    /// Static long-term user (repeatable; adds to [auth.users]).
    #[arg(long, value_name = "NAME=PASSWORD")]
    pub user: Vec<String>,

    // [relay]
    /// Relay address (repeatable; adds to relay.ips).
    #[arg(long, value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,
    /// Relay established channels in the kernel with XDP on this interface (relay.xdp_interface;
    /// Linux, root).
    #[arg(long, value_name = "IFACE")]
    pub xdp: Option<String>,
    /// How to attach the XDP program (relay.xdp_mode).
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<crate::config::XdpMode>,
    /// Public IP advertised in XOR-RELAYED-ADDRESS behind a 1:1 NAT (relay.external_ip).
    #[arg(long, value_name = "IP")]
    pub external_ip: Option<IpAddr>,
    /// Public IP a 1:1 NAT maps a relay IP to (repeatable; adds to relay.external_ip_map).
    #[arg(long, value_name = "PRIVATE=PUBLIC")]
    pub external_ip_map: Vec<String>,
    /// Lowest relay port (relay.min_port).
    #[arg(long, value_name = "PORT")]
    pub min_port: Option<u16>,
    /// Highest relay port (relay.max_port).
    #[arg(long, value_name = "PORT")]
    pub max_port: Option<u16>,
    /// Peer CIDR or IP to allow despite the default deny list (repeatable; adds to relay.allow_peers).
    #[arg(long, value_name = "CIDR")]
    pub allow_peer: Vec<String>,
    /// Extra peer CIDR or IP to deny (repeatable; adds to relay.deny_peers).
    #[arg(long, value_name = "CIDR")]
    pub deny_peer: Vec<String>,

    // [limits]
    /// Allocation lifetime when the client asks for none, in seconds (limits.default_lifetime_secs).
    #[arg(long, value_name = "SECONDS")]
    pub default_lifetime_secs: Option<u64>,
    /// Longest allocation lifetime granted, in seconds (limits.max_lifetime_secs).
    #[arg(long, value_name = "SECONDS")]
    pub max_lifetime_secs: Option<u64>,
    /// Total allocations, all users (limits.max_allocations).
    #[arg(long, value_name = "N")]
    pub max_allocations: Option<usize>,
    /// Allocations per username (limits.max_allocations_per_user).
    #[arg(long, value_name = "N")]
    pub max_allocations_per_user: Option<usize>,
    /// Permissions per allocation (limits.max_permissions_per_allocation).
    #[arg(long, value_name = "N")]
    pub max_permissions_per_allocation: Option<usize>,
    /// Channels per allocation (limits.max_channels_per_allocation).
    #[arg(long, value_name = "N")]
    pub max_channels_per_allocation: Option<usize>,
    /// Relayed bytes/s per allocation and direction; 0 = unlimited (limits.bandwidth_per_allocation).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub bandwidth_per_allocation: Option<u64>,
    /// TCP and TLS client connections in total (limits.max_connections).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// TCP and TLS client connections per source IP (limits.max_connections_per_source).
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// 401/438 challenges per second for the whole server (limits.max_challenges_per_sec).
    #[arg(long, value_name = "N")]
    pub max_challenges_per_sec: Option<usize>,

    // [api]
    /// HTTP management API address (api.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    pub api_listen: Option<SocketAddr>,
    /// Bearer token for the HTTP API (repeatable; adds to api.tokens).
    #[arg(long, value_name = "TOKEN")]
    pub api_token: Vec<String>,
    /// STUN/TURN URI handed out by the API (repeatable; adds to api.uris).
    #[arg(long, value_name = "URI")]
    pub api_uri: Vec<String>,
    /// Longest credential ttl the API grants on request, in seconds (api.max_ttl_secs).
    #[arg(long, value_name = "SECONDS")]
    pub api_max_ttl_secs: Option<u64>,
    /// Browser origin allowed to call the API (repeatable; adds to api.cors_origins).
    #[arg(long, value_name = "ORIGIN")]
    pub api_cors_origin: Vec<String>,
    /// Serve the ICE test page at /test on the API listener (api.test_page);
    /// `--api-test-page=false` turns it off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub api_test_page: Option<bool>,
    /// Seconds a client gets to send a request head, to keep an idle keep-alive
    /// connection, for a request to be handled and for a stalled response write
    /// (api.request_timeout_secs).
    #[arg(long, value_name = "SECONDS")]
    pub api_request_timeout_secs: Option<u64>,
    /// HTTP API connections in total (api.max_connections).
    #[arg(long, value_name = "N")]
    pub api_max_connections: Option<usize>,
    /// HTTP API connections per source IP (api.max_connections_per_source).
    #[arg(long, value_name = "N")]
    pub api_max_connections_per_source: Option<usize>,

    // [tls]
    /// Serve TURN over TLS on this address (repeatable; adds to tls.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TLS (tls.cert).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (tls.key).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// Flags of `turnpike credentials`.
#[derive(Debug, Clone, Args)]
pub struct CredentialsArgs {
    /// Shared secret (the server's first auth.secrets entry).
    #[arg(long, value_name = "SECRET")]
    pub secret: String,
    /// User name to embed in the credential.
    #[arg(long, value_name = "NAME")]
    pub user: String,
    /// Seconds until the credential expires.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_CREDENTIAL_TTL_SECS)]
    pub ttl: u64,
    /// Separator between expiry and user; must match the server's auth.separator.
    #[arg(long, value_name = "CHAR", default_value_t = DEFAULT_SEPARATOR,
          value_parser = parse_separator_flag)]
    pub separator: char,
}

/// Flags of `turnpike probe`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "URL: stun:HOST[:PORT], stuns:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], \
                  turns:HOST[:PORT][?transport=tcp] (default ports 3478 and 5349; IPv6 in brackets).\n\
                  Exit status: 0 when every URL worked, 1 when one failed, 2 on usage errors."
)]
pub struct ProbeArgs {
    /// Server URIs to test; with --credentials-url and none given, the ones it returns.
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
    /// REST API shared secret: mints a time-limited credential for --user.
    #[arg(long, value_name = "SECRET", conflicts_with_all = ["username", "credentials_url"])]
    pub secret: Option<String>,
    /// User name embedded in the minted credential (with --secret or --credentials-url).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Separator between expiry and user in the minted username (with --secret).
    #[arg(long, value_name = "CHAR", default_value_t = DEFAULT_SEPARATOR,
          value_parser = parse_separator_flag)]
    pub separator: char,
    /// Long-term username (with --password).
    #[arg(
        long,
        value_name = "USERNAME",
        requires = "password",
        conflicts_with = "credentials_url"
    )]
    pub username: Option<String>,
    /// Long-term password (with --username).
    #[arg(long, value_name = "PASSWORD", requires = "username")]
    pub password: Option<String>,
    /// Fetch the credential (and, without URL arguments, the URIs) from turnpike's
    /// `/api/v1/ice` endpoint, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub credentials_url: Option<String>,
    /// Bearer token for --credentials-url.
    #[arg(long, value_name = "TOKEN", requires = "credentials_url")]
    pub api_token: Option<String>,
    /// Print one JSON object with every result instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for each answer.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// Packets relayed each way per TURN URL.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub packets: u16,
    /// Do not verify TLS certificates (turns:, stuns:, https:). Proves nothing about the
    /// certificate browsers will see.
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// Flags of `turnpike drain`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: 0 when done (with --wait: no allocation left), \
                        1 on API errors or when --timeout passes first, 2 on usage errors."
)]
pub struct DrainArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only report the drain state and the allocations left; change nothing.
    #[arg(long, conflicts_with_all = ["cancel", "wait"])]
    pub status: bool,
    /// End draining: accept new allocations again.
    #[arg(long)]
    pub cancel: bool,
    /// After starting the drain, poll until no allocation is left.
    #[arg(long, conflicts_with = "cancel")]
    pub wait: bool,
    /// Seconds --wait gives the allocations to end before exiting with status 1.
    #[arg(long, value_name = "SECS", default_value_t = 3600.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// Seconds between polls with --wait.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_timeout)]
    pub interval: f64,
    /// Print each state as a JSON object (one per line) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where a running server's HTTP API is and how to get in (`turnpike drain`, `turnpike
/// sessions`).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The server's HTTP API (its api.listen).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// Take the API address and token from the server's config file (api.listen, the first
    /// of api.tokens) instead.
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "FILE",
        conflicts_with = "api"
    )]
    pub config: Option<PathBuf>,
    /// Bearer token (one of api.tokens); default: the TURNPIKE_API_TOKEN environment
    /// variable, else the first token of --config.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub api_token: Option<String>,
    /// Do not verify the API's TLS certificate (https:).
    #[arg(long, global = true, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file for an https: API.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// `turnpike sessions`: live allocations and revocations through the HTTP API.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Exit status: 0 on success, 1 on API errors, 2 on usage errors.")]
pub struct SessionsArgs {
    #[command(subcommand)]
    pub action: SessionsAction,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SessionsAction {
    /// List live allocations: id, user, client, relay, age, traffic.
    List {
        /// Only this user: the exact username or the user part of REST usernames.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Only usernames starting with this.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// List at most this many (pages of 1000 are fetched until then).
        #[arg(long, value_name = "N", default_value_t = 1000,
              value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        limit: u64,
    },
    /// End a session now (its TCP/TLS connection is closed); the client may allocate again.
    Kick {
        /// The session id from `sessions list` (WORKER-NUMBER).
        id: String,
    },
    /// Revoke a user: their allocations end now and Allocate is refused (403) until the
    /// revocation runs out.
    Revoke {
        /// A username, or the user part of REST usernames (all their credentials).
        user: String,
        /// Until this Unix time; default: the credential's own expiry, else
        /// auth.credential_ttl_secs from now.
        #[arg(long, value_name = "UNIX_SECS", conflicts_with = "for_secs")]
        until: Option<u64>,
        /// For this many seconds from now.
        #[arg(long = "for", value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(1..=31_622_400))]
        for_secs: Option<u64>,
    },
    /// List the revocations in force.
    Revocations,
    /// Lift a user's revocation.
    Unrevoke { user: String },
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.1..=3600.0).contains(&secs) => Ok(secs),
        _ => Err("expected seconds between 0.1 and 3600".to_owned()),
    }
}

fn parse_separator_flag(s: &str) -> Result<char, String> {
    crate::config::parse_separator(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "turnpike",
            "run",
            "--listen",
            "127.0.0.1:3478",
            "--listen",
            "[::1]:3478",
            "--auth-secret",
            "s1",
            "--allow-peer",
            "127.0.0.1",
            "--min-port",
            "50000",
            "--log-format",
            "json",
            "--user",
            "alice=pw",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.listen.len(), 2);
        assert_eq!(args.auth_secret, ["s1"]);
        assert_eq!(args.min_port, Some(50000));
        assert_eq!(args.log_format, Some(LogFormat::Json));
        assert_eq!(args.user, ["alice=pw"]);
    }

    #[test]
    fn credentials_defaults() {
        let cli = Cli::try_parse_from(["turnpike", "credentials", "--secret", "s", "--user", "u"])
            .unwrap();
        let Command::Credentials(args) = cli.command else {
            panic!("expected credentials")
        };
        assert_eq!(args.ttl, DEFAULT_CREDENTIAL_TTL_SECS);
        assert_eq!(args.separator, ':');
        assert!(Cli::try_parse_from([
            "turnpike",
            "credentials",
            "--secret",
            "s",
            "--user",
            "u",
            "--separator",
            "a"
        ])
        .is_err());
    }

    #[test]
    fn drain_defaults_and_conflicts() {
        let cli = Cli::try_parse_from(["turnpike", "drain", "--wait"]).unwrap();
        let Command::Drain(args) = cli.command else {
            panic!("expected drain")
        };
        assert_eq!(args.api.api, "http://127.0.0.1:8080");
        assert!(args.wait && !args.cancel && !args.status);
        assert!(Cli::try_parse_from(["turnpike", "drain", "--wait", "--cancel"]).is_err());
        assert!(Cli::try_parse_from(["turnpike", "drain", "--status", "--wait"]).is_err());
        assert!(Cli::try_parse_from(["turnpike", "drain", "--interval", "0"]).is_err());
    }

    #[test]
    fn check_config_takes_a_file() {
        let cli = Cli::try_parse_from(["turnpike", "check-config", "x.toml"]).unwrap();
        assert!(
            matches!(cli.command, Command::CheckConfig { file } if file == Path::new("x.toml"))
        );
    }
}
