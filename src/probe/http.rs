//! An HTTP client (ureq; plain, or over TLS for `https:`) for turnpike's own API:
//! `--credentials-url` fetches `/api/v1/ice` (or `/api/v1/credentials`) for the URIs and
//! credential; `turnpike drain` calls `/api/v1/drain`.

use std::sync::Arc;
use std::time::Duration;

use ureq::http::Uri;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

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
    let (status, body) = request_url(url, user)
        .and_then(|target| exchange("GET", target, token, None, timeout, tls_options))
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
    send(method, base, path, token, None, timeout, tls_options)
}

/// [`request`] with a JSON body for a `POST`.
pub fn send(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&serde_json::Value>,
    timeout: Duration,
    tls_options: &TlsOptions,
) -> Result<(u16, String), String> {
    let bad = |why: &str| format!("API URL `{base}`: {why}");
    split_url(base)
        .and_then(|(scheme, authority, _)| {
            Uri::builder()
                .scheme(scheme.as_str())
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|e| e.to_string())
        })
        .and_then(|target| exchange(method, target, token, json, timeout, tls_options))
        .map_err(|why| bad(&why))
}

/// Sends `method target` (with `json` as the body of a POST) and reads the answer, whatever its status. `timeout`
/// bounds the connection set-up and each read and write. Redirects are not followed (the
/// token would go with them).
fn exchange(
    method: &str,
    target: Uri,
    token: Option<&str>,
    json: Option<&serde_json::Value>,
    timeout: Duration,
    tls_options: &TlsOptions,
) -> Result<(u16, String), String> {
    let https = target.scheme_str() == Some("https");
    let server = match target.authority() {
        Some(a) if a.port().is_some() => a.to_string(),
        Some(a) => format!("{}:{}", a.host(), if https { 443 } else { 80 }),
        None => target.to_string(),
    };
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .user_agent("turnpike")
        .accept("application/json");
    if https {
        config = config.tls_config(tls_config(tls_options)?);
    }
    let agent = ureq::Agent::new_with_config(config.build());
    let auth = token.map(|token| format!("Bearer {token}"));
    let response = match method {
        "GET" => with_auth(agent.get(target), auth).call(),
        "DELETE" => with_auth(agent.delete(target), auth).call(),
        "POST" => match json {
            Some(json) => with_auth(agent.post(target), auth)
                .content_type("application/json")
                .send(json.to_string()),
            None => with_auth(agent.post(target), auth).send_empty(),
        },
        other => return Err(format!("unsupported method {other}")),
    };
    let describe = |e: ureq::Error| describe_error(e, &server, timeout);
    let mut response = response.map_err(describe)?;
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_string()
        .map_err(describe)?;
    Ok((response.status().as_u16(), body))
}

fn with_auth<B>(request: ureq::RequestBuilder<B>, auth: Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(value) => request.header("Authorization", value),
        None => request,
    }
}

/// An `http://` or `https://` URL with its scheme and authority, checked: a host, a port in
/// 1..=65535 if given, no user info.
fn split_url(raw: &str) -> Result<(String, String, Uri), String> {
    let uri: Uri = raw.trim().parse().map_err(|e| format!("not a URL ({e})"))?;
    let (Some(scheme @ ("http" | "https")), Some(authority)) = (uri.scheme_str(), uri.authority())
    else {
        return Err("expected http:// or https://".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err("no user name or password in the URL (use --api-token)".to_owned());
    }
    if authority.host().is_empty() {
        return Err("no host".to_owned());
    }
    // With no user info, what follows the host is empty or `:port`.
    let port = authority.as_str()[authority.host().len()..].strip_prefix(':');
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err("bad port".to_owned());
    }
    let (scheme, authority) = (scheme.to_owned(), authority.as_str().to_owned());
    Ok((scheme, authority, uri))
}

