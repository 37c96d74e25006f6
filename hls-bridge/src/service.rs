//! The HTTP edge: rooms of an [`sfu::Sfu`] served as LL-HLS by axum.
//!
//! ```text
//!  GET /hls/{room}/index.m3u8 ─┐         ┌─ room task (one per bridged room)
//!  GET /hls/{room}/{session}/  │         │   sfu.tap(room).events ─► LiveSession
//!      {rendition}/{file}  ────┼─ Room ──┤   Progress.part  ─► watch<Edge> per rendition
//!                              │  watch  │   Progress.chunk ─► watch<u64> per rendition
//!                              │ session │   keyframe_wanted ─► tap.request_keyframe
//!  blocked playlist request ───┘         └─ Ended ─► EXT-X-ENDLIST
//!    parks on the rendition's watch::Receiver<Edge>: no thread, no poll loop
//! ```
//!
//! A room is bridged from the first HTTP request for it while it is live
//! (or from startup for [`HlsConfig::rooms`]) until nobody asked for it for
//! [`HlsConfig::idle_timeout`]. Each publish (a `Live` generation of the tap)
//! gets a session id that is part of every URL below the room, so file
//! names that restart at `seg0` after a republish never collide with what a
//! CDN cached of the previous publish. `/hls/{room}/{rendition}/media.m3u8`
//! without the session redirects to the current one.
//!
//! Files (init segments, segments, parts) are immutable; playlists live for
//! a second. Errors are RFC 9457 problem documents.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body as HttpBody;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{Bytes, BytesMut};
use sfu::{Sfu, TapEvent};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};
use wish::Problem;

use crate::bridge::BridgeConfig;
use crate::live::{AudioOutput, LiveSession, Pushed, SourceAac};
use crate::playlist::{MEDIA_PLAYLIST, MULTIVARIANT_PLAYLIST};
use crate::{Decision, Edge, PlaylistQuery, Resource};

/// Init segments, segments and parts never change once served.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// A playlist without blocking directives changes with every part.
pub const CACHE_PLAYLIST: &str = "public, max-age=1";
/// A blocking playlist response: its URL names the part it waited for, so a
/// cache keyed on the full URI may serve it to every player that asks for
/// the same part; it is stale only by the parts written since.
pub const CACHE_BLOCKING_PLAYLIST: &str = "public, max-age=3";
/// Errors are never cached: a 404 before the room is live must not outlast it.
pub const CACHE_ERROR: &str = "no-store";

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const MP4_TYPE: &str = "video/mp4";

/// Configuration of the HLS service.
#[derive(Debug, Clone)]
pub struct HlsConfig {
    pub bridge: BridgeConfig,
    /// AAC-LC (default, plays everywhere) or the publisher's Opus.
    pub audio: AudioOutput,
    /// Rooms bridged from startup, whether or not anyone asks: their first
    /// viewer finds a window of segments already there.
    pub rooms: Vec<String>,
    /// A room bridged on demand stops this long after its last request.
    pub idle_timeout: Duration,
    /// How long the first requests of a room wait for its first playlist
    /// (the tap, a keyframe, the first part) before a 503.
    pub startup_wait: Duration,
    /// How far ahead of the part being written a part request may be and
    /// still be held until that part starts.
    pub parts_ahead: u64,
    /// Where in-process ingests (RTMP) offer the publisher's original
    /// audio: a room with an AAC-LC source serves it untouched rather than
    /// its Opus transcoded back to AAC. `None`: always from the room's RTP.
    pub sources: Option<sfu::SourceRegistry>,
    /// Heights of the renditions made from a single-layer H.264 publish
    /// (openh264 on a thread of their own); empty: no ladder.
    pub ladder: Vec<u32>,
    /// A room's own ladder (its `ladder` setting), asked at each publish;
    /// `None` from it, or no function: [`HlsConfig::ladder`].
    pub room_ladder: Option<RoomLadder>,
}

/// Looks up a room's ladder heights (`None`: the server's default).
#[derive(Clone)]
pub struct RoomLadder(pub Arc<LadderLookup>);

/// What a [`RoomLadder`] calls: room name → its heights.
pub type LadderLookup = dyn Fn(&str) -> Option<Vec<u32>> + Send + Sync;

