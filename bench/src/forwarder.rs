//! The floor: a bare batched UDP forwarder with no TURN at all. Datagrams arriving on
//! `--listen` go out of a second socket to `--to`; datagrams coming back to that second
//! socket go out of `--listen` to the client seen last. One `recvmmsg` and one `sendmmsg`
//! per batch, buffers reused, one thread, no per-packet work beyond the syscalls.

use std::io;
use std::net::SocketAddrV4;

use crate::sys::{self, Epoll, Mmsg};

pub fn run(listen: SocketAddrV4, to: SocketAddrV4, max_secs: u64) -> io::Result<()> {
    let front = sys::udp_socket(listen)?;
    let back = sys::udp_socket(SocketAddrV4::new(*listen.ip(), 0))?;
    let mut ep = Epoll::new()?;
    ep.add(sys::fd(&front), 0)?;
    ep.add(sys::fd(&back), 1)?;
    eprintln!(
        "turnpike-bench forwarder: {} -> {} (via {}), pid {}",
        sys::local_v4(&front)?,
        to,
        sys::local_v4(&back)?,
        std::process::id()
    );
    let mut m = Mmsg::new();
    let mut client: Option<SocketAddrV4> = None;
    let mut ready = Vec::new();
    let deadline = sys::now_ns() + max_secs.min(86_400) * 1_000_000_000;
    while sys::now_ns() < deadline {
        ep.wait(1000, &mut ready)?;
        for &t in &ready {
            let (from, out) = if t == 0 {
                (&front, &back)
            } else {
                (&back, &front)
            };
            for _ in 0..8 {
                let n = m.recv(sys::fd(from))?;
                if n == 0 {
                    break;
                }
                let dest = if t == 0 {
                    client = Some(m.addr(n - 1));
                    to
                } else if let Some(c) = client {
                    c
                } else {
                    break;
                };
                for i in 0..n {
                    m.set_addr(i, dest);
                }
                m.send(sys::fd(out), n)?;
                if n < sys::BATCH {
                    break;
                }
            }
        }
    }
    Ok(())
}
