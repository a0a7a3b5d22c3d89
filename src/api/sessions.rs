//! `/api/v1/sessions` and `/api/v1/revocations`: who is relaying now, ending one session,
//! and cutting users off until a time ([`crate::sessions`]).
//!
//! * `GET /api/v1/sessions?username=&prefix=&after=&limit=`: one page, lowest id first;
//! * `DELETE /api/v1/sessions/{id}`: ends the allocation now (a TCP/TLS client is
//!   disconnected);
//! * `GET /api/v1/revocations`, `POST /api/v1/revocations` with `{"username": …, "until":
//!   unix-seconds}` (`until` optional), `DELETE /api/v1/revocations/{username}`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::{ApiError, AppState};
use crate::sessions::{self as live, Page, Revocation, RevokeError, Revoked, SessionId};
use crate::Control;

fn control(state: &AppState) -> Result<&Control, ApiError> {
    super::control(state, "sessions are not available on this listener")
}

/// The query of `GET /api/v1/sessions`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    username: Option<String>,
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// How many sessions a page holds when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    for (name, value) in [("username", &query.username), ("prefix", &query.prefix)] {
        if value.as_ref().is_some_and(|v| v.len() > live::MAX_USERNAME) {
            return Err(ApiError::bad_request(format!(
                "{name} is longer than {} bytes",
                live::MAX_USERNAME
            )));
        }
    }
    let after = query
        .after
        .as_deref()
        .map(str::parse::<SessionId>)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("after: {e}")))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=live::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            live::MAX_PAGE
        )));
    }
    let query = live::Query {
        username: query.username,
        prefix: query.prefix,
        after,
        limit,
    };
    Ok(Json(control(&state)?.sessions(&query).await))
}

pub(super) async fn kick(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let parsed: SessionId = id.parse().map_err(ApiError::bad_request)?;
    match control(&state)?.kick(parsed).await {
        Some(true) => Ok(Json(serde_json::json!({ "id": id, "ended": true }))),
        Some(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {id}"),
        )),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("worker {} did not answer in time", parsed.worker),
        )),
    }
}

pub(super) async fn revocations(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list: Vec<Revocation> = control(&state)?.revocations();
    Ok(Json(serde_json::json!({ "revocations": list })))
}

/// The body of `POST /api/v1/revocations`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeBody {
    username: String,
    /// Unix seconds; default: the credential's own expiry, else the credential ttl from now.
    until: Option<u64>,
}

/// Refused from web pages ([`super::refuse_web_pages`]), as a drain is.
pub(super) async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Revoked>), ApiError> {
    super::refuse_web_pages(&headers, "revocations are not made from web pages")?;
    let Json(body) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let revoked = control(&state)?
        .revoke(&body.username, body.until)
        .await
        .map_err(revoke_error)?;
    Ok((StatusCode::CREATED, Json(revoked)))
}

pub(super) async fn unrevoke(
    State(state): State<AppState>,
    Path(username): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if control(&state)?
        .unrevoke(&username)
        .await
        .map_err(revoke_error)?
    {
        Ok(Json(
            serde_json::json!({ "username": username, "lifted": true }),
        ))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{username:?} is not revoked"),
        ))
    }
}

fn revoke_error(error: RevokeError) -> ApiError {
    let status = match error {
        RevokeError::Invalid(_) => StatusCode::BAD_REQUEST,
        RevokeError::Full => StatusCode::CONFLICT,
        RevokeError::NotSaved(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error.to_string())
}