impl std::fmt::Debug for RoomLadder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomLadder(..)")
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            bridge: BridgeConfig::default(),
            audio: AudioOutput::default(),
            rooms: Vec::new(),
            idle_timeout: Duration::from_secs(60),
            startup_wait: Duration::from_secs(6),
            parts_ahead: 2,
            sources: None,
            ladder: crate::ladder::DEFAULT_HEIGHTS.to_vec(),
            room_ladder: None,
        }
    }
}

/// The routes under `/hls`, with their state applied.
pub fn router(sfu: Sfu, config: HlsConfig) -> Router {
    let hls = Arc::new(Hls {
        sfu,
        rooms: Mutex::new(HashMap::new()),
        config,
    });
    if tokio::runtime::Handle::try_current().is_ok() {
        for room in hls.config.rooms.clone() {
            hls.bridge_room(&room, true);
        }
    } else if !hls.config.rooms.is_empty() {
        warn!("hls: router built outside a tokio runtime; configured rooms start on demand");
    }
    Router::new()
        .route("/hls/{room}/index.m3u8", get(multivariant))
        .route("/hls/{room}/{rendition}/{file}", get(unversioned))
        .route("/hls/{room}/{session}/{rendition}/{file}", get(file))
        .layer(axum::middleware::map_response(cors))
        .with_state(hls)
}

async fn cors(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

struct Hls {
    sfu: Sfu,
    config: HlsConfig,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
}

/// A bridged room: its current publish session, if any.
struct Room {
    session: watch::Sender<Option<Arc<Session>>>,
    last_request: Mutex<Instant>,
    /// Bridged from startup: never stopped for idleness.
    pinned: bool,
}

/// One publish of a room, shared between its task and the HTTP handlers.
struct Session {
    /// Per-publish path segment: the publish's start in Unix milliseconds,
    /// in hex, so that it also differs across server restarts.
    id: String,
    live: Mutex<LiveSession>,
    /// Indexed like [`LiveSession::renditions`].
    renditions: Vec<RenditionWatch>,
    /// Bumped on every part of any rendition (the multivariant playlist
    /// waits on it until bitrates are known).
    parts: watch::Sender<u64>,
}

struct RenditionWatch {
    name: String,
    edge: watch::Sender<Edge>,
    chunks: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the bridge half-updated in
    // a way that matters more than losing the room: keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The session id for a publish that started at `unix_ms`.
pub fn session_id(unix_ms: u64) -> String {
    format!("{unix_ms:x}")
}

impl Session {
    fn new(live: LiveSession, id: String) -> Session {
        let renditions = live
            .renditions()
            .iter()
            .map(|name| {
                let edge = live
                    .bridge
                    .rendition(name)
                    .map(|r| r.edge())
                    .unwrap_or(Edge {
                        open_msn: 0,
                        open_parts: 0,
                        last_complete_parts: 0,
                        target_duration_secs: 1,
                        part_target: Duration::from_millis(200),
                        ended: false,
                    });
                RenditionWatch {
                    name: name.clone(),
                    edge: watch::Sender::new(edge),
                    chunks: watch::Sender::new(0),
                }
            })
            .collect();
        Session {
            id,
            live: Mutex::new(live),
            renditions,
            parts: watch::Sender::new(0),
        }
    }

    fn rendition(&self, name: &str) -> Option<&RenditionWatch> {
        self.renditions.iter().find(|r| r.name == name)
    }

    /// Publishes the edges of every rendition (after the end of a publish).
    fn publish_all(&self, live: &LiveSession) {
        for r in &self.renditions {
            if let Ok(rendition) = live.bridge.rendition(&r.name) {
                r.edge.send_replace(rendition.edge());
            }
            r.chunks.send_modify(|c| *c += 1);
        }
        self.parts.send_modify(|c| *c += 1);
    }
}

impl Hls {
    /// The room's handle, bridging it now if it is live and not bridged yet.
    /// `None`: not bridged and not live.
    async fn room(self: &Arc<Self>, name: &str) -> Option<Arc<Room>> {
        if let Some(room) = lock(&self.rooms).get(name).cloned() {
            *lock(&room.last_request) = Instant::now();
            return Some(room);
        }
        if !self.sfu.is_live(name).await {
            return None;
        }
        Some(self.bridge_room(name, false))
    }

    fn bridge_room(self: &Arc<Self>, name: &str, pinned: bool) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return room.clone();
        }
        let room = Arc::new(Room {
            session: watch::Sender::new(None),
            last_request: Mutex::new(Instant::now()),
            pinned,
        });
        rooms.insert(name.to_owned(), room.clone());
        info!(room = name, "hls: bridging room");
        tokio::spawn(run_room(self.clone(), name.to_owned(), room.clone()));
        room
    }

    /// The room's current session, waiting up to `startup_wait` for one.
    async fn session(self: &Arc<Self>, name: &str) -> Result<Arc<Session>, Problem> {
        let room = self.room(name).await.ok_or_else(|| not_live(name))?;
        let mut rx = room.session.subscribe();
        let wait = tokio::time::timeout(self.config.startup_wait, rx.wait_for(|s| s.is_some()));
        let found = match wait.await {
            Ok(Ok(s)) => s.clone().ok_or_else(|| not_live(name)),
            Ok(Err(_)) => Err(not_live(name)),
            Err(_) => Err(starting(name)),
        };
        found
    }
}

