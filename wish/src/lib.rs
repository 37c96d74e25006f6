//! The HTTP shape WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) share:
//! SDP request bodies, RFC 9457 problem responses, session resources with
//! PATCH (RFC 8840 trickle / ICE restart, guarded by ETag) and DELETE,
//! OPTIONS with CORS, and `Link: rel="ice-server"` headers.
//!
//! ```text
//!  POST /whip/{room}  ─► whip crate (auth, publish) ─┐
//!  POST /whep/{room}  ─► whep crate (subscribe)    ──┼─► sfu::Sfu
//!  PATCH/DELETE/OPTIONS on /{whip,whep}/{room}[/{session}] ─► here ─┘
//! ```
//!
//! The session's ETag is its ICE ufrag (quoted): it changes exactly when an
//! ICE restart happens, and the SFU keeps it, so this crate holds no state
//! per session. It never touches UDP or media.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{options, MethodRouter};
use serde::Serialize;
use sfu::{IceFragment, PatchOutcome, Role, SessionInfo, Sfu, SfuError};

pub mod sdpfrag;

/// Largest SDP offer or fragment we read (real offers are 2–12 KB).
pub const MAX_SDP_BYTES: usize = 128 * 1024;
/// What clients are told to wait when a room is not live yet, in seconds.
pub const NOT_LIVE_RETRY_AFTER: u32 = 2;
/// What clients are told to wait when the server is full, in seconds.
pub const CAPACITY_RETRY_AFTER: u32 = 10;

pub const SDP: &str = "application/sdp";
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
pub const PROBLEM: &str = "application/problem+json";

/// The rooms that exist, who may publish into them and who may watch them
/// (the binary implements it over its room database).
pub trait RoomDirectory: Send + Sync + 'static {
    fn room_exists(&self, room: &str) -> bool;
    /// Whether `key` is the room's stream key (compared in constant time).
    fn stream_key_matches(&self, room: &str, key: &str) -> bool;
    /// Whether a viewer presenting `token` (a viewer token, if any) may
    /// watch `room`. Public rooms admit anyone; private rooms need a valid,
    /// unexpired token for that room. The WHEP (and HLS) edges ask.
    fn viewer_access(&self, room: &str, token: Option<&str>) -> ViewerAccess {
        let _ = (room, token);
        ViewerAccess::Allowed {
            max_viewers: None,
            gop_cache: true,
        }
    }
}

/// The answer of [`RoomDirectory::viewer_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerAccess {
    /// Watch; with at most `max_viewers` WebRTC viewers at once, if set,
    /// starting from the cached GOP if `gop_cache`.
    Allowed {
        max_viewers: Option<usize>,
        gop_cache: bool,
    },
    /// A private room, and no token was presented.
    TokenRequired,
    /// The token is malformed, expired, or not for this room.
    TokenRefused,
    /// The room is served over LL-HLS only: no WebRTC viewers.
    HlsOnly,
}

/// A STUN or TURN server handed to clients in `Link: rel="ice-server"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct IceServer {
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

impl IceServer {
    /// One RFC 8288 Link value (one header per server: OBS splits naively).
    pub fn link_value(&self) -> String {
        let mut v = format!("<{}>; rel=\"ice-server\"", self.url);
        if let (Some(u), Some(c)) = (&self.username, &self.credential) {
            v.push_str(&format!(
                "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                quote_escape(u),
                quote_escape(c)
            ));
        }
        v
    }
}

fn quote_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Everything the WHIP and WHEP handlers need.
#[derive(Clone)]
pub struct Wish {
    pub sfu: Sfu,
    pub rooms: Arc<dyn RoomDirectory>,
    pub ice_servers: Arc<Vec<IceServer>>,
}

// ------------------------------------------------------------------ problems

/// An RFC 9457 problem response.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip)]
    pub retry_after: Option<u32>,
    #[serde(skip)]
    pub www_authenticate: bool,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("https://dionysia.dev/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
            www_authenticate: false,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        p.www_authenticate = true;
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (status, [(header::CONTENT_TYPE, PROBLEM)], body).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.www_authenticate {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dionysia\""),
            );
        }
        r
    }
}

impl From<SfuError> for Problem {
    fn from(e: SfuError) -> Problem {
        let detail = e.to_string();
        match e {
            SfuError::BadOffer(_) => Problem::new(StatusCode::BAD_REQUEST, "bad-sdp", detail),
            SfuError::BadFragment(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "bad-sdpfrag", detail)
            }
            SfuError::NoUsableMedia { .. } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "no-usable-media", detail)
            }
            SfuError::PublisherExists(_) => {
                Problem::new(StatusCode::CONFLICT, "publisher-exists", detail)
            }
            SfuError::NotLive(_) => Problem::new(StatusCode::CONFLICT, "not-live", detail)
                .retry_after(NOT_LIVE_RETRY_AFTER),
            SfuError::NoSession => Problem::not_found(detail),
            SfuError::BadLayer(_) => Problem::new(StatusCode::BAD_REQUEST, "bad-layer", detail),
            SfuError::StaleIceSession => {
                Problem::new(StatusCode::PRECONDITION_FAILED, "stale-etag", detail)
            }
            SfuError::AtCapacity(_) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "at-capacity", detail)
                    .retry_after(CAPACITY_RETRY_AFTER)
            }
            SfuError::Stopped => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", detail).retry_after(1)
            }
        }
    }
}

