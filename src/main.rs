//! The `turnpike` daemon: command line → config → logging → sockets → workers.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use turnpike::cli::{Cli, Command};
use turnpike::config::{Config, LogFormat, Secret};
use turnpike::proto::auth::mint_rest_credential;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let mut config = match Config::load(args.config.as_deref(), &args) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("turnpike: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            match run(&mut config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Credentials(args) => {
            let (username, password) = mint_rest_credential(
                &args.secret,
                &args.user,
                args.separator,
                unix_now(),
                args.ttl,
            );
            let json = serde_json::json!({
                "username": username,
                "password": password,
                "ttl": args.ttl,
            });
            println!("{json}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => {
            match std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|text| {
                    Config::from_toml_str(&text, &file.display().to_string())
                        .map_err(|e| e.to_string())
                }) {
                Ok(config) => {
                    for warning in config.warnings() {
                        eprintln!("warning: {warning}");
                    }
                    print!("{}", config.render_effective());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("turnpike: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    // stun-types logs every malformed packet at warn; turnpike counts those instead.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,stun_types=error,turn_types=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: &mut Config) -> std::io::Result<()> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if config.secrets.is_empty() && config.static_users.is_empty() {
        let generated: [u8; 24] = rand::random();
        let secret = base64_encode(&generated);
        tracing::warn!(
            secret = %secret,
            "no auth secret configured: generated one for this run; set auth.secrets (or --auth-secret) to keep credentials valid across restarts"
        );
        config.secrets.push(Secret::new(secret));
    }
    let running = turnpike::start(config)?;
    tracing::info!(
        udp = ?running.udp,
        relay_ips = ?running.relay_ips,
        relay_ports = ?config.port_range,
        realm = %config.realm,
        workers = config.workers,
        "turnpike serving"
    );
    let ready = serde_json::json!({
        "event": "ready",
        "udp": running.udp.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "relay_ips": running.relay_ips.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "pid": std::process::id(),
    });
    println!("{ready}");
    wait_for_termination()?;
    tracing::info!("shutting down");
    running.stop()
}

fn wait_for_termination() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    signals.forever().next();
    Ok(())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
