//! The room API under `/api/v1`: rooms (CRUD with live state), stream-key
//! rotation, kicking the publisher and viewers, viewer tokens for private
//! rooms, webhook delivery results. JSON in and out, RFC 9457 problems for
//! every error, and an OpenAPI 3.1 document generated from this code at
//! `/api/v1/openapi.json`.
//!
//! ```text
//!  Authorization: Bearer <admin token> ─► require_admin ─► handler ─┬─► dyn Store (rooms, keys, settings)
//!                                                                   └─► sfu::Sfu (live state, kick, close_room)
//! ```
//!
//! Every route but the OpenAPI document needs an admin token, and checks it
//! before looking anything up: without one, nothing about any room (even
//! whether it exists) can be learned. `{room}` in a path is a room's id or
//! its name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sfu::{RoomStatus, Sfu};
use tracing::{info, warn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use wish::Problem;

use crate::auth::{
    constant_time_eq, new_stream_key, sha256_hex, unix_now, ViewerClaims, ViewerTokenKey,
};
use crate::config::validate_room_name;
use crate::rooms::{
    new_room, validate_settings, HlsAudience, LADDER_HEIGHTS, MAX_LADDER_RUNGS, MAX_ROOMS,
};
use crate::store::{RoomSettings, Store, StoreError, StoredRoom};
use crate::webhooks::KnownKeys;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;
/// Viewer-token lifetimes, in seconds.
const DEFAULT_TOKEN_TTL: u32 = 3600;
const MIN_TOKEN_TTL: u32 = 60;
const MAX_TOKEN_TTL: u32 = 7 * 24 * 3600;
/// Delivery attempts listed by default and at most.
const DEFAULT_DELIVERIES: usize = 100;
const MAX_DELIVERIES: usize = 1000;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub store: Arc<dyn Store>,
    pub sfu: Sfu,
    /// SHA-256 (hex) of the admin tokens from the config.
    pub config_admin_hashes: Arc<Vec<String>>,
    pub viewer_tokens: Arc<ViewerTokenKey>,
    pub keys: KnownKeys,
    pub hls_audience: Arc<HlsAudience>,
    /// When the server started (`dionysia_uptime_seconds`).
    pub started: Instant,
    /// Base URL for the URLs handed out; else from the request's Host.
    pub public_url: Option<String>,
    pub http_listen: SocketAddr,
}

/// The routes under `/api/v1`.
pub fn router(api: Api) -> Router {
    let doc = ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_string());
    let authed = Router::new()
        .route("/rooms", get(list_rooms).post(create_room))
        .route(
            "/rooms/{room}",
            get(get_room).patch(update_room).delete(delete_room),
        )
        .route("/rooms/{room}/rotate-key", post(rotate_key))
        .route("/rooms/{room}/publisher", delete(kick_publisher))
        .route("/rooms/{room}/viewers", get(list_viewers))
        .route("/rooms/{room}/viewers/{session}", delete(kick_viewer))
        .route("/rooms/{room}/viewer-tokens", post(create_viewer_token))
        .route("/webhooks/deliveries", get(list_deliveries))
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_admin,
        ));
    let v1 = Router::new()
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        .merge(authed)
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this resource does not take that method",
            )
        })
        .fallback(|| async { Problem::not_found("no such API resource") })
        .with_state(api.clone());
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_admin,
        ))
        .with_state(api);
    Router::new().nest("/api/v1", v1).merge(metrics)
}

