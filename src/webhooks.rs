//! Webhooks and the watcher that produces their room events.
//!
//! ```text
//!  watcher task (every second: sfu.rooms_status()) ─ room.started / room.stopped ─┐
//!  HTTP guard (a WHIP POST answered 401/409) ───────── publisher.rejected ────────┼─► queue
//!                                                                                 │  (bounded,
//!  dispatcher task ◄──────────────────────────────────────────────────────────────┘   try_send)
//!     └─► one task per (event, URL), at most IN_FLIGHT at once: POST signed JSON, retry with backoff,
//!         every attempt recorded in the store (GET /api/v1/webhooks/deliveries)
//! ```
//!
//! Nothing on the media or request path waits for a receiver: events are
//! queued with `try_send` and dropped (with a warning) if the queue is full.
//! Live state is observed by polling the SFU once a second, so `room.started`
//! arrives up to a second after the publisher connected.
//!
//! Signature: `Dionysia-Signature: t=<unix seconds>,v1=<hex>` where `<hex>`
//! is HMAC-SHA256(secret, "<t>.<body>"); receivers recompute it and reject
//! old `t` to stop replays.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::auth::{hmac_sha256_hex, random_string, unix_now};
use crate::store::{Delivery, Store};

/// Events waiting for the dispatcher; past this, new events are dropped.
const QUEUE: usize = 1024;
/// Deliveries (with their retries) in flight at once; past this the
/// dispatcher waits, so the queue fills and new events are dropped instead
/// of tasks piling up behind a slow or dead receiver.
const IN_FLIGHT: usize = 256;
/// Attempts per event and URL, and the wait before the first retry (doubling).
pub const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest a receiver may take to answer one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the watcher looks at the SFU's rooms.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// One event, as sent.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    pub room: String,
    pub data: serde_json::Value,
}

/// The handle that queues events; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Event>>,
}

impl Webhooks {
    /// Starts the dispatcher (on the current runtime) when URLs are configured.
    pub fn start(urls: Vec<String>, secret: Option<String>, store: Arc<dyn Store>) -> Webhooks {
        let (Some(secret), false) = (secret, urls.is_empty()) else {
            return Webhooks { tx: None };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(rx, urls, secret, store, IN_FLIGHT));
        Webhooks { tx: Some(tx) }
    }

    /// A handle that drops every event (no URLs configured).
    #[cfg(test)]
    pub fn disabled() -> Webhooks {
        Webhooks { tx: None }
    }

    /// Queues an event; never waits.
    pub fn emit(&self, kind: &'static str, room: &str, data: serde_json::Value) {
        let Some(tx) = &self.tx else { return };
        let event = Event {
            id: format!("evt_{}", random_string(20)),
            kind,
            created_at: unix_now(),
            room: room.to_string(),
            data,
        };
        if tx.try_send(event).is_err() {
            warn!(kind, room, "webhook queue full: event dropped");
        }
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<Event>,
    urls: Vec<String>,
    secret: String,
    store: Arc<dyn Store>,
    in_flight: usize,
) {
    let client = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dionysia/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => return warn!("webhooks disabled: {e}"),
    };
    let secret = Arc::new(secret);
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(event) = rx.recv().await {
        let body = Arc::new(serde_json::to_vec(&event).unwrap_or_default());
        for url in &urls {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let delivery = deliver(
                client.clone(),
                url.clone(),
                event.clone(),
                body.clone(),
                secret.clone(),
                store.clone(),
            );
            tokio::spawn(async move {
                delivery.await;
                drop(slot);
            });
        }
    }
}

/// The signature header's value for `body` sent at `t`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    format!("t={t},v1={}", hmac_sha256_hex(secret, &message))
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    event: Event,
    body: Arc<Vec<u8>>,
    secret: Arc<String>,
    store: Arc<dyn Store>,
) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=MAX_ATTEMPTS {
        let t = unix_now();
        let result = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("dionysia-event", event.kind)
            .header("dionysia-delivery", &event.id)
            .header("dionysia-signature", signature(secret.as_bytes(), t, &body))
            .body(body.as_ref().clone())
            .send()
            .await;
        let (status, error) = match result {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
            Ok(r) => (
                Some(r.status().as_u16()),
                Some(format!("the receiver answered {}", r.status())),
            ),
            // Without the URL: it may carry credentials in its query.
            Err(e) => (None, Some(error_chain(&e.without_url()))),
        };
        let delivered = error.is_none();
        let record = Delivery {
            event_id: event.id.clone(),
            event: event.kind.to_string(),
            room: Some(event.room.clone()),
            url: url.clone(),
            attempt,
            status,
            error,
            delivered,
            at: t,
        };
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = s.record_delivery(&record) {
                warn!("recording a webhook delivery: {e}");
            }
        })
        .await;
        if delivered {
            debug!(kind = event.kind, attempt, "webhook delivered");
            return;
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    warn!(
        kind = event.kind,
        room = event.room,
        "webhook not delivered after {MAX_ATTEMPTS} attempts"
    );
}

