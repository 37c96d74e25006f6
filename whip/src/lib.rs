//! The WHIP endpoint (RFC 9725): streamers publish into a room.
//!
//! ```text
//!  POST /whip/{room}  (application/sdp, Authorization: Bearer <stream key>)
//!     └─► auth against the RoomDirectory ─► sfu::Sfu::publish ─► 201 + answer + Location + ETag
//!  PATCH | DELETE | OPTIONS /whip/{room}/{session}  ─► wish (shared with WHEP)
//! ```
//!
//! Works with OBS 30+, which sends no candidates in its offer and never
//! PATCHes: the SFU is ICE-lite and learns the encoder's address from its
//! STUN checks. This crate never touches UDP.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use sfu::Role;
use tracing::warn;
use wish::{Problem, Wish};

/// Routes under `/whip`.
pub fn router() -> Router<Wish> {
    Router::new()
        .route(
            "/whip/{room}",
            post(publish)
                .merge(wish::endpoint_options())
                .get(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/whip/{room}/{session}",
            wish::session_resource(Role::Publisher),
        )
        // Last: it applies to the routes above.
        .method_not_allowed_fallback(wish::method_not_allowed_fallback)
}

async fn publish(
    State(w): State<Wish>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if !w.rooms.room_exists(&room) {
        return Err(Problem::not_found(format!("no room named {room:?}")));
    }
    // Authenticate before reading the body: a stranger's offer costs nothing.
    let Some(key) = wish::bearer(&headers) else {
        return Err(Problem::unauthorized(
            "publishing needs Authorization: Bearer <stream key>",
        ));
    };
    if !w.rooms.stream_key_matches(&room, key) {
        warn!(room, "WHIP publish refused: wrong stream key");
        return Err(Problem::unauthorized("the stream key is not this room's"));
    }
    let offer = wish::read_text_body(&headers, body, wish::SDP).await?;
    wish::check_offer(&offer)?;
    let answer = w.sfu.publish(&room, offer).await?;
    let location = format!("/whip/{room}/{}", answer.session);
    Ok(wish::created(&w, location, answer, &[]))
}
