//! Running coturn's `turnutils_uclient` / `turnutils_stunclient` (installed by
//! `../shared/harness/setup.sh`) and reading their output.
//!
//! Output formats relied on (coturn 4.6 tools; each line is printed twice, both on stdout):
//! * stunclient: `0: : IPv4. UDP reflexive addr: 127.0.0.1:53867`, exit 0.
//! * uclient, success: `26: : start_mclient: tot_send_msgs=12000, tot_recv_msgs=12000` then
//!   `26: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)`, exit 0.
//! * uclient, allocation refused: `0: : ERROR: Cannot complete Allocation`, exit 255.

use std::process::Command;
use std::time::Duration;

use crate::harness::{require_tool, run_with_timeout, CmdOutput};

/// How long `turnutils_stunclient` may take.
pub const STUNCLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `turnutils_stunclient -p PORT HOST`.
pub fn stunclient(port: u16, host: &str) -> CmdOutput {
    let tool = require_tool("turnutils_stunclient");
    run_with_timeout(
        Command::new(tool).arg("-p").arg(port.to_string()).arg(host),
        STUNCLIENT_TIMEOUT,
    )
}

/// The port of the first `UDP reflexive addr: 127.0.0.1:<port>` line.
pub fn reflexive_port(output: &str) -> Option<u16> {
    number_after(output, "UDP reflexive addr: 127.0.0.1:").and_then(|p| u16::try_from(p).ok())
}

/// Runs `turnutils_uclient ARGS` (through `ip netns exec NS` when `netns` is given).
pub fn run_uclient(netns: Option<&str>, args: &[&str], timeout: Duration) -> CmdOutput {
    let tool = require_tool("turnutils_uclient");
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(&tool);
            cmd
        }
        None => Command::new(&tool),
    };
    cmd.args(args);
    run_with_timeout(&mut cmd, timeout)
}

/// `turnutils_uclient -W SECRET -u harness -y EXTRA -p PORT HOST`: `-y` makes its clients
/// send to each other through their relays.
pub fn uclient(
    secret: &str,
    extra: &[&str],
    port: u16,
    host: &str,
    timeout: Duration,
) -> CmdOutput {
    let port = port.to_string();
    let mut args = vec!["-W", secret, "-u", "harness", "-y"];
    args.extend_from_slice(extra);
    args.extend(["-p", &port, host]);
    run_uclient(None, &args, timeout)
}

#[derive(Debug, PartialEq)]
pub struct UclientStats {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

/// The number following the first `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// From the final summary: the last `tot_send_msgs=N, tot_recv_msgs=M` line and
/// `Total lost packets L (...)`.
pub fn uclient_stats(output: &str) -> Option<UclientStats> {
    let totals = output
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs="))?;
    Some(UclientStats {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: total_lost(output)?,
    })
}

/// `(sent, lost)` from uclient's final `tot_send_msgs=N` and `Total lost packets L` lines.
pub fn uclient_sent_and_lost(output: &str) -> Option<(u64, u64)> {
    let sent = output
        .lines()
        .rev()
        .find_map(|l| number_after(l, "tot_send_msgs="))?;
    Some((sent, total_lost(output)?))
}

/// L from the last `Total lost packets L (...)` line.
fn total_lost(output: &str) -> Option<u64> {
    output
        .lines()
        .rev()
        .find_map(|l| number_after(l, "Total lost packets "))
}

/// Asserts: exit 0, a summary, at least `min_sent` messages sent, 0 lost, all received.
pub fn assert_zero_loss(out: &CmdOutput, what: &str, min_sent: u64) {
    assert!(out.success(), "{what}: turnutils_uclient failed:\n{out}");
    let stats = uclient_stats(&out.stdout).unwrap_or_else(|| {
        panic!("{what}: no uclient summary (tot_send_msgs / Total lost):\n{out}")
    });
    assert!(
        stats.sent >= min_sent,
        "{what}: uclient sent only {} messages (expected >= {min_sent}):\n{out}",
        stats.sent
    );
    assert_eq!(stats.lost, 0, "{what}: uclient lost packets:\n{out}");
    assert_eq!(
        stats.received, stats.sent,
        "{what}: uclient received fewer messages than it sent:\n{out}"
    );
    eprintln!(
        "{what}: sent {} received {} lost {} in {:?}",
        stats.sent, stats.received, stats.lost, out.elapsed
    );
}

/// Asserts that uclient was refused rather than hanging: it exited on its own with a
/// non-zero status and printed `expected`.
pub fn assert_refused(out: &CmdOutput, what: &str, expected: &str) {
    assert!(
        !out.timed_out,
        "{what}: hung instead of being refused:\n{out}"
    );
    assert_ne!(out.code(), Some(0), "{what}: succeeded:\n{out}");
    assert!(
        out.stdout.contains(expected),
        "{what}: did not report `{expected}`:\n{out}"
    );
}

/// Asserts that uclient never got to send data (no `Total lost packets` summary).
pub fn assert_sent_no_data(out: &CmdOutput, what: &str) {
    assert!(
        !out.stdout.contains("Total lost packets"),
        "{what}: got to send data:\n{out}"
    );
}
