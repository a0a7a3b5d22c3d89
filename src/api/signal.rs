//! Signaling for the test page's demo call (`api.test_page`, off by default): rooms of two
//! participants whose WebSocket messages (offer, answer, ICE candidates, bye) are relayed to
//! the other participant of the same room and nowhere else. For testing a deployment, not a
//! conferencing service, so everything is small and bounded:
//!
//! * `POST /api/v1/rooms` (token rule of the API) creates a room and answers
//!   `{"room": ID, "expires_in": SECS, "link": "/test/call#room=ID"}`; the id is 128 random
//!   bits, base64url (22 characters), so links cannot be guessed. At most
//!   [`Limits::max_rooms`] rooms live at once (503 beyond).
//! * `GET /api/v1/signal/{room}` upgrades to a WebSocket. Browsers cannot set headers on a
//!   WebSocket, so besides `Authorization: Bearer` the token may be given as `?token=`.
//!   Unknown or expired room → 404, a third participant → 409, page disabled → 404.
//! * Text messages only, each a JSON object with a `type` of [`RELAYED_TYPES`], at most
//!   [`Limits::max_message`] bytes (close 1009 beyond) and at most [`Limits::rate_burst`] in
//!   a burst refilled at [`Limits::rate_per_sec`] (close 1008 beyond). The server adds
//!   `{"type":"joined","peers":N}` (to the joiner), `{"type":"peer-joined"}` and
//!   `{"type":"peer-left"}` (to the other participant).
//! * A room lives [`Limits::ttl`] from its creation (its sockets are then closed with 4000
//!   "room expired"), and [`Limits::empty_grace`] after its last participant left (so a page
//!   reload can rejoin). Expired rooms are purged whenever a room is created or joined.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{bearer_token, check_token_value, ApiError, AppState};

/// The message types a participant may send; anything else closes the socket (1008).
pub(crate) const RELAYED_TYPES: &[&str] = &["offer", "answer", "candidate", "bye", "hello"];

/// The close code sent when the room's lifetime is over.
const CLOSE_EXPIRED: u16 = 4000;

/// Bounds of the signaling service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_rooms: usize,
    pub ttl: Duration,
    pub empty_grace: Duration,
    pub max_message: usize,
    pub rate_burst: u32,
    pub rate_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rooms: 100,
            ttl: Duration::from_secs(600),
            empty_grace: Duration::from_secs(60),
            max_message: 16 * 1024,
            rate_burst: 100,
            rate_per_sec: 20,
        }
    }
}

/// Messages waiting for a slow participant; a full queue closes the sender (1013).
const QUEUE: usize = 64;

struct Room {
    /// Hard end of the room (creation + ttl), also when participants are connected.
    deadline: Instant,
    /// When the room goes away: `deadline`, or earlier once it is empty.
    expires: Instant,
    slots: [Option<Participant>; 2],
}

struct Participant {
    id: u64,
    /// `None` while the slot is reserved by a handshake in progress.
    tx: Option<mpsc::Sender<Message>>,
}

impl Room {
    fn count(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// The live rooms, shared by the API's handlers.
pub(crate) struct Rooms {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<String, Room>,
    next_id: u64,
}

impl Rooms {
    pub(crate) fn new(limits: Limits) -> Self {
        Rooms {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new room's id, or `None` when [`Limits::max_rooms`] rooms are live.
    fn create(&self) -> Option<String> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.rooms.retain(|_, room| room.expires > now);
        if inner.rooms.len() >= self.limits.max_rooms {
            return None;
        }
        let id =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let deadline = now + self.limits.ttl;
        inner.rooms.insert(
            id.clone(),
            Room {
                deadline,
                expires: deadline,
                slots: [None, None],
            },
        );
        Some(id)
    }

    /// Reserves a slot in `room` for a handshake in progress.
    fn reserve(self: &Arc<Self>, room: &str) -> Result<Reservation, ApiError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.rooms.retain(|_, room| room.expires > now);
        inner.next_id += 1;
        let id = inner.next_id;
        let Some(entry) = inner.rooms.get_mut(room) else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no such room"));
        };
        let Some(slot) = entry.slots.iter_mut().find(|s| s.is_none()) else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "room is full (two participants)",
            ));
        };
        *slot = Some(Participant { id, tx: None });
        entry.expires = entry.deadline;
        Ok(Reservation {
            rooms: self.clone(),
            room: room.to_owned(),
            id,
            deadline: entry.deadline,
        })
    }

    /// Sends `msg` to the other participant(s) of `room`; false if a queue is full.
    fn relay(&self, room: &str, from: u64, msg: Message) -> bool {
        let inner = self.lock();
        let Some(entry) = inner.rooms.get(room) else {
            return true;
        };
        entry
            .slots
            .iter()
            .flatten()
            .filter(|p| p.id != from)
            .filter_map(|p| p.tx.as_ref())
            .all(|tx| {
                !matches!(
                    tx.try_send(msg.clone()),
                    Err(mpsc::error::TrySendError::Full(_))
                )
            })
    }
}

/// A participant's slot; dropping it frees the slot and tells the other participant.
struct Reservation {
    rooms: Arc<Rooms>,
    room: String,
    id: u64,
    deadline: Instant,
}