/// How often a room task checks whether anyone still asks for it.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// A room's task: tap events in, bridge state and wake-ups out.
async fn run_room(hls: Arc<Hls>, name: String, room: Arc<Room>) {
    let mut tap = hls.sfu.tap(&name);
    let mut current: Option<(Arc<Session>, Instant)> = None;
    // The publisher's original AAC, when its ingest offers it.
    let mut source: Option<broadcast::Receiver<sfu::SourceAudioFrame>> = None;
    // The ladder's encoded pictures, when the publish has a ladder.
    let mut ladder: Option<tokio::sync::mpsc::UnboundedReceiver<crate::ladder::LadderOutput>> =
        None;
    let mut idle = tokio::time::interval(IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let source_frame = async {
            match &mut source {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let ladder_output = async {
            match &mut ladder {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            output = ladder_output => match output {
                Some(output) => {
                    let Some((session, _)) = &current else { continue };
                    let pushed = lock(&session.live).push_ladder_output(output);
                    notify(session, pushed);
                }
                None => ladder = None,
            },
            frame = source_frame => match frame {
                Ok(frame) => {
                    let Some((session, started)) = &current else { continue };
                    let now = frame.arrival.saturating_duration_since(*started);
                    let pushed = lock(&session.live).push_source_aac(
                        frame.pts_ms,
                        Bytes::copy_from_slice(&frame.data),
                        now,
                    );
                    notify(session, pushed);
                }
                // Fell behind: the sample clock resyncs on the next frame.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => source = None,
            },
            event = tap.events.recv() => match event {
                None => break,
                Some(TapEvent::Live { generation, tracks }) => {
                    if let Some((old, _)) = &current {
                        let mut live = lock(&old.live);
                        live.bridge.end();
                        old.publish_all(&live);
                    }
                    let epoch = unix_ms();
                    let offered = hls.config.sources.as_ref().and_then(|s| s.audio(&name));
                    let source_aac = offered.as_deref().and_then(SourceAac::from_source);
                    source = offered.filter(|_| source_aac.is_some()).map(|a| a.subscribe());
                    let mut live = LiveSession::with_source(
                        &tracks,
                        hls.config.bridge,
                        hls.config.audio,
                        epoch,
                        source_aac,
                    );
                    let heights = hls
                        .config
                        .room_ladder
                        .as_ref()
                        .and_then(|f| (f.0)(&name))
                        .unwrap_or_else(|| hls.config.ladder.clone());
                    ladder = live.enable_ladder(&heights);
                    for s in live.skipped() {
                        warn!(room = %name, track = s.track, codec = ?s.codec,
                            "hls: track not bridged (H.264 video and Opus audio are; single-layer VP8 with the vp8 feature)");
                    }
                    let session = Arc::new(Session::new(live, session_id(epoch)));
                    info!(room = %name, generation, session = %session.id,
                        renditions = ?lock(&session.live).renditions(),
                        source_audio = ?source_aac, "hls: publish");
                    room.session.send_replace(Some(session.clone()));
                    current = Some((session, Instant::now()));
                }
                Some(TapEvent::Packet(packet)) => {
                    let Some((session, started)) = &current else { continue };
                    let now = packet.arrival.saturating_duration_since(*started);
                    let pushed = lock(&session.live).push(&packet, now);
                    if notify(session, pushed) {
                        tap.request_keyframe(packet.track, packet.layer);
                    }
                }
                Some(TapEvent::Ended) => {
                    source = None;
                    if let Some((session, _)) = &current {
                        let mut live = lock(&session.live);
                        live.bridge.end();
                        session.publish_all(&live);
                        info!(room = %name, session = %session.id, "hls: publish ended");
                    }
                }
            },
            _ = idle.tick() => {
                let last = *lock(&room.last_request);
                if !room.pinned && last.elapsed() > hls.config.idle_timeout {
                    break;
                }
            }
        }
    }
    let mut rooms = lock(&hls.rooms);
    if rooms.get(&name).is_some_and(|r| Arc::ptr_eq(r, &room)) {
        rooms.remove(&name);
    }
    drop(rooms);
    room.session.send_replace(None);
    info!(room = %name, "hls: room no longer bridged");
}

/// Wakes whoever waits on what a push published; says whether the
/// rendition wants a keyframe from the publisher.
fn notify(session: &Session, pushed: Pushed) -> bool {
    let Some(index) = pushed.rendition else {
        return false;
    };
    let progress = pushed.progress;
    let watch = &session.renditions[index];
    if progress.part {
        let edge = lock(&session.live)
            .bridge
            .rendition(&watch.name)
            .map(|r| r.edge());
        if let Ok(edge) = edge {
            watch.edge.send_replace(edge);
        }
        session.parts.send_modify(|c| *c += 1);
    }
    if progress.part || progress.chunk {
        watch.chunks.send_modify(|c| *c += 1);
    }
    progress.keyframe_wanted
}

// ---------------------------------------------------------------- handlers

fn not_live(room: &str) -> Problem {
    Problem::not_found(format!("room {room:?} is not live"))
}

fn starting(room: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "hls-starting",
        format!("room {room:?} is live but its first HLS part is not ready yet"),
    )
    .retry_after(1)
}

fn problem(p: Problem) -> Response {
    let mut r = p.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_ERROR));
    r
}