/// `GET /metrics`: Prometheus text exposition (admin token required: the
/// labels name rooms, private ones too).
async fn metrics(State(api): State<Api>) -> Result<Response, Problem> {
    let rooms = api.store.room_count().map_err(store_problem)?;
    let statuses = api.sfu.rooms_status().await;
    let now = Instant::now();
    let hls = |room: &str| api.hls_audience.count(room, now);
    let text = crate::metrics::render(&crate::metrics::Snapshot {
        rooms,
        statuses: &statuses,
        hls_viewers: &hls,
        uptime_secs: api.started.elapsed().as_secs_f64(),
        ladder_rungs_dropped: hls_bridge::ladder::RUNGS_DROPPED.load(Ordering::Relaxed),
        ladder_frames_dropped: hls_bridge::ladder::FRAMES_DROPPED.load(Ordering::Relaxed),
        process: crate::metrics::Process::read(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// ------------------------------------------------------------------ schemas

/// Settings of a room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Settings {
    /// Viewers need a viewer token (`POST /rooms/{room}/viewer-tokens`).
    private: bool,
    /// Most WebRTC viewers at once; `null`: no limit but the server's.
    max_viewers: Option<u32>,
    /// Serve the room over LL-HLS too.
    hls: bool,
    /// Serve the room over WebRTC (WHEP). `false` makes it HLS-only: WHEP
    /// answers `503` (type `hls-only`) with a `Link` to the playlist.
    webrtc: bool,
    /// Heights of the HLS renditions transcoded (openh264) from a
    /// single-layer H.264 publish, beside the source; never above the
    /// source's height. Simulcast publishes are their own ladder.
    ladder: Vec<u32>,
    /// Keep the current GOP so new viewers start at once.
    gop_cache: bool,
}

impl From<&RoomSettings> for Settings {
    fn from(s: &RoomSettings) -> Self {
        Settings {
            private: s.private,
            max_viewers: s.max_viewers,
            hls: s.hls,
            webrtc: s.webrtc,
            ladder: s.ladder.clone(),
            gop_cache: s.gop_cache,
        }
    }
}

/// Ready-to-paste URLs of a room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoomUrls {
    /// WHIP endpoint; the stream key is the bearer token.
    whip: String,
    /// WHEP endpoint; private rooms need a viewer token as bearer.
    whep: String,
    /// LL-HLS multivariant playlist (private rooms: add `?token=`).
    hls: String,
    /// RTMP ingest URL, stream key included.
    rtmp: String,
    publish_page: String,
    watch_page: String,
}

/// A simulcast layer (or the only layer) of a track.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Layer {
    /// The simulcast rid; `null` without simulcast.
    rid: Option<String>,
    /// Bits per second, measured.
    bitrate: u64,
    /// Video height in pixels (0 until a keyframe was seen, and for audio).
    height: u32,
    /// Packets arrived recently.
    active: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Track {
    /// `audio` or `video`.
    kind: String,
    /// e.g. `H264`, `VP8`, `opus`.
    codec: String,
    layers: Vec<Layer>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Publisher {
    session: String,
    /// `whip` (later also `rtmp`).
    ingest: String,
    /// ICE and DTLS are up.
    connected: bool,
    uptime_secs: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewerCounts {
    webrtc: u32,
    /// LL-HLS viewers (0 until the HLS output reports them).
    hls: u32,
}

/// A room's live state (in memory, not stored).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Live {
    /// A publisher is connected and sending.
    live: bool,
    /// Seconds since the current publisher's session began.
    uptime_secs: Option<f64>,
    publisher: Option<Publisher>,
    tracks: Vec<Track>,
    viewers: ViewerCounts,
}

/// A room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Room {
    id: String,
    name: String,
    /// The publishing secret (WHIP bearer token, RTMP stream key).
    stream_key: String,
    settings: Settings,
    urls: RoomUrls,
    live: Live,
    /// Unix seconds.
    created_at: i64,
    updated_at: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoomList {
    rooms: Vec<Room>,
}

/// A new room: a name, and settings that default as shown.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct CreateRoom {
    /// Goes into URLs: 1–64 of `A-Z a-z 0-9 _ -`, unique.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    name: String,
    /// Default false.
    #[serde(default)]
    private: Option<bool>,
    /// 1–100000; absent or `null`: no limit.
    #[serde(default, deserialize_with = "opt_whole")]
    #[schema(minimum = 1, maximum = 100000)]
    max_viewers: Option<u32>,
    /// Default true.
    #[serde(default)]
    hls: Option<bool>,
    /// Default true; `false`: HLS-only.
    #[serde(default)]
    webrtc: Option<bool>,
    /// Up to 8 heights of 144–2160; `[]`: source only. Default `[480, 240]`.
    #[serde(default, deserialize_with = "opt_whole_list")]
    #[schema(schema_with = ladder_schema)]
    ladder: Option<Vec<u32>>,
    /// Default true.
    #[serde(default)]
    gop_cache: Option<bool>,
}

/// Settings to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct UpdateRoom {
    #[serde(default)]
    private: Option<bool>,
    /// 1–100000; 0 removes the limit.
    #[serde(default, deserialize_with = "opt_whole")]
    #[schema(minimum = 0, maximum = 100000)]
    max_viewers: Option<u32>,
    #[serde(default)]
    hls: Option<bool>,
    #[serde(default)]
    webrtc: Option<bool>,
    /// Up to 8 heights of 144–2160; `[]`: source only.
    #[serde(default, deserialize_with = "opt_whole_list")]
    #[schema(schema_with = ladder_schema)]
    ladder: Option<Vec<u32>>,
    #[serde(default)]
    gop_cache: Option<bool>,
}

/// A whole number that JSON may spell `720` or `720.0` (JSON Schema counts
/// both as integers).
fn whole_number<E: serde::de::Error>(v: &serde_json::Value) -> Result<u32, E> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
                .map(|f| f as u64)
        })
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            E::custom(format!(
                "expected a whole number from 0 to {}, got {v}",
                u32::MAX
            ))
        })
}

