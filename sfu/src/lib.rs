//! The media core of Dionysia: rooms, publishers, subscribers, and the
//! forwarding of RTP between them over one UDP port.
//!
//! ```text
//!   HTTP edges (whip, whep) ──commands──► Sfu handle ──► media threads (shards)
//!                                                          │
//!   UDP :8189 ─► router ─► shard: driver (timers, sends) ◄──► Engine ─ rooms ─ tracks
//!                                                               │
//!                           publisher rtc ─RTP─► Forwarder per viewer ─► viewer rtc
//!                           (home shard) ─relay─► mirror room on another shard
//! ```
//!
//! Every peer is a str0m [`str0m::Rtc`] in RTP mode and ICE-lite: packets are
//! forwarded with their header rewritten (sequence number, timestamp, payload
//! type, SSRC), never depacketized. Datagrams reach their peer in O(1): by
//! remote address, or for a new address by the ufrag in its STUN request
//! (whose first character names the shard that owns the session).
//!
//! This crate never touches HTTP: the WHIP and WHEP crates call [`Sfu`].

mod codec;
mod config;
mod driver;
mod engine;
mod error;
mod forwarder;
mod gop;
mod ingest;
mod layers;
mod picture;
mod relay;
#[cfg(target_os = "linux")]
mod sendmmsg;
mod source;
mod stun;
mod tap;

pub use config::SfuConfig;
pub use driver::Sfu;
pub use engine::{SubscribeOptions, ACCEPTED_CODECS};
pub use error::SfuError;
pub use ingest::{IngestCodec, IngestPacket, IngestSignal, InternalPublisher};
pub use source::{
    SourceAudio, SourceAudioFrame, SourceAudioPublisher, SourceRegistry, SOURCE_AUDIO_QUEUE,
};
pub use tap::{Tap, TapCodec, TapEvent, TapPacket, TapTrack, TAP_QUEUE};

/// Whether a session sends media into a room or watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// Identifies a session for PATCH and DELETE: its id, and the room and role
/// the URL named (a session is only found under its own URL).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub room: String,
    pub role: Role,
    pub session: String,
}

/// A new session: its id (unguessable; the resource URL is its capability)
/// and the SDP answer.
#[derive(Debug, Clone)]
pub struct SessionAnswer {
    pub session: String,
    pub sdp: String,
    /// Our ICE ufrag: it changes exactly on an ICE restart (WHIP's ETag).
    pub ice_ufrag: String,
}

/// What a PATCH body (RFC 8840 SDP fragment) carries.
#[derive(Debug, Clone, Default)]
pub struct IceFragment {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `candidate:...` attribute values.
    pub candidates: Vec<String>,
    pub end_of_candidates: bool,
}

/// What a PATCH did.
#[derive(Debug, Clone)]
pub enum PatchOutcome {
    /// Candidates were added.
    Trickled,
    /// ICE restarted with new credentials of ours.
    Restarted {
        ufrag: String,
        pwd: String,
        candidates: Vec<String>,
    },
}

/// A viewer's request for a simulcast layer (the WHEP layer extension's
/// body): a rid, a maximum height, or nothing for automatic choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRequest {
    /// The viewer's m-line; all video m-lines when absent.
    #[serde(default)]
    pub media_id: Option<String>,
    #[serde(default)]
    pub rid: Option<String>,
    #[serde(default)]
    pub max_height: Option<u32>,
}

/// What one viewer's video m-line receives now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerView {
    pub media_id: String,
    /// The publisher's layers: rid (`null` without simulcast), bitrate, height, active.
    pub layers: Vec<LayerState>,
    /// The layer being forwarded now, and the one the viewer should get.
    pub current: Option<usize>,
    pub target: Option<usize>,
    /// `auto`, `rid:<rid>` or `max-height:<h>`.
    pub requested: String,
    pub packets_forwarded: u64,
    pub packets_dropped: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerState {
    pub rid: Option<String>,
    pub bitrate: u64,
    pub height: u32,
    pub active: bool,
}

/// A viewer session's state, for the API and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewerState {
    /// Available bandwidth estimated from the viewer's feedback, bits/s.
    pub estimated_bitrate: Option<u64>,
    pub video: Vec<LayerView>,
}

/// A room as the room API and metrics see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomStatus {
    pub room: String,
    /// A publisher is connected and sending.
    pub live: bool,
    pub publisher: Option<PublisherStatus>,
    pub tracks: Vec<TrackStatus>,
    pub viewers: Vec<ViewerSummary>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PublisherStatus {
    pub session: String,
    /// `whip` (later also `rtmp`).
    pub ingest: String,
    pub connected: bool,
    /// Seconds since the session began.
    pub uptime_secs: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrackStatus {
    /// `audio` or `video`.
    pub kind: String,
    /// e.g. `H264`, `VP8`, `opus`.
    pub codec: String,
    pub layers: Vec<LayerState>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewerSummary {
    pub session: String,
    pub connected: bool,
    pub uptime_secs: f64,
    pub estimated_bitrate: Option<u64>,
    /// The rid of the video layer being forwarded (`null` without simulcast).
    pub layer: Option<String>,
    /// RTP packets sent to this viewer (all its m-lines, replays included).
    pub packets_forwarded: u64,
    /// Packets of its sources not sent: other layers' and those before a start.
    pub packets_dropped: u64,
}
