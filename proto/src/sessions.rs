//! What the management plane sees of and does to live allocations: snapshots of them
//! ([`SessionInfo`], chosen by a [`SessionFilter`]) and revocations of credentials.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::allocation::Usage;
use super::server::{EndReason, Transport};

/// Users whose credentials may not allocate until a Unix time. A name matches a username
/// equal to it or, for REST usernames (`expiry:user`), the user part: revoking `alice` cuts
/// every credential minted for alice, revoking `1767225600:alice` only that one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    until: HashMap<String, u64>,
}

impl Revocations {
    pub fn new(until: HashMap<String, u64>) -> Self {
        Self { until }
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    /// Whether `username` (whose quota key, the REST user part, is `user`) is revoked now.
    pub fn revokes(&self, username: &str, user: &str, unix_now: u64) -> bool {
        if self.until.is_empty() {
            return false;
        }
        [username, user]
            .iter()
            .any(|name| self.until.get(*name).is_some_and(|&until| unix_now < until))
    }

    /// The revoked names and their until-times.
    pub fn entries(&self) -> &HashMap<String, u64> {
        &self.until
    }
}

/// Which allocations a snapshot holds: every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// The exact username, or the REST user part.
    pub username: Option<String>,
    /// A prefix of the username.
    pub prefix: Option<String>,
    /// Only ids above this one (paging).
    pub after: Option<u64>,
}

impl SessionFilter {
    pub(crate) fn matches(&self, id: u64, username: &str, user: &str) -> bool {
        self.after.is_none_or(|after| id > after)
            && self
                .username
                .as_deref()
                .is_none_or(|name| name == username || name == user)
            && self
                .prefix
                .as_deref()
                .is_none_or(|prefix| username.starts_with(prefix))
    }
}

/// One live allocation as the management plane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Unique within one [`Server`](super::Server), increasing in creation order.
    pub id: u64,
    pub username: String,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
    /// The advertised relayed addresses.
    pub relays: Vec<SocketAddr>,
    /// Unix seconds.
    pub expires_unix: u64,
    pub permissions: usize,
    pub channels: usize,
    pub usage: Usage,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Deleted => "deleted",
            EndReason::ConnectionClosed => "connection_closed",
            EndReason::Shutdown => "shutdown",
            EndReason::Kicked => "kicked",
            EndReason::Revoked => "revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_name_matches_the_username_or_its_user_part_until_the_deadline() {
        let revoked = Revocations::new(HashMap::from([
            ("alice".to_owned(), 2_000),
            ("1900:bob".to_owned(), 1_900),
        ]));
        assert!(revoked.revokes("1999:alice", "alice", 1_000));
        assert!(revoked.revokes("alice", "alice", 1_999));
        assert!(!revoked.revokes("alice", "alice", 2_000));
        assert!(revoked.revokes("1900:bob", "bob", 1_000));
        assert!(!revoked.revokes("1901:bob", "bob", 1_000));
        assert!(!revoked.revokes("carol", "carol", 1_000));
    }

    #[test]
    fn a_filter_matches_on_every_field_it_sets() {
        let all = SessionFilter::default();
        assert!(all.matches(1, "1999:alice", "alice"));
        let alice = SessionFilter {
            username: Some("alice".into()),
            ..Default::default()
        };
        assert!(alice.matches(1, "1999:alice", "alice"));
        assert!(!alice.matches(1, "1999:alicia", "alicia"));
        let page = SessionFilter {
            prefix: Some("1999:".into()),
            after: Some(5),
            ..Default::default()
        };
        assert!(page.matches(6, "1999:alice", "alice"));
        assert!(!page.matches(5, "1999:alice", "alice"));
        assert!(!page.matches(6, "2000:alice", "alice"));
    }
}
