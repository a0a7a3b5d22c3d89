//! One TURN allocation (RFC 8656 §2.2): its relayed address, lifetime, permissions, channel
//! bindings and bandwidth budget.
//!
//! Permissions and channels are kept in small vectors capped by configuration: a linear scan
//! of a few dozen entries beats hashing on the packet path and keeps an idle allocation small.
//! Each entry has a timer in the [`Server`](super::Server), which removes it when it expires;
//! until that timer has run, the packet checks here ignore an entry past its deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::wire::TransactionId;

#[derive(Debug)]
pub struct Allocation {
    /// One relayed address, or two (IPv4 and IPv6) for a dual allocation (RFC 8656 §7.2).
    pub relays: Vec<RelayAddress>,
    pub username: String,
    pub quota_key: String,
    pub expires: Instant,
    /// The Allocate transaction, so a retransmitted request gets the same success answer
    /// instead of 437 (RFC 8656 §7.2).
    pub transaction: TransactionId,
    pub lifetime: Duration,
    pub reservation_token: Option<u64>,
    /// An ADDITIONAL-ADDRESS-FAMILY that could not be served (reported with each answer).
    pub unavailable_family: Option<super::wire::AddressFamily>,
    pub permissions: Vec<Permission>,
    pub channels: Vec<ChannelBinding>,
    /// Byte budgets towards peers and towards the client, when a cap is configured.
    pub bandwidth: Option<[TokenBucket; 2]>,
    pub usage: Usage,
    /// Unique within its [`Server`](super::Server), for the management plane.
    pub id: u64,
}

/// What an allocation has relayed since it was created, counted as packets pass the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub started: Instant,
    /// The same moment in Unix seconds.
    pub started_unix: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub from_peer_packets: u64,
    pub from_peer_bytes: u64,
}

impl Usage {
    pub fn new(started: Instant, started_unix: u64) -> Self {
        Self {
            started,
            started_unix,
            to_peer_packets: 0,
            to_peer_bytes: 0,
            from_peer_packets: 0,
            from_peer_bytes: 0,
        }
    }
}

/// Which way relayed data flows, for the per-direction bandwidth cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToPeer = 0,
    ToClient = 1,
}

/// A relay socket of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddress {
    /// Where the relay socket is bound.
    pub local: SocketAddr,
    /// The address advertised in XOR-RELAYED-ADDRESS (differs behind a 1:1 NAT).
    pub advertised: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub peer: IpAddr,
    pub expires: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct ChannelBinding {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// Why a permission or channel could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The channel is bound to another peer, or the peer to another channel (400).
    Conflict,
    /// The per-allocation cap is reached (508).
    Full,
}

impl Allocation {
    /// The relay socket that talks to peers of `peer`'s address family.
    pub fn relay_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.relays
            .iter()
            .find(|r| r.local.is_ipv4() == peer.is_ipv4())
            .map(|r| r.local)
    }

    pub fn has_permission(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.peer == peer && p.expires > now)
    }

    /// Installs or refreshes a permission (RFC 8656 §9): `Ok(Some(old deadline))` for a
    /// refresh, `Ok(None)` for a new one. Expired entries must have been removed first.
    pub fn permit(
        &mut self,
        peer: IpAddr,
        expires: Instant,
        cap: usize,
    ) -> Result<Option<Instant>, BindError> {
        if let Some(existing) = self.permissions.iter_mut().find(|p| p.peer == peer) {
            return Ok(Some(std::mem::replace(&mut existing.expires, expires)));
        }
        if self.permissions.len() >= cap {
            return Err(BindError::Full);
        }
        self.permissions.push(Permission { peer, expires });
        Ok(None)
    }

    /// Removes the permission for `peer` if its deadline is `at` (the timer that fired).
    pub fn expire_permission(&mut self, peer: IpAddr, at: Instant) -> bool {
        let Some(i) = self
            .permissions
            .iter()
            .position(|p| p.peer == peer && p.expires == at)
        else {
            return false;
        };
        self.permissions.remove(i);
        true
    }

    /// Removes channel `number` if its deadline is `at` (the timer that fired); its peer.
    pub fn expire_channel(&mut self, number: u16, at: Instant) -> Option<SocketAddr> {
        let i = self
            .channels
            .iter()
            .position(|b| b.number == number && b.expires == at)?;
        Some(self.channels.remove(i).peer)
    }

    /// Checks a ChannelBind against existing bindings (RFC 8656 §11.2) without changing them.
    pub fn check_channel(
        &self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
        cap: usize,
    ) -> Result<(), BindError> {
        // Only a live binding conflicts: one past its deadline whose timer has not run yet is
        // treated as gone, as it will be once the timer runs.
        for binding in self.channels.iter().filter(|b| b.expires > now) {
            if (binding.number == number) != (binding.peer == peer) {
                return Err(BindError::Conflict);
            }
            if binding.number == number && binding.peer == peer {
                return Ok(());
            }
        }
        let live = self.channels.iter().filter(|b| b.expires > now).count();
        if live >= cap {
            return Err(BindError::Full);
        }
        Ok(())
    }

    /// Binds or refreshes a channel; call [`check_channel`](Self::check_channel) first, and
    /// remove expired entries before. `Some(old deadline)` for a refresh.
    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        expires: Instant,
    ) -> Option<Instant> {
        if let Some(existing) = self
            .channels
            .iter_mut()
            .find(|b| b.number == number && b.peer == peer)
        {
            return Some(std::mem::replace(&mut existing.expires, expires));
        }
        self.channels.push(ChannelBinding {
            number,
            peer,
            expires,
        });
        None
    }

    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|b| b.number == number && b.expires > now)
            .map(|b| b.peer)
    }

    pub fn channel_for_peer(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|b| b.peer == peer && b.expires > now)
            .map(|b| b.number)
    }

    /// Whether `bytes` more may be relayed now under the bandwidth cap.
    pub fn take_bandwidth(&mut self, direction: Direction, bytes: usize, now: Instant) -> bool {
        match &mut self.bandwidth {
            Some(buckets) => buckets[direction as usize].take(bytes as u64, now),
            None => true,
        }
    }
}