/// An error and its causes: "error sending request: … Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// ------------------------------------------------------------------ watcher

/// The stream key each room had when this process last saw it, to notice
/// keys rotated and rooms deleted by another process (the CLI) and end their
/// sessions. The API updates it itself when it changes a room.
#[derive(Clone, Default)]
pub struct KnownKeys(Arc<Mutex<HashMap<String, String>>>);

impl KnownKeys {
    pub fn set(&self, room: &str, key: &str) {
        self.lock().insert(room.to_string(), key.to_string());
    }

    pub fn remove(&self, room: &str) {
        self.lock().remove(room);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every [`WATCH_INTERVAL`]: emits `room.started` / `room.stopped` as rooms
/// go live and stop, and ends the sessions of rooms another process re-keyed
/// or deleted.
pub async fn watch(sfu: sfu::Sfu, store: Arc<dyn Store>, webhooks: Webhooks, keys: KnownKeys) {
    let mut live: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_live: HashMap<String, sfu::RoomStatus> = sfu
            .rooms_status()
            .await
            .into_iter()
            .filter(|r| r.live)
            .map(|r| (r.room.clone(), r))
            .collect();
        for (room, status) in &now_live {
            if !live.contains(room) {
                info!(room, "room started");
                let ingest = status.publisher.as_ref().map(|p| p.ingest.clone());
                let tracks: Vec<serde_json::Value> = status
                    .tracks
                    .iter()
                    .map(|t| json!({"kind": t.kind, "codec": t.codec}))
                    .collect();
                webhooks.emit(
                    "room.started",
                    room,
                    json!({"ingest": ingest, "tracks": tracks}),
                );
            }
        }
        for room in live.iter().filter(|r| !now_live.contains_key(*r)) {
            info!(room, "room stopped");
            webhooks.emit("room.stopped", room, json!({}));
        }
        live = now_live.into_keys().collect();

        let s = store.clone();
        let changed = tokio::task::spawn_blocking(move || {
            if s.changed_elsewhere().unwrap_or(false) {
                s.rooms().ok()
            } else {
                None
            }
        })
        .await
        .ok()
        .flatten();
        if let Some(rooms) = changed {
            let current: HashMap<String, String> =
                rooms.into_iter().map(|r| (r.name, r.stream_key)).collect();
            // (room, deleted?) for every room whose key is not what we knew.
            let stale: Vec<(String, bool)> = {
                let mut known = keys.lock();
                let stale = known
                    .iter()
                    .filter(|(name, key)| current.get(*name) != Some(*key))
                    .map(|(name, _)| (name.clone(), !current.contains_key(name)))
                    .collect();
                *known = current;
                stale
            };
            for (room, deleted) in stale {
                if deleted {
                    info!(room, "room deleted elsewhere: ending its sessions");
                    sfu.close_room(&room).await;
                } else if let Some(p) = sfu.room_status(&room).await.and_then(|s| s.publisher) {
                    info!(
                        room,
                        "stream key rotated elsewhere: ending the publisher's session"
                    );
                    let _ = sfu.kick(&room, &p.session).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that accepts and never answers holds its deliveries; the
    /// dispatcher starts no more than its limit meanwhile.
    #[tokio::test]
    async fn deliveries_in_flight_are_bounded() {
        let dir = std::env::temp_dir().join(format!("dionysia-hooks-{}", fastrand::u64(..)));
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::open(&dir).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(rx, vec![url], "s".into(), store, 2));
        for i in 0..5 {
            let event = Event {
                id: format!("evt_{i}"),
                kind: "room.started",
                created_at: 0,
                room: "r".into(),
                data: json!({}),
            };
            tx.send(event).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn signature_is_hmac_of_time_dot_body() {
        let s = signature(b"secret", 1700000000, b"{}");
        assert_eq!(
            s,
            format!(
                "t=1700000000,v1={}",
                hmac_sha256_hex(b"secret", b"1700000000.{}")
            )
        );
    }
}