fn opt_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => whole_number(&v).map(Some),
    }
}

fn opt_whole_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    match Option::<Vec<serde_json::Value>>::deserialize(d)? {
        None => Ok(None),
        Some(list) => list
            .iter()
            .map(whole_number)
            .collect::<Result<_, _>>()
            .map(Some),
    }
}

/// The ladder's schema: bounded heights, bounded length.
fn ladder_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(*LADDER_HEIGHTS.start()))
                .maximum(Some(*LADDER_HEIGHTS.end())),
        )
        .max_items(Some(MAX_LADDER_RUNGS))
        .build()
}

/// A connected (or connecting) WebRTC viewer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Viewer {
    session: String,
    connected: bool,
    uptime_secs: f64,
    /// Available bandwidth estimated from the viewer's feedback, bits/s.
    estimated_bitrate: Option<u64>,
    /// rid of the video layer forwarded (`null` without simulcast).
    layer: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewerList {
    viewers: Vec<Viewer>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct CreateViewerToken {
    /// Lifetime in seconds, 60–604800; default 3600.
    #[serde(default, deserialize_with = "opt_whole")]
    #[schema(minimum = 60, maximum = 604800)]
    ttl_secs: Option<u32>,
}

/// A signed viewer token (JWT, HS256) for one room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewerToken {
    /// Send as `Authorization: Bearer <token>` to WHEP, or `?token=` on HLS URLs.
    token: String,
    room: String,
    /// Unix seconds.
    expires_at: i64,
    whep_url: String,
    hls_url: String,
}

/// One attempt to deliver one webhook event to one URL.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookDelivery {
    event_id: String,
    /// `room.started`, `room.stopped` or `publisher.rejected`.
    event: String,
    room: Option<String>,
    url: String,
    /// 1 for the first try.
    attempt: u32,
    /// The receiver's HTTP status, if it answered.
    status: Option<u16>,
    error: Option<String>,
    delivered: bool,
    /// Unix seconds.
    at: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookDeliveryList {
    deliveries: Vec<WebhookDelivery>,
}

/// An RFC 9457 problem (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// How many attempts, newest first: 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

// ----------------------------------------------------------- OpenAPI doc

/// The problem responses every operation may give.
struct Problems;

