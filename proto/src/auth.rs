//! Long-term credentials (RFC 8489 §9.2) with the MD5 and SHA-256 password algorithms
//! (§9.2.2, §18.5.1), TURN REST API time-limited credentials
//! (draft-uberti-behave-turn-rest-00) and stateless nonces carrying the nonce cookie (§9.2).
//!
//! Nothing here reads the clock: the current Unix time is passed in. Nothing here keeps
//! per-client state: a nonce carries its own issue time and a MAC over the client address, so
//! an unauthenticated source costs the server no memory.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
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
    /// user's password. REST usernames are `expiry`, `expiry<sep>user` or `user<sep>expiry`.
    pub fn passwords(&self, username: &str, unix_now: u64) -> Result<Vec<String>, AuthError> {
        // Only with a secret to check them against are REST-shaped names REST credentials:
        // without one, a static user may be called "1001".
        if let Some(expiry) =
            rest_expiry(username, self.separator).filter(|_| !self.secrets.is_empty())
        {
            if expiry <= unix_now {
                return Err(AuthError::Expired);
            }
            return Ok(self
                .secrets
                .iter()
                .map(|secret| rest_password(&secret.0, username))
                .collect());
        }
        // A plain lookup: the user name is not a secret, and nothing is compared here (the
        // message integrity computed from the password is, by the caller).
        self.static_users
            .iter()
            .find(|(name, _)| name == username)
            .map(|(_, password)| vec![password.0.clone()])
            .ok_or(AuthError::UnknownUser)
    }

    /// The user name to count quotas against: the user part of a REST username, or the whole
    /// username when it has none (`expiry` alone: every holder of that credential shares it).
    pub fn quota_key<'a>(&self, username: &'a str) -> &'a str {
        let user = match username.split_once(self.separator) {
            Some((a, b)) if is_digits(a) => b,
            Some((a, b)) if is_digits(b) => a,
            _ => username,
        };
        if user.is_empty() {
            username
        } else {
            user
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The expiry of a REST username: `expiry` alone (the user part is optional in
/// draft-uberti-behave-turn-rest-00 §2.2; `turnutils_uclient -W` without `-u` and the pion and
/// webrtc-rs credential helpers send it), `expiry<sep>user` or `user<sep>expiry`. Only
/// `separator` separates: unlike coturn, whose `atol()` also reads `1767225600_bob` as
/// expiry 1767225600 when the separator is `:`, turnpike takes that for a static user name.
pub fn rest_expiry(username: &str, separator: char) -> Option<u64> {
    let field = match username.split_once(separator) {
        None => username,
        Some((a, _)) if is_digits(a) => a,
        Some((_, b)) => b,
    };
    if !is_digits(field) {
        return None;
    }
    field.parse().ok()
}

/// `base64(HMAC-SHA1(secret, username))`, the REST API password.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A REST username and password valid for `ttl_secs` from `unix_now`; an empty `user` gives
/// the timestamp-only form.
pub fn mint_rest_credential(
    secret: &str,
    user: &str,
    separator: char,
    unix_now: u64,
    ttl_secs: u64,
) -> (String, String) {
    let expiry = unix_now.saturating_add(ttl_secs);
    let username = if user.is_empty() {
        expiry.to_string()
    } else {
        format!("{expiry}{separator}{user}")
    };
    let password = rest_password(secret, &username);
    (username, password)
}

/// A password algorithm (RFC 8489 §18.5): how the long-term key is derived from the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAlgorithm {
    /// 0x0001, and the algorithm of a request that names none (§9.2.2).
    Md5,
    /// 0x0002 (§18.5.1.2).
    Sha256,
}

impl PasswordAlgorithm {
    /// What turnpike lists in PASSWORD-ALGORITHMS, in its order of preference (§9.2.4).
    pub const OFFERED: [PasswordAlgorithm; 2] = [PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5];

    /// The number in the STUN Password Algorithms registry.
    pub const fn number(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    pub fn from_number(number: u16) -> Option<Self> {
        Self::OFFERED.into_iter().find(|a| a.number() == number)
    }
}

/// The long-term credential key (RFC 8489 §9.2.2, §18.5.1): the hash of
/// `username ":" realm ":" password`, 16 bytes with MD5, 32 with SHA-256. OpaqueString (RFC
/// 8265) is not applied: names and passwords are hashed as the UTF-8 bytes configured or
/// received, as coturn does, which is the same thing for ASCII.
#[derive(Clone, PartialEq, Eq)]
pub enum LongTermKey {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl LongTermKey {
    pub fn new(algorithm: PasswordAlgorithm, username: &str, realm: &str, password: &str) -> Self {
        fn hash<D: Digest>(username: &str, realm: &str, password: &str) -> D {
            let mut digest = D::new();
            for part in [username, ":", realm, ":", password] {
                digest.update(part.as_bytes());
            }
            digest
        }
        match algorithm {
            PasswordAlgorithm::Md5 => {
                LongTermKey::Md5(hash::<Md5>(username, realm, password).finalize().into())
            }
            PasswordAlgorithm::Sha256 => {
                LongTermKey::Sha256(hash::<Sha256>(username, realm, password).finalize().into())
            }
        }
    }
}

impl AsRef<[u8]> for LongTermKey {
    fn as_ref(&self) -> &[u8] {
        match self {
            LongTermKey::Md5(key) => key,
            LongTermKey::Sha256(key) => key,
        }
    }
}

impl std::fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LongTermKey(<redacted>)")
    }
}

/// The nonce cookie every nonce starts with (RFC 8489 §9.2): "obMatJos2" and the base64 of
/// the 24 STUN Security Feature bits. turnpike sets only "Password algorithms" (bit 0, §18.1),
/// so every 401 and 438 must carry PASSWORD-ALGORITHMS (§9.2.5). Bit 0 is the least
/// significant bit of the three bytes (verified erratum 6290 to §18.1; §9.2's own text says
/// the most significant), which gives 00 00 01, "AAAB", as libjuice sends it. "Username
/// anonymity" (USERHASH) is not offered.
pub const NONCE_COOKIE: &str = "obMatJos2AAAB";

/// How far ahead of this server's clock a nonce's issue time may be: another instance of
/// the fleet issued it, and clocks kept by NTP differ by far less.
pub const NONCE_CLOCK_SKEW_SECS: u64 = 5;

/// Issues and checks stateless nonces: [`NONCE_COOKIE`], then base64url of the issue time
/// (4 bytes, Unix seconds) and 4 bytes of HMAC-SHA256(key, time || client IP), 24 characters
/// in all, kept short because every 401 carries one to an unauthenticated source. Four MAC
/// bytes are enough: a forged nonce gets nothing a real one would not (anyone can ask for
/// one), and the answer to a guess sent from a spoofed address goes to that address.
///
/// The same secret keys the hash that spreads sources over the challenge limiter's table
/// ([`NonceKey::source_hash`]), so no part of the core seeds itself.
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
    /// SipHash keys derived from `key` (not the key itself: a second use needs its own).
    source_hash: (u64, u64),
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

const NONCE_MAC_LEN: usize = 4;
const NONCE_RAW_LEN: usize = 4 + NONCE_MAC_LEN;
/// Base64 without padding of [`NONCE_RAW_LEN`] bytes.
const NONCE_TAIL_LEN: usize = (NONCE_RAW_LEN * 4).div_ceil(3);

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts keys of any length");
        mac.update(b"turnpike source hash v1");
        let derived = mac.finalize().into_bytes();
        let half = |i: usize| u64::from_le_bytes(derived[i..i + 8].try_into().expect("8 bytes"));
        Self {
            key,
            source_hash: (half(0), half(8)),
        }
    }

    /// A keyed hash (SipHash-1-3, as std's `HashMap`) of a source address, for fixed tables
    /// indexed by source: whoever does not hold the key cannot pick addresses that share a
    /// slot with a victim's. Cheap, because a spoofed flood is hashed packet by packet.
    pub fn source_hash(&self, source: IpAddr) -> u64 {
        let (k0, k1) = self.source_hash;
        let mut hasher = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
        source.hash(&mut hasher);
        hasher.finish()
    }

    fn mac(&self, issued: u32, client: SocketAddr) -> [u8; NONCE_MAC_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(&issued.to_be_bytes());
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }

    pub fn issue(&self, client: SocketAddr, unix_now: u64) -> String {
        let issued = unix_now as u32;
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..4].copy_from_slice(&issued.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(issued, client));
        let mut nonce = String::with_capacity(NONCE_COOKIE.len() + NONCE_TAIL_LEN);
        nonce.push_str(NONCE_COOKIE);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(raw, &mut nonce);
        nonce
    }

    pub fn check(
        &self,
        nonce: &str,
        client: SocketAddr,
        unix_now: u64,
        lifetime_secs: u64,
    ) -> NonceCheck {
        // One byte of room: the decoder wants space for a whole final 3-byte group.
        let mut raw = [0u8; NONCE_RAW_LEN + 1];
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let Some(tail) = nonce.strip_prefix(NONCE_COOKIE) else {
            return NonceCheck::Stale;
        };
        if tail.len() != NONCE_TAIL_LEN || engine.decode_slice(tail, &mut raw) != Ok(NONCE_RAW_LEN)
        {
            return NonceCheck::Stale;
        }
        let issued = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let genuine: bool = self
            .mac(issued, client)
            .ct_eq(&raw[4..NONCE_RAW_LEN])
            .into();
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
    fn rest_username_accepts_both_orders_and_the_timestamp_alone() {
        assert_eq!(rest_expiry("1266890800:alice", ':'), Some(1266890800));
        assert_eq!(rest_expiry("alice:1266890800", ':'), Some(1266890800));
        assert_eq!(rest_expiry("alice|1266890800", '|'), Some(1266890800));
        assert_eq!(rest_expiry("1266890800", ':'), Some(1266890800));
        assert_eq!(rest_expiry("1266890800:", ':'), Some(1266890800));
        assert_eq!(rest_expiry(":1266890800", ':'), Some(1266890800));
        assert_eq!(rest_expiry("alice:bob", ':'), None);
        assert_eq!(rest_expiry("alice", ':'), None);
        assert_eq!(rest_expiry("", ':'), None);
        assert_eq!(rest_expiry(":", ':'), None);
        // Only the configured separator separates (coturn's atol() would read 1266890800).
        assert_eq!(rest_expiry("1266890800_alice", ':'), None);
        assert_eq!(rest_expiry("1266890800alice", ':'), None);
        // More digits than any u64 holds is not a timestamp.
        assert_eq!(rest_expiry("123456789012345678901", ':'), None);
        assert!(rest_expiry("1266890800", ':').is_some());
        assert!(rest_expiry("alice", ':').is_none());
        let creds = rest(&["s"]);
        assert!(rest_expiry("alice:1266890800", creds.separator).is_some());
        assert_eq!(creds.quota_key("1266890800:alice"), "alice");
        assert_eq!(creds.quota_key("alice:1266890800"), "alice");
        // No user part: the credential itself is the quota key.
        assert_eq!(creds.quota_key("1266890800"), "1266890800");
        assert_eq!(creds.quota_key(":1266890800"), ":1266890800");
    }

    #[test]
    fn without_a_secret_a_numeric_name_is_a_static_user() {
        let creds = Credentials {
            secrets: vec![],
            separator: ':',
            static_users: vec![("1001".to_owned(), Password("pbx".to_owned()))],
        };
        assert_eq!(
            creds.passwords("1001", 5000).unwrap(),
            vec!["pbx".to_owned()]
        );
        assert_eq!(creds.passwords("1002", 5000), Err(AuthError::UnknownUser));
    }

    #[test]
    fn timestamp_only_username_verifies_with_the_rest_password_and_expires() {
        let creds = rest(&["north"]);
        assert_eq!(
            creds.passwords("2000", 1999).unwrap(),
            vec![rest_password("north", "2000")]
        );
        assert_eq!(creds.passwords("2000", 2000), Err(AuthError::Expired));
        let (username, password) = mint_rest_credential("north", "", ':', 1000, 600);
        assert_eq!(username, "1600");
        assert_eq!(password, rest_password("north", "1600"));
    }

    #[test]
    fn long_term_keys_match_rfc_8489() {
        // RFC 8489 §9.2.2: MD5("user:realm:pass").
        let md5 = LongTermKey::new(PasswordAlgorithm::Md5, "user", "realm", "pass");
        assert_eq!(
            md5.as_ref(),
            [
                0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc,
                0x40, 0xeb
            ]
        );
        let sha256 = LongTermKey::new(PasswordAlgorithm::Sha256, "user", "realm", "pass");
        assert_eq!(
            sha256.as_ref(),
            Sha256::digest(b"user:realm:pass").as_slice()
        );
        assert_eq!(format!("{md5:?}"), "LongTermKey(<redacted>)");
        assert_eq!(
            PasswordAlgorithm::from_number(1),
            Some(PasswordAlgorithm::Md5)
        );
        assert_eq!(
            PasswordAlgorithm::from_number(2),
            Some(PasswordAlgorithm::Sha256)
        );
        assert_eq!(PasswordAlgorithm::from_number(3), None);
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
        assert_eq!(nonce.len(), 24);
        assert!(nonce.starts_with("obMatJos2AAAB"), "{nonce}");
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
        let forged = format!("{}AAAAAA", &nonce[..18]);
        assert_eq!(key.check(&forged, a, 5000, 600), NonceCheck::Stale);
        // The same time and MAC without the cookie, or behind another cookie, are not ours.
        assert_eq!(key.check(&nonce[13..], a, 5000, 600), NonceCheck::Stale);
        let other_cookie = format!("obMatJos2AAAA{}", &nonce[13..]);
        assert_eq!(key.check(&other_cookie, a, 5000, 600), NonceCheck::Stale);
        assert_eq!(
            NonceKey::new([8; 32]).check(&nonce, a, 5000, 600),
            NonceCheck::Stale
        );
    }

    /// The challenge limiter's slots depend on the key alone: every worker holding the same
    /// key puts a source in the same slot, and without the key the slot cannot be predicted.
    #[test]
    fn source_hash_is_keyed_by_the_nonce_key() {
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let key = NonceKey::new([7; 32]);
        assert_eq!(key.source_hash(ip), key.clone().source_hash(ip));
        assert_eq!(key.source_hash(ip), NonceKey::new([7; 32]).source_hash(ip));
        assert_ne!(key.source_hash(ip), NonceKey::new([8; 32]).source_hash(ip));
        assert_ne!(
            key.source_hash(ip),
            key.source_hash("198.51.100.8".parse().unwrap())
        );
    }
}
