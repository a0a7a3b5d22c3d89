//! `turnpike drain`: the client of a running server's `/api/v1/drain` (see
//! [`Control::set_draining`](crate::Control::set_draining)). Starts (or with `--cancel`
//! ends) the drain, prints the state, and with `--wait` polls until the last allocation is
//! gone, so an upgrade script or a Kubernetes `preStop` hook can stop the server only then.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::api_client::ApiClient;
use crate::cli::DrainArgs;

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
    let api = ApiClient::new(&args.api)?;
    let call = |method: &str| api.call::<Status>(method, PATH, None);
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