// -------------------------------------------------------------------- bodies

/// The media type of a request, without parameters, lowercased.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Reads a text body of the given media type: `415` for another type, `413`
/// past [`MAX_SDP_BYTES`], `400` for non-UTF-8 or empty bodies.
pub async fn read_text_body(
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<String, Problem> {
    match media_type(headers) {
        Some(t) if t == expected => {}
        other => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "expected Content-Type {expected}, got {}",
                    other.as_deref().unwrap_or("none")
                ),
            ))
        }
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_SDP_BYTES)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("the body is larger than {MAX_SDP_BYTES} bytes"),
            )
        })?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "bad-sdp", "the body is not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-sdp",
            "the body is empty",
        ));
    }
    Ok(text)
}

/// Quick sanity checks before the SDP reaches str0m, with clear errors.
pub fn check_offer(sdp: &str) -> Result<(), Problem> {
    if !sdp.trim_start().starts_with("v=0") {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-sdp",
            "an SDP offer starts with v=0",
        ));
    }
    if !sdp.lines().any(|l| l.starts_with("m=")) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-sdp",
            "the offer has no m= section",
        ));
    }
    Ok(())
}

/// The bearer token of a request (RFC 6750 §2.1), if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The ETag of an ICE session: its ufrag, as a strong entity-tag.
pub fn etag(ufrag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{ufrag}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Builds the `201 Created` for a new session.
pub fn created(
    w: &Wish,
    location: String,
    answer: sfu::SessionAnswer,
    extra_links: &[String],
) -> Response {
    let mut r = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, SDP)],
        answer.sdp,
    )
        .into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::ETAG, etag(&answer.ice_ufrag));
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    for s in w.ice_servers.iter() {
        if let Ok(v) = HeaderValue::from_str(&s.link_value()) {
            h.append(header::LINK, v);
        }
    }
    for l in extra_links {
        if let Ok(v) = HeaderValue::from_str(l) {
            h.append(header::LINK, v);
        }
    }
    r
}

// ------------------------------------------------------------------ sessions

/// `PATCH`, `DELETE`, `GET`/`HEAD` and `OPTIONS` on a session resource
/// (`/{whip,whep}/{room}/{session}`).
pub fn session_resource(role: Role) -> MethodRouter<Wish> {
    axum::routing::patch(move |s, p, h, b| patch_session(s, p, h, b, role))
        .delete(move |s, p, h| delete_session(s, p, h, role))
        .get(|| async { StatusCode::NO_CONTENT })
        .options(|| async {
            (
                StatusCode::OK,
                [
                    (header::ALLOW, "PATCH, DELETE, GET, HEAD, OPTIONS"),
                    (header::HeaderName::from_static("accept-patch"), SDPFRAG),
                    (
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        "PATCH, DELETE, GET, HEAD, OPTIONS",
                    ),
                    (
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        "Authorization, Content-Type, If-Match",
                    ),
                ],
            )
        })
}

/// `OPTIONS` on an endpoint: CORS and `Accept-Post`; ice-server Links only
/// when it is not a browser preflight (W 4.6).
pub fn endpoint_options() -> MethodRouter<Wish> {
    options(|State(w): State<Wish>, headers: HeaderMap| async move {
        let preflight = headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut r = (
            StatusCode::OK,
            [
                (header::ALLOW, "POST, OPTIONS"),
                (header::HeaderName::from_static("accept-post"), SDP),
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "POST, PATCH, DELETE, GET, HEAD, OPTIONS",
                ),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "Authorization, Content-Type, If-Match",
                ),
                (header::ACCESS_CONTROL_MAX_AGE, "86400"),
            ],
        )
            .into_response();
        if !preflight {
            for s in w.ice_servers.iter() {
                if let Ok(v) = HeaderValue::from_str(&s.link_value()) {
                    r.headers_mut().append(header::LINK, v);
                }
            }
        }
        r
    })
}

/// A WHIP session is the streamer's: PATCH and DELETE need the room's
/// stream key too, so a leaked session URL cannot end a stream.
fn authorize_session(w: &Wish, headers: &HeaderMap, room: &str, role: Role) -> Result<(), Problem> {
    if !w.rooms.room_exists(room) {
        return Err(Problem::not_found(format!("no room named {room:?}")));
    }
    if role != Role::Publisher {
        return Ok(());
    }
    match bearer(headers) {
        Some(key) if w.rooms.stream_key_matches(room, key) => Ok(()),
        Some(_) => Err(Problem::unauthorized("the stream key is not this room's")),
        None => Err(Problem::unauthorized(
            "WHIP session requests need Authorization: Bearer <stream key>",
        )),
    }
}