/// A token bucket in bytes: refills at `rate` bytes/s up to one second's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    pub fn take(&mut self, bytes: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        let refill = (elapsed.as_micros() as u64).saturating_mul(self.rate) / 1_000_000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(self.rate);
            self.last = now;
        }
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocation(now: Instant) -> Allocation {
        let relay = "127.0.0.1:50000".parse().unwrap();
        Allocation {
            relays: vec![RelayAddress {
                local: relay,
                advertised: relay,
            }],
            username: "u".into(),
            quota_key: "u".into(),
            expires: now + Duration::from_secs(600),
            transaction: 1u128.into(),
            lifetime: Duration::from_secs(600),
            reservation_token: None,
            unavailable_family: None,
            permissions: vec![],
            channels: vec![],
            bandwidth: None,
            usage: Usage::new(now, 0),
            id: 1,
        }
    }

    #[test]
    fn permission_valid_until_its_deadline() {
        let now = crate::tests::start();
        let mut a = allocation(now);
        let peer: IpAddr = "8.8.8.8".parse().unwrap();
        let deadline = now + Duration::from_secs(300);
        assert_eq!(a.permit(peer, deadline, 4), Ok(None));
        assert!(a.has_permission(peer, deadline - Duration::from_nanos(1)));
        assert!(!a.has_permission(peer, deadline));
    }

    #[test]
    fn permission_cap_and_expiry_by_timer() {
        let now = crate::tests::start();
        let mut a = allocation(now);
        let soon = now + Duration::from_secs(1);
        let first: IpAddr = "8.8.8.1".parse().unwrap();
        a.permit(first, soon, 2).unwrap();
        a.permit("8.8.8.2".parse().unwrap(), soon, 2).unwrap();
        assert_eq!(
            a.permit("8.8.8.3".parse().unwrap(), soon, 2),
            Err(BindError::Full)
        );
        // Refreshing one in place does not need a slot.
        let later = soon + Duration::from_secs(1);
        assert_eq!(a.permit(first, later, 2), Ok(Some(soon)));
        // A timer for the old deadline no longer matches; the one for the new deadline does.
        assert!(!a.expire_permission(first, soon));
        assert!(a.expire_permission(first, later));
        a.permit("8.8.8.3".parse().unwrap(), later, 2).unwrap();
        assert_eq!(a.permissions.len(), 2);
    }

    #[test]
    fn channel_conflicts_are_refused() {
        let now = crate::tests::start();
        let mut a = allocation(now);
        let p1: SocketAddr = "8.8.8.8:1000".parse().unwrap();
        let p2: SocketAddr = "8.8.8.8:1001".parse().unwrap();
        let exp = now + Duration::from_secs(600);
        a.check_channel(0x4000, p1, now, 8).unwrap();
        assert_eq!(a.bind_channel(0x4000, p1, exp), None);
        assert_eq!(
            a.check_channel(0x4000, p2, now, 8),
            Err(BindError::Conflict)
        );
        assert_eq!(
            a.check_channel(0x4001, p1, now, 8),
            Err(BindError::Conflict)
        );
        assert_eq!(a.check_channel(0x4000, p1, now, 8), Ok(()));
        assert_eq!(a.channel_peer(0x4000, now), Some(p1));
        assert_eq!(a.channel_for_peer(p1, now), Some(0x4000));
        assert_eq!(a.channel_peer(0x4000, exp), None);
        // Past its deadline, before its timer ran, a binding neither conflicts nor counts.
        assert_eq!(a.check_channel(0x4001, p1, exp, 1), Ok(()));
        assert_eq!(a.expire_channel(0x4000, exp), Some(p1));
        assert!(a.channels.is_empty());
    }

    #[test]
    fn token_bucket_limits_rate() {
        let now = crate::tests::start();
        let mut bucket = TokenBucket::new(1000, now);
        assert!(bucket.take(600, now));
        assert!(!bucket.take(600, now));
        // 400 left + 300 refilled in 300 ms.
        let later = now + Duration::from_millis(300);
        assert!(bucket.take(700, later));
        assert!(!bucket.take(1, later));
        // Never more than one second's worth, however long it idles.
        let idle = later + Duration::from_secs(60);
        assert!(!bucket.take(1001, idle));
        assert!(bucket.take(1000, idle));
    }
}