fn ok(content_type: &'static str, cache: &'static str, body: HttpBody) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// Longest query a playlist request may have: the playlist repeats it in
/// every URI it lists (a hundred in a media playlist with parts), so a
/// long one would make each answer megabytes. Viewer tokens and CDN
/// signatures are a few hundred bytes.
pub const MAX_PLAYLIST_QUERY: usize = 2048;

/// A problem when a playlist request's query is longer than
/// [`MAX_PLAYLIST_QUERY`].
fn check_query_len(query: Option<&str>) -> Result<(), Problem> {
    match query {
        Some(q) if q.len() > MAX_PLAYLIST_QUERY => Err(Problem::new(
            StatusCode::URI_TOO_LONG,
            "hls-query-too-long",
            format!("a playlist's query is at most {MAX_PLAYLIST_QUERY} bytes"),
        )),
        _ => Ok(()),
    }
}

/// The part of a playlist request's query that the URIs it lists must
/// carry: everything but the `_HLS_` directives (a viewer token for a
/// private room, a CDN's signature). `None` when nothing is left.
pub fn carried_query(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("_HLS_"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// `playlist` with `query` appended to every URI it lists: URI lines and
/// `URI="…"` attributes (map, parts, preload hint, rendition reports,
/// audio renditions).
pub fn with_query(playlist: &str, query: &str) -> String {
    fn append(uri: &str, query: &str, out: &mut String) {
        out.push_str(uri);
        out.push(if uri.contains('?') { '&' } else { '?' });
        out.push_str(query);
    }
    let mut out = String::with_capacity(playlist.len() + 64 * query.len());
    for line in playlist.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if body.is_empty() {
            out.push_str(line);
            continue;
        }
        if !body.starts_with('#') {
            append(body, query, &mut out);
            out.push_str(newline);
            continue;
        }
        let mut rest = body;
        while let Some(at) = rest.find("URI=\"") {
            let start = at + 5;
            let Some(len) = rest[start..].find('"') else {
                break;
            };
            out.push_str(&rest[..start]);
            append(&rest[start..start + len], query, &mut out);
            rest = &rest[start + len..];
        }
        out.push_str(rest);
        out.push_str(newline);
    }
    out
}

async fn multivariant(
    State(hls): State<Arc<Hls>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(p) = check_query_len(query.as_deref()) {
        return problem(p);
    }
    let session = match hls.session(&room).await {
        Ok(s) => s,
        Err(p) => return problem(p),
    };
    let prefix = format!("{}/", session.id);
    let mut parts = session.parts.subscribe();
    let deadline = tokio::time::Instant::now() + hls.config.startup_wait;
    // Wait until every rendition has a complete segment: a first request
    // right after the publish must not get a playlist without its audio
    // (a player would never play it), and hls.js calls a media playlist of
    // parts only "empty". Past `startup_wait`, list what is ready.
    let mut late = false;
    loop {
        {
            let live = lock(&session.live);
            let all_ready = live.bridge.renditions().iter().all(|r| {
                r.is_optional()
                    || (r.codec().is_some() && r.timeline().listed_segments().next().is_some())
            });
            if all_ready || late {
                if let Some(text) = live.bridge.multivariant_playlist_under(&prefix) {
                    let text = match query.as_deref().and_then(carried_query) {
                        Some(q) => with_query(&text, &q),
                        None => text,
                    };
                    return ok(PLAYLIST_TYPE, CACHE_PLAYLIST, text.into());
                }
            }
        }
        if late {
            return problem(starting(&room));
        }
        match tokio::time::timeout_at(deadline, parts.changed()).await {
            Ok(Ok(())) => {}
            _ => late = true,
        }
    }
}

/// `/hls/{room}/{rendition}/media.m3u8`: to the current session's.
async fn unversioned(
    State(hls): State<Arc<Hls>>,
    Path((room, rendition, file)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if file != MEDIA_PLAYLIST {
        return problem(Problem::not_found(
            "files of a rendition live under its session: /hls/{room}/{session}/{rendition}/",
        ));
    }
    let session = match hls.session(&room).await {
        Ok(s) => s,
        Err(p) => return problem(p),
    };
    if session.rendition(&rendition).is_none() {
        return problem(Problem::not_found(format!("no rendition {rendition:?}")));
    }
    let mut location = format!("../{}/{rendition}/{MEDIA_PLAYLIST}", session.id);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(&q);
    }
    let mut r = ok(PLAYLIST_TYPE, CACHE_PLAYLIST, HttpBody::empty());
    *r.status_mut() = StatusCode::FOUND;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => problem(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-query",
            "the query cannot be carried over",
        )),
    }
}

