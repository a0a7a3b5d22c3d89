//! A minimal HTTP/1.0 client (plain, or over TLS for `https:`) for turnpike's own API:
//! `--credentials-url` fetches `/api/v1/ice` (or `/api/v1/credentials`) for the URIs and
//! credential; `turnpike drain` calls `/api/v1/drain`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::tls::{self, TlsOptions};

/// The largest response body read.
const MAX_RESPONSE: u64 = 1 << 20;

/// What the endpoint handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceConfig {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// Fetches `url`. A URL without a path asks for `/api/v1/ice`; without a `username`
/// parameter it asks for one named `user`.
pub fn fetch(
    url: &str,
    user: &str,
    token: Option<&str>,
    timeout: Duration,
    tls_options: &TlsOptions,
) -> Result<IceConfig, String> {
    let bad = |why: &str| format!("credentials URL `{url}`: {why}");
    let target = Target::parse(url).map_err(|why| bad(&why))?;
    let path = if target.path.is_empty() || target.path == "/" {
        "/api/v1/ice"
    } else {
        target.path
    };
    let query = target.query;
    let has_user = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("username=")));
    let mut path_and_query = path.to_owned();
    let mut params: Vec<String> = query
        .into_iter()
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
        .collect();
    if !has_user {
        params.push(format!("username={}", percent_encode(user)));
    }
    if !params.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&params.join("&"));
    }
    let (status, body) = target
        .exchange("GET", &path_and_query, token, timeout, tls_options)
        .map_err(|why| bad(&why))?;
    if status != 200 {
        let body: String = body.trim().chars().take(200).collect();
        return Err(bad(&format!("HTTP {status}: {body}")));
    }
    parse_ice(&body).map_err(|why| bad(&why))
}

/// One bodiless request (`GET`, `POST`, `DELETE`) to `base` (`http://HOST:PORT` or
/// `https://...`; any path in it is replaced by `path`). Returns the status and the body.
pub fn request(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
    tls_options: &TlsOptions,
) -> Result<(u16, String), String> {
    let bad = |why: &str| format!("API URL `{base}`: {why}");
    Target::parse(base)
        .and_then(|t| t.exchange(method, path, token, timeout, tls_options))
        .map_err(|why| bad(&why))
}

/// An `http://` or `https://` URL taken apart.
struct Target<'a> {
    secure: bool,
    /// `host[:port]` as written, for the Host header.
    authority: &'a str,
    /// The host without brackets.
    host: &'a str,
    port: u16,
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn parse(url: &'a str) -> Result<Target<'a>, String> {
        let (secure, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err("expected http:// or https://".to_owned());
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let default_port = if secure { 443 } else { 80 };
        let bad_port = || "bad port".to_owned();
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or("unclosed `[`")?;
            match after.strip_prefix(':') {
                Some(p) => (host, p.parse::<u16>().map_err(|_| bad_port())?),
                None if after.is_empty() => (host, default_port),
                None => return Err("bad host".to_owned()),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad_port())?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err("no host".to_owned());
        }
        Ok(Target {
            secure,
            authority,
            host,
            port,
            path,
            query,
        })
    }

    /// Sends `METHOD path_and_query` over HTTP/1.0 and reads the whole answer.
    fn exchange(
        &self,
        method: &str,
        path_and_query: &str,
        token: Option<&str>,
        timeout: Duration,
        tls_options: &TlsOptions,
    ) -> Result<(u16, String), String> {
        let host = self.host;
        let addr = (host, self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {host}"))?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| super::conn::describe_io(&e, addr, timeout))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let authority = self.authority;
        let mut request = format!(
            "{method} {path_and_query} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\
             User-Agent: turnpike\r\nContent-Length: 0\r\n"
        );
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let mut response = Vec::new();
        let io = |e: std::io::Error| super::conn::describe_io(&e, addr, timeout);
        if self.secure {
            let config = tls::client_config(tls_options)?;
            let name = tls::server_name(host)?;
            let conn = rustls::ClientConnection::new(Arc::clone(&config), name)
                .map_err(|e| format!("TLS: {e}"))?;
            let mut tls = rustls::StreamOwned::new(conn, stream);
            tls.write_all(request.as_bytes()).map_err(io)?;
            read_all(&mut tls, &mut response).map_err(io)?;
        } else {
            stream.write_all(request.as_bytes()).map_err(io)?;
            read_all(&mut stream, &mut response).map_err(io)?;
        }
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("malformed HTTP response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or("malformed HTTP status line")?;
        Ok((status, body.to_owned()))
    }
}

/// Reads until the server closes; a TLS peer that closes without close_notify is accepted
/// once the body is in.
fn read_all(stream: &mut impl Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    match stream.take(MAX_RESPONSE).read_to_end(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}

/// `{"iceServers":[{"urls":..,"username":..,"credential":..}]}` or the
/// `{"username","password","uris"}` shape of `/api/v1/credentials`.
pub fn parse_ice(body: &str) -> Result<IceConfig, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("response is not JSON: {e}"))?;
    let text =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).map(str::to_owned);
    let mut config = IceConfig::default();
    if let Some(servers) = value.get("iceServers").and_then(|s| s.as_array()) {
        for server in servers {
            match server.get("urls") {
                Some(serde_json::Value::String(url)) => config.urls.push(url.clone()),
                Some(serde_json::Value::Array(urls)) => config
                    .urls
                    .extend(urls.iter().filter_map(|u| u.as_str()).map(str::to_owned)),
                _ => {}
            }
            if config.username.is_none() {
                config.username = text(server, "username");
                config.credential = text(server, "credential");
            }
        }
    } else if let Some(uris) = value.get("uris").and_then(|u| u.as_array()) {
        config
            .urls
            .extend(uris.iter().filter_map(|u| u.as_str()).map(str::to_owned));
        config.username = text(&value, "username");
        config.credential = text(&value, "password");
    } else {
        return Err("response has neither `iceServers` nor `uris`".to_owned());
    }
    Ok(config)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ice_and_credentials_shapes() {
        let ice = parse_ice(
            r#"{"iceServers":[{"urls":["stun:h:1"]},{"urls":["turn:h:1?transport=udp"],"username":"u","credential":"p"}],"ttl":5}"#,
        )
        .unwrap();
        assert_eq!(ice.urls, ["stun:h:1", "turn:h:1?transport=udp"]);
        assert_eq!(ice.username.as_deref(), Some("u"));
        assert_eq!(ice.credential.as_deref(), Some("p"));
        let creds =
            parse_ice(r#"{"username":"u","password":"p","ttl":1,"uris":["turn:x"]}"#).unwrap();
        assert_eq!(creds.urls, ["turn:x"]);
        assert_eq!(creds.credential.as_deref(), Some("p"));
        assert!(parse_ice("{}").is_err());
        assert!(parse_ice("nope").is_err());
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
