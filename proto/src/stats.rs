//! Plain counters kept by each worker's [`Server`](super::Server). The management plane sums
//! them; nothing here is shared or locked.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub binding_requests: u64,
    /// By client transport, indexed by `Transport as usize`.
    pub allocations_created: [u64; 3],
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub permissions_created: u64,
    pub channels_bound: u64,
    /// Datagrams that were not STUN or ChannelData, or failed to parse.
    pub malformed: u64,
    /// Well-formed messages with nowhere to go: responses, unknown indications, ChannelData
    /// on an unbound channel, Send without allocation or permission.
    pub dropped: u64,
    /// Indications discarded for an unknown comprehension-required attribute (RFC 8489
    /// §6.3.2).
    pub unknown_attribute_dropped: u64,
    pub auth_missing: u64,
    /// 401/438 challenges not sent because the source, or the whole server, exceeded its rate.
    pub challenges_suppressed: u64,
    pub auth_stale_nonce: u64,
    pub auth_expired: u64,
    pub auth_unknown_user: u64,
    pub auth_bad_integrity: u64,
    /// 400s for a PASSWORD-ALGORITHM that is unknown or not with the offered list (RFC 8489
    /// §9.2.4).
    pub auth_bad_algorithm: u64,
    pub denied_peers: u64,
    /// Live permissions and channels ended because a reloaded peer filter denies their peer.
    pub permissions_cut_by_reload: u64,
    pub channels_cut_by_reload: u64,
    pub quota_user: u64,
    pub quota_total: u64,
    pub peer_without_permission: u64,
    pub bandwidth_dropped: u64,
    /// Peer datagrams too large for a Data indication (no channel bound): never truncated.
    pub too_large_dropped: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub from_peer_packets: u64,
    pub from_peer_bytes: u64,
    /// Error responses by code, for the codes turnpike sends.
    pub errors: ErrorCounts,
}

impl Stats {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            binding_requests,
            allocations_created,
            allocations_expired,
            allocations_deleted,
            permissions_created,
            channels_bound,
            malformed,
            dropped,
            unknown_attribute_dropped,
            auth_missing,
            challenges_suppressed,
            auth_stale_nonce,
            auth_expired,
            auth_unknown_user,
            auth_bad_integrity,
            auth_bad_algorithm,
            denied_peers,
            permissions_cut_by_reload,
            channels_cut_by_reload,
            quota_user,
            quota_total,
            peer_without_permission,
            bandwidth_dropped,
            too_large_dropped,
            to_peer_packets,
            to_peer_bytes,
            from_peer_packets,
            from_peer_bytes,
            errors,
        } = other;
        self.binding_requests += binding_requests;
        for (sum, n) in self.allocations_created.iter_mut().zip(allocations_created) {
            *sum += n;
        }
        self.allocations_expired += allocations_expired;
        self.allocations_deleted += allocations_deleted;
        self.permissions_created += permissions_created;
        self.channels_bound += channels_bound;
        self.malformed += malformed;
        self.dropped += dropped;
        self.unknown_attribute_dropped += unknown_attribute_dropped;
        self.auth_missing += auth_missing;
        self.challenges_suppressed += challenges_suppressed;
        self.auth_stale_nonce += auth_stale_nonce;
        self.auth_expired += auth_expired;
        self.auth_unknown_user += auth_unknown_user;
        self.auth_bad_integrity += auth_bad_integrity;
        self.auth_bad_algorithm += auth_bad_algorithm;
        self.denied_peers += denied_peers;
        self.permissions_cut_by_reload += permissions_cut_by_reload;
        self.channels_cut_by_reload += channels_cut_by_reload;
        self.quota_user += quota_user;
        self.quota_total += quota_total;
        self.peer_without_permission += peer_without_permission;
        self.bandwidth_dropped += bandwidth_dropped;
        self.too_large_dropped += too_large_dropped;
        self.to_peer_packets += to_peer_packets;
        self.to_peer_bytes += to_peer_bytes;
        self.from_peer_packets += from_peer_packets;
        self.from_peer_bytes += from_peer_bytes;
        for (sum, n) in self.errors.counts.iter_mut().zip(errors.counts) {
            *sum += n;
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorCounts {
    counts: [u64; CODES.len()],
}

/// Every error code turnpike can send, in the order counted.
pub const CODES: [u16; 13] = [
    300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508,
];

impl ErrorCounts {
    pub fn record(&mut self, code: u16) {
        if let Some(i) = CODES.iter().position(|&c| c == code) {
            self.counts[i] += 1;
        }
    }

    /// `(code, count)` for every code turnpike sends.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        CODES.iter().copied().zip(self.counts.iter().copied())
    }

    pub fn get(&self, code: u16) -> u64 {
        CODES
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.counts[i])
    }
}