impl utoipa::IntoResponses for Problems {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        [
            (400, "malformed request (path, query or JSON syntax)"),
            (401, "no admin token, or not a valid one"),
            (404, "no such room or resource"),
            (405, "method not allowed"),
            (409, "conflict (name taken, room limit)"),
            (413, "body too large"),
            (415, "body is not JSON"),
            (422, "JSON of the wrong shape, or values out of range"),
            (429, "too many failed authentications from this address"),
            (503, "the media engine is not running"),
        ]
        .into_iter()
        .map(|(code, what)| {
            let r = ResponseBuilder::new()
                .description(what)
                .content(
                    wish::PROBLEM,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build();
            (code.to_string(), RefOr::T(r))
        })
        .collect()
    }
}

struct AdminSecurity;

impl Modify for AdminSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin token: from --admin-token, or printed once at first start",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dionysia room API",
        description = "Rooms, stream keys, viewer tokens, live state and webhook deliveries of a Dionysia server. Errors are RFC 9457 problems.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        list_rooms,
        create_room,
        get_room,
        update_room,
        delete_room,
        rotate_key,
        kick_publisher,
        list_viewers,
        kick_viewer,
        create_viewer_token,
        list_deliveries
    ),
    components(schemas(ProblemDoc)),
    modifiers(&AdminSecurity),
    security(("admin_token" = []))
)]
struct ApiDoc;

// --------------------------------------------------------------- plumbing

/// A path parameter, with failures as problems.
pub struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-path", e.body_text()))
    }
}

/// Reads a JSON body: `413` past [`MAX_BODY`], `415` when it is not JSON,
/// `400` for bad syntax, `422` for the wrong shape. An empty body is
/// `T::default()` when `optional`.
async fn json_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
    optional: bool,
) -> Result<T, Problem> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    })?;
    if bytes.is_empty() && optional {
        return Ok(T::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let t = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be application/json",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-json", e.to_string()))?;
    // An optional body may also be JSON `null`; otherwise only an object
    // (serde would read a struct from an array, positionally).
    let value = match value {
        serde_json::Value::Null if optional => return Ok(T::default()),
        v @ serde_json::Value::Object(_) => v,
        _ => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "the body is a JSON object",
            ))
        }
    };
    serde_json::from_value(value).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            e.to_string(),
        )
    })
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", detail)
}

fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::NameTaken(name) => Problem::new(
            StatusCode::CONFLICT,
            "name-taken",
            format!("a room named {name:?} exists already"),
        ),
        StoreError::Backend(e) => {
            warn!("database: {e}");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage",
                "the database is not available",
            )
            .retry_after(1)
        }
    }
}

/// Every route but the OpenAPI document: a valid admin token, checked in
/// constant time against the hashes of the configured and stored tokens.
async fn require_admin(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(token) = wish::bearer(request.headers()) else {
        return Problem::unauthorized("the room API needs Authorization: Bearer <admin token>")
            .into_response();
    };
    let hash = sha256_hex(token);
    let stored = match api.store.admin_token_hashes() {
        Ok(h) => h,
        Err(e) => return store_problem(e).into_response(),
    };
    let ok = api
        .config_admin_hashes
        .iter()
        .chain(stored.iter())
        .fold(false, |ok, h| {
            constant_time_eq(h.as_bytes(), hash.as_bytes()) | ok
        });
    if !ok {
        return Problem::unauthorized("not a valid admin token").into_response();
    }
    next.run(request).await
}

/// The room a path names, by id or by name.
fn find_room(api: &Api, key: &str) -> Result<StoredRoom, Problem> {
    let not_found = || Problem::not_found(format!("no room {key:?}"));
    if validate_room_name(key).is_err() {
        return Err(not_found());
    }
    let by_id = api.store.room_by_id(key).map_err(store_problem)?;
    let room = match by_id {
        Some(r) => Some(r),
        None => api.store.room_by_name(key).map_err(store_problem)?,
    };
    room.ok_or_else(not_found)
}

