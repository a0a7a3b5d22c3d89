//! `systemd/turnpike.service` passes `systemd-analyze verify` and keeps its
//! `systemd-analyze security` exposure below 2.0.

use std::process::Command;

use crate::harness::{require_tool, temp_dir, TempDir};

/// The shipped unit with ExecStart pointed at the binary under test, in a temp dir (verify
/// checks that the executable exists). Keep the dir alive while the unit is used.
fn unit_under_test() -> (TempDir, std::path::PathBuf) {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/turnpike.service"
    ))
    .expect("read systemd/turnpike.service");
    let bin = env!("CARGO_BIN_EXE_turnpike");
    let unit = unit.replace("ExecStart=turnpike ", &format!("ExecStart={bin} "));
    assert!(
        unit.contains(bin),
        "ExecStart no longer runs `turnpike` from systemd's search path"
    );
    let dir = temp_dir("unit");
    let path = dir.path().join("turnpike.service");
    std::fs::write(&path, unit).unwrap();
    (dir, path)
}

#[test]
fn unit_verifies_and_exposure_is_below_2() {
    require_tool("systemd-analyze");
    let (_dir, path) = unit_under_test();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let verify_text = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "systemd-analyze verify failed:\n{verify_text}"
    );
    assert!(
        !verify_text.contains("turnpike.service:"),
        "systemd-analyze verify complained about the unit:\n{verify_text}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for turnpike.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score < 2.0, "exposure {score} is not below 2.0:\n{text}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
