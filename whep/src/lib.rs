//! The WHEP endpoint (draft-ietf-wish-whep): viewers watch a room.
//!
//! ```text
//!  POST /whep/{room}  (application/sdp, recvonly offer)
//!     └─► sfu::Sfu::subscribe ─► 201 + answer (sendonly) + Location + ETag
//!                             └─► 409 + Retry-After while the room is not live
//!  PATCH | DELETE | OPTIONS /whep/{room}/{session}  ─► wish (shared with WHIP)
//! ```
//!
//! A viewer of a room that is not live is told `409 Conflict` with
//! `Retry-After` (draft §4.3.8) and retries; once connected it stays
//! connected across publisher reconnects. This crate never touches UDP.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use sfu::Role;
use wish::{Problem, Wish};

/// Routes under `/whep`.
pub fn router() -> Router<Wish> {
    Router::new()
        .route(
            "/whep/{room}",
            post(subscribe)
                .merge(wish::endpoint_options())
                .get(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/whep/{room}/{session}",
            wish::session_resource(Role::Subscriber),
        )
}

async fn subscribe(
    State(w): State<Wish>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if !w.rooms.room_exists(&room) {
        return Err(Problem::not_found(format!("no room named {room:?}")));
    }
    let offer = wish::read_text_body(&headers, body, wish::SDP).await?;
    wish::check_offer(&offer)?;
    let answer = w.sfu.subscribe(&room, offer).await?;
    let location = format!("/whep/{room}/{}", answer.session);
    Ok(wish::created(&w, location, answer, &[]))
}