/// The base URL clients reach us at.
fn base_url(api: &Api, headers: &HeaderMap) -> String {
    if let Some(u) = &api.public_url {
        return u.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    match host {
        Some(h) => format!("http://{h}"),
        None if api.http_listen.ip().is_unspecified() => {
            format!("http://localhost:{}", api.http_listen.port())
        }
        None => format!("http://{}", api.http_listen),
    }
}

fn urls(base: &str, room: &StoredRoom) -> RoomUrls {
    // RTMP listens on its own port (1935 by default) on the same host.
    let host = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("localhost");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    RoomUrls {
        whip: format!("{base}/whip/{}", room.name),
        whep: format!("{base}/whep/{}", room.name),
        hls: format!("{base}/hls/{}/index.m3u8", room.name),
        rtmp: format!("rtmp://{host}/live/{}", room.stream_key),
        publish_page: format!("{base}/publish/{}", room.name),
        watch_page: format!("{base}/watch/{}", room.name),
    }
}

fn live(status: Option<&RoomStatus>, hls_viewers: usize) -> Live {
    let hls = u32::try_from(hls_viewers).unwrap_or(u32::MAX);
    let Some(s) = status else {
        return Live {
            live: false,
            uptime_secs: None,
            publisher: None,
            tracks: Vec::new(),
            viewers: ViewerCounts { webrtc: 0, hls },
        };
    };
    Live {
        live: s.live,
        uptime_secs: s.publisher.as_ref().map(|p| p.uptime_secs),
        publisher: s.publisher.as_ref().map(|p| Publisher {
            session: p.session.clone(),
            ingest: p.ingest.clone(),
            connected: p.connected,
            uptime_secs: p.uptime_secs,
        }),
        tracks: s
            .tracks
            .iter()
            .map(|t| Track {
                kind: t.kind.clone(),
                codec: t.codec.clone(),
                layers: t
                    .layers
                    .iter()
                    .map(|l| Layer {
                        rid: l.rid.clone(),
                        bitrate: l.bitrate,
                        height: l.height,
                        active: l.active,
                    })
                    .collect(),
            })
            .collect(),
        viewers: ViewerCounts {
            webrtc: u32::try_from(s.viewers.len()).unwrap_or(u32::MAX),
            hls,
        },
    }
}

/// A room with its live state, as the answer of a request.
fn room_response(
    api: &Api,
    headers: &HeaderMap,
    room: &StoredRoom,
    status: Option<&RoomStatus>,
) -> Response {
    Json(room_view(api, &base_url(api, headers), room, status)).into_response()
}

fn room_view(api: &Api, base: &str, r: &StoredRoom, status: Option<&RoomStatus>) -> Room {
    Room {
        id: r.id.clone(),
        name: r.name.clone(),
        stream_key: r.stream_key.clone(),
        settings: Settings::from(&r.settings),
        urls: urls(base, r),
        live: live(status, api.hls_audience.count(&r.name, Instant::now())),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn check_ladder(ladder: &Option<Vec<u32>>) -> Result<(), Problem> {
    let settings = RoomSettings {
        ladder: ladder.clone().unwrap_or_default(),
        ..RoomSettings::default()
    };
    validate_settings(&settings).map_err(invalid)
}

// ---------------------------------------------------------------- handlers

/// List every room with its live state.
#[utoipa::path(
    get,
    path = "/api/v1/rooms",
    tag = "rooms",
    responses((status = 200, description = "all rooms, by name", body = RoomList), Problems)
)]
async fn list_rooms(State(api): State<Api>, headers: HeaderMap) -> Result<Response, Problem> {
    let rooms = api.store.rooms().map_err(store_problem)?;
    let statuses: BTreeMap<String, RoomStatus> = api
        .sfu
        .rooms_status()
        .await
        .into_iter()
        .map(|s| (s.room.clone(), s))
        .collect();
    let base = base_url(&api, &headers);
    let rooms = rooms
        .iter()
        .map(|r| room_view(&api, &base, r, statuses.get(&r.name)))
        .collect();
    Ok(Json(RoomList { rooms }).into_response())
}

/// Create a room; the answer carries its stream key and URLs.
#[utoipa::path(
    post,
    path = "/api/v1/rooms",
    tag = "rooms",
    request_body = CreateRoom,
    responses(
        (status = 201, description = "created", body = Room,
         headers(("location" = String, description = "the room's API URL"))),
        Problems
    )
)]
async fn create_room(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let req: CreateRoom = json_body(&headers, body, false).await?;
    validate_room_name(&req.name).map_err(|e| invalid(e.to_string()))?;
    check_ladder(&req.ladder)?;
    let defaults = RoomSettings::default();
    let settings = RoomSettings {
        private: req.private.unwrap_or(defaults.private),
        max_viewers: req.max_viewers,
        hls: req.hls.unwrap_or(defaults.hls),
        webrtc: req.webrtc.unwrap_or(defaults.webrtc),
        ladder: req.ladder.unwrap_or(defaults.ladder),
        gop_cache: req.gop_cache.unwrap_or(defaults.gop_cache),
    };
    validate_settings(&settings).map_err(invalid)?;
    if api.store.room_count().map_err(store_problem)? >= MAX_ROOMS {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "room-limit",
            format!("this server has its maximum of {MAX_ROOMS} rooms"),
        ));
    }
    let room = new_room(&req.name, settings);
    api.store.insert_room(&room).map_err(store_problem)?;
    api.keys.set(&room.name, &room.stream_key);
    info!(room = room.name, id = room.id, "room created");
    let view = room_view(&api, &base_url(&api, &headers), &room, None);
    let mut r = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/rooms/{}", room.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// One room: settings, URLs, and live state (publisher, tracks and layers, viewer counts).
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}",
    tag = "rooms",
    params(("room" = String, Path, description = "the room's id or name")),
    responses((status = 200, description = "the room", body = Room), Problems)
)]
async fn get_room(
    State(api): State<Api>,
    ApiPath(key): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let room = find_room(&api, &key)?;
    let status = api.sfu.room_status(&room.name).await;
    Ok(room_response(&api, &headers, &room, status.as_ref()))
}

