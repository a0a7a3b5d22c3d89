//! The whole sans-IO server fed sequences of client datagrams, peer datagrams and time
//! steps from several sources; see `turnpike_fuzz::server` for the operations and the
//! invariants checked after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_fuzz::server::{Harness, Input};

fuzz_target!(|input: Input| {
    Harness::run(&input);
});
