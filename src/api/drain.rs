//! `/api/v1/drain`: `GET` reports whether this instance drains and how many allocations it
//! still holds, `POST` starts draining, `DELETE` ends it. While draining, new Allocates are
//! sent elsewhere with 300 Try Alternate ([`crate::Control::set_draining`]); `turnpike
//! drain --wait` polls `GET` until no allocation is left.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::{ApiError, AppState};
use crate::{Control, DrainStatus};

fn control(state: &AppState) -> Result<&Control, ApiError> {
    super::control(state, "draining is not available on this listener")
}

pub(super) async fn status(State(state): State<AppState>) -> Result<Json<DrainStatus>, ApiError> {
    Ok(Json(control(&state)?.drain_status()))
}

/// Refused from web pages ([`super::refuse_web_pages`]); `turnpike drain` sends no `Origin`.
pub(super) async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DrainStatus>, ApiError> {
    super::refuse_web_pages(&headers, "drain is not started from web pages")?;
    Ok(Json(control(&state)?.set_draining(true)))
}

pub(super) async fn stop(State(state): State<AppState>) -> Result<Json<DrainStatus>, ApiError> {
    Ok(Json(control(&state)?.set_draining(false)))
}
