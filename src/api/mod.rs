//! The HTTP management plane: REST credentials, `iceServers`, Prometheus metrics, health
//! checks, draining, and live sessions with revocations (DESIGN "Management plane").
//!
//! It runs on its own small tokio runtime and thread, on a listener it is handed (hickory's
//! `prometheus_server.rs`, STYLE §6), and reads the workers only through
//! [`Telemetry`](crate::telemetry::Telemetry) snapshots: nothing here touches the packet path.
//! Its connections are capped and timed out ([`serve`]), so it cannot take the file
//! descriptors the packet path needs.
//!
//! Access rules, checked on every request except `/healthz`, `/readyz` and CORS preflights:
//! * tokens configured → a matching `Authorization: Bearer` token is required (401 without
//!   one, 403 with a wrong one), compared in constant time;
//! * no tokens and a loopback listener → open;
//! * no tokens and any other listener → 503: exposing credential minting to the network
//!   without a token is refused rather than served.

mod credentials;
mod drain;
mod metrics;
mod serve;
mod sessions;
mod signal;
mod testpage;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::telemetry::Telemetry;

pub use credentials::default_uris;
pub use metrics::render as render_metrics;

/// What the API reads: the live configuration and the workers' telemetry.
pub struct ApiContext {
    /// Replaced on reload (SIGHUP): secrets, tokens, ttl, uris, cors origins.
    pub config: RwLock<Arc<Config>>,
    pub telemetry: Arc<Telemetry>,
    /// The daemon's bound UDP listening addresses (real ports), to derive default URIs.
    pub udp: Vec<SocketAddr>,
    /// The daemon's bound TLS listening addresses (real ports), for default `turns:` URIs.
    pub tls: Vec<SocketAddr>,
    pub relay_ips: Vec<IpAddr>,
    /// Drain control of the running server; `None` where the API runs without one (tests).
    pub drain: Option<Arc<crate::Control>>,
}

impl ApiContext {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A worker that has not published for this long makes `/healthz` fail. Workers publish
/// several times a second, so this is many missed reports, not one slow one.
const HEALTH_MAX_AGE: Duration = Duration::from_secs(2);
/// A revocation is a username and a time: a few hundred bytes at most.
const REVOCATION_BODY_LIMIT: usize = 4 * 1024;

/// Serves the API on an already-bound listener until `shutdown` becomes true (or its sender
/// is dropped). Runs its own current-thread tokio runtime on a dedicated thread.
pub fn spawn(
    listener: std::net::TcpListener,
    ctx: Arc<ApiContext>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    let loopback = is_loopback(listener.local_addr()?.ip());
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let bounds = serve::Bounds::from_config(&ctx.config());
    let app = app(ctx, loopback);
    std::thread::Builder::new()
        .name("turnpike-api".to_owned())
        .spawn(move || runtime.block_on(serve::run(listener, app, bounds, shutdown)))
}

/// 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[derive(Clone)]
struct AppState {
    ctx: Arc<ApiContext>,
    /// Whether the listener is reachable from this host only.
    loopback: bool,
    /// The demo call's signaling rooms (only used with `api.test_page`).
    rooms: Arc<signal::Rooms>,
}

fn app(ctx: Arc<ApiContext>, loopback: bool) -> Router {
    app_with(ctx, loopback, signal::Limits::default())
}

fn app_with(ctx: Arc<ApiContext>, loopback: bool, limits: signal::Limits) -> Router {
    let request_timeout = ctx.config().api.request_timeout_secs.get();
    let rooms = Arc::new(signal::Rooms::new(limits));
    let state = AppState {
        ctx,
        loopback,
        rooms,
    };
    let guarded = Router::new()
        .route("/api/v1/credentials", get(credentials::credentials))
        .route("/api/v1/ice", get(credentials::ice))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/rooms", post(signal::create_room))
        .route(
            "/api/v1/drain",
            get(drain::status).post(drain::start).delete(drain::stop),
        )
        .route("/api/v1/sessions", get(sessions::list))
        .route("/api/v1/sessions/{id}", delete(sessions::kick))
        .route(
            "/api/v1/revocations",
            get(sessions::revocations)
                .post(sessions::revoke)
                .layer(axum::extract::DefaultBodyLimit::max(REVOCATION_BODY_LIMIT)),
        )
        .route("/api/v1/revocations/{username}", delete(sessions::unrevoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let routes = Router::new()
        .merge(guarded)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/test", get(testpage::page))
        .route("/test/testpage.js", get(testpage::script))
        .route("/test/call", get(testpage::call_page))
        .route("/test/testcall.js", get(testpage::call_script))
        // Token checked by the handler: browsers cannot set headers on a WebSocket, so it
        // also takes `?token=`.
        .route("/api/v1/signal/{room}", get(signal::signal))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(state.clone());
    // As the fallback of an empty router, `routes` is one service that the CORS layer
    // wraps as a whole, so preflights are answered before any routing.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn_with_state(state, cors))
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
}

/// 408 for a request not handled, its body read included, within `api.request_timeout_secs`
/// (a client trickling a body would otherwise hold its connection and slot).
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request not completed within {} s (api.request_timeout_secs)",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// A 4xx or 5xx answer with body `{"error": "<reason>"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    reason: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_request(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.reason }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The running server's control, or 503 with `unavailable` where the API runs without one.
fn control<'a>(state: &'a AppState, unavailable: &str) -> Result<&'a crate::Control, ApiError> {
    state
        .ctx
        .drain
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, unavailable))
}

