//! Command line: `turnpike run`, `turnpike credentials`, `turnpike probe`, `turnpike drain`,
//! `turnpike sessions`, `turnpike check-config`.
//!
//! Every configuration key has a flag (the kebab-case of its name), declared with the key
//! in [`crate::config`] and registered here from [`Config::settings`]. Flags for list keys
//! are repeatable and add to the list the config file sets; when the file does not set
//! that key, they replace the built-in default instead (so `--listen 127.0.0.1:3478`
//! alone does not also bind `0.0.0.0:3478`). Scalar flags override the file. Their
//! values are read by [`Config::load`] with the key's own type, so file and flag are
//! checked alike and its errors name the flag.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use crate::config::{
    Config, FlagKind, Overrides, Setting, DEFAULT_CREDENTIAL_TTL_SECS, DEFAULT_SEPARATOR,
};

/// turnpike: a STUN/TURN server with time-limited credentials and safe defaults.
#[derive(Debug, Clone, Parser)]
#[command(name = "turnpike", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

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

/// Flags of `turnpike run`: the config file, and a flag for every key of it.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML config file; without it the built-in defaults apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// One flag per key, from [`Config::settings`].
    #[command(flatten)]
    pub overrides: Overrides,
}

/// A flag per [`Setting`]: the values stay strings here; [`Config::load`] reads them with
/// the key's own type, so its errors name the flag.
impl Args for Overrides {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for setting in Config::settings() {
            let help = setting
                .help
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let arg = Arg::new(setting.key)
                .long(setting.flag.trim_start_matches("--"))
                .value_name(setting.value_name)
                .help_heading(setting.section())
                .hide_possible_values(true);
            cmd = cmd.arg(match setting.kind {
                FlagKind::Value => arg
                    .action(ArgAction::Set)
                    .help(format!("{help} [{}]", setting.key)),
                FlagKind::Switch => arg
                    .action(ArgAction::Set)
                    .num_args(0..=1)
                    .default_missing_value("true")
                    .help(format!(
                        "{help} [{}; --{}=false]",
                        setting.key,
                        arg_long(setting)
                    )),
                FlagKind::List => arg
                    .action(ArgAction::Append)
                    .help(format!("{help} [{}, repeatable]", setting.key)),
            });
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn arg_long(setting: &Setting) -> &'static str {
    setting.flag.trim_start_matches("--")
}

impl FromArgMatches for Overrides {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut overrides = Overrides::default();
        for setting in Config::settings() {
            if let Some(values) = matches.get_many::<String>(setting.key) {
                overrides.push(setting, values.cloned().collect());
            }
        }
        Ok(overrides)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
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
    use std::net::{IpAddr, SocketAddr};
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{LogFormat, Secret};

    /// `turnpike run ARGS` as the daemon loads it: the config, or the error it prints.
    fn run(args: &[&str]) -> Result<Config, String> {
        let argv = ["turnpike", "run"].iter().chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        Config::load(args.config.as_deref(), &args.overrides).map_err(|e| e.to_string())
    }

    fn run_err(args: &[&str]) -> String {
        run(args).unwrap_err()
    }

