//! The syntax of `stun:`, `stuns:`, `turn:` and `turns:` URIs (RFC 7064, RFC 7065), shared
//! by the configuration (`api.uris`, handed to browsers as written) and the probe (which
//! also interprets the query, see `probe::url`).

/// A URI split into its parts; `raw` keeps it as written (trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUri {
    pub raw: String,
    /// `turn:`/`turns:` rather than `stun:`/`stuns:`.
    pub turn: bool,
    /// `stuns:`/`turns:` (over TLS).
    pub secure: bool,
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: Option<u16>,
    /// What follows `?`, not yet interpreted.
    pub query: Option<String>,
}

impl IceUri {
    /// Parses `scheme:host[:port][?query]`: a known scheme (any case), no `//`, a host
    /// (IPv6 in brackets), a port in 1..=65535 if given, no white space anywhere.
    pub fn parse(raw: &str) -> Result<IceUri, String> {
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
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("white space in the URI"));
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q.to_owned())),
            None => (rest, None),
        };
        let (host, port) = split_host_port(authority).map_err(|why| bad(&why))?;
        Ok(IceUri {
            raw: raw.to_owned(),
            turn,
            secure,
            host,
            port,
            query,
        })
    }

    /// The port, or the scheme's default: 3478, or 5349 for `stuns:`/`turns:`.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.secure { 5349 } else { 3478 })
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
    if host.contains(['/', '@', '#']) {
        return Err(format!("bad host `{host}`"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_scheme_host_port_and_query() {
        let u = IceUri::parse(" TURNS:[2001:db8::1]:443?transport=tcp ").unwrap();
        assert_eq!(u.raw, "TURNS:[2001:db8::1]:443?transport=tcp");
        assert!(u.turn && u.secure);
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", Some(443)));
        assert_eq!(u.query.as_deref(), Some("transport=tcp"));
        let u = IceUri::parse("stun:stun.example.com").unwrap();
        assert!(!u.turn && !u.secure);
        assert_eq!((u.port, u.port_or_default(), u.query), (None, 3478, None));
        assert_eq!(IceUri::parse("stuns:h").unwrap().port_or_default(), 5349);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "http://x",
            "turn://x",
            "turn:/x",
            "turn:",
            "turn:x:0",
            "turn:x:99999",
            "turn:x:",
            "turn:::1",
            "turn:[::1",
            "turn:[x]:1",
            "turn:[::1]x",
            "turn:u@x",
            "turn:x y",
            "turn:x?transport=u\tdp",
        ] {
            assert!(IceUri::parse(bad).is_err(), "{bad}");
        }
    }
}
