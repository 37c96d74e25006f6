//! The room directory the WHIP and WHEP edges ask (who may publish, who may
//! watch), over the store. It reads the store on every request, so a key
//! rotated or a room deleted by the API or the CLI counts at once. Also the
//! gate that makes LL-HLS of private rooms ask for a viewer token.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;
use wish::{Problem, RoomDirectory, ViewerAccess};

use crate::auth::{constant_time_eq, new_room_id, new_stream_key, unix_now, ViewerTokenKey};
use crate::config::validate_room_name;
use crate::store::{RoomSettings, Store, StoredRoom};

/// Most rooms one server keeps.
pub const MAX_ROOMS: usize = 10_000;
/// Bounds of a room's settings.
pub const MAX_VIEWERS_LIMIT: u32 = 100_000;
pub const MAX_LADDER_RUNGS: usize = 8;
pub const LADDER_HEIGHTS: std::ops::RangeInclusive<u32> = 144..=2160;

/// A new room with a fresh id and stream key.
pub fn new_room(name: &str, settings: RoomSettings) -> StoredRoom {
    let now = unix_now();
    StoredRoom {
        id: new_room_id(),
        name: name.to_string(),
        stream_key: new_stream_key(),
        settings,
        created_at: now,
        updated_at: now,
    }
}

/// Checks the values a user chose; the message says what is allowed.
pub fn validate_settings(s: &RoomSettings) -> Result<(), String> {
    if let Some(n) = s.max_viewers {
        if n == 0 || n > MAX_VIEWERS_LIMIT {
            return Err(format!("max_viewers is 1 to {MAX_VIEWERS_LIMIT}"));
        }
    }
    if s.ladder.len() > MAX_LADDER_RUNGS {
        return Err(format!(
            "the ladder has at most {MAX_LADDER_RUNGS} renditions"
        ));
    }
    if let Some(h) = s.ladder.iter().find(|h| !LADDER_HEIGHTS.contains(h)) {
        return Err(format!(
            "ladder height {h}: heights are {} to {}",
            LADDER_HEIGHTS.start(),
            LADDER_HEIGHTS.end()
        ));
    }
    Ok(())
}

pub struct StoredRooms {
    store: Arc<dyn Store>,
    tokens: Arc<ViewerTokenKey>,
}

impl StoredRooms {
    pub fn new(store: Arc<dyn Store>, tokens: Arc<ViewerTokenKey>) -> Self {
        StoredRooms { store, tokens }
    }

    fn room(&self, name: &str) -> Option<StoredRoom> {
        // Names that cannot exist never reach the database.
        validate_room_name(name).ok()?;
        match self.store.room_by_name(name) {
            Ok(r) => r,
            Err(e) => {
                // Fail closed: an unreadable database admits nobody.
                warn!("room lookup failed: {e}");
                None
            }
        }
    }
}

impl RoomDirectory for StoredRooms {
    fn room_exists(&self, room: &str) -> bool {
        self.room(room).is_some()
    }

    fn stream_key_matches(&self, room: &str, key: &str) -> bool {
        self.room(room)
            .is_some_and(|r| constant_time_eq(r.stream_key.as_bytes(), key.as_bytes()))
    }

    fn viewer_access(&self, room: &str, token: Option<&str>) -> ViewerAccess {
        let Some(r) = self.room(room) else {
            return ViewerAccess::TokenRefused;
        };
        match self.token_access(&r, token) {
            ViewerAccess::Allowed { .. } if !r.settings.webrtc => ViewerAccess::HlsOnly,
            access => access,
        }
    }
}

impl StoredRooms {
    /// Whether `token` opens room `r` (public rooms need none).
    fn token_access(&self, r: &StoredRoom, token: Option<&str>) -> ViewerAccess {
        let allowed = ViewerAccess::Allowed {
            max_viewers: r.settings.max_viewers.map(|n| n as usize),
            gop_cache: r.settings.gop_cache,
        };
        if !r.settings.private {
            return allowed;
        }
        let Some(token) = token else {
            return ViewerAccess::TokenRequired;
        };
        match self.tokens.verify(token, unix_now()) {
            Ok(c) if c.room == r.name && c.room_id == r.id => allowed,
            _ => ViewerAccess::TokenRefused,
        }
    }

