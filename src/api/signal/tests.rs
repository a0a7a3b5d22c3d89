//! The demo call's signaling over real WebSocket connections (tungstenite's blocking client
//! against the API served on a loopback listener).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

use super::Limits;
use crate::api::{app_with, ApiContext};
use crate::config::{Config, Secret};
use crate::telemetry::Telemetry;

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

fn serve(config: Config, limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let ctx = Arc::new(ApiContext {
        config: RwLock::new(Arc::new(config)),
        telemetry: Arc::new(Telemetry::new(1)),
        udp: vec!["127.0.0.1:3478".parse().unwrap()],
        tls: Vec::new(),
        relay_ips: vec!["127.0.0.1".parse().unwrap()],
        drain: None,
    });
    let app = app_with(ctx, true, limits);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            let _ = tokio::time::timeout(Duration::from_secs(5), server.into_future()).await;
        });
    });
    Server {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    }
}

use std::future::IntoFuture;

fn enabled() -> Config {
    let mut config = Config::default();
    config.api.test_page = true;
    config
}

fn with_token(token: &str) -> Config {
    let mut config = enabled();
    config.api.tokens = vec![Secret::new(token.to_owned())];
    config
}

/// `(status, body)` of a plain HTTP/1.0 request.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

fn create_room(addr: SocketAddr, headers: &str) -> String {
    let (status, body) = http(addr, "POST", "/api/v1/rooms", headers);
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let room = v["room"].as_str().unwrap().to_owned();
    assert_eq!(v["link"], format!("/test/call#room={room}"));
    room
}

type Ws = WebSocket<TcpStream>;

/// Opens the signaling socket of `room`; `Err(status)` when the handshake is refused.
fn join(addr: SocketAddr, path: &str) -> Result<Ws, u16> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("ws://{addr}{path}").into_client_request().unwrap();
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

