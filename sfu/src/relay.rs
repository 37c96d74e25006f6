//! Relays between media shards: how one room's publisher reaches viewers
//! on every media thread.
//!
//! The SFU runs one [`crate::engine::Engine`] per media thread (shard). A
//! room's publisher joins the room's *home* shard; a viewer joins the least
//! loaded shard. When that is not the home, its shard keeps a *mirror* of
//! the room, fed by the home: every packet the home's room fans out is also
//! handed, payload shared, to each mirroring shard's command channel, where
//! a relay publisher (an internal publisher with no socket) fans it out to
//! the local viewers with their own forwarders, layer choice and GOP cache.
//!
//! ```text
//!  home shard                                   mirror shard
//!  publisher ─► fan_out ─┬─► its viewers
//!                        └─► Command::Relay ─► relay publisher ─► fan_out ─► its viewers
//!        ▲                                          │
//!        └──── Command::TapKeyframe (track, layer) ◄┘  (a viewer lost its picture)
//! ```
//!
//! Opening and closing: a mirror shard sends `RelayOpen` when a viewer is
//! about to join and it has no mirror of the room; the home answers with
//! `Live` (and later `Live` again on a publisher reconnect, `Ended` when the
//! publisher leaves). A mirror with no viewers for [`MIRROR_IDLE`] sends
//! `RelayClose` and forgets the room.

use std::time::Duration;

use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Rid};

use crate::engine::MediaPacket;
use crate::gop::KeyframeProbe;

/// A mirror with no viewer for this long is closed (its relay stops).
pub(crate) const MIRROR_IDLE: Duration = Duration::from_secs(10);
/// How long a viewer's join waits for its shard's mirror to go live.
pub(crate) const MIRROR_WAIT: Duration = Duration::from_secs(2);

/// What the home shard tells a mirroring shard about a room.
// Packets are nearly all the traffic, so boxing the big variant would only
// add an allocation per packet.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RelayEvent {
    /// The room has a publisher with these tracks (again after a reconnect).
    Live { tracks: Vec<RelayTrack> },
    /// One publisher packet of home track `track`, layer `layer`.
    Packet {
        track: usize,
        layer: u8,
        packet: MediaPacket,
    },
    /// The home learnt whether a layer's publisher answers keyframe
    /// requests (mirrors do not probe: their requests go through the home's
    /// rate limit and would measure that instead).
    Probe {
        track: usize,
        layer: u8,
        probe: KeyframeProbe,
    },
    /// The publisher left.
    Ended,
}

/// One track of the home room that its publisher feeds now.
pub(crate) struct RelayTrack {
    /// The home's track index (what `Packet::track` and keyframe requests use).
    pub index: usize,
    pub kind: MediaKind,
    pub params: Vec<PayloadParams>,
    pub layers: Vec<Option<Rid>>,
    pub probe: Vec<KeyframeProbe>,
}

/// The shard a session or ICE ufrag belongs to: its first character, as
/// [`shard_tag`] wrote it.
pub fn shard_of(token: &str) -> Option<usize> {
    let c = *token.as_bytes().first()?;
    TAGS.iter().position(|t| *t == c)
}

/// The first character of every session id and ICE ufrag a shard makes.
pub(crate) fn shard_tag(shard: usize) -> char {
    TAGS[shard % TAGS.len()] as char
}

/// Shard tags (at most this many shards).
pub(crate) const TAGS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_tags_round_trip() {
        for shard in 0..TAGS.len() {
            let token = format!("{}xyz", shard_tag(shard));
            assert_eq!(shard_of(&token), Some(shard));
        }
        assert_eq!(shard_of(""), None);
        assert_eq!(shard_of("9abc"), None);
    }
}
