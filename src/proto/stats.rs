//! Plain counters kept by each worker's [`Server`](super::Server). The management plane sums
//! them; nothing here is shared or locked.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub binding_requests: u64,
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub permissions_created: u64,
    pub channels_bound: u64,
    /// Datagrams that were not STUN or ChannelData, or failed to parse.
    pub malformed: u64,
    /// Well-formed messages with nowhere to go: responses, unknown indications, ChannelData
    /// on an unbound channel, Send without allocation or permission.
    pub dropped: u64,
    pub auth_missing: u64,
    pub auth_stale_nonce: u64,
    pub auth_expired: u64,
    pub auth_unknown_user: u64,
    pub auth_bad_integrity: u64,
    pub denied_peers: u64,
    pub quota_user: u64,
    pub quota_total: u64,
    pub peer_without_permission: u64,
    pub bandwidth_dropped: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub from_peer_packets: u64,
    pub from_peer_bytes: u64,
    /// Error responses by code, for the codes turnpike sends.
    pub errors: ErrorCounts,
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

    pub fn get(&self, code: u16) -> u64 {
        CODES
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.counts[i])
    }
}