    /// A config file holding `text`; the directory goes when the guard is dropped.
    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turnpike.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let c = run(&[
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
        assert_eq!(c.server.listen.len(), 2);
        let secrets: Vec<&str> = c.auth.secrets.iter().map(Secret::expose).collect();
        assert_eq!(secrets, ["s1"]);
        assert_eq!(c.relay.min_port.get(), 50000);
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert_eq!(c.auth.users["alice"].expose(), "pw");
        // A scalar flag is given once.
        assert!(run(&["--realm", "a", "--realm", "b"])
            .unwrap_err()
            .contains("cannot be used multiple times"));
    }

    #[test]
    fn flags_add_to_lists_and_override_scalars() {
        let (_dir, path) = config_file(
            "[server]\nlisten = [\"127.0.0.1:3478\"]\nrealm = \"file\"\n\
             [auth]\nsecrets = [\"file-secret\"]\n[relay]\nallow_peers = [\"10.0.0.0/8\"]\n",
        );
        let c = run(&[
            "--config",
            &path,
            "--listen",
            "127.0.0.1:3479",
            "--realm",
            "flag",
            "--auth-secret",
            "flag-secret",
            "--allow-peer",
            "192.168.1.1",
            "--min-port",
            "50000",
            "--max-port",
            "50010",
            "--workers",
            "2",
            "--bandwidth-per-allocation",
            "0",
            "--user",
            "carol=pw",
        ])
        .unwrap();
        assert_eq!(
            c.server.listen,
            vec![
                "127.0.0.1:3478".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:3479".parse().unwrap()
            ]
        );
        assert_eq!(c.server.realm, "flag");
        let secrets: Vec<&str> = c.auth.secrets.iter().map(Secret::expose).collect();
        assert_eq!(secrets, ["file-secret", "flag-secret"]);
        assert_eq!(c.relay.allow_peers.len(), 2);
        assert_eq!(c.relay.port_range(), 50000..=50010);
        assert_eq!(c.server.workers.get(), 2);
        assert_eq!(c.limits.bandwidth_per_allocation.get(), None);
        assert_eq!(c.auth.users.keys().next().unwrap(), "carol");
    }

    #[test]
    fn list_flags_replace_builtin_defaults() {
        let flag = ["--listen", "127.0.0.1:40000"];
        let c = run(&flag).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:40000".parse().unwrap()]);
        // Same with a file that does not set the key.
        let (_dir, path) = config_file("[server]\nrealm = \"r\"\n");
        let c = run(&["--config", &path, flag[0], flag[1]]).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:40000".parse().unwrap()]);
        // But a file's list is extended.
        let (_dir, path) = config_file("[server]\nlisten = [\"127.0.0.1:1\"]\n");
        let c = run(&["--config", &path, flag[0], flag[1]]).unwrap();
        assert_eq!(c.server.listen.len(), 2);
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let e = run_err(&["--allow-peer", "1.2.3"]);
        assert!(e.starts_with("--allow-peer 1.2.3: "), "{e}");
        assert!(e.contains("not a CIDR or IP"), "{e}");
        let e = run_err(&["--min-port", "60000", "--max-port", "50000"]);
        assert!(
            e.starts_with("--min-port 60000: must be <= relay.max_port (50000)"),
            "{e}"
        );
        let e = run_err(&["--max-port", "1000"]);
        assert!(e.starts_with("--max-port 1000: must be >="), "{e}");
        let e = run_err(&["--separator", "ab"]);
        assert!(e.starts_with("--separator ab: "), "{e}");
        let e = run_err(&["--user", "nopassword"]);
        assert!(e.starts_with("--user nopassword: "), "{e}");
        let e = run_err(&["--tls-listen", "0.0.0.0:5349"]);
        assert!(
            e.starts_with("--tls-listen 0.0.0.0:5349: needs tls.cert"),
            "{e}"
        );
        let e = run_err(&["--config", "/nonexistent/turnpike.toml"]);
        assert!(e.contains("/nonexistent/turnpike.toml"), "{e}");
        let e = run_err(&["--api-test-page=maybe"]);
        assert!(e.starts_with("--api-test-page maybe: "), "{e}");
    }

    /// A flag's value in an error is shown as the config renders it: secrets redacted.
    #[test]
    fn flag_errors_do_not_show_secrets() {
        for (args, shown) in [
            (&["--user", "=hunter2"][..], "--user =<redacted>: "),
            (&["--user", "alice="][..], "--user alice=<redacted>: "),
            (&["--auth-secret", ""][..], "--auth-secret <redacted>: "),
            (&["--api-token", ""][..], "--api-token <redacted>: "),
        ] {
            let e = run_err(args);
            assert!(e.starts_with(shown), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn flags_fix_file_errors() {
        // As a file could say; a flag repairs it.
        let (_dir, path) = config_file("[relay]\nmin_port = 60000\nmax_port = 50000\n");
        assert!(run(&["--config", &path]).is_err());
        let c = run(&["--config", &path, "--max-port", "65000"]).unwrap();
        assert_eq!(c.relay.port_range(), 60000..=65000);
    }

    #[test]
    fn api_flags() {
        let c = run(&[
            "--api-uri",
            "turns:turn.example.com:443?transport=tcp",
            "--api-cors-origin",
            "https://app.example.com",
            "--api-max-ttl-secs",
            "90000",
        ])
        .unwrap();
        assert_eq!(c.api.uris, ["turns:turn.example.com:443?transport=tcp"]);
        assert_eq!(c.api.cors_origins, ["https://app.example.com"]);
        assert_eq!(c.api.max_ttl_secs.get(), Duration::from_secs(90_000));
        let e = run_err(&["--api-uri", "turn:"]);
        assert!(e.starts_with("--api-uri turn:: "), "{e}");
        let e = run_err(&["--api-cors-origin", "*"]);
        assert!(e.starts_with("--api-cors-origin *: "), "{e}");
        let e = run_err(&["--api-max-ttl-secs", "10"]);
        assert!(e.starts_with("--api-max-ttl-secs 10: must be >="), "{e}");
    }

    #[test]
    fn alternate_server_flags() {
        let c = run(&[
            "--alternate-server",
            "127.0.0.1:3999",
            "--alternate-server",
            "127.0.0.1:4000",
        ])
        .unwrap();
        assert_eq!(c.server.alternate_servers.len(), 2);
        let e = run_err(&["--alternate-server", "127.0.0.1:0"]);
        assert!(e.starts_with("--alternate-server 127.0.0.1:0: "), "{e}");
        let e = run_err(&[
            "--listen",
            "127.0.0.1:3478",
            "--alternate-server",
            "127.0.0.1:3478",
        ]);
        assert!(e.starts_with("--alternate-server 127.0.0.1:3478: "), "{e}");
    }

    #[test]
    fn external_ip_map_flag() {
        let c = run(&["--external-ip-map", "10.77.0.2=203.0.113.77"]).unwrap();
        assert_eq!(
            c.relay.external_ip_map,
            [(
                "10.77.0.2".parse::<IpAddr>().unwrap(),
                "203.0.113.77".parse::<IpAddr>().unwrap()
            )]
        );
        let e = run_err(&["--external-ip-map", "10.0.0.1=::1"]);
        assert!(e.starts_with("--external-ip-map 10.0.0.1=::1: "), "{e}");
        let e = run_err(&[
            "--external-ip-map",
            "10.0.0.1=192.0.2.1",
            "--external-ip-map",
            "10.0.0.1=192.0.2.2",
        ]);
        assert!(
            e.starts_with("--external-ip-map 10.0.0.1=192.0.2.2: ") && e.contains("twice"),
            "{e}"
        );
    }

    #[test]
    fn connection_limit_flags() {
        let c = run(&[
            "--max-connections",
            "100",
            "--max-connections-per-source",
            "4",
        ])
        .unwrap();
        assert_eq!(
            (
                c.limits.max_connections.get(),
                c.limits.max_connections_per_source.get()
            ),
            (100, 4)
        );
        let e = run_err(&["--max-connections-per-source", "0"]);
        assert!(
            e.starts_with("--max-connections-per-source 0: must be 1 to"),
            "{e}"
        );
    }

    #[test]
    fn numeric_flags_are_bounded() {
        let max = u64::MAX.to_string();
        let e = run_err(&["--max-lifetime-secs", &max]);
        assert!(
            e.starts_with("--max-lifetime-secs 18446744073709551615: must be 1 to 604800"),
            "{e}"
        );
        let e = run_err(&["--workers", &usize::MAX.to_string()]);
        assert!(e.starts_with("--workers "), "{e}");
        let e = run_err(&["--nonce-lifetime-secs", "86401"]);
        assert!(
            e.starts_with("--nonce-lifetime-secs 86401: must be 1 to 86400"),
            "{e}"
        );
        let e = run_err(&["--max-lifetime-secs=-1"]);
        assert!(e.starts_with("--max-lifetime-secs -1: "), "{e}");
    }

    #[test]
    fn api_connection_bound_flags() {
        let c = run(&[
            "--api-request-timeout-secs",
            "2",
            "--api-max-connections",
            "16",
            "--api-max-connections-per-source",
            "4",
        ])
        .unwrap();
        assert_eq!(c.api.request_timeout_secs.get(), Duration::from_secs(2));
        assert_eq!(
            (
                c.api.max_connections.get(),
                c.api.max_connections_per_source.get()
            ),
            (16, 4)
        );
        let e = run_err(&["--api-request-timeout-secs", "0"]);
        assert!(
            e.starts_with("--api-request-timeout-secs 0: must be 1 to 3600 seconds"),
            "{e}"
        );
    }

    #[test]
    fn challenge_cap_flag() {
        let c = run(&["--max-challenges-per-sec", "7"]).unwrap();
        assert_eq!(c.limits.max_challenges_per_sec.get(), 7);
        let e = run_err(&["--max-challenges-per-sec", "0"]);
        assert!(
            e.starts_with("--max-challenges-per-sec 0: must be 1 to 1000000"),
            "{e}"
        );
    }

    /// Keys that had no flag before the model declared them: `[usage]` and
    /// `api.revocations_file`; and a switch turned off.
    #[test]
    fn every_key_has_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let usage = dir.path().join("usage.jsonl").display().to_string();
        let c = run(&[
            "--usage-log=false",
            "--usage-file",
            &usage,
            "--usage-webhook-url",
            "https://billing.example/turn",
            "--usage-webhook-timeout-secs",
            "2",
            "--usage-queue-size",
            "5",
            "--api-revocations-file",
            "/var/lib/turnpike/revocations.json",
            "--api-test-page",
        ])
        .unwrap();
        assert!(!c.usage.log && c.api.test_page);
        assert_eq!(c.usage.file.as_deref(), Some(Path::new(&usage)));
        assert_eq!(
            c.usage.webhook_url.as_deref(),
            Some("https://billing.example/turn")
        );
        assert_eq!(c.usage.webhook_timeout_secs.get(), Duration::from_secs(2));
        assert_eq!(c.usage.queue_size.get(), 5);
        assert!(c.api.revocations_file.is_some());
        let e = run_err(&["--usage-webhook-url", "ftp://x.example/"]);
        assert!(
            e.starts_with("--usage-webhook-url ftp://x.example/: "),
            "{e}"
        );
        let help = Cli::command()
            .find_subcommand_mut("run")
            .unwrap()
            .render_help()
            .to_string();
        for setting in Config::settings() {
            assert!(
                help.contains(setting.flag),
                "{} not in --help",
                setting.flag
            );
        }
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
