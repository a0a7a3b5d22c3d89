//! I/O drivers: the only code that touches sockets or reads the clock.

pub mod batch;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod worker;