/// 403 for a state-changing request from a web page (it carries `Origin`): a POST needs no
/// CORS preflight, so a page in a browser on the API's host could otherwise send one to a
/// loopback API without tokens. Tools send no `Origin`.
fn refuse_web_pages(headers: &HeaderMap, refused: &str) -> Result<(), ApiError> {
    if headers.contains_key(header::ORIGIN) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{refused} (the request carries Origin)"),
        ));
    }
    Ok(())
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check_token(&state.ctx.config(), state.loopback, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check_token(config: &Config, loopback: bool, headers: &HeaderMap) -> Result<(), ApiError> {
    check_token_value(config, loopback, bearer_token(headers))
}

/// [`check_token`] for a token from anywhere (a header, or `?token=` for WebSockets).
fn check_token_value(config: &Config, loopback: bool, given: Option<&str>) -> Result<(), ApiError> {
    if config.api.tokens.is_empty() {
        return if loopback {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api.tokens must be set when api.listen is not loopback",
            ))
        };
    }
    let Some(given) = given.filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
        ));
    };
    // Hashing first makes the comparison independent of the tokens' lengths too; every
    // token is compared so the time does not tell which one matched.
    let given = Sha256::digest(given.as_bytes());
    let matched = config
        .api
        .tokens
        .iter()
        .fold(subtle::Choice::from(0), |found, token| {
            found | Sha256::digest(token.expose().as_bytes()).ct_eq(&given)
        });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "invalid bearer token"))
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// CORS for the origins in `api.cors_origins`: allowed origins get
/// `Access-Control-Allow-Origin` on every response and their preflights a 204; preflights
/// from any other origin get 403 and no CORS headers. Preflights need no token (browsers
/// never send one with them).
async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().is_some_and(|origin| {
        let origin = origin.to_str().unwrap_or_default();
        state
            .ctx
            .config()
            .api
            .cors_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    });
    let preflight = request.method() == Method::OPTIONS
        && origin.is_some()
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        if !allowed {
            return ApiError::new(StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        next.run(request).await
    };
    if let (true, Some(origin)) = (allowed, origin) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state
        .ctx
        .telemetry
        .all_workers_alive(Instant::now(), HEALTH_MAX_AGE)
    {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: a worker has stopped reporting",
        )
    }
}

/// `/healthz`, and also 503 while draining: a load balancer or Kubernetes readiness probe
/// then stops sending new clients here, while the allocations in place keep relaying.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let (status, text) = healthz(State(state.clone())).await;
    if status != StatusCode::OK {
        return (status, text.to_owned());
    }
    match state.ctx.drain.as_deref().map(crate::Control::drain_status) {
        Some(drain) if drain.draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("draining, allocations left: {}", drain.allocations),
        ),
        _ => (StatusCode::OK, "ok".to_owned()),
    }
}

#[cfg(test)]
mod tests;
