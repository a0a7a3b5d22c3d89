//! The client is sans-IO like the core: no I/O crate among its dependencies (the drivers own
//! sockets), and no clock or hidden randomness in its code (clippy.toml bans the same calls
//! by path; this also holds when clippy is not run).

use std::collections::BTreeSet;
use std::path::Path;

const IO_CRATES: &[&str] = &["mio", "tokio", "socket2", "nix", "quinn-udp", "polling"];
const HIDDEN_INPUTS: &[&str] = &[
    "Instant::now",
    "SystemTime",
    ".elapsed()",
    "rand::random",
    "rand::rng(",
    "thread_rng",
    "OsRng",
    "from_os_rng",
    "TransactionId::generate",
    "builder_request",
    "builder_indication",
];

#[test]
fn no_io_crate_is_a_dependency() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
        .expect("the workspace's Cargo.lock");
    // Each package's dependency list, by name (the lock's `dependencies = ["name version"]`).
    let packages: Vec<(&str, Vec<&str>)> = lock
        .split("[[package]]")
        .skip(1)
        .map(|block| {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"'))
                .expect("every [[package]] has a name");
            let deps = block
                .lines()
                .filter_map(|l| l.trim().strip_prefix('"')?.split(['"', ' ']).next())
                .collect();
            (name, deps)
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![env!("CARGO_PKG_NAME")];
    while let Some(name) = todo.pop() {
        if seen.insert(name) {
            for (_, deps) in packages.iter().filter(|(n, _)| *n == name) {
                todo.extend(deps);
            }
        }
    }
    assert!(seen.contains("turnpike-proto") && seen.contains("stun-types"));
    let io: Vec<_> = IO_CRATES.iter().filter(|c| seen.contains(**c)).collect();
    assert!(io.is_empty(), "turnpike-client depends on {io:?}");
}

#[test]
fn the_code_reads_no_clock_and_no_hidden_randomness() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&src).expect("client/src") {
        let path = entry.expect("a directory entry").path();
        // tests.rs reads the clock once, for a starting Instant.
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("a source file");
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for call in HIDDEN_INPUTS.iter().filter(|c| line.contains(**c)) {
                found.push(format!("{}:{}: {call}", path.display(), number + 1));
            }
        }
    }
    assert!(files >= 4, "scanned {files} files");
    assert!(found.is_empty(), "{found:#?}");
}
