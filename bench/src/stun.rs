//! Just enough STUN/TURN (RFC 8489 / RFC 8656) to drive any TURN server: request builders
//! with long-term-credential MESSAGE-INTEGRITY and FINGERPRINT, a response parser, REST
//! credentials, and ChannelData / Send / Data indication framing. Written by hand so the
//! load generator depends on no server code and stays cheap per packet.

use std::net::{Ipv4Addr, SocketAddrV4};

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

pub const MAGIC: u32 = 0x2112_A442;

pub const ALLOCATE: u16 = 0x0003;
pub const REFRESH: u16 = 0x0004;
pub const SEND_INDICATION: u16 = 0x0016;
pub const DATA_INDICATION: u16 = 0x0017;
pub const CREATE_PERMISSION: u16 = 0x0008;
pub const CHANNEL_BIND: u16 = 0x0009;
/// Class bits of a success / error response added to the request type.
pub const SUCCESS: u16 = 0x0100;
pub const ERROR: u16 = 0x0110;

const A_USERNAME: u16 = 0x0006;
const A_MESSAGE_INTEGRITY: u16 = 0x0008;
const A_ERROR_CODE: u16 = 0x0009;
const A_CHANNEL_NUMBER: u16 = 0x000C;
const A_LIFETIME: u16 = 0x000D;
const A_XOR_PEER_ADDRESS: u16 = 0x0012;
const A_DATA: u16 = 0x0013;
const A_REALM: u16 = 0x0014;
const A_NONCE: u16 = 0x0015;
const A_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const A_REQUESTED_TRANSPORT: u16 = 0x0019;
const A_FINGERPRINT: u16 = 0x8028;