/// Change settings. Making a room private, or HLS-only (`webrtc: false`),
/// ends the sessions of its current WebRTC viewers.
#[utoipa::path(
    patch,
    path = "/api/v1/rooms/{room}",
    tag = "rooms",
    params(("room" = String, Path, description = "the room's id or name")),
    request_body = UpdateRoom,
    responses((status = 200, description = "the updated room", body = Room), Problems)
)]
async fn update_room(
    State(api): State<Api>,
    ApiPath(key): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let mut room = find_room(&api, &key)?;
    let req: UpdateRoom = json_body(&headers, body, false).await?;
    check_ladder(&req.ladder)?;
    let (was_private, was_webrtc) = (room.settings.private, room.settings.webrtc);
    let s = &mut room.settings;
    if let Some(v) = req.private {
        s.private = v;
    }
    if let Some(v) = req.max_viewers {
        s.max_viewers = (v > 0).then_some(v);
    }
    if let Some(v) = req.hls {
        s.hls = v;
    }
    if let Some(v) = req.webrtc {
        s.webrtc = v;
    }
    if let Some(v) = req.ladder {
        s.ladder = v;
    }
    if let Some(v) = req.gop_cache {
        s.gop_cache = v;
    }
    validate_settings(&room.settings).map_err(invalid)?;
    room.updated_at = unix_now();
    if !api.store.update_room(&room).map_err(store_problem)? {
        return Err(Problem::not_found(format!("no room {key:?}")));
    }
    let mut status = api.sfu.room_status(&room.name).await;
    let private_now = room.settings.private && !was_private;
    if private_now || (was_webrtc && !room.settings.webrtc) {
        // Viewers admitted while the room was public hold no token; an
        // HLS-only room has no WebRTC viewers.
        if let Some(s) = &status {
            for v in &s.viewers {
                let _ = api.sfu.kick(&room.name, &v.session).await;
            }
        }
        status = api.sfu.room_status(&room.name).await;
    }
    Ok(room_response(&api, &headers, &room, status.as_ref()))
}