fn text(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The close code the server ends with.
fn close_code(ws: &mut Ws) -> CloseCode {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                let _ = ws.flush(); // our half of the close handshake
                return frame.code;
            }
            Ok(Message::Close(None)) => panic!("closed without a code"),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

#[test]
fn relays_between_the_two_participants_and_rejects_a_third() {
    let server = serve(enabled(), Limits::default());
    let room = create_room(server.addr, "");
    assert_eq!(room.len(), 22, "128 bits in base64url: {room}");
    assert_ne!(room, create_room(server.addr, ""), "ids are random");
    let path = format!("/api/v1/signal/{room}");

    let mut a = join(server.addr, &path).unwrap();
    assert_eq!(text(&mut a)["peers"], 1);
    let mut b = join(server.addr, &path).unwrap();
    assert_eq!(
        text(&mut b),
        serde_json::json!({"type": "joined", "peers": 2})
    );
    assert_eq!(text(&mut a)["type"], "peer-joined");

    // A third participant is refused at the handshake.
    assert_eq!(join(server.addr, &path).err(), Some(409));

    let offer = r#"{"type":"offer","sdp":"v=0..."}"#;
    a.send(Message::text(offer)).unwrap();
    assert_eq!(text(&mut b)["sdp"], "v=0...");
    b.send(Message::text(r#"{"type":"answer","sdp":"v=1"}"#))
        .unwrap();
    b.send(Message::text(
        r#"{"type":"candidate","candidate":{"candidate":"c"}}"#,
    ))
    .unwrap();
    assert_eq!(text(&mut a)["type"], "answer");
    assert_eq!(text(&mut a)["type"], "candidate");

    // Another room does not hear this one.
    let other = create_room(server.addr, "");
    let mut c = join(server.addr, &format!("/api/v1/signal/{other}")).unwrap();
    assert_eq!(text(&mut c)["peers"], 1);
    a.send(Message::text(r#"{"type":"bye"}"#)).unwrap();
    assert_eq!(text(&mut b)["type"], "bye");
    c.get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        c.read().is_err(),
        "room {other} got a message of room {room}"
    );

    // When one leaves, the other is told, and the slot is free again.
    a.close(None).unwrap();
    let _ = a.flush();
    assert_eq!(text(&mut b)["type"], "peer-left");
    drop(a);
    let mut d = join(server.addr, &path).unwrap();
    assert_eq!(text(&mut d)["peers"], 2);
}

#[test]
fn oversize_binary_unknown_and_flooding_messages_close_the_socket() {
    let limits = Limits {
        rate_burst: 5,
        rate_per_sec: 1,
        ..Limits::default()
    };
    let server = serve(enabled(), limits);
    // A room each: a closed participant's slot is freed asynchronously.
    let fresh = || format!("/api/v1/signal/{}", create_room(server.addr, ""));

    let mut a = join(server.addr, &fresh()).unwrap();
    text(&mut a);
    let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(16 * 1024));
    a.send(Message::text(big)).unwrap();
    assert_eq!(close_code(&mut a), CloseCode::Size);

    let mut a = join(server.addr, &fresh()).unwrap();
    text(&mut a);
    a.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(close_code(&mut a), CloseCode::Unsupported);

    let mut a = join(server.addr, &fresh()).unwrap();
    text(&mut a);
    a.send(Message::text(r#"{"type":"subscribe","room":"*"}"#))
        .unwrap();
    assert_eq!(close_code(&mut a), CloseCode::Policy);

    let mut a = join(server.addr, &fresh()).unwrap();
    text(&mut a);
    for _ in 0..10 {
        if a.send(Message::text(r#"{"type":"hello"}"#)).is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut a), CloseCode::Policy, "rate limit");
}

#[test]
fn unknown_rooms_disabled_page_and_tokens() {
    // Disabled page: every endpoint of the call is 404, even with a valid token.
    let server = serve(
        {
            let mut config = with_token("tok");
            config.api.test_page = false;
            config
        },
        Limits::default(),
    );
    let (status, _) = http(
        server.addr,
        "POST",
        "/api/v1/rooms",
        "Authorization: Bearer tok\r\n",
    );
    assert_eq!(status, 404);
    let fake = "AAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(
        join(server.addr, &format!("/api/v1/signal/{fake}?token=tok")).err(),
        Some(404)
    );
    assert_eq!(http(server.addr, "GET", "/test/call", "").0, 404);
    assert_eq!(http(server.addr, "GET", "/test/testcall.js", "").0, 404);
    drop(server);

    let server = serve(with_token("tok"), Limits::default());
    assert_eq!(http(server.addr, "POST", "/api/v1/rooms", "").0, 401);
    let auth = "Authorization: Bearer tok\r\n";
    let room = create_room(server.addr, auth);
    let path = format!("/api/v1/signal/{room}");
    assert_eq!(join(server.addr, &path).err(), Some(401));
    assert_eq!(
        join(server.addr, &format!("{path}?token=wrong")).err(),
        Some(403)
    );
    let mut a = join(server.addr, &format!("{path}?token=tok")).unwrap();
    assert_eq!(text(&mut a)["peers"], 1);
    // Unknown room (valid token): 404, also for malformed ids.
    assert_eq!(
        join(server.addr, &format!("/api/v1/signal/{fake}?token=tok")).err(),
        Some(404)
    );
    assert_eq!(
        join(server.addr, "/api/v1/signal/..%2F..?token=tok").err(),
        Some(404)
    );
    // A plain GET (no upgrade) of a real room is refused, not served.
    let (status, _) = http(server.addr, "GET", &format!("{path}?token=tok"), "");
    assert!(status >= 400, "{status}");

    let (status, body) = http(server.addr, "GET", "/test/call", "");
    assert_eq!(status, 200);
    assert!(body.contains("/test/testcall.js"));
    assert!(!body.contains("http://") && !body.contains("https://"));
    let (status, script) = http(server.addr, "GET", "/test/testcall.js", "");
    assert_eq!(status, 200);
    assert!(script.contains("/api/v1/signal/") && script.contains("iceTransportPolicy"));
}

#[test]
fn rooms_are_bounded_and_expire() {
    let limits = Limits {
        max_rooms: 3,
        ttl: Duration::from_millis(1500),
        empty_grace: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = serve(enabled(), limits);
    let rooms: Vec<String> = (0..3).map(|_| create_room(server.addr, "")).collect();
    let (status, body) = http(server.addr, "POST", "/api/v1/rooms", "");
    assert_eq!(status, 503, "{body}");

    // A connected participant is closed with 4000 when the room's lifetime ends.
    let mut a = join(server.addr, &format!("/api/v1/signal/{}", rooms[0])).unwrap();
    text(&mut a);
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut a), CloseCode::from(4000));
    assert!(started.elapsed() < Duration::from_secs(3));
    // Expired rooms are gone (404) and no longer count against the limit.
    assert_eq!(
        join(server.addr, &format!("/api/v1/signal/{}", rooms[1])).err(),
        Some(404)
    );
    let fresh = create_room(server.addr, "");

    // A room whose participants all left expires after the short grace.
    let mut b = join(server.addr, &format!("/api/v1/signal/{fresh}")).unwrap();
    text(&mut b);
    b.close(None).unwrap();
    let _ = b.flush();
    let _ = b.read();
    drop(b);
    std::thread::sleep(Duration::from_millis(100));
    // Within the grace a reload can rejoin ...
    let mut b = join(server.addr, &format!("/api/v1/signal/{fresh}")).unwrap();
    text(&mut b);
    b.close(None).unwrap();
    let _ = b.flush();
    let _ = b.read();
    drop(b);
    // ... after it the room is gone.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        join(server.addr, &format!("/api/v1/signal/{fresh}")).err(),
        Some(404)
    );
}
