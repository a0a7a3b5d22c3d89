//! The `turnpike` daemon: command line → config → logging → sockets → workers.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clap::Parser;
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use turnpike::cli::{Cli, Command, RunArgs};
use turnpike::config::{Config, LogFormat, Secret};
use turnpike::proto::auth::mint_rest_credential;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let config = match Config::load(args.config.as_deref(), &args.overrides) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("turnpike: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.server.log_format);
            match run(&args, config) {
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
                turnpike::unix_now(),
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
        Command::Probe(args) => turnpike::probe::run(&args),
        Command::Drain(args) => turnpike::drain::run(&args),
        Command::Sessions(args) => turnpike::sessions_cmd::run(&args),
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

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads the configuration.
fn run(args: &RunArgs, mut config: Config) -> std::io::Result<()> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let generated = ensure_secret(&mut config, None);
    // Before binding, so a SIGHUP sent as soon as the server is up cannot kill it.
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    let mut running = turnpike::start(&config)?;
    if let Some(deaths) = running.take_worker_deaths() {
        watch_workers(deaths)?;
    }
    let api_listener = std::net::TcpListener::bind(config.api.listen).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on api {}: {e}", config.api.listen),
        )
    })?;
    let api_addr = api_listener.local_addr()?;
    let api = Arc::new(turnpike::api::ApiContext {
        config: RwLock::new(Arc::new(config.clone())),
        telemetry: running.telemetry(),
        udp: running.udp.clone(),
        tls: running.tls.clone(),
        relay_ips: running.relay_ips.clone(),
        drain: Some(running.control()),
    });
    let (api_stop, api_stopped) = tokio::sync::watch::channel(false);
    let api_thread = turnpike::api::spawn(api_listener, api.clone(), api_stopped)?;
    tracing::info!(
        udp = ?running.udp,
        tcp = ?running.tcp,
        tls = ?running.tls,
        api = %api_addr,
        relay_ips = ?running.relay_ips,
        relay_ports = ?config.relay.port_range(),
        realm = %config.server.realm,
        workers = config.server.workers.get(),
        "turnpike serving"
    );
    let ready = serde_json::json!({
        "event": "ready",
        "udp": running.udp.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "tcp": running.tcp.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "tls": running.tls.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "api": api_addr.to_string(),
        "relay_ips": running.relay_ips.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "pid": std::process::id(),
    });
    println!("{ready}");
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    let stop_watchdog = start_watchdog(running.telemetry());

    for signal in signals.forever() {
        if signal != SIGHUP {
            break;
        }
        notify(&[NotifyState::Reloading]);
        // Whatever the new config says: logrotate sends SIGHUP after renaming the file.
        running.reopen_usage_file();
        match Config::load(args.config.as_deref(), &args.overrides) {
            Ok(mut fresh) => {
                ensure_secret(&mut fresh, generated.as_ref());
                for warning in fresh.warnings() {
                    tracing::warn!("{warning}");
                }
                match running.reload(&fresh) {
                    Ok(()) => {
                        // Against the startup config: these keep what the process started with.
                        for key in config.changes_needing_restart(&fresh) {
                            tracing::warn!("{key} changed; restart to apply");
                        }
                        *api.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                        tracing::info!("configuration reloaded");
                    }
                    Err(e) => {
                        tracing::error!("reload failed, keeping the running configuration: {e}")
                    }
                }
            }
            Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
        }
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    }
    tracing::info!("shutting down");
    notify(&[NotifyState::Stopping]);
    stop_watchdog.store(true, Ordering::Relaxed);
    let _ = api_stop.send(true);
    let _ = api_thread.join();
    running.stop()
}

/// With neither a secret nor a static user configured, generates a secret (or reuses the one
/// generated at startup, so a reload does not invalidate credentials) and warns.
fn ensure_secret(config: &mut Config, generated: Option<&Secret>) -> Option<Secret> {
    if !config.auth.secrets.is_empty() || !config.auth.users.is_empty() {
        return None;
    }
    let secret = generated.cloned().unwrap_or_else(|| {
        let secret = Secret::new(base64_encode(&rand::random::<[u8; 24]>()));
        tracing::warn!(
            secret = %secret.expose(),
            "no auth secret configured: generated one for this run; set auth.secrets (or --auth-secret) to keep credentials valid across restarts"
        );
        secret
    });
    config.auth.secrets.push(secret.clone());
    Some(secret)
}

/// Exit status when a worker dies: EX_SOFTWARE (sysexits.h). Non-zero, so systemd's
/// `Restart=on-failure` starts a fresh process.
const WORKER_DIED: i32 = 70;

/// Exits the process, logging why, as soon as a worker thread ends before shutdown: a daemon
/// that still holds its sockets but no longer serves on some of them is worse than a restart.
fn watch_workers(deaths: std::sync::mpsc::Receiver<turnpike::WorkerDeath>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("turnpike-monitor".into())
        .spawn(move || {
            // Closed (Err) once every worker has ended after a normal shutdown.
            if let Ok(death) = deaths.recv() {
                tracing::error!("{death}; exiting with status {WORKER_DIED} so the service manager restarts turnpike");
                notify(&[NotifyState::Stopping]);
                std::process::exit(WORKER_DIED);
            }
        })?;
    Ok(())
}

/// Pings the systemd watchdog at half its interval while every worker is alive; a stuck
/// worker stops the pings and systemd restarts the service.
fn start_watchdog(telemetry: Arc<turnpike::telemetry::Telemetry>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return stop;
    };
    let stop_flag = stop.clone();
    let period = interval / 2;
    let spawned = std::thread::Builder::new()
        .name("turnpike-watchdog".into())
        .spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                if telemetry.all_workers_alive(Instant::now(), period.max(Duration::from_secs(1))) {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!("a worker stopped reporting; withholding the watchdog ping");
                }
                std::thread::sleep(period);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the watchdog thread: {e}");
    }
    stop
}

/// Tells systemd about a state change; a no-op outside systemd (no NOTIFY_SOCKET).
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