async fn file(
    State(hls): State<Arc<Hls>>,
    Path((room, session_id, rendition, file)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(resource) = Resource::parse(&file) else {
        return problem(Problem::not_found(format!("no file {file:?}")));
    };
    if resource == Resource::MediaPlaylist {
        if let Err(p) = check_query_len(query.as_deref()) {
            return problem(p);
        }
    }
    let Some(room_handle) = hls.room(&room).await else {
        return problem(not_live(&room));
    };
    let session = room_handle.session.borrow().clone();
    let Some(session) = session.filter(|s| s.id == session_id) else {
        return problem(Problem::not_found(format!(
            "session {session_id:?} of room {room:?} is over; reload {MULTIVARIANT_PLAYLIST}"
        )));
    };
    let Some(watch) = session.rendition(&rendition) else {
        return problem(Problem::not_found(format!("no rendition {rendition:?}")));
    };
    match resource {
        Resource::MediaPlaylist => {
            media_playlist(&session, watch, query.as_deref().unwrap_or("")).await
        }
        Resource::Init(_) | Resource::Segment(_) => {
            match lock(&session.live).bridge.file(&rendition, resource) {
                Ok(Some(body)) => ok(MP4_TYPE, CACHE_IMMUTABLE, chunks_body(body.0)),
                _ => problem(Problem::not_found(format!("no file {file:?} (not held)"))),
            }
        }
        Resource::Part(id) => part(&hls, &session, watch, id).await,
    }
}

fn chunks_body(chunks: Vec<Bytes>) -> HttpBody {
    if chunks.len() == 1 {
        return HttpBody::from(chunks.into_iter().next().unwrap_or_default());
    }
    let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        all.extend_from_slice(&c);
    }
    HttpBody::from(all.freeze())
}

