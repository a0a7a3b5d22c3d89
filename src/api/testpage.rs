//! The ICE test page (`api.test_page`, off by default): `GET /test` and its script, embedded
//! in the binary. The page fetches `/api/v1/ice?username=testpage` (under the API's usual
//! token rule; a token can be given as `/test#token=...`) and gathers candidates per server
//! URL in the browser. Disabled, both paths answer 404 like any unknown path.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

const PAGE: &str = include_str!("assets/testpage.html");
const SCRIPT: &str = include_str!("assets/testpage.js");
const CALL_PAGE: &str = include_str!("assets/testcall.html");
const CALL_SCRIPT: &str = include_str!("assets/testcall.js");

/// Only our own script, no inline code, no other origins; fetches and the signaling
/// WebSocket go to this origin; the call page shows local media streams (`media-src blob:`
/// is not needed for `srcObject`).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                   connect-src 'self'; media-src 'self'; base-uri 'none'; \
                   frame-ancestors 'none'";

pub(super) async fn page(State(state): State<AppState>) -> Response {
    asset(&state, PAGE, "text/html; charset=utf-8")
}

pub(super) async fn script(State(state): State<AppState>) -> Response {
    asset(&state, SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /test/call`: the demo call (two browsers, one room; see `signal.rs`).
pub(super) async fn call_page(State(state): State<AppState>) -> Response {
    asset(&state, CALL_PAGE, "text/html; charset=utf-8")
}

pub(super) async fn call_script(State(state): State<AppState>) -> Response {
    asset(&state, CALL_SCRIPT, "text/javascript; charset=utf-8")
}

fn asset(state: &AppState, body: &'static str, content_type: &'static str) -> Response {
    if !state.ctx.config().api.test_page {
        return ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").into_response();
    }
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use crate::api::{spawn, ApiContext};
    use crate::config::Config;
    use crate::telemetry::Telemetry;

    /// `(status, head, body)` of `GET path` from an API with `api.test_page = enabled`.
    fn get_all(enabled: bool, paths: &[&str]) -> Vec<(u16, String, String)> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::default();
        config.api.test_page = enabled;
        let ctx = Arc::new(ApiContext {
            config: RwLock::new(Arc::new(config)),
            telemetry: Arc::new(Telemetry::new(1)),
            udp: vec!["127.0.0.1:3478".parse().unwrap()],
            tls: Vec::new(),
            relay_ips: vec!["127.0.0.1".parse().unwrap()],
            drain: None,
        });
        let (stop, rx) = tokio::sync::watch::channel(false);
        let thread = spawn(listener, ctx, rx).unwrap();
        let replies = paths
            .iter()
            .map(|path| {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
                let mut raw = String::new();
                stream.read_to_string(&mut raw).unwrap();
                let (head, body) = raw.split_once("\r\n\r\n").unwrap();
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                (status, head.to_ascii_lowercase(), body.to_owned())
            })
            .collect();
        stop.send(true).unwrap();
        thread.join().unwrap();
        replies
    }

    #[test]
    fn serves_the_page_only_when_enabled() {
        let on = get_all(true, &["/test", "/test/testpage.js"]);
        let (status, head, body) = &on[0];
        assert_eq!(*status, 200, "{head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(head.contains("content-security-policy: default-src 'none'"));
        assert!(body.contains("<script src=\"/test/testpage.js\"></script>"));
        // Everything is embedded: no other origin is referenced.
        assert!(!body.contains("http://") && !body.contains("https://"));
        let (status, head, script) = &on[1];
        assert_eq!(*status, 200, "{head}");
        assert!(head.contains("content-type: text/javascript"), "{head}");
        assert!(script.contains("/api/v1/ice?username=testpage"));
        assert!(script.contains("RTCPeerConnection"));
        assert!(script.contains("iceTransportPolicy: \"all\""));

        for (status, _, body) in get_all(false, &["/test", "/test/testpage.js"]) {
            assert_eq!(status, 404);
            assert!(body.contains("no such endpoint"), "{body}");
        }
    }
}
