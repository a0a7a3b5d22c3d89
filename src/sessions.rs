//! Live sessions for operators: listing every worker's allocations, ending one (a kick), and
//! revoking users, with the revocations kept in a small state file across restarts.
//!
//! The management plane asks the workers through their command queues
//! ([`Command`](crate::net::worker::Command)) and waits for each answer with a deadline: a
//! worker that does not answer in time is reported as missing, never waited for, and the
//! packet path takes no lock for any of this.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::net::worker::Command;
use crate::proto::auth::rest_expiry;
use crate::proto::{Revocations, SessionFilter, SessionInfo};
use crate::Control;

/// How long the API waits for a worker's answer; a worker busy for this long is reported.
pub const WORKER_WAIT: Duration = Duration::from_secs(1);
/// The most sessions one `GET /api/v1/sessions` returns.
pub const MAX_PAGE: usize = 1000;
/// The most revocations in force at once (quotas on everything).
pub const MAX_REVOCATIONS: usize = 10_000;
/// The furthest ahead a revocation may last.
pub const MAX_REVOCATION_SECS: u64 = 366 * 86_400;
/// STUN's USERNAME limit (RFC 8489 §14.3): no credential has a longer name.
pub const MAX_USERNAME: usize = 513;

/// A session's id across the server: the worker that holds it and the allocation's id in that
/// worker. Written `W-N`; ordered by worker, then creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId {
    pub worker: usize,
    pub id: u64,
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.worker, self.id)
    }
}

impl FromStr for SessionId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s
            .split_once('-')
            .and_then(|(w, n)| Some((w.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((worker, id)) => Ok(SessionId { worker, id }),
            None => Err(format!(
                "session id {s:?} is not of the form WORKER-NUMBER (e.g. 0-17)"
            )),
        }
    }
}

/// One allocation as `GET /api/v1/sessions` shows it. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub id: String,
    pub username: String,
    pub realm: String,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: String,
    pub relays: Vec<SocketAddr>,
    pub created: u64,
    pub expires: u64,
    pub permissions: usize,
    pub channels: usize,
    pub to_peer_bytes: u64,
    pub to_peer_packets: u64,
    pub from_peer_bytes: u64,
    pub from_peer_packets: u64,
}

impl Session {
    fn new(id: SessionId, realm: &str, info: SessionInfo) -> Self {
        let usage = info.usage;
        Session {
            id: id.to_string(),
            username: info.username,
            realm: realm.to_owned(),
            client: info.client,
            server: info.server,
            transport: info.transport.as_str().to_owned(),
            relays: info.relays,
            created: usage.started_unix,
            expires: info.expires_unix,
            permissions: info.permissions,
            channels: info.channels,
            to_peer_bytes: usage.to_peer_bytes,
            to_peer_packets: usage.to_peer_packets,
            from_peer_bytes: usage.from_peer_bytes,
            from_peer_packets: usage.from_peer_packets,
        }
    }
}

/// Which sessions to list: `after` is the id of the last session of the previous page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub username: Option<String>,
    pub prefix: Option<String>,
    pub after: Option<SessionId>,
    pub limit: usize,
}

/// One page of sessions, lowest id first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page {
    pub sessions: Vec<Session>,
    /// Pass as `after` for the next page; `None` on the last one.
    pub next: Option<String>,
    /// Workers that did not answer within [`WORKER_WAIT`]: their sessions are not listed.
    pub missing_workers: Vec<usize>,
}

/// A revocation as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    pub username: String,
    /// Unix seconds.
    pub until: u64,
}

/// What revoking did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    pub username: String,
    pub until: u64,
    /// Allocations ended by it.
    pub ended: usize,
    pub missing_workers: Vec<usize>,
}

/// Why a revocation was refused (a 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{MAX_REVOCATIONS} revocations are in force; lift some first")]
    Full,
    #[error("the revocations could not be saved to {0}")]
    NotSaved(String),
}