async fn media_playlist(session: &Session, watch: &RenditionWatch, raw_query: &str) -> Response {
    let carried = carried_query(raw_query);
    let query = match PlaylistQuery::parse(raw_query) {
        Ok(q) => q,
        Err(e) => {
            return problem(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-hls-query",
                e.to_string(),
            ))
        }
    };
    // Subscribe before deciding: a part published in between wakes us.
    let mut edges = watch.edge.subscribe();
    let started = Instant::now();
    loop {
        let decision = lock(&session.live)
            .bridge
            .decide(&watch.name, &query, started.elapsed());
        match decision {
            Ok(Decision::Ready) => {
                let text = lock(&session.live)
                    .bridge
                    .media_playlist(&watch.name, &query);
                let cache = if query.is_blocking() {
                    CACHE_BLOCKING_PLAYLIST
                } else {
                    CACHE_PLAYLIST
                };
                return match text {
                    Ok(text) => {
                        let text = match &carried {
                            Some(q) => with_query(&text, q),
                            None => text,
                        };
                        ok(PLAYLIST_TYPE, cache, text.into())
                    }
                    Err(e) => problem(Problem::not_found(e.to_string())),
                };
            }
            Ok(Decision::Wait { remaining }) => {
                let remaining = remaining.max(Duration::from_millis(1));
                if let Ok(Err(_)) = tokio::time::timeout(remaining, edges.changed()).await {
                    // The session is gone (room no longer bridged).
                    return problem(Problem::not_found("the publish session ended"));
                }
            }
            Ok(Decision::BadRequest) => {
                return problem(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "hls-too-far-ahead",
                    "_HLS_msn/_HLS_part is too far ahead of the live edge",
                ))
            }
            Ok(Decision::Unavailable) => {
                return problem(
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "hls-not-ready",
                        "the requested part did not appear within three target durations",
                    )
                    .retry_after(1),
                )
            }
            Err(e) => return problem(Problem::not_found(e.to_string())),
        }
    }
}

/// A part: complete ones at once; the one being written (or one about to
/// start) streamed chunk by chunk as the bridge writes it.
async fn part(hls: &Hls, session: &Arc<Session>, watch: &RenditionWatch, id: u64) -> Response {
    let (held, open_id, max_block) = {
        let live = lock(&session.live);
        let held = live.bridge.file(&watch.name, Resource::Part(id));
        let r = live.bridge.rendition(&watch.name);
        let open_id = r.as_ref().map_or(0, |r| r.timeline().next_part_id());
        let max_block = r.map_or(Duration::from_secs(3), |r| r.edge().max_block());
        (held, open_id, max_block)
    };
    if let Ok(Some(body)) = held {
        return ok(MP4_TYPE, CACHE_IMMUTABLE, chunks_body(body.0));
    }
    if id < open_id || id > open_id + hls.config.parts_ahead {
        return problem(Problem::not_found(format!(
            "part {id} is not held (the part being written is {open_id})"
        )));
    }
    let stream = PartStream {
        session: session.clone(),
        name: watch.name.clone(),
        chunks: watch.chunks.subscribe(),
        id,
        offset: 0,
        deadline: tokio::time::Instant::now() + max_block,
        done: false,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    });
    ok(MP4_TYPE, CACHE_IMMUTABLE, HttpBody::from_stream(body))
}

/// The reader of a part being written: yields its bytes as they appear.
struct PartStream {
    session: Arc<Session>,
    name: String,
    chunks: watch::Receiver<u64>,
    id: u64,
    offset: usize,
    /// Past this the part has not completed: the response is aborted (a
    /// truncated part must not be cached as complete).
    deadline: tokio::time::Instant,
    done: bool,
}