/// Delete a room; every session in it ends.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}",
    tag = "rooms",
    params(("room" = String, Path, description = "the room's id or name")),
    responses((status = 204, description = "deleted; its sessions ended"), Problems)
)]
async fn delete_room(
    State(api): State<Api>,
    ApiPath(key): ApiPath<String>,
) -> Result<Response, Problem> {
    let room = find_room(&api, &key)?;
    if !api.store.delete_room(&room.id).map_err(store_problem)? {
        return Err(Problem::not_found(format!("no room {key:?}")));
    }
    api.keys.remove(&room.name);
    api.sfu.close_room(&room.name).await;
    info!(room = room.name, "room deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Give the room a new stream key. The old key stops working at once and
/// the live publisher (if any) is disconnected; viewers stay and resume when
/// the streamer reconnects with the new key.
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/rotate-key",
    tag = "rooms",
    params(("room" = String, Path, description = "the room's id or name")),
    responses((status = 200, description = "the room with its new key", body = Room), Problems)
)]
async fn rotate_key(
    State(api): State<Api>,
    ApiPath(key): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let mut room = find_room(&api, &key)?;
    room.stream_key = new_stream_key();
    room.updated_at = unix_now();
    if !api.store.update_room(&room).map_err(store_problem)? {
        return Err(Problem::not_found(format!("no room {key:?}")));
    }
    api.keys.set(&room.name, &room.stream_key);
    if let Some(p) = api
        .sfu
        .room_status(&room.name)
        .await
        .and_then(|s| s.publisher)
    {
        let _ = api.sfu.kick(&room.name, &p.session).await;
    }
    info!(room = room.name, "stream key rotated");
    let status = api.sfu.room_status(&room.name).await;
    Ok(room_response(&api, &headers, &room, status.as_ref()))
}

/// Disconnect the room's publisher (it may reconnect with the key; rotate the key to stop it).
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}/publisher",
    tag = "sessions",
    params(("room" = String, Path, description = "the room's id or name")),
    responses((status = 204, description = "the publisher's session ended"), Problems)
)]
async fn kick_publisher(
    State(api): State<Api>,
    ApiPath(key): ApiPath<String>,
) -> Result<Response, Problem> {
    let room = find_room(&api, &key)?;
    let Some(p) = api
        .sfu
        .room_status(&room.name)
        .await
        .and_then(|s| s.publisher)
    else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no-publisher",
            format!("room {:?} has no publisher", room.name),
        ));
    };
    api.sfu.kick(&room.name, &p.session).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The room's WebRTC viewers.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/viewers",
    tag = "sessions",
    params(("room" = String, Path, description = "the room's id or name")),
    responses((status = 200, description = "viewer sessions", body = ViewerList), Problems)
)]
async fn list_viewers(
    State(api): State<Api>,
    ApiPath(key): ApiPath<String>,
) -> Result<Response, Problem> {
    let room = find_room(&api, &key)?;
    let viewers = api
        .sfu
        .room_status(&room.name)
        .await
        .map(|s| s.viewers)
        .unwrap_or_default()
        .into_iter()
        .map(|v| Viewer {
            session: v.session,
            connected: v.connected,
            uptime_secs: v.uptime_secs,
            estimated_bitrate: v.estimated_bitrate,
            layer: v.layer,
        })
        .collect();
    Ok(Json(ViewerList { viewers }).into_response())
}

