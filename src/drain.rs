//! `turnpike drain`: the client of a running server's `/api/v1/drain` (see
//! [`Control::set_draining`](crate::Control::set_draining)). Starts (or with `--cancel`
//! ends) the drain, prints the state, and with `--wait` polls until the last allocation is
//! gone, so an upgrade script or a Kubernetes `preStop` hook can stop the server only then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::DrainArgs;
use crate::config::Config;
use crate::probe::http;
use crate::probe::tls::TlsOptions;

/// The environment variable read when `--api-token` is not given.
pub const TOKEN_ENV: &str = "TURNPIKE_API_TOKEN";
/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const PATH: &str = "/api/v1/drain";

/// `GET /api/v1/drain` as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Status {
    draining: bool,
    allocations: u64,
    alternate_servers: Vec<String>,
}

pub fn run(args: &DrainArgs) -> ExitCode {
    match drain(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnpike drain: {e}");
            ExitCode::FAILURE
        }
    }
}

fn drain(args: &DrainArgs) -> Result<(), String> {
    let (api, config_token) = match &args.config {
        Some(path) => api_from_config(path)?,
        None => (args.api.clone(), None),
    };
    let token = args
        .api_token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty())
        .or(config_token);
    let tls = TlsOptions {
        insecure: args.insecure,
        ca_file: args.ca_file.clone(),
    };
    let call = |method: &str| call(method, &api, token.as_deref(), &tls);
    let method = if args.status {
        "GET"
    } else if args.cancel {
        "DELETE"
    } else {
        "POST"
    };
    let mut status = call(method)?;
    print_status(&status, args.json);
    if !args.wait {
        return Ok(());
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if status.allocations == 0 {
            if !args.json {
                println!("drained: no allocations left");
            }
            return Ok(());
        }
        if !status.draining {
            return Err(format!(
                "the drain was ended (DELETE {PATH}) with {} left",
                allocations(status.allocations)
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "{} still left after {}s (--timeout)",
                allocations(status.allocations),
                args.timeout
            ));
        }
        std::thread::sleep(Duration::from_secs_f64(args.interval).min(deadline - now));
        let fresh = call("GET")?;
        // In text, the line for zero is "drained" below.
        if fresh != status && (args.json || fresh.allocations > 0) {
            print_status(&fresh, args.json);
        }
        status = fresh;
    }
}

/// The API URL (`api.listen`, a wildcard address replaced by loopback) and the first
/// token of a config file.
fn api_from_config(path: &Path) -> Result<(String, Option<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config =
        Config::from_toml_str(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    let mut addr = config.api_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let token = config.api_tokens.first().map(|t| t.expose().to_owned());
    Ok((format!("http://{addr}"), token))
}

fn call(method: &str, api: &str, token: Option<&str>, tls: &TlsOptions) -> Result<Status, String> {
    let (code, body) = http::request(method, api, PATH, token, REQUEST_TIMEOUT, tls)?;
    if code != 200 {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().chars().take(200).collect());
        let hint = if code == 401 || code == 403 {
            format!(" (give --api-token or set {TOKEN_ENV})")
        } else {
            String::new()
        };
        return Err(format!("{method} {api}{PATH}: HTTP {code}: {reason}{hint}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{method} {api}{PATH}: unexpected answer: {e}"))
}

fn print_status(status: &Status, json: bool) {
    if json {
        let value = serde_json::json!({
            "draining": status.draining,
            "allocations": status.allocations,
            "alternate_servers": status.alternate_servers,
        });
        println!("{value}");
    } else {
        println!("{}", describe(status));
    }
}

fn describe(status: &Status) -> String {
    let left = allocations(status.allocations);
    if !status.draining {
        return format!("not draining: {left}, accepting new allocations");
    }
    if status.alternate_servers.is_empty() {
        format!(
            "draining: {left} left; new Allocates are refused with 508 \
             (no server.drain_alternate_servers configured)"
        )
    } else {
        format!(
            "draining: {left} left; new Allocates are redirected to {}",
            status.alternate_servers.join(", ")
        )
    }
}

fn allocations(n: u64) -> String {
    if n == 1 {
        "1 allocation".to_owned()
    } else {
        format!("{n} allocations")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_gives_the_api_address_and_token() {
        let dir = std::env::temp_dir().join(format!("turnpike-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "[api]\nlisten = \"0.0.0.0:8443\"\ntokens = [\"t1\", \"t2\"]\n",
        )
        .unwrap();
        let got = api_from_config(&path);
        std::fs::write(&path, "[api]\nlisten = \"[::]:9\"\n").unwrap();
        let v6 = api_from_config(&path);
        std::fs::write(&path, "[api]\nlisten = 8\n").unwrap();
        let bad = api_from_config(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got.unwrap(),
            ("http://127.0.0.1:8443".to_owned(), Some("t1".to_owned()))
        );
        assert_eq!(v6.unwrap(), ("http://[::1]:9".to_owned(), None));
        assert!(bad.unwrap_err().contains("api.listen"));
    }

    #[test]
    fn describes_each_state() {
        let mut status = Status {
            draining: true,
            allocations: 1,
            alternate_servers: vec!["192.0.2.1:3478".into(), "192.0.2.2:3478".into()],
        };
        assert_eq!(
            describe(&status),
            "draining: 1 allocation left; new Allocates are redirected to 192.0.2.1:3478, 192.0.2.2:3478"
        );
        status.alternate_servers.clear();
        status.allocations = 3;
        assert!(describe(&status)
            .starts_with("draining: 3 allocations left; new Allocates are refused with 508"));
        status.draining = false;
        assert_eq!(
            describe(&status),
            "not draining: 3 allocations, accepting new allocations"
        );
    }
}