async fn patch_session(
    State(w): State<Wish>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
    role: Role,
) -> Result<Response, Problem> {
    authorize_session(&w, &headers, &room, role)?;
    let info = SessionInfo {
        room,
        role,
        session,
    };
    let Some(if_match) = headers.get(header::IF_MATCH) else {
        // Unknown sessions are 404 whatever the preconditions.
        w.sfu.ice_ufrag(info.clone()).await?;
        return Err(Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "if-match-required",
            "PATCH needs If-Match: the session's ETag for trickle, \"*\" for an ICE restart",
        ));
    };
    let expected = parse_if_match(if_match)?;
    let text = read_text_body(&headers, body, SDPFRAG).await.or_else(|p| {
        // An empty fragment is a valid (if pointless) trickle.
        if p.status == 400 {
            Ok(String::new())
        } else {
            Err(p)
        }
    })?;
    let frag: IceFragment = sdpfrag::parse(&text)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-sdpfrag", e))?;
    let mid_line = sdpfrag::first_media(&text);
    match w.sfu.patch(info, frag, expected).await? {
        PatchOutcome::Trickled => Ok(StatusCode::NO_CONTENT.into_response()),
        PatchOutcome::Restarted {
            ufrag,
            pwd,
            candidates,
        } => {
            let body = sdpfrag::restart_answer(&ufrag, &pwd, &candidates, mid_line);
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, SDPFRAG)], body).into_response();
            r.headers_mut().insert(header::ETAG, etag(&ufrag));
            Ok(r)
        }
    }
}

/// `If-Match`: `*` (any, quoted or not) → `None`; else the values of its
/// strong entity-tags. If-Match compares strongly (RFC 9110 §13.1.1), so a
/// weak tag (`W/"…"`) never matches.
fn parse_if_match(v: &HeaderValue) -> Result<Option<Vec<String>>, Problem> {
    let s = v
        .to_str()
        .map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-if-match",
                "If-Match is not ASCII",
            )
        })?
        .trim();
    if s == "*" || s == "\"*\"" {
        return Ok(None);
    }
    let tags: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.starts_with("W/"))
        .map(|t| t.trim_matches('"').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    Ok(Some(tags))
}

async fn delete_session(
    State(w): State<Wish>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    role: Role,
) -> Result<Response, Problem> {
    authorize_session(&w, &headers, &room, role)?;
    w.sfu
        .end(SessionInfo {
            room,
            role,
            session,
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `404` for paths nothing serves, as a problem body.
pub async fn not_found_fallback() -> Problem {
    Problem::not_found("nothing is served at this path")
}

/// `405` with a problem body (axum's own has none); `Allow` is kept by the caller.
pub async fn method_not_allowed_fallback() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this resource does not support that method",
    )
}

// ---------------------------------------------------------------------- CORS

/// Lets browser pages on any origin use the endpoints and read the headers
/// WHIP/WHEP clients need. Authentication is by bearer token, never cookies,
/// so a wildcard origin exposes nothing.
pub async fn cors(request: Request<Body>, next: Next) -> Response {
    let is_options = request.method() == Method::OPTIONS;
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After"),
    );
    if is_options && !h.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, If-Match"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_values() {
        let s = IceServer {
            url: "stun:stun.example.net".into(),
            username: None,
            credential: None,
        };
        assert_eq!(
            s.link_value(),
            "<stun:stun.example.net>; rel=\"ice-server\""
        );
        let t = IceServer {
            url: "turn:turn.example.net?transport=udp".into(),
            username: Some("user".into()),
            credential: Some("pa\"ss".into()),
        };
        assert_eq!(
            t.link_value(),
            "<turn:turn.example.net?transport=udp>; rel=\"ice-server\"; username=\"user\"; \
             credential=\"pa\\\"ss\"; credential-type=\"password\""
        );
    }

    #[test]
    fn if_match_forms() {
        let p = |s: &str| parse_if_match(&HeaderValue::from_str(s).unwrap()).unwrap();
        assert_eq!(p("*"), None);
        assert_eq!(p("\"*\""), None);
        assert_eq!(p("\"abc\""), Some(vec!["abc".to_string()]));
        assert_eq!(p("W/\"abc\", \"def\""), Some(vec!["def".to_string()]));
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  s3cret "),
        );
        assert_eq!(bearer(&h), Some("s3cret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer x"));
        assert_eq!(bearer(&h), Some("x"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/SDP; charset=utf-8"),
        );
        assert_eq!(media_type(&h).as_deref(), Some("application/sdp"));
    }

    #[test]
    fn offer_sanity() {
        assert!(check_offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n").is_ok());
        assert_eq!(check_offer("hello").unwrap_err().status, 400);
        assert_eq!(check_offer("v=0\r\ns=-\r\n").unwrap_err().status, 400);
    }
}