/// End one viewer's session.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}/viewers/{session}",
    tag = "sessions",
    params(
        ("room" = String, Path, description = "the room's id or name"),
        ("session" = String, Path, description = "the viewer's session id")
    ),
    responses((status = 204, description = "the viewer's session ended"), Problems)
)]
async fn kick_viewer(
    State(api): State<Api>,
    ApiPath((key, session)): ApiPath<(String, String)>,
) -> Result<Response, Problem> {
    let room = find_room(&api, &key)?;
    let is_viewer = api
        .sfu
        .room_status(&room.name)
        .await
        .is_some_and(|s| s.viewers.iter().any(|v| v.session == session));
    if !is_viewer {
        return Err(Problem::not_found("no such viewer session in this room"));
    }
    api.sfu.kick(&room.name, &session).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Mint a signed, expiring viewer token for the room (needed to watch a private room).
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/viewer-tokens",
    tag = "rooms",
    params(("room" = String, Path, description = "the room's id or name")),
    request_body(content = Option<CreateViewerToken>, description = "optional; `{}` or no body for the default lifetime"),
    responses((status = 201, description = "a viewer token", body = ViewerToken), Problems)
)]
async fn create_viewer_token(
    State(api): State<Api>,
    ApiPath(key): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let room = find_room(&api, &key)?;
    let req: CreateViewerToken = json_body(&headers, body, true).await?;
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL);
    if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(invalid(format!(
            "ttl_secs is {MIN_TOKEN_TTL} to {MAX_TOKEN_TTL}"
        )));
    }
    let now = unix_now();
    let claims = ViewerClaims {
        room: room.name.clone(),
        room_id: room.id.clone(),
        iat: now,
        exp: now + i64::from(ttl),
    };
    let token = api.viewer_tokens.sign(&claims);
    let u = urls(&base_url(&api, &headers), &room);
    let view = ViewerToken {
        hls_url: format!("{}?token={token}", u.hls),
        whep_url: u.whep,
        token,
        room: room.name,
        expires_at: claims.exp,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Webhook delivery attempts, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/deliveries",
    tag = "webhooks",
    params(DeliveryQuery),
    responses((status = 200, description = "delivery attempts", body = WebhookDeliveryList), Problems)
)]
async fn list_deliveries(
    State(api): State<Api>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let q: DeliveryQuery = serde_urlencoded_limit(query.as_deref().unwrap_or(""))?;
    let limit = match q.limit {
        None => DEFAULT_DELIVERIES,
        Some(n) if (1..=MAX_DELIVERIES as u32).contains(&n) => n as usize,
        Some(_) => return Err(invalid(format!("limit is 1 to {MAX_DELIVERIES}"))),
    };
    let deliveries = api
        .store
        .deliveries(limit)
        .map_err(store_problem)?
        .into_iter()
        .map(|d| WebhookDelivery {
            event_id: d.event_id,
            event: d.event,
            room: d.room,
            url: d.url,
            attempt: d.attempt,
            status: d.status,
            error: d.error,
            delivered: d.delivered,
            at: d.at,
        })
        .collect();
    Ok(Json(WebhookDeliveryList { deliveries }).into_response())
}

/// `limit=N` (other parameters are ignored); `400` when N is not a number.
fn serde_urlencoded_limit(query: &str) -> Result<DeliveryQuery, Problem> {
    let mut limit = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "limit" {
            let n: u32 = v.parse().map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad-query",
                    "limit is a whole number",
                )
            })?;
            limit = Some(n);
        }
    }
    Ok(DeliveryQuery { limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_3_1_and_lists_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/rooms",
            "/api/v1/rooms/{room}",
            "/api/v1/rooms/{room}/rotate-key",
            "/api/v1/rooms/{room}/publisher",
            "/api/v1/rooms/{room}/viewers",
            "/api/v1/rooms/{room}/viewers/{session}",
            "/api/v1/rooms/{room}/viewer-tokens",
            "/api/v1/webhooks/deliveries",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert!(doc["components"]["schemas"]["Problem"].is_object());
        assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
    }

    #[test]
    fn rtmp_urls_drop_the_http_port() {
        let r = new_room("show", RoomSettings::default());
        let u = urls("http://live.example.com:8080", &r);
        assert_eq!(
            u.rtmp,
            format!("rtmp://live.example.com/live/{}", r.stream_key)
        );
        assert_eq!(u.whip, "http://live.example.com:8080/whip/show");
        let u = urls("https://[2001:db8::1]:443", &r);
        assert!(u.rtmp.starts_with("rtmp://[2001:db8::1]/live/"));
    }
}