/// The URL to GET: `/api/v1/ice` for an empty path, `username=<user>` added when the query
/// has none.
fn request_url(raw: &str, user: &str) -> Result<Uri, String> {
    let (scheme, authority, uri) = split_url(raw)?;
    let mut target = match uri.path() {
        "" | "/" => "/api/v1/ice".to_owned(),
        path => path.to_owned(),
    };
    let query = uri.query().filter(|q| !q.is_empty());
    let mut params: Vec<String> = query.into_iter().map(str::to_owned).collect();
    if !query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(n, _)| n == "username")) {
        params.push(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("username", user)
                .finish(),
        );
    }
    target.push('?');
    target.push_str(&params.join("&"));
    Uri::builder()
        .scheme(scheme.as_str())
        .authority(authority)
        .path_and_query(target)
        .build()
        .map_err(|e| e.to_string())
}

/// The probe's trust settings (`--ca-file`, `--insecure`, the system's CA bundle) for ureq,
/// on the same ring provider as the `turns:` connections.
pub(crate) fn tls_config(options: &TlsOptions) -> Result<TlsConfig, String> {
    let builder = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()));
    let builder = if options.insecure {
        builder.disable_verification(true)
    } else {
        let roots = tls::root_certificates(options)?;
        builder.root_certs(RootCerts::from(
            roots
                .iter()
                .map(|der| Certificate::from_der(der).to_owned()),
        ))
    };
    Ok(builder.build())
}

fn describe_error(e: ureq::Error, server: &str, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => super::conn::timeout_reason(server, timeout),
        ureq::Error::Io(e) => super::conn::describe_io(&e, server, timeout),
        ureq::Error::HostNotFound => format!("cannot resolve {server}"),
        ureq::Error::BodyExceedsLimit(limit) => format!("response larger than {limit} bytes"),
        ureq::Error::Rustls(e) => format!("TLS: {e}"),
        e => e.to_string(),
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

    /// A one-certificate HTTPS server on loopback answering `connections` requests with an
    /// `/api/v1/ice` body; its certificate (PEM) is returned with the address.
    fn https_server(connections: usize) -> (std::net::SocketAddr, String) {
        use std::io::{Read, Write};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (tcp, _) = listener.accept().unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                // A client that refuses the certificate ends the handshake: next connection.
                while !request.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => request.push(byte[0]),
                        _ => break,
                    }
                }
                if !request.ends_with(b"\r\n\r\n") {
                    continue;
                }
                let body =
                    r#"{"iceServers":[{"urls":["turn:h"],"username":"u","credential":"p"}]}"#;
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        (addr, cert.pem())
    }

    #[test]
    fn fetches_over_https_trusting_the_ca_file_or_insecure() {
        let (addr, pem) = https_server(3);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, pem).unwrap();
        let url = format!("https://{addr}");
        let timeout = Duration::from_secs(5);
        let trusting = TlsOptions {
            insecure: false,
            ca_file: Some(ca_file),
        };
        let ice = fetch(&url, "a", None, timeout, &trusting).unwrap();
        assert_eq!(ice.urls, ["turn:h"]);
        assert_eq!(ice.credential.as_deref(), Some("p"));

        // Another CA: the server's certificate is refused.
        let other = rcgen::CertificateParams::new(["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let other_file = dir.path().join("other.pem");
        std::fs::write(&other_file, other.pem()).unwrap();
        let distrusting = TlsOptions {
            insecure: false,
            ca_file: Some(other_file),
        };
        let e = fetch(&url, "a", None, timeout, &distrusting).unwrap_err();
        assert!(e.contains("certificate"), "{e}");

        let insecure = TlsOptions {
            insecure: true,
            ca_file: None,
        };
        assert_eq!(fetch(&url, "a", None, timeout, &insecure).unwrap(), ice);
    }

    #[test]
    fn builds_the_request_url() {
        let url = |raw| request_url(raw, "a b/c").map(|u| u.to_string());
        assert_eq!(
            url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/api/v1/ice?username=a+b%2Fc"
        );
        assert_eq!(
            url("https://h/api/v1/credentials?ttl=60").unwrap(),
            "https://h/api/v1/credentials?ttl=60&username=a+b%2Fc"
        );
        assert_eq!(
            url("http://[::1]:9/x?username=bob").unwrap(),
            "http://[::1]:9/x?username=bob"
        );
        for bad in [
            "ftp://h",
            "http://",
            "http://:80",
            "http://h:99999",
            "http://h:0",
            "http://h:",
            "h:80",
            "http://u:p@h",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }
}
