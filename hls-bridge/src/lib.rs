//! # hls-bridge: a room as Low-Latency HLS
//!
//! The bridge is an internal subscriber of a room. It takes the RTP the SFU
//! already receives, turns it back into frames, packages them as CMAF
//! (fragmented MP4) parts and segments, and describes them in LL-HLS
//! playlists that any HLS player, CDN or HTTP cache understands.
//!
//! ```text
//!  sfu (RTP: seq u64, ts u32, marker, payload)
//!   │  Bridge::push_rtp(track, packet, now)
//!   ▼
//!  rtp::ReorderBuffer ── holes declared Lost after a few packets / 50 ms
//!   ▼
//!  h264 / opus / vp8 depacketizer ── broken frame? drop until next keyframe
//!   ▼
//!  Rendition: RTP time → media time, frame duration from the next frame
//!   ▼
//!  timeline::Timeline ── parts (≤ PART-TARGET, ≥ 85 %), segments on keyframes,
//!   │                    sliding window, bounded memory
//!   ├─► fmp4: init segment (avc1/avcC, Opus/dOps, mp4a/esds), moof+mdat parts
//!   ├─► playlist: media playlist (full or delta), multivariant playlist
//!   └─► reload::decide: blocking reload → Ready / Wait / 400 / 503
//!   ▲
//!  service: axum routes under /hls, one tokio task per bridged room fed by
//!  the SFU's tap (live::LiveSession maps tap tracks/layers to renditions);
//!  blocked requests await a watch of `Edge`, never poll
//! ```
//!
//! Everything but [`service`] is sans-IO and deterministic: no sockets, no
//! timers, no threads, no clock reads. Time comes in as `now: Duration` since the
//! bridge's epoch, so the LL-HLS timing rules are unit-tested with injected
//! time, and the same state machine serves tests and production.
//!
//! The core modules must never: touch a socket or an HTTP type (the HTTP
//! layer, [`service`], lives at the edge and only calls [`Bridge`]); block or
//! sleep; depend on the SFU (only [`live`] knows its tap types); write to
//! disk; or let a malformed packet panic or reach a segment.
//!
//! # Wiring it (what the SFU and HTTP edges call)
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use hls_bridge::{Bridge, BridgeConfig, Decision, PlaylistQuery, Resource, RtpPacket};
//!
//! // One bridge per live room; its epoch is "now" in Unix milliseconds.
//! let mut room = Bridge::new(BridgeConfig::default(), 1_795_000_000_000);
//! let video = room.add_h264_track("720p")?; // one per simulcast layer
//! let audio = room.add_opus_track("audio", 2)?;
//!
//! // SFU side, for every RTP packet of those tracks (after SRTP):
//! let packet = RtpPacket { seq: 1, timestamp: 0, marker: true, payload: Bytes::from_static(&[0x09, 0xf0]) };
//! let progress = room.push_rtp(video, packet, Duration::from_millis(5))?;
//! if progress.keyframe_wanted { /* send a PLI for this track */ }
//! if progress.part { /* watch::Sender<Edge>::send(room.rendition("720p")?.edge()) */ }
//! if progress.chunk { /* wake readers of the preload-hinted part */ }
//!
//! // HTTP side, GET /hls/{room}/720p/media.m3u8?_HLS_msn=3&_HLS_part=1
//! let query = PlaylistQuery::parse("_HLS_msn=3&_HLS_part=1")?;
//! match room.decide("720p", &query, Duration::ZERO)? {
//!     Decision::Ready => { let _text = room.media_playlist("720p", &query)?; }
//!     Decision::Wait { remaining } => { /* await the watch or `remaining`, ask again */ }
//!     Decision::BadRequest => { /* 400 */ }
//!     Decision::Unavailable => { /* 503 */ }
//! }
//! // GET /hls/{room}/720p/part12.m4s
//! assert_eq!(Resource::parse("part12.m4s"), Some(Resource::Part(12)));
//! let _ = room.read_part("720p", 12, 0)?; // Some(PartRead) while hinted or held
//! # let _ = audio;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Serving it: `hls_bridge::router(sfu, HlsConfig::default())` is an axum
//! router for `/hls/...` (see `docs/hls.md` for the URLs and caching).
//!
//! Audio: Opus from the publisher becomes AAC-LC ([`aac`]: opus-rs decoder,
//! fdk-aac encoder) unless [`live::AudioOutput::Opus`] is chosen.
//!
//! A single-layer H.264 publish also gets lower renditions made by
//! [`ladder`] (openh264 on a thread of its own, fed through
//! [`Bridge::tee_access_units`], output through
//! [`Bridge::add_h264_frame_track`]).
//!
//! A single-layer VP8 publish (feature `vp8`, which needs the system
//! libvpx) has every rendition made by the ladder, the source's size
//! included: libvpx decodes ([`vpx`]), openh264 encodes. Without the
//! feature, a VP8 publish is bridged as audio only (and a warning says so).
//!
//! Not here yet: A/V sync from RTCP sender reports (tracks are aligned by
//! arrival time).

pub mod aac;
pub mod bridge;
pub mod fmp4;
pub mod h264;
pub mod ladder;
pub mod live;
pub mod opus;
pub mod playlist;
pub mod reload;
pub mod rtp;
pub mod service;
pub mod timeline;
pub mod vp8;
#[cfg(feature = "vp8")]
pub mod vpx;

pub use bridge::{Body, Bridge, BridgeConfig, PartRead, Rendition, TrackId};
pub use h264::AccessUnit;
pub use live::AudioOutput;
pub use playlist::Resource;
pub use reload::{Decision, Edge, PlaylistQuery, QueryError};
pub use rtp::{ReorderConfig, RtpPacket};
pub use service::{router, HlsConfig, RoomLadder};
pub use timeline::Progress;
pub use timeline::TimelineConfig;

/// Everything the bridge can refuse. The HTTP edge maps these to problem
/// responses (unknown rendition → 404, query errors → 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no rendition named {0:?}")]
    UnknownRendition(String),
    #[error("no such track")]
    UnknownTrack,
    #[error("rendition name {0:?} must be 1-64 of [A-Za-z0-9_-] and not a file name")]
    BadRenditionName(String),
    #[error("a rendition named {0:?} already exists")]
    DuplicateRendition(String),
    #[error("this track does not take that kind of input")]
    WrongInput,
    #[error("AAC-LC cannot carry {channels} channels at {sample_rate} Hz")]
    UnsupportedAudio { sample_rate: u32, channels: u8 },
    #[error(transparent)]
    Query(#[from] QueryError),
}
