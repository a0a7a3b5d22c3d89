//! `stun:`, `stuns:`, `turn:` and `turns:` URIs (RFC 7064, RFC 7065).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

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
    /// Parses `scheme:host[:port][?transport=udp|tcp]`. Default ports: 3478, 5349 for the
    /// secure schemes. `turn:` without a transport means UDP; `turns:` means TLS over TCP.
    pub fn parse(raw: &str) -> Result<IceUrl, String> {
        let raw = raw.trim();
        let bad = |why: &str| format!("`{raw}`: {why}");
        let (scheme, rest) = raw
            .split_once(':')
            .ok_or_else(|| bad("expected stun:, stuns:, turn: or turns:"))?;
        let (turn, secure) = match scheme.to_ascii_lowercase().as_str() {
            "stun" => (false, false),
            "stuns" => (false, true),
            "turn" => (true, false),
            "turns" => (true, true),
            _ => return Err(bad("expected stun:, stuns:, turn: or turns:")),
        };
        if rest.starts_with("//") {
            return Err(bad("no `//` after the scheme (e.g. turn:host:3478)"));
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let mut transport = None;
        if let Some(query) = query {
            if !turn {
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
        let transport = match (secure, transport) {
            (false, None) => Transport::Udp,
            (false, Some(t)) => t,
            (true, None | Some(Transport::Tcp)) => Transport::Tls,
            (true, Some(_)) => return Err(bad("DTLS (turns: over udp) is not supported")),
        };
        let default_port = if secure { 5349 } else { 3478 };
        let (host, port) = split_host_port(authority).map_err(|why| bad(&why))?;
        Ok(IceUrl {
            raw: raw.to_owned(),
            turn,
            host,
            port: port.unwrap_or(default_port),
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

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("bad port `{s}`"))
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in the host".to_owned())?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => {
                Some(port(p.strip_prefix(':').ok_or_else(|| {
                    format!("unexpected `{p}` after the host")
                })?)?)
            }
        };
        return Ok((host.to_owned(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, p)) => (host, Some(port(p)?)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if host.contains(':') {
        return Err("IPv6 addresses must be in brackets".to_owned());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/@#".contains(c))
    {
        return Err(format!("bad host `{host}`"));
    }
    Ok((host.to_owned(), port))
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