    /// Whether a request for the room's LL-HLS may go on: the room serves
    /// HLS, and the token opens it. Unknown rooms go on (the bridge answers
    /// 404 for them, as for any room that is not live).
    fn hls_access(&self, room: &str, token: Option<&str>) -> Result<(), Problem> {
        let Some(r) = self.room(room) else {
            return Ok(());
        };
        match self.token_access(&r, token) {
            ViewerAccess::TokenRequired => Err(Problem::unauthorized(
                "this room is private: add ?token=<viewer token>",
            )),
            ViewerAccess::TokenRefused => Err(Problem::unauthorized(
                "the viewer token is invalid, expired or not for this room",
            )),
            _ if !r.settings.hls => Err(Problem::not_found(format!(
                "room {room:?} is not served over HLS (its hls setting is off)"
            ))),
            _ => Ok(()),
        }
    }
}

/// Who watches each room over LL-HLS: HLS has no sessions, so a viewer is a
/// source (address and User-Agent) that fetched one of the room's playlists
/// in the last [`HLS_VIEWER_WINDOW`] (players reload them every part or
/// segment). Behind a CDN or cache, each edge counts as one viewer.
#[derive(Default)]
pub struct HlsAudience {
    rooms: Mutex<HashMap<String, HashMap<u64, Instant>>>,
}

/// How long a playlist fetch counts a source as watching.
pub const HLS_VIEWER_WINDOW: Duration = Duration::from_secs(8);
/// Most sources tracked per room (the count saturates there).
const HLS_SOURCES_PER_ROOM: usize = 100_000;

impl HlsAudience {
    fn seen(&self, room: &str, source: u64, now: Instant) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if !rooms.contains_key(room) {
            // Forget rooms nobody watched lately before adding one.
            rooms.retain(|_, sources| {
                sources.retain(|_, at| now.duration_since(*at) < HLS_VIEWER_WINDOW);
                !sources.is_empty()
            });
        }
        let sources = rooms.entry(room.to_string()).or_default();
        if sources.len() >= HLS_SOURCES_PER_ROOM && !sources.contains_key(&source) {
            sources.retain(|_, at| now.duration_since(*at) < HLS_VIEWER_WINDOW);
            if sources.len() >= HLS_SOURCES_PER_ROOM {
                return;
            }
        }
        sources.insert(source, now);
    }

    /// HLS viewers of `room` now.
    pub fn count(&self, room: &str, now: Instant) -> usize {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.get(room).map_or(0, |sources| {
            sources
                .values()
                .filter(|at| now.duration_since(**at) < HLS_VIEWER_WINDOW)
                .count()
        })
    }
}

/// What the HLS gate needs.
#[derive(Clone)]
pub struct HlsGate {
    pub rooms: Arc<StoredRooms>,
    pub audience: Arc<HlsAudience>,
}

/// `/hls/{room}/...` goes on only for rooms that serve HLS, and for a
/// private room only with a viewer token: `?token=` (as in the API's
/// `hls_url`) or `Authorization: Bearer`. Every playlist, part and segment
/// request is checked, so the HLS output must carry the query into the URIs
/// its playlists list. Playlist fetches are counted as the room's audience.
pub async fn hls_access(
    State(gate): State<HlsGate>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let Some(under) = path.strip_prefix("/hls/") else {
        return next.run(request).await;
    };
    let (room, rest) = under.split_once('/').unwrap_or((under, ""));
    // The router percent-decodes the room (`%70riv` is `priv`), and no
    // room name needs encoding: a segment that is not a name as sent
    // could only slip past the check below, so it goes no further.
    if validate_room_name(room).is_err() {
        return refused(Problem::not_found(format!("no room {room:?}")));
    }
    let token = request
        .uri()
        .query()
        .and_then(query_token)
        .or_else(|| wish::bearer(request.headers()));
    if let Err(problem) = gate.rooms.hls_access(room, token) {
        return refused(problem);
    }
    let playlist = rest.ends_with(".m3u8");
    let (room, source) = (room.to_string(), source_of(&request));
    let response = next.run(request).await;
    if playlist && response.status().is_success() {
        gate.audience.seen(&room, source, Instant::now());
    }
    response
}