/// REST credential: username `<expiry>:<user>`, password base64(HMAC-SHA1(secret, username)).
pub fn rest_credential(secret: &str, user: &str, ttl_secs: u64) -> (String, String) {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + ttl_secs;
    let username = format!("{expiry}:{user}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Long-term key: MD5(username ":" realm ":" password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(format!("{username}:{realm}:{password}").as_bytes());
    h.finalize().into()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn xor_addr_value(a: SocketAddrV4) -> [u8; 8] {
    let port = a.port() ^ (MAGIC >> 16) as u16;
    let ip = u32::from(*a.ip()) ^ MAGIC;
    let mut v = [0u8; 8];
    v[1] = 0x01;
    v[2..4].copy_from_slice(&port.to_be_bytes());
    v[4..8].copy_from_slice(&ip.to_be_bytes());
    v
}

/// A STUN message under construction.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(typ: u16, tid: &[u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&typ.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(tid);
        Builder { buf }
    }

    fn set_len(&mut self, extra: usize) {
        let len = (self.buf.len() - 20 + extra) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn attr(mut self, typ: u16, value: &[u8]) -> Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
        self.set_len(0);
        self
    }

    pub fn xor_peer(self, a: SocketAddrV4) -> Self {
        self.attr(A_XOR_PEER_ADDRESS, &xor_addr_value(a))
    }

    pub fn requested_transport_udp(self) -> Self {
        self.attr(A_REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    }

    pub fn lifetime(self, secs: u32) -> Self {
        self.attr(A_LIFETIME, &secs.to_be_bytes())
    }

    pub fn channel(self, ch: u16) -> Self {
        let mut v = [0u8; 4];
        v[..2].copy_from_slice(&ch.to_be_bytes());
        self.attr(A_CHANNEL_NUMBER, &v)
    }

    /// Adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY when `auth` is given.
    pub fn auth(mut self, auth: Option<(&str, &str, &[u8], &[u8; 16])>) -> Self {
        if let Some((user, realm, nonce, key)) = auth {
            self = self
                .attr(A_USERNAME, user.as_bytes())
                .attr(A_REALM, realm.as_bytes())
                .attr(A_NONCE, nonce);
            self.set_len(24);
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
            mac.update(&self.buf);
            let tag = mac.finalize().into_bytes();
            self = self.attr(A_MESSAGE_INTEGRITY, &tag);
        }
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.set_len(8);
        let crc = crc32(&self.buf) ^ 0x5354_554E;
        self.attr(A_FINGERPRINT, &crc.to_be_bytes()).buf
    }
}

/// What the setup phase needs from a response.
#[derive(Debug, Default)]
pub struct Response {
    pub typ: u16,
    pub tid: [u8; 12],
    pub error: Option<u16>,
    pub realm: Option<String>,
    pub nonce: Option<Vec<u8>>,
    pub relayed: Option<SocketAddrV4>,
}

/// Iterates the attributes of a STUN message: (type, value).
fn attrs(msg: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let end = if msg.len() >= 20 {
        (20 + u16::from_be_bytes([msg[2], msg[3]]) as usize).min(msg.len())
    } else {
        0
    };
    let mut off = 20;
    std::iter::from_fn(move || {
        if off + 4 > end {
            return None;
        }
        let t = u16::from_be_bytes([msg[off], msg[off + 1]]);
        let l = u16::from_be_bytes([msg[off + 2], msg[off + 3]]) as usize;
        let v = msg.get(off + 4..off + 4 + l)?;
        off += 4 + l.div_ceil(4) * 4;
        Some((t, v))
    })
}

pub fn is_stun(msg: &[u8]) -> bool {
    msg.len() >= 20 && msg[0] & 0xC0 == 0 && msg[4..8] == MAGIC.to_be_bytes()
}

pub fn parse_response(msg: &[u8]) -> Option<Response> {
    if !is_stun(msg) {
        return None;
    }
    let mut r = Response {
        typ: u16::from_be_bytes([msg[0], msg[1]]),
        ..Default::default()
    };
    r.tid.copy_from_slice(&msg[8..20]);
    for (t, v) in attrs(msg) {
        match t {
            A_ERROR_CODE if v.len() >= 4 => r.error = Some((v[2] & 7) as u16 * 100 + v[3] as u16),
            A_REALM => r.realm = Some(String::from_utf8_lossy(v).into_owned()),
            A_NONCE => r.nonce = Some(v.to_vec()),
            A_XOR_RELAYED_ADDRESS if v.len() >= 8 && v[1] == 1 => {
                let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
                let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
                r.relayed = Some(SocketAddrV4::new(Ipv4Addr::from(ip), port));
            }
            _ => {}
        }
    }
    Some(r)
}

/// The DATA attribute of a Data indication.
pub fn data_indication_payload(msg: &[u8]) -> Option<&[u8]> {
    if !is_stun(msg) || u16::from_be_bytes([msg[0], msg[1]]) != DATA_INDICATION {
        return None;
    }
    attrs(msg).find(|(t, _)| *t == A_DATA).map(|(_, v)| v)
}

/// The framing written in front of each payload, and the bytes after it (padding).
pub struct Framing {
    pub prefix: Vec<u8>,
    pub pad: usize,
}

/// ChannelData header for `size` payload bytes (no padding: not required over UDP).
pub fn channel_data_framing(ch: u16, size: usize) -> Framing {
    let mut prefix = ch.to_be_bytes().to_vec();
    prefix.extend_from_slice(&(size as u16).to_be_bytes());
    Framing { prefix, pad: 0 }
}

/// Send indication header up to the DATA value for `size` payload bytes. The transaction
/// ID (bytes 8..20) is rewritten per packet by the sender.
pub fn send_indication_framing(peer: SocketAddrV4, size: usize) -> Framing {
    let b = Builder::new(SEND_INDICATION, &[0; 12]).xor_peer(peer);
    let mut prefix = b.buf;
    let pad = (4 - size % 4) % 4;
    prefix.extend_from_slice(&A_DATA.to_be_bytes());
    prefix.extend_from_slice(&(size as u16).to_be_bytes());
    let len = (prefix.len() - 20 + size + pad) as u16;
    prefix[2..4].copy_from_slice(&len.to_be_bytes());
    Framing { prefix, pad }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn builder_lengths_are_consistent() {
        let m = Builder::new(ALLOCATE, &[7; 12])
            .requested_transport_udp()
            .auth(Some(("1:u", "r", b"n", &[0; 16])))
            .finish();
        assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, m.len() - 20);
        assert!(parse_response(&m).is_some());
    }
}
