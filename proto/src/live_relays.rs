//! The relay ports this server holds a relay socket on right now, per bound relay IP, shared
//! by all workers: relay-to-relay may reach these and no other port of the server's own IPs
//! (another local process's socket in the relay port range is no allocation of this server).
//!
//! The core keeps it: a relay address is marked live when an allocation takes it
//! (`Server::accept_allocation`, after the driver bound the socket) and unmarked when the
//! allocation ends (before the driver closes the socket), so a live mark never outlasts its
//! socket. Lock-free to read; a new IP takes a slot once.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Bound relay IPs tracked: the daemon binds on one IP per family; tests and the learnt IPs
/// of a core without `relay_ips` stay far below this. An IP beyond it is never live (relaying
/// to it is refused, not opened).
const MAX_IPS: usize = 16;
/// One bit per port.
const WORDS: usize = (u16::MAX as usize + 1) / 64;

struct Ports {
    ip: IpAddr,
    bits: Box<[AtomicU64]>,
}

impl Ports {
    fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            bits: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn word_and_bit(port: u16) -> (usize, u64) {
        (usize::from(port) / 64, 1 << (port % 64))
    }
}

/// 8 KiB per relay IP, allocated when its first relay is marked.
pub struct LiveRelays {
    /// Filled in order: a slot is claimed only once every slot before it holds an IP.
    slots: [OnceLock<Ports>; MAX_IPS],
}

impl Default for LiveRelays {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl std::fmt::Debug for LiveRelays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ips: Vec<IpAddr> = self.ips().map(|p| p.ip).collect();
        f.debug_struct("LiveRelays").field("ips", &ips).finish()
    }
}

impl LiveRelays {
    /// Whether a relay socket of this server is bound at `addr` (its bound address).
    pub fn is_live(&self, addr: SocketAddr) -> bool {
        let Some(ports) = self.ips().find(|p| p.ip == addr.ip()) else {
            return false;
        };
        let (word, bit) = Ports::word_and_bit(addr.port());
        ports.bits[word].load(Ordering::Acquire) & bit != 0
    }

    /// Marks the relay socket bound at `addr` as held (`live`) or closed. Each bound address
    /// has one socket, so one owner marks and unmarks it. False when `addr`'s IP finds no
    /// slot: it then stays not live.
    pub fn mark(&self, addr: SocketAddr, live: bool) -> bool {
        let Some(ports) = self.ports_or_claim(addr.ip()) else {
            return false;
        };
        let (word, bit) = Ports::word_and_bit(addr.port());
        if live {
            ports.bits[word].fetch_or(bit, Ordering::Release);
        } else {
            ports.bits[word].fetch_and(!bit, Ordering::Release);
        }
        true
    }

    fn ips(&self) -> impl Iterator<Item = &Ports> {
        self.slots.iter().map_while(OnceLock::get)
    }

    fn ports_or_claim(&self, ip: IpAddr) -> Option<&Ports> {
        for slot in &self.slots {
            // Another worker may claim the slot first, for this IP or another one.
            let ports = slot.get_or_init(|| Ports::new(ip));
            if ports.ip == ip {
                return Some(ports);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn marks_are_per_ip_and_port() {
        let live = LiveRelays::default();
        assert!(!live.is_live(addr("192.0.2.10:50000")));
        assert!(live.mark(addr("192.0.2.10:50000"), true));
        assert!(live.mark(addr("[2001:db8::10]:0"), true));
        assert!(live.mark(addr("192.0.2.10:65535"), true));
        assert!(live.is_live(addr("192.0.2.10:50000")));
        assert!(live.is_live(addr("192.0.2.10:65535")));
        assert!(live.is_live(addr("[2001:db8::10]:0")));
        for not in ["192.0.2.10:50001", "192.0.2.10:49999", "192.0.2.11:50000"] {
            assert!(!live.is_live(addr(not)), "{not}");
        }
        assert!(!live.is_live(addr("[2001:db8::10]:50000")));
        assert!(live.mark(addr("192.0.2.10:50000"), false));
        assert!(!live.is_live(addr("192.0.2.10:50000")));
        assert!(live.is_live(addr("192.0.2.10:65535")));
    }

    #[test]
    fn an_ip_beyond_the_slots_is_never_live() {
        let live = LiveRelays::default();
        for i in 0..MAX_IPS as u8 {
            assert!(live.mark(SocketAddr::from(([10, 0, 0, i], 50000)), true));
        }
        let extra = addr("10.0.1.0:50000");
        assert!(!live.mark(extra, true));
        assert!(!live.is_live(extra));
        assert!(live.is_live(addr("10.0.0.15:50000")));
    }
}