impl Reservation {
    /// Activates the slot with its outgoing queue; returns how many are in the room now.
    fn activate(&self, tx: mpsc::Sender<Message>) -> usize {
        let mut inner = self.rooms.lock();
        let Some(entry) = inner.rooms.get_mut(&self.room) else {
            return 0;
        };
        for p in entry.slots.iter_mut().flatten() {
            if p.id == self.id {
                p.tx = Some(tx.clone());
            }
        }
        entry.count()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let grace = self.rooms.limits.empty_grace;
        let mut inner = self.rooms.lock();
        let Some(entry) = inner.rooms.get_mut(&self.room) else {
            return;
        };
        let mut had_tx = false;
        for slot in entry.slots.iter_mut() {
            if slot.as_ref().is_some_and(|p| p.id == self.id) {
                had_tx = slot.as_ref().is_some_and(|p| p.tx.is_some());
                *slot = None;
            }
        }
        if had_tx {
            for p in entry.slots.iter().flatten() {
                if let Some(tx) = &p.tx {
                    let _ = tx.try_send(Message::text(r#"{"type":"peer-left"}"#));
                }
            }
        }
        if entry.count() == 0 {
            entry.expires = entry.expires.min(Instant::now() + grace);
        }
    }
}

/// 404 unless the test page is enabled.
fn enabled(state: &AppState) -> Result<(), ApiError> {
    if state.ctx.config().api.test_page {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint"))
    }
}

/// `POST /api/v1/rooms` (behind the token middleware).
pub(super) async fn create_room(State(state): State<AppState>) -> Response {
    if let Err(e) = enabled(&state) {
        return e.into_response();
    }
    match state.rooms.create() {
        Some(room) => (
            StatusCode::CREATED,
            Json(serde_json::json!({
                "room": room,
                "expires_in": state.rooms.limits.ttl.as_secs(),
                "link": format!("/test/call#room={room}"),
            })),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many rooms; try again later",
        )
        .into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct SignalQuery {
    token: Option<String>,
}

/// `GET /api/v1/signal/{room}`: the WebSocket of one participant.
pub(super) async fn signal(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<SignalQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(e) = enabled(&state) {
        return e.into_response();
    }
    let token = bearer_token(&headers).or(query.token.as_deref());
    if let Err(e) = check_token_value(&state.ctx.config(), state.loopback, token) {
        return e.into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return e.into_response(),
    };
    let reservation = match state.rooms.reserve(&room) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let limits = state.rooms.limits;
    // Headroom over our own limit so an oversize message gets a proper 1009 close from us.
    let cap = limits.max_message * 4;
    upgrade
        .max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| participant(socket, reservation, limits))
}

/// A token bucket: `burst` messages, refilled at `per_sec`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, limits: &Limits) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(limits.rate_per_sec);
        self.tokens = (self.tokens + refill).min(f64::from(limits.rate_burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a participant's message is refused: close code and reason.
fn check_message(text: &str, limits: &Limits) -> Result<(), (u16, &'static str)> {
    if text.len() > limits.max_message {
        return Err((close_code::SIZE, "message too big"));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| (close_code::POLICY, "not JSON"))?;
    let kind = value.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if RELAYED_TYPES.contains(&kind) {
        Ok(())
    } else {
        Err((close_code::POLICY, "unknown message type"))
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn participant(mut socket: WebSocket, reservation: Reservation, limits: Limits) {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let peers = reservation.activate(tx);
    let rooms = reservation.rooms.clone();
    let joined = format!(r#"{{"type":"joined","peers":{peers}}}"#);
    if socket.send(Message::text(joined)).await.is_err() {
        return;
    }
    if peers == 2 {
        rooms.relay(
            &reservation.room,
            reservation.id,
            Message::text(r#"{"type":"peer-joined"}"#),
        );
    }
    let mut bucket = Bucket {
        tokens: f64::from(limits.rate_burst),
        at: Instant::now(),
    };
    let expiry = tokio::time::sleep_until(reservation.deadline);
    tokio::pin!(expiry);
    let refusal = loop {
        tokio::select! {
            () = &mut expiry => break Some((CLOSE_EXPIRED, "room expired")),
            out = rx.recv() => {
                let Some(out) = out else { break None };
                if socket.send(out).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        break Some((close_code::UNSUPPORTED, "text messages only"))
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(_)) => break Some((close_code::SIZE, "message too big")),
                };
                if !bucket.take(&limits) {
                    break Some((close_code::POLICY, "rate limit"));
                }
                if let Err(refusal) = check_message(text.as_str(), &limits) {
                    break Some(refusal);
                }
                if !rooms.relay(&reservation.room, reservation.id, Message::Text(text)) {
                    break Some((close_code::AGAIN, "peer is not reading"));
                }
            }
        }
    };
    if let Some((code, reason)) = refusal {
        tracing::debug!(room = %reservation.room, code, reason, "closing signaling socket");
        let _ = socket.send(close(code, reason)).await;
        // Let the close handshake finish (bounded), so the client sees the code.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(msg)) = socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    drop(reservation);
}

#[cfg(test)]
mod tests;