/// The revocations in force and where they are kept.
#[derive(Debug, Default)]
pub struct RevocationStore {
    until: HashMap<String, u64>,
    file: Option<PathBuf>,
}

/// The state file's contents.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    revocations: Vec<Revocation>,
}

impl RevocationStore {
    /// The revocations kept in `file` (none if it does not exist yet), or in memory only.
    pub fn open(file: Option<&Path>, unix_now: u64) -> Result<Self, String> {
        let mut store = RevocationStore {
            until: HashMap::new(),
            file: file.map(Path::to_path_buf),
        };
        if let Some(path) = file {
            store.until = read_state(path)?;
            store.prune(unix_now);
        }
        Ok(store)
    }

    /// Lists the revocations still in force.
    pub fn list(&mut self, unix_now: u64) -> Vec<Revocation> {
        self.prune(unix_now);
        self.sorted()
    }

    /// How many are in force at `unix_now`.
    pub fn active(&mut self, unix_now: u64) -> usize {
        self.prune(unix_now);
        self.until.len()
    }

    /// Every entry, by username (the API's and the state file's order).
    fn sorted(&self) -> Vec<Revocation> {
        let mut list: Vec<Revocation> = self
            .until
            .iter()
            .map(|(username, &until)| Revocation {
                username: username.clone(),
                until,
            })
            .collect();
        list.sort_by(|a, b| a.username.cmp(&b.username));
        list
    }

    pub fn snapshot(&self) -> Arc<Revocations> {
        Arc::new(Revocations::new(self.until.clone()))
    }

    /// Revokes `username` until `until` (default: the credential's own expiry when the name
    /// carries one, else `default_secs` from now). Saved before it is in force.
    pub fn add(
        &mut self,
        username: &str,
        until: Option<u64>,
        separator: char,
        default_secs: u64,
        unix_now: u64,
    ) -> Result<u64, RevokeError> {
        check_username(username)?;
        let until = match until {
            Some(until) => until,
            None => rest_expiry(username, separator)
                .filter(|&expiry| expiry > unix_now)
                .unwrap_or(unix_now + default_secs),
        };
        if until <= unix_now {
            return Err(RevokeError::Invalid(format!(
                "until {until} is not in the future (now {unix_now})"
            )));
        }
        if until > unix_now + MAX_REVOCATION_SECS {
            return Err(RevokeError::Invalid(format!(
                "until {until} is more than {MAX_REVOCATION_SECS} s ahead"
            )));
        }
        self.prune(unix_now);
        if !self.until.contains_key(username) && self.until.len() >= MAX_REVOCATIONS {
            return Err(RevokeError::Full);
        }
        let previous = self.until.insert(username.to_owned(), until);
        if let Err(e) = self.save() {
            match previous {
                Some(previous) => self.until.insert(username.to_owned(), previous),
                None => self.until.remove(username),
            };
            return Err(e);
        }
        Ok(until)
    }

    /// Lifts the revocation of `username`: whether there was one.
    pub fn remove(&mut self, username: &str) -> Result<bool, RevokeError> {
        let Some(until) = self.until.remove(username) else {
            return Ok(false);
        };
        if let Err(e) = self.save() {
            self.until.insert(username.to_owned(), until);
            return Err(e);
        }
        Ok(true)
    }

    /// Reads the state file again (reload); on error the revocations in force stay.
    pub fn reload(&mut self, file: Option<&Path>, unix_now: u64) -> Result<(), String> {
        if let Some(path) = file {
            self.until = read_state(path)?;
        }
        self.file = file.map(Path::to_path_buf);
        self.prune(unix_now);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    fn prune(&mut self, unix_now: u64) {
        self.until.retain(|_, until| *until > unix_now);
    }

    /// Writes the state file whole, through a temporary file and a rename, so a crash
    /// leaves the old or the new contents, never half of one.
    fn save(&self) -> Result<(), RevokeError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let revocations = self.sorted();
        let json =
            serde_json::to_vec_pretty(&StateFile { revocations }).expect("revocations serialize");
        let temporary = path.with_extension("tmp");
        let written = std::fs::write(&temporary, json).and_then(|()| {
            std::fs::rename(&temporary, path)?;
            Ok(())
        });
        written.map_err(|e| {
            tracing::error!(file = %path.display(), error = %e, "cannot save revocations");
            RevokeError::NotSaved(format!("{}: {e}", path.display()))
        })
    }
}

