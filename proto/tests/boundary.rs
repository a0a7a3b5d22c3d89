//! The crate's boundary, checked by `cargo test` as well as by clippy (`clippy.toml`): no I/O
//! crate among its dependencies, and no clock or hidden randomness in its code.

use std::collections::BTreeSet;
use std::path::Path;

/// Crates that own sockets, event loops or threads: they belong to the daemon's `net/`.
const IO_CRATES: &[&str] = &["mio", "tokio", "socket2", "nix", "quinn-udp", "polling"];

/// What reads the clock or a thread-local/OS RNG. Clippy bans the same calls by path; this
/// scan also catches them when clippy is not run.
const HIDDEN_INPUTS: &[&str] = &[
    "Instant::now",
    "SystemTime",
    ".elapsed()",
    "rand::random",
    "rand::rng(",
    "thread_rng",
    "OsRng",
    "from_os_rng",
    "RandomState",
    "TransactionId::generate",
    "builder_request",
    "builder_indication",
];

/// Every package `root` depends on in Cargo.lock, directly or not. The lock lists each
/// package's resolved dependencies of every kind and version, so this over-approximates.
fn lock_closure(lock: &str, root: &str) -> BTreeSet<String> {
    let mut deps: Vec<(String, Vec<String>)> = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("every [[package]] has a name");
        let list = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"'))
            .filter_map(|l| l.split(['"', ' ']).next())
            .map(str::to_owned)
            .collect();
        deps.push((name.to_owned(), list));
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            for (_, list) in deps.iter().filter(|(n, _)| *n == name) {
                todo.extend(list.iter().cloned());
            }
        }
    }
    seen
}

#[test]
fn no_io_crate_is_a_dependency() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
        .expect("the workspace's Cargo.lock");
    let closure = lock_closure(&lock, env!("CARGO_PKG_NAME"));
    assert!(closure.contains("stun-types"), "the walk found the codec");
    let io: Vec<&&str> = IO_CRATES.iter().filter(|c| closure.contains(**c)).collect();
    assert!(io.is_empty(), "turnpike-proto depends on {io:?}");
}

#[test]
fn the_code_reads_no_clock_and_no_hidden_randomness() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&src).expect("proto/src") {
        let path = entry.expect("a directory entry").path();
        // tests.rs is test code; it reads the clock once, for a starting Instant.
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("a source file");
        // Each file's unit tests come last, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (number, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for call in HIDDEN_INPUTS.iter().filter(|c| line.contains(**c)) {
                found.push(format!("{}:{}: {call}", path.display(), number + 1));
            }
        }
    }
    assert!(files >= 8, "scanned {files} files");
    assert!(found.is_empty(), "{found:#?}");
}
