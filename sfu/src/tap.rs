//! Taps: in-process subscribers of a room, with no WebRTC leg. The HLS
//! bridge is one: it gets every packet of every layer of every track as the
//! publisher sends it (RTX repaired, in arrival order), and asks for
//! keyframes when it wants to start a segment.
//!
//! ```text
//!  publisher ─► Engine::fan_out ─┬─► viewers (Forwarders)
//!                                └─► try_send ─► Tap (bounded channel) ─► hls-bridge task
//! ```
//!
//! A tap never slows the room: its channel is bounded, and a full channel
//! drops the packet (the tap sees the sequence gap and waits for the next
//! keyframe). The publish's start and end are never dropped: the last few
//! slots are kept for them.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

/// How many events a tap may fall behind before packets are dropped
/// (≈ 4 s of a 3-layer 2.5 Mbps stream).
pub const TAP_QUEUE: usize = 4096;

pub(crate) type TapSender = mpsc::Sender<TapEvent>;

/// Slots of a tap's queue that packets never take: they are kept for the
/// `Live` and `Ended` events, which a tap must not miss however far behind
/// it is (a lost `Ended` would leave the HLS bridge serving a dead publish).
/// Four covers two publisher reconnects while a tap's reader is stalled.
pub(crate) const TAP_SIGNAL_RESERVE: usize = 4;

/// What a tap receives.
#[derive(Debug, Clone)]
pub enum TapEvent {
    /// A publisher is live with these tracks (sent again after a reconnect:
    /// `generation` changes, sequence numbers restart).
    Live {
        generation: u64,
        tracks: Vec<TapTrack>,
    },
    Packet(TapPacket),
    /// The publisher left.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapCodec {
    H264,
    Vp8,
    Vp9,
    Av1,
    H265,
    Opus,
    Other,
}

/// One track of the room as a tap sees it.
#[derive(Debug, Clone)]
pub struct TapTrack {
    /// Index used in [`TapPacket::track`] and [`Tap::request_keyframe`].
    pub index: usize,
    pub video: bool,
    /// The codec of the track's first payload type.
    pub codec: TapCodec,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    /// Simulcast layers by rid (`[None]` without simulcast), in the order
    /// the publisher declared them; [`TapPacket::layer`] indexes this.
    pub layers: Vec<Option<String>>,
    /// Every payload type the publisher may use on this track, with its
    /// codec ([`TapPacket::pt`] says which one a packet uses).
    pub payload_types: Vec<(u8, TapCodec)>,
}

/// One RTP packet of the publisher, payload shared with the viewers.
#[derive(Debug, Clone)]
pub struct TapPacket {
    pub track: usize,
    pub layer: u8,
    /// The publisher stream's extended sequence number.
    pub seq_no: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub keyframe_start: bool,
    pub pt: u8,
    pub payload: Arc<[u8]>,
    pub arrival: Instant,
}

/// A subscription to one room's media, made by [`crate::Sfu::tap`].
pub struct Tap {
    pub events: mpsc::Receiver<TapEvent>,
    pub(crate) room: String,
    pub(crate) sfu: crate::Sfu,
}

impl Tap {
    /// Asks the publisher for a keyframe on one layer (throttled by the SFU).
    pub fn request_keyframe(&self, track: usize, layer: u8) {
        self.sfu.tap_keyframe(&self.room, track, layer);
    }
}