fn check_username(username: &str) -> Result<(), RevokeError> {
    let reason = if username.is_empty() {
        "username is empty".to_owned()
    } else if username.len() > MAX_USERNAME {
        format!("username is longer than {MAX_USERNAME} bytes")
    } else if username.chars().any(char::is_control) {
        "username contains control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(RevokeError::Invalid(reason))
}

/// The revocations in the state file at `path`; a missing file holds none.
fn read_state(path: &Path) -> Result<HashMap<String, u64>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("api.revocations_file {}: {e}", path.display())),
    };
    let state: StateFile = serde_json::from_str(&text)
        .map_err(|e| format!("api.revocations_file {}: {e}", path.display()))?;
    if state.revocations.len() > MAX_REVOCATIONS {
        return Err(format!(
            "api.revocations_file {}: more than {MAX_REVOCATIONS} revocations",
            path.display()
        ));
    }
    for revocation in &state.revocations {
        check_username(&revocation.username)
            .map_err(|e| format!("api.revocations_file {}: {e}", path.display()))?;
    }
    Ok(state
        .revocations
        .into_iter()
        .map(|r| (r.username, r.until))
        .collect())
}

impl Control {
    /// Sends one command to every worker; the receivers of their answers, by worker.
    fn ask<T>(
        &self,
        mut command: impl FnMut(usize, oneshot::Sender<T>) -> Option<Command>,
    ) -> Vec<(usize, oneshot::Receiver<T>)> {
        let mut waiting = Vec::new();
        for (worker, queue) in self.commands.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            let Some(command) = command(worker, reply) else {
                continue;
            };
            // A worker that has ended dropped its queue: it shows up as missing.
            let _ = queue.send(command);
            let _ = self.wakers[worker].wake();
            waiting.push((worker, answer));
        }
        waiting
    }

    /// The answers that arrive within [`WORKER_WAIT`], and the workers that gave none.
    async fn collect<T>(
        waiting: Vec<(usize, oneshot::Receiver<T>)>,
    ) -> (Vec<(usize, T)>, Vec<usize>) {
        let deadline = tokio::time::Instant::now() + WORKER_WAIT;
        let (mut answers, mut missing) = (Vec::new(), Vec::new());
        for (worker, answer) in waiting {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(value)) => answers.push((worker, value)),
                _ => missing.push(worker),
            }
        }
        (answers, missing)
    }

    /// One page of the sessions `query` selects, from every worker.
    pub async fn sessions(&self, query: &Query) -> Page {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let waiting = self.ask(|worker, reply| {
            // Paging: workers before the cursor's are done, the cursor's continues after it.
            let after = match query.after {
                Some(cursor) if worker < cursor.worker => return None,
                Some(cursor) if worker == cursor.worker => Some(cursor.id),
                _ => None,
            };
            let filter = SessionFilter {
                username: query.username.clone(),
                prefix: query.prefix.clone(),
                after,
            };
            // One more than a page tells whether there is a next page.
            Some(Command::Sessions {
                filter,
                limit: limit + 1,
                reply,
            })
        });
        let (answers, missing_workers) = Self::collect(waiting).await;
        let realm = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .server
            .realm
            .clone();
        let mut found: Vec<(SessionId, SessionInfo)> = answers
            .into_iter()
            .flat_map(|(worker, infos)| {
                infos.into_iter().map(move |info| {
                    (
                        SessionId {
                            worker,
                            id: info.id,
                        },
                        info,
                    )
                })
            })
            .collect();
        found.sort_by_key(|(id, _)| *id);
        let more = found.len() > limit;
        found.truncate(limit);
        let next = more
            .then(|| found.last().map(|(id, _)| id.to_string()))
            .flatten();
        Page {
            sessions: found
                .into_iter()
                .map(|(id, info)| Session::new(id, &realm, info))
                .collect(),
            next,
            missing_workers,
        }
    }

    /// Ends the session `id` now: `Some(false)` if it does not exist, `None` if its worker
    /// did not answer in time.
    pub async fn kick(&self, id: SessionId) -> Option<bool> {
        if id.worker >= self.commands.len() {
            return Some(false);
        }
        let waiting = self.ask(|worker, reply| {
            (worker == id.worker).then_some(Command::Kick { id: id.id, reply })
        });
        let (answers, _) = Self::collect(waiting).await;
        answers.into_iter().next().map(|(_, found)| found)
    }

    /// Revokes `username` (see [`RevocationStore::add`]) and ends its allocations.
    pub async fn revoke(&self, username: &str, until: Option<u64>) -> Result<Revoked, RevokeError> {
        let unix_now = crate::unix_now();
        let (until, revocations) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let config = &state.config;
            let mut store = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
            let until = store.add(
                username,
                until,
                config.auth.separator,
                config.auth.credential_ttl_secs.get().as_secs(),
                unix_now,
            )?;
            (until, store.snapshot())
        };
        tracing::info!(user = username, until, "credentials revoked");
        let (ended, missing_workers) = self.publish_revocations(revocations).await;
        Ok(Revoked {
            username: username.to_owned(),
            until,
            ended,
            missing_workers,
        })
    }

    /// Lifts the revocation of `username`: whether there was one.
    pub async fn unrevoke(&self, username: &str) -> Result<bool, RevokeError> {
        let (lifted, revocations) = {
            let mut store = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
            (store.remove(username)?, store.snapshot())
        };
        if lifted {
            tracing::info!(user = username, "revocation lifted");
            self.publish_revocations(revocations).await;
        }
        Ok(lifted)
    }

    /// The revocations in force.
    pub fn revocations(&self) -> Vec<Revocation> {
        let mut store = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        store.list(crate::unix_now())
    }

    /// How many revocations are in force (a gauge).
    pub fn revocations_active(&self) -> usize {
        let mut store = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        store.active(crate::unix_now())
    }

    /// Hands every worker the revocations now in force: allocations ended, and the workers
    /// that did not answer in time.
    async fn publish_revocations(&self, revocations: Arc<Revocations>) -> (usize, Vec<usize>) {
        let waiting = self.ask(|_, reply| {
            Some(Command::Revocations {
                revocations: revocations.clone(),
                reply: Some(reply),
            })
        });
        let (answers, missing) = Self::collect(waiting).await;
        (answers.iter().map(|(_, ended)| ended).sum(), missing)
    }

    /// Hands every worker the revocations in force without waiting (start and reload).
    pub(crate) fn push_revocations(&self) {
        let revocations = self
            .revocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot();
        for (queue, waker) in self.commands.iter().zip(&self.wakers) {
            let _ = queue.send(Command::Revocations {
                revocations: revocations.clone(),
                reply: None,
            });
            let _ = waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that does not answer is reported missing after the bounded wait, and the
    /// answers of the others are kept.
    #[test]
    fn a_worker_that_does_not_answer_is_reported_missing_not_waited_for() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (answered, answer) = oneshot::channel();
        let (_silent, no_answer) = oneshot::channel::<u32>();
        let (dead, gone) = oneshot::channel::<u32>();
        answered.send(7).unwrap();
        drop(dead);
        let started = std::time::Instant::now();
        let (answers, missing) = runtime.block_on(Control::collect(vec![
            (0, answer),
            (1, no_answer),
            (2, gone),
        ]));
        let waited = started.elapsed();
        assert_eq!(answers, [(0, 7)]);
        assert_eq!(missing, [1, 2]);
        assert!(
            waited >= WORKER_WAIT && waited < WORKER_WAIT * 3,
            "{waited:?}"
        );
    }

    #[test]
    fn session_ids_read_back_and_refuse_other_shapes() {
        let id: SessionId = "3-17".parse().unwrap();
        assert_eq!(id, SessionId { worker: 3, id: 17 });
        assert_eq!(id.to_string(), "3-17");
        for bad in [
            "",
            "3",
            "3-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            "18446744073709551616-1",
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_revocation_defaults_to_the_credentials_expiry_and_is_bounded() {
        let mut store = RevocationStore::default();
        let now = 1_000_000;
        assert_eq!(
            store.add("1000500:alice", None, ':', 86_400, now),
            Ok(1_000_500)
        );
        // No expiry in the name (or one already past): the credential ttl from now.
        assert_eq!(store.add("bob", None, ':', 86_400, now), Ok(now + 86_400));
        assert_eq!(store.add("999999:carol", None, ':', 60, now), Ok(now + 60));
        assert!(matches!(
            store.add("dave", Some(now), ':', 60, now),
            Err(RevokeError::Invalid(_))
        ));
        let far = now + MAX_REVOCATION_SECS + 1;
        assert!(matches!(
            store.add("dave", Some(far), ':', 60, now),
            Err(RevokeError::Invalid(_))
        ));
        assert!(matches!(
            store.add("", None, ':', 60, now),
            Err(RevokeError::Invalid(_))
        ));
        let long = "x".repeat(MAX_USERNAME + 1);
        assert!(matches!(
            store.add(&long, None, ':', 60, now),
            Err(RevokeError::Invalid(_))
        ));
        assert_eq!(store.list(now).len(), 3);
        // Expired entries go.
        assert_eq!(store.list(now + 100).len(), 2);
        assert_eq!(store.remove("bob"), Ok(true));
        assert_eq!(store.remove("bob"), Ok(false));
    }

    #[test]
    fn revocations_are_capped() {
        let mut store = RevocationStore::default();
        for i in 0..MAX_REVOCATIONS {
            store
                .add(&format!("u{i}"), Some(2_000), ':', 60, 1_000)
                .unwrap();
        }
        assert_eq!(
            store.add("one-more", Some(2_000), ':', 60, 1_000),
            Err(RevokeError::Full)
        );
        // Replacing one in force is not a new entry.
        assert_eq!(store.add("u0", Some(3_000), ':', 60, 1_000), Ok(3_000));
        // Once they have run out there is room again.
        assert_eq!(
            store.add("one-more", Some(3_000), ':', 60, 2_000),
            Ok(3_000)
        );
    }

    #[test]
    fn the_state_file_survives_a_reopen_and_a_bad_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        let mut store = RevocationStore::open(Some(&path), 1_000).unwrap();
        store.add("alice", Some(5_000), ':', 60, 1_000).unwrap();
        store.add("bob", Some(1_500), ':', 60, 1_000).unwrap();
        let reopened = RevocationStore::open(Some(&path), 1_000).unwrap();
        assert_eq!(reopened.until, store.until);
        // bob's has run out by the restart.
        let mut later = RevocationStore::open(Some(&path), 2_000).unwrap();
        assert_eq!(
            later.list(2_000),
            [Revocation {
                username: "alice".into(),
                until: 5_000
            }]
        );
        std::fs::write(&path, "{\"revocations\": [{\"username\": 7}]}").unwrap();
        let error = RevocationStore::open(Some(&path), 1_000).unwrap_err();
        assert!(error.starts_with("api.revocations_file"), "{error}");
        // A reload that cannot read the file keeps what is in force.
        assert!(later.reload(Some(&path), 2_000).is_err());
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn an_unwritable_state_file_refuses_the_change_and_keeps_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("revocations.json");
        let mut store = RevocationStore::open(Some(&path), 1_000).unwrap();
        assert!(matches!(
            store.add("alice", Some(5_000), ':', 60, 1_000),
            Err(RevokeError::NotSaved(_))
        ));
        assert!(store.is_empty());
    }
}
