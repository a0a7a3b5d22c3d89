//! `/api/v1/drain`: `GET` reports whether this instance drains and how many allocations it
//! still holds, `POST` starts draining, `DELETE` ends it. While draining, new Allocates are
//! sent elsewhere with 300 Try Alternate ([`crate::Control::set_draining`]); `turnpike
//! drain --wait` polls `GET` until no allocation is left.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;

use super::{ApiError, AppState};
use crate::{Control, DrainStatus};

fn control(state: &AppState) -> Result<&Control, ApiError> {
    state.ctx.drain.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining is not available on this listener",
        )
    })
}

pub(super) async fn status(State(state): State<AppState>) -> Result<Json<DrainStatus>, ApiError> {
    Ok(Json(control(&state)?.drain_status()))
}

/// A POST needs no CORS preflight, so a page in a browser on the API's host could send one
/// to a loopback API without tokens: requests from web pages (they carry `Origin`) are
/// refused. `turnpike drain` and other tools send none.
pub(super) async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DrainStatus>, ApiError> {
    if headers.contains_key(header::ORIGIN) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "drain is not started from web pages (the request carries Origin)",
        ));
    }
    Ok(Json(control(&state)?.set_draining(true)))
}

pub(super) async fn stop(State(state): State<AppState>) -> Result<Json<DrainStatus>, ApiError> {
    Ok(Json(control(&state)?.set_draining(false)))
}
