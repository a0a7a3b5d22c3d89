//! `GET /api/v1/credentials` (draft-uberti-behave-turn-rest §2) and `GET /api/v1/ice`
//! (an `RTCConfiguration.iceServers` list).

use crate::unix_now;
use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::{ApiContext, ApiError, AppState};
use crate::config::Config;
use crate::proto::auth::mint_rest_credential;

/// Longest user name accepted, in characters.
const MAX_USERNAME_CHARS: usize = 128;

/// The query string as name/value pairs, in order.
type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// draft-uberti-behave-turn-rest §2.2 response.
#[derive(Debug, Serialize)]
struct Credential {
    username: String,
    password: String,
    ttl: u64,
    uris: Vec<String>,
}

pub(super) async fn credentials(
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(query)?;
    match params.get("service")? {
        None | Some("turn") => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "parameter `service` must be \"turn\"",
            ))
        }
    }
    Ok(no_store(Json(issue(&state.ctx, &params)?)))
}

pub(super) async fn ice(
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(query)?;
    let credential = issue(&state.ctx, &params)?;
    let (stun, turn): (Vec<&String>, Vec<&String>) = credential
        .uris
        .iter()
        // The scheme is case-insensitive (RFC 7064/7065): one parser decides.
        .partition(|uri| crate::ice_uri::IceUri::parse(uri).is_ok_and(|u| !u.turn));
    let mut servers = Vec::new();
    if !stun.is_empty() {
        servers.push(serde_json::json!({ "urls": stun }));
    }
    if !turn.is_empty() {
        servers.push(serde_json::json!({
            "urls": turn,
            "username": credential.username,
            "credential": credential.password,
        }));
    }
    let body = serde_json::json!({ "iceServers": servers, "ttl": credential.ttl });
    Ok(no_store(Json(body)))
}

/// Credentials must not sit in a shared cache.
fn no_store(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Mints a credential for the `username` and `ttl` parameters with the first secret.
fn issue(ctx: &ApiContext, params: &Params) -> Result<Credential, ApiError> {
    let config = ctx.config();
    let user = params
        .get("username")?
        .ok_or_else(|| ApiError::bad_request("missing parameter `username`"))?;
    check_username(user, config.auth.separator)?;
    let ttl = match params.get("ttl")? {
        None => config.auth.credential_ttl_secs.get().as_secs(),
        Some(ttl) => ttl.parse::<u64>().ok().filter(|&t| t > 0).ok_or_else(|| {
            ApiError::bad_request("parameter `ttl` must be a positive integer (seconds)")
        })?,
    }
    .min(config.api.max_ttl_secs.get().as_secs());
    let secret = config.auth.secrets.first().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no auth secret configured (auth.secrets)",
        )
    })?;
    let (username, password) = mint_rest_credential(
        secret.expose(),
        user,
        config.auth.separator,
        unix_now(),
        ttl,
    );
    let uris = if config.api.uris.is_empty() {
        default_uris(&config, &ctx.udp, &ctx.tls, &ctx.relay_ips)
    } else {
        config.api.uris.clone()
    };
    Ok(Credential {
        username,
        password,
        ttl,
        uris,
    })
}

/// 1 to 128 characters, no control characters, and not the separator (which would make
/// the username ambiguous for servers that accept both `expiry:user` and `user:expiry`).
fn check_username(user: &str, separator: char) -> Result<(), ApiError> {
    let chars = user.chars().count();
    if chars == 0 || chars > MAX_USERNAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "parameter `username` must be 1 to {MAX_USERNAME_CHARS} characters"
        )));
    }
    if user.contains(separator) {
        return Err(ApiError::bad_request(format!(
            "parameter `username` must not contain the separator `{separator}`"
        )));
    }
    if user.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "parameter `username` must not contain control characters",
        ));
    }
    Ok(())
}

/// The URIs clients should use when `api.uris` is not set: `stun:` and `turn:` (UDP and
/// TCP, which share `server.listen`) on every listening port, `turns:` on every TLS port
/// (`udp` and `tls` are the bound addresses, so port 0 shows as the real port), all at one
/// host: the public address `relay.external_ip_map` gives the first relay IP, else the
/// external IP, else the first relay IP, else the first listening IP.
pub fn default_uris(
    config: &Config,
    udp: &[SocketAddr],
    tls: &[SocketAddr],
    relay_ips: &[IpAddr],
) -> Vec<String> {
    let mapped = relay_ips.first().and_then(|relay| {
        config
            .relay
            .external_ip_map
            .iter()
            .find(|(private, _)| private == relay)
            .map(|&(_, public)| public)
    });
    let host = mapped
        .or(config.relay.external_ip)
        .or_else(|| relay_ips.first().copied())
        .or_else(|| udp.first().map(SocketAddr::ip));
    let Some(host) = host else {
        return Vec::new();
    };
    let ports = |addrs: &[SocketAddr]| {
        let mut ports: Vec<u16> = Vec::new();
        for addr in addrs {
            if !ports.contains(&addr.port()) {
                ports.push(addr.port());
            }
        }
        ports
    };
    let mut uris = Vec::new();
    for port in ports(udp) {
        // SocketAddr's Display puts IPv6 addresses in brackets, as URIs need.
        let at = SocketAddr::new(host, port);
        uris.push(format!("stun:{at}"));
        uris.push(format!("turn:{at}?transport=udp"));
        uris.push(format!("turn:{at}?transport=tcp"));
    }
    for port in ports(tls) {
        uris.push(format!(
            "turns:{}?transport=tcp",
            SocketAddr::new(host, port)
        ));
    }
    uris
}

/// Query parameters; each may be given at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(query: RawQuery) -> Result<Self, ApiError> {
        query.map(|Query(pairs)| Params(pairs)).map_err(|e| {
            ApiError::bad_request(format!("malformed query string: {}", e.body_text()))
        })
    }

    fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "parameter `{name}` given more than once"
            )));
        }
        Ok(first)
    }
}
