//! Long-term credentials (RFC 8489 §9.2), TURN REST API time-limited credentials
//! (draft-uberti-behave-turn-rest-00) and stateless nonces.
//!
//! Nothing here reads the clock: the current Unix time is passed in. Nothing here keeps
//! per-client state: a nonce carries its own issue time and a MAC over the client address, so
//! an unauthenticated source costs the server no memory.

use std::net::SocketAddr;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A shared secret or password whose `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Why a username/password pair was refused; all of these answer 401 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A REST username whose expiry time has passed.
    #[error("credential expired")]
    Expired,
    /// Neither a REST username nor a configured static user.
    #[error("unknown user")]
    UnknownUser,
    /// The MESSAGE-INTEGRITY did not verify with any candidate password.
    #[error("bad message integrity")]
    BadIntegrity,
}

/// The server's view of who may authenticate.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// REST API secrets; the first signs new credentials, every one verifies.
    pub secrets: Vec<Password>,
    /// Separator between the expiry time and the user name in REST usernames.
    pub separator: char,
    /// Static long-term users.
    pub static_users: Vec<(String, Password)>,
}

impl Credentials {
    /// Candidate passwords for `username` at `unix_now`: one per REST secret, or the static
    /// user's password. REST usernames are `expiry<sep>user` or `user<sep>expiry`.
    pub fn passwords(&self, username: &str, unix_now: u64) -> Result<Vec<String>, AuthError> {
        if let Some(expiry) = rest_expiry(username, self.separator) {
            if expiry <= unix_now {
                return Err(AuthError::Expired);
            }
            if !self.secrets.is_empty() {
                return Ok(self
                    .secrets
                    .iter()
                    .map(|secret| rest_password(&secret.0, username))
                    .collect());
            }
        }
        // Constant time in the password; the user name is not a secret.
        self.static_users
            .iter()
            .find(|(name, _)| name == username)
            .map(|(_, password)| vec![password.0.clone()])
            .ok_or(AuthError::UnknownUser)
    }

    /// The user name to count quotas against: the user part of a REST username.
    pub fn quota_key<'a>(&self, username: &'a str) -> &'a str {
        match username.split_once(self.separator) {
            Some((a, b)) if is_digits(a) => b,
            Some((a, b)) if is_digits(b) => a,
            _ => username,
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The expiry of a REST username, accepting both `expiry:user` and `user:expiry`.
pub fn rest_expiry(username: &str, separator: char) -> Option<u64> {
    let (a, b) = username.split_once(separator)?;
    let field = if is_digits(a) {
        a
    } else if is_digits(b) {
        b
    } else {
        return None;
    };
    field.parse().ok()
}

/// `base64(HMAC-SHA1(secret, username))`, the REST API password.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A REST username and password valid for `ttl_secs` from `unix_now`.
pub fn mint_rest_credential(
    secret: &str,
    user: &str,
    separator: char,
    unix_now: u64,
    ttl_secs: u64,
) -> (String, String) {
    let username = format!("{}{separator}{user}", unix_now.saturating_add(ttl_secs));
    let password = rest_password(secret, &username);
    (username, password)
}

/// How far ahead of this server's clock a nonce's issue time may be: another instance of
/// the fleet issued it, and clocks kept by NTP differ by far less.
pub const NONCE_CLOCK_SKEW_SECS: u64 = 5;

/// Issues and checks stateless nonces: base64url of the issue time (4 bytes, Unix seconds)
/// followed by 8 bytes of HMAC-SHA256(key, time || client IP), 16 characters in all,
/// kept short because every 401 carries one to an unauthenticated source.
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// Whether a nonce presented by a client can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Too old, from the future, forged, or minted for another address: answer 438.
    Stale,
}

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, issued: u32, client: SocketAddr) -> [u8; 8] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(&issued.to_be_bytes());
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    pub fn issue(&self, client: SocketAddr, unix_now: u64) -> String {
        let issued = unix_now as u32;
        let mut raw = [0u8; 12];
        raw[..4].copy_from_slice(&issued.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(issued, client));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn check(
        &self,
        nonce: &str,
        client: SocketAddr,
        unix_now: u64,
        lifetime_secs: u64,
    ) -> NonceCheck {
        let mut raw = [0u8; 12];
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if nonce.len() != 16 || engine.decode_slice(nonce, &mut raw) != Ok(12) {
            return NonceCheck::Stale;
        }
        let issued = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let genuine: bool = self.mac(issued, client).ct_eq(&raw[4..]).into();
        // A nonce from further in the future is forged or from a clock that jumped; either way
        // refresh it. A little is another instance's clock (nonce keys are fleet-wide).
        let issued = u64::from(issued);
        let fresh = issued <= unix_now.saturating_add(NONCE_CLOCK_SKEW_SECS)
            && unix_now.saturating_sub(issued) < lifetime_secs;
        if genuine && fresh {
            NonceCheck::Valid
        } else {
            NonceCheck::Stale
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(secrets: &[&str]) -> Credentials {
        Credentials {
            secrets: secrets.iter().map(|s| Password(s.to_string())).collect(),
            separator: ':',
            static_users: vec![],
        }
    }

    #[test]
    fn rest_password_matches_draft_vector() {
        // draft-uberti-behave-turn-rest-00 §2.2's example, as quoted in the issue.
        assert_eq!(
            rest_password("north", "1266890800:mbzrxpgjys"),
            "nbRcrnq5h6xXhyNhlwk+lDLvVVo="
        );
    }

    #[test]
    fn rest_username_accepts_both_orders() {
        assert_eq!(rest_expiry("1266890800:alice", ':'), Some(1266890800));
        assert_eq!(rest_expiry("alice:1266890800", ':'), Some(1266890800));
        assert_eq!(rest_expiry("alice|1266890800", '|'), Some(1266890800));
        assert_eq!(rest_expiry("alice:bob", ':'), None);
        assert_eq!(rest_expiry("alice", ':'), None);
        let creds = rest(&["s"]);
        assert_eq!(creds.quota_key("1266890800:alice"), "alice");
        assert_eq!(creds.quota_key("alice:1266890800"), "alice");
    }

    #[test]
    fn expired_rest_credential_is_refused_at_the_second_it_expires() {
        let creds = rest(&["s"]);
        assert!(creds.passwords("1000:alice", 999).is_ok());
        assert_eq!(creds.passwords("1000:alice", 1000), Err(AuthError::Expired));
    }

    #[test]
    fn every_secret_verifies_first_signs() {
        let creds = rest(&["new", "old"]);
        let passwords = creds.passwords("2000:bob", 1000).unwrap();
        assert_eq!(passwords[0], rest_password("new", "2000:bob"));
        assert_eq!(passwords[1], rest_password("old", "2000:bob"));
    }

    #[test]
    fn static_users_and_unknown_users() {
        let creds = Credentials {
            secrets: vec![],
            separator: ':',
            static_users: vec![("carol".into(), Password("pw".into()))],
        };
        assert_eq!(creds.passwords("carol", 0).unwrap(), vec!["pw".to_string()]);
        assert_eq!(creds.passwords("dave", 0), Err(AuthError::UnknownUser));
        // A REST-shaped name with no secret configured is not a static user either.
        assert_eq!(creds.passwords("2000:dave", 0), Err(AuthError::UnknownUser));
    }

    #[test]
    fn nonce_expires_after_lifetime_and_is_bound_to_address() {
        let key = NonceKey::new([7; 32]);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let same_ip: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let nonce = key.issue(a, 5000);
        assert_eq!(nonce.len(), 16);
        assert_eq!(key.check(&nonce, a, 5000, 600), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, a, 5599, 600), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, a, 5600, 600), NonceCheck::Stale);
        assert_eq!(key.check(&nonce, b, 5000, 600), NonceCheck::Stale);
        // Bound to the IP, not the port: one client's sockets can share a nonce.
        assert_eq!(key.check(&nonce, same_ip, 5000, 600), NonceCheck::Valid);
        // Issued by an instance whose clock is a little ahead: accepted; far ahead: not.
        assert_eq!(key.check(&nonce, a, 4995, 600), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, a, 4994, 600), NonceCheck::Stale);
        assert_eq!(key.check("garbage", a, 5000, 600), NonceCheck::Stale);
        let forged = format!("{}AAAAAAAAAA", &nonce[..6]);
        assert_eq!(key.check(&forged, a, 5000, 600), NonceCheck::Stale);
        assert_eq!(
            NonceKey::new([8; 32]).check(&nonce, a, 5000, 600),
            NonceCheck::Stale
        );
    }
}
