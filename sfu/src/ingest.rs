//! Internal publishers: media that enters a room from inside the process
//! (the RTMP shim) rather than over WebRTC. To viewers, taps, the GOP cache
//! and the room API it is a publisher like any other; it only has no str0m
//! peer, so it hands RTP payloads straight to the room and hears keyframe
//! requests and kicks through its signal channel.
//!
//! ```text
//!  RTMP connection ─► packetizer ─► InternalPublisher::send ─► command ─► Engine::fan_out ─► viewers
//!        ▲                                                                   │
//!        └──────────── IngestSignal (keyframe wanted / ended) ◄──────────────┘
//! ```

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::driver::Command;

/// What kind of track an internal publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestCodec {
    /// H.264, packetization-mode 1, with this `profile-level-id` (e.g. 0x42e01f).
    H264 { profile_level_id: u32 },
    /// Opus at 48 kHz.
    Opus { channels: u8 },
}

/// One RTP payload for a track of an internal publisher.
#[derive(Debug, Clone)]
pub struct IngestPacket {
    /// Extended sequence number of this track, from 0 or anywhere (< 2^48).
    pub seq_no: u64,
    /// RTP timestamp (90 kHz video, 48 kHz Opus).
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

/// What the room tells its internal publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestSignal {
    /// A viewer or tap wants a keyframe (e.g. make the re-encoder emit one).
    KeyframeWanted,
    /// The session was ended by the room (kick, key rotation, room deleted):
    /// close the connection.
    Ended,
}

/// A publisher inside the process, made by [`crate::Sfu::publish_internal`].
/// Dropping it ends its session, as a WHIP DELETE would.
pub struct InternalPublisher {
    pub(crate) id: u64,
    pub(crate) session: String,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// Keyframe requests and the end of the session.
    pub signals: mpsc::UnboundedReceiver<IngestSignal>,
}

impl InternalPublisher {
    /// The session id (as the room API lists and kicks it).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Sends one packet of track `track` (its index in the spec given at publish).
    pub fn send(&self, track: usize, packet: IngestPacket) {
        let _ = self.commands.send(Command::Ingest {
            id: self.id,
            track,
            packet,
        });
    }
}

impl Drop for InternalPublisher {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::EndInternal { id: self.id });
    }
}
