//! The WHEP endpoint (draft-ietf-wish-whep): viewers watch a room.
//!
//! ```text
//!  POST /whep/{room}  (application/sdp, recvonly offer,
//!                      Authorization: Bearer <viewer token> for private rooms)
//!     └─► viewer check against the RoomDirectory ─► sfu::Sfu::subscribe ─► 201 + answer (sendonly) + Location + ETag
//!                             └─► 409 + Retry-After while the room is not live
//!  PATCH | DELETE | OPTIONS /whep/{room}/{session}  ─► wish (shared with WHIP)
//! ```
//!
//! A viewer of a room that is not live is told `409 Conflict` with
//! `Retry-After` (draft §4.3.8) and retries; once connected it stays
//! connected across publisher reconnects. This crate never touches UDP.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use axum::Router;
use sfu::{LayerRequest, Role, SessionInfo};
use wish::{Problem, ViewerAccess, Wish};

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
        .route(
            "/whep/{room}/{session}/layer",
            post(select_layer).get(layer_state),
        )
        // Last: it applies to the routes above.
        .method_not_allowed_fallback(wish::method_not_allowed_fallback)
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
    // Authorize before reading the body, as WHIP does.
    let gop_replay = match w.rooms.viewer_access(&room, wish::bearer(&headers)) {
        ViewerAccess::Allowed {
            max_viewers,
            gop_cache,
        } => {
            if let Some(max) = max_viewers {
                let viewers = w
                    .sfu
                    .room_status(&room)
                    .await
                    .map_or(0, |s| s.viewers.len());
                if viewers >= max {
                    return Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "room-full",
                        format!("room {room:?} has its maximum of {max} viewers"),
                    )
                    .retry_after(wish::CAPACITY_RETRY_AFTER));
                }
            }
            gop_cache
        }
        ViewerAccess::TokenRequired => {
            return Err(Problem::unauthorized(
                "this room is private: watching needs Authorization: Bearer <viewer token>",
            ))
        }
        ViewerAccess::TokenRefused => {
            return Err(Problem::unauthorized(
                "the viewer token is invalid, expired or not for this room",
            ))
        }
        ViewerAccess::HlsOnly => {
            // Players fall back on 503; the link says where to.
            let hls = format!("/hls/{room}/index.m3u8");
            let mut response = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hls-only",
                format!("room {room:?} is served over LL-HLS only: {hls}"),
            )
            .into_response();
            if let Ok(link) = HeaderValue::from_str(&format!(
                "<{hls}>; rel=\"alternate\"; type=\"application/vnd.apple.mpegurl\""
            )) {
                response.headers_mut().append(header::LINK, link);
            }
            return Ok(response);
        }
    };
    let offer = wish::read_text_body(&headers, body, wish::SDP).await?;
    wish::check_offer(&offer)?;
    let options = sfu::SubscribeOptions { gop_replay };
    let answer = w.sfu.subscribe_with(&room, offer, options).await?;
    let location = format!("/whep/{room}/{}", answer.session);
    let layer = format!("<{location}/layer>; rel=\"{LAYER_EXTENSION}\"");
    Ok(wish::created(&w, location, answer, &[layer]))
}

/// Where a viewer chooses its layer: POST `{"mediaId"?, "rid"?, "maxHeight"?}`
/// (the body of the WHEP core extensions' layer request), `{}` for automatic
/// choice; GET for its state. The standard relation
/// `urn:ietf:params:whep:ext:core:layer` may only be advertised with the
/// server-sent-events extension, which we do not serve yet, so the link
/// carries our own relation.
pub const LAYER_EXTENSION: &str = "urn:dionysia:whep:layer";

async fn select_layer(
    State(w): State<Wish>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let text = wish::read_text_body(&headers, body, "application/json")
        .await
        .or_else(|p| {
            // `{}` and an empty body both mean "automatic".
            if p.status == 400 {
                Ok("{}".to_string())
            } else {
                Err(p)
            }
        })?;
    let req: LayerRequest = serde_json::from_str(&text).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-layer",
            format!("layer request: {e}"),
        )
    })?;
    let info = SessionInfo {
        room,
        role: Role::Subscriber,
        session,
    };
    w.sfu.set_layer(info.clone(), req).await?;
    let state = w.sfu.viewer_state(info).await?;
    Ok((StatusCode::OK, Json(state)).into_response())
}

/// What the session receives now: layers, current and target layer,
/// estimated bandwidth, packets forwarded and dropped.
async fn layer_state(
    State(w): State<Wish>,
    Path((room, session)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let state = w
        .sfu
        .viewer_state(SessionInfo {
            room,
            role: Role::Subscriber,
            session,
        })
        .await?;
    Ok(Json(state).into_response())
}