/// A refusal of the gate, never cached (as the bridge's own errors): a
/// room made public again, or a token added, must work at once through a
/// CDN.
fn refused(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static(hls_bridge::service::CACHE_ERROR),
    );
    response
}

/// One number per viewing source: its address and User-Agent.
fn source_of(request: &Request<Body>) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .hash(&mut h);
    request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .map(|v| v.as_bytes())
        .hash(&mut h);
    h.finish()
}

/// The `token` parameter of a query string (viewer tokens are URL-safe as is).
fn query_token(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ViewerClaims;
    use crate::store::{RoomSettings, SqliteStore};

    #[test]
    fn keys_and_viewer_tokens_are_checked_against_the_store() {
        let dir = std::env::temp_dir().join(format!(
            "dionysia-rooms-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir).unwrap());
        let key = Arc::new(ViewerTokenKey::new(b"k".repeat(32)));
        let rooms = StoredRooms::new(store.clone(), key.clone());
        let mut r = StoredRoom {
            id: "rm_a".into(),
            name: "a".into(),
            stream_key: "secret".into(),
            settings: RoomSettings::default(),
            created_at: 0,
            updated_at: 0,
        };
        store.insert_room(&r).unwrap();
        assert!(rooms.room_exists("a") && !rooms.room_exists("b") && !rooms.room_exists("a/b"));
        assert!(rooms.stream_key_matches("a", "secret"));
        assert!(!rooms.stream_key_matches("a", "secreT"));
        assert!(!rooms.stream_key_matches("b", "secret"));
        assert_eq!(
            rooms.viewer_access("a", None),
            ViewerAccess::Allowed {
                max_viewers: None,
                gop_cache: true
            }
        );
        r.settings.private = true;
        r.settings.max_viewers = Some(3);
        r.settings.gop_cache = false;
        store.update_room(&r).unwrap();
        assert_eq!(rooms.viewer_access("a", None), ViewerAccess::TokenRequired);
        let now = unix_now();
        let good = key.sign(&ViewerClaims {
            room: "a".into(),
            room_id: "rm_a".into(),
            iat: now,
            exp: now + 60,
        });
        let other_id = key.sign(&ViewerClaims {
            room: "a".into(),
            room_id: "rm_old".into(),
            iat: now,
            exp: now + 60,
        });
        assert_eq!(
            rooms.viewer_access("a", Some(&good)),
            ViewerAccess::Allowed {
                max_viewers: Some(3),
                gop_cache: false
            }
        );
        assert_eq!(
            rooms.viewer_access("a", Some(&other_id)),
            ViewerAccess::TokenRefused
        );
        assert_eq!(query_token("a=1&token=xyz.abc&b"), Some("xyz.abc"));
        assert_eq!(query_token("token="), None);
        assert_eq!(query_token("_HLS_msn=3"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_hls_gate_sees_the_room_the_router_decodes() {
        use axum::extract::Path;
        let dir = std::env::temp_dir().join(format!(
            "dionysia-hls-gate-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir).unwrap());
        let private = RoomSettings {
            private: true,
            ..RoomSettings::default()
        };
        store.insert_room(&new_room("priv", private)).unwrap();
        store
            .insert_room(&new_room("pub", RoomSettings::default()))
            .unwrap();
        let key = Arc::new(ViewerTokenKey::new(b"k".repeat(32)));
        let gate = HlsGate {
            rooms: Arc::new(StoredRooms::new(store, key)),
            audience: Arc::new(HlsAudience::default()),
        };
        // Stands in for the bridge: it serves whatever room axum decoded.
        let app = axum::Router::new()
            .route(
                "/hls/{room}/index.m3u8",
                axum::routing::get(|Path(room): Path<String>| async move { room }),
            )
            .layer(axum::middleware::from_fn_with_state(gate, hls_access));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let status = |path: &'static str| async move {
            let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            if !r.status().is_success() {
                assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
            }
            r.status().as_u16()
        };
        assert_eq!(status("/hls/pub/index.m3u8").await, 200);
        assert_eq!(status("/hls/priv/index.m3u8").await, 401);
        for encoded in ["/hls/%70riv/index.m3u8", "/hls/pri%76/index.m3u8"] {
            assert_eq!(status(encoded).await, 404, "{encoded}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
