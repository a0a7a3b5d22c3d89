//! What a `stun:`, `stuns:`, `turn:` or `turns:` URI (RFC 7064, RFC 7065) asks the probe
//! to test: the shared syntax of [`IceUri`], with the query read as the transport.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::ice_uri::IceUri;

/// How the probe talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A parsed ICE server URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    /// The URI as given.
    pub raw: String,
    /// `stun:`/`stuns:` (Binding only) or `turn:`/`turns:` (Binding, then a relay test).
    pub turn: bool,
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

impl fmt::Display for IceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl IceUrl {
    /// Parses `scheme:host[:port][?transport=udp|tcp]` ([`IceUri`]). Default ports: 3478,
    /// 5349 for the secure schemes. `turn:` without a transport means UDP; `turns:` means
    /// TLS over TCP.
    pub fn parse(raw: &str) -> Result<IceUrl, String> {
        let uri = IceUri::parse(raw)?;
        let raw = uri.raw.as_str();
        let bad = |why: &str| format!("`{raw}`: {why}");
        let mut transport = None;
        if let Some(query) = &uri.query {
            if !uri.turn {
                return Err(bad("stun: URIs take no query (RFC 7064)"));
            }
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("transport", "udp")) => transport = Some(Transport::Udp),
                    Some(("transport", "tcp")) => transport = Some(Transport::Tcp),
                    Some(("transport", other)) => {
                        return Err(bad(&format!(
                            "unknown transport `{other}` (expected udp or tcp)"
                        )))
                    }
                    _ => return Err(bad(&format!("unknown parameter `{pair}`"))),
                }
            }
        }
        let transport = match (uri.secure, transport) {
            (false, None) => Transport::Udp,
            (false, Some(t)) => t,
            (true, None | Some(Transport::Tcp)) => Transport::Tls,
            (true, Some(_)) => return Err(bad("DTLS (turns: over udp) is not supported")),
        };
        Ok(IceUrl {
            port: uri.port_or_default(),
            raw: uri.raw,
            turn: uri.turn,
            host: uri.host,
            transport,
        })
    }

    /// `host:port` as written in the URI (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the host with the system resolver; the first address wins.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let mut addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        addrs
            .next()
            .ok_or_else(|| format!("cannot resolve {}: no addresses", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes_ports_and_transports() {
        let u = IceUrl::parse("stun:stun.example.com").unwrap();
        assert_eq!((u.turn, u.port, u.transport), (false, 3478, Transport::Udp));
        let u = IceUrl::parse("turn:1.2.3.4:3479?transport=tcp").unwrap();
        assert_eq!(
            (u.turn, u.host.as_str(), u.port, u.transport),
            (true, "1.2.3.4", 3479, Transport::Tcp)
        );
        let u = IceUrl::parse("turn:h").unwrap();
        assert_eq!(u.transport, Transport::Udp);
        let u = IceUrl::parse("turns:h").unwrap();
        assert_eq!((u.port, u.transport), (5349, Transport::Tls));
        let u = IceUrl::parse("turns:h:443?transport=tcp").unwrap();
        assert_eq!((u.port, u.transport), (443, Transport::Tls));
        let u = IceUrl::parse("turn:[::1]:5000?transport=udp").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5000));
        assert_eq!(u.authority(), "[::1]:5000");
        let u = IceUrl::parse("stun:[2001:db8::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 3478));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "http://x",
            "turn://x",
            "turn:",
            "turn:x:0",
            "turn:x:99999",
            "turn:x?transport=sctp",
            "turns:x?transport=udp",
            "stun:x?transport=udp",
            "turn:::1",
            "turn:[::1",
            "turn:[x]:1",
            "turn:x?foo=bar",
        ] {
            assert!(IceUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