impl PartStream {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            // Mark what we have seen before reading, so a chunk written
            // right after the read wakes the wait below.
            self.chunks.borrow_and_update();
            let read = lock(&self.session.live)
                .bridge
                .read_part(&self.name, self.id, self.offset);
            match read {
                Ok(Some(r)) => {
                    let bytes = match r.data.len() {
                        0 => Bytes::new(),
                        1 => r.data.into_iter().next().unwrap_or_default(),
                        _ => {
                            let mut all = BytesMut::new();
                            for c in r.data {
                                all.extend_from_slice(&c);
                            }
                            all.freeze()
                        }
                    };
                    self.offset += bytes.len();
                    if r.complete {
                        self.done = true;
                    }
                    if !bytes.is_empty() {
                        return Some(Ok(bytes));
                    }
                    if self.done {
                        return None;
                    }
                }
                // Not started yet (requested a little ahead): wait for it.
                Ok(None) if self.offset == 0 => {}
                _ => {
                    self.done = true;
                    debug!(part = self.id, "hls: part gone while streaming it");
                    return Some(Err(io::Error::other("part no longer held")));
                }
            }
            match tokio::time::timeout_at(self.deadline, self.chunks.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    self.done = true;
                    return Some(Err(io::Error::other("part did not complete in time")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(app: &Router, uri: &str) -> Response {
        let request = Request::get(uri).body(HttpBody::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn rooms_that_are_not_live_are_404_problems_and_start_no_bridge() {
        let sfu = Sfu::start(sfu::SfuConfig {
            udp_listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .unwrap();
        let app = router(sfu, HlsConfig::default());
        for uri in [
            "/hls/nobody/index.m3u8",
            "/hls/nobody/video-h/media.m3u8",
            "/hls/nobody/1a2b/video-h/media.m3u8?_HLS_msn=3",
            "/hls/nobody/1a2b/video-h/part3.m4s",
        ] {
            let r = get(&app, uri).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{uri}");
            let h = r.headers();
            assert_eq!(h[header::CONTENT_TYPE], "application/problem+json", "{uri}");
            assert_eq!(h[header::CACHE_CONTROL], CACHE_ERROR, "{uri}");
            assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{uri}");
        }
        // A query every listed URI would repeat is refused before any lookup.
        let long = "x".repeat(MAX_PLAYLIST_QUERY);
        for uri in [
            format!("/hls/nobody/index.m3u8?token={long}"),
            format!("/hls/nobody/1a2b/video-h/media.m3u8?token={long}"),
        ] {
            let r = get(&app, &uri).await;
            assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_ERROR);
        }
        let fits = format!("/hls/nobody/index.m3u8?{}", &long[..MAX_PLAYLIST_QUERY]);
        assert_eq!(get(&app, &fits).await.status(), StatusCode::NOT_FOUND);
        // Not a file of ours: 404 before any room lookup.
        let r = get(&app, "/hls/nobody/1a2b/video-h/seg01.m4s").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = get(&app, "/hls/nobody/video-h/seg1.m4s").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn playlist_uris_carry_the_token_but_not_the_directives() {
        assert_eq!(
            carried_query("_HLS_msn=3&token=abc&_HLS_part=1"),
            Some("token=abc".to_owned())
        );
        assert_eq!(carried_query("_HLS_msn=3&_HLS_skip=YES"), None);
        assert_eq!(carried_query(""), None);
        let media = "#EXTM3U\n#EXT-X-MAP:URI=\"init0.mp4\"\n\
            #EXT-X-PART:DURATION=0.2,URI=\"part1.m4s\",INDEPENDENT=YES\n\
            #EXTINF:1.0,\nseg0.m4s\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part2.m4s\"\n\
            #EXT-X-RENDITION-REPORT:URI=\"../audio/media.m3u8\",LAST-MSN=1\n";
        assert_eq!(
            with_query(media, "token=t"),
            "#EXTM3U\n#EXT-X-MAP:URI=\"init0.mp4?token=t\"\n\
            #EXT-X-PART:DURATION=0.2,URI=\"part1.m4s?token=t\",INDEPENDENT=YES\n\
            #EXTINF:1.0,\nseg0.m4s?token=t\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part2.m4s?token=t\"\n\
            #EXT-X-RENDITION-REPORT:URI=\"../audio/media.m3u8?token=t\",LAST-MSN=1\n"
        );
        let multi = "#EXT-X-MEDIA:TYPE=AUDIO,URI=\"s/audio/media.m3u8\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1\ns/v/media.m3u8?x=1\n";
        assert_eq!(
            with_query(multi, "token=t"),
            "#EXT-X-MEDIA:TYPE=AUDIO,URI=\"s/audio/media.m3u8?token=t\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1\ns/v/media.m3u8?x=1&token=t\n"
        );
    }

    #[test]
    fn session_ids_are_short_and_ordered() {
        assert_eq!(session_id(1_795_000_000_000), "1a1ee565e00");
        assert!(session_id(1_795_000_000_001) > session_id(1_795_000_000_000));
        assert!(Resource::parse(&session_id(1)).is_none());
    }
}
