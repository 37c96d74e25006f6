//! Relays between media shards: how one room's publisher reaches viewers
//! on every media thread.
//!
//! The SFU runs one [`crate::engine::Engine`] per media thread (shard). A
//! room's publisher joins the room's *home* shard; a viewer joins the least
//! loaded shard. When that is not the home, its shard keeps a *mirror* of
//! the room, fed by the home: every packet the home's room fans out is also
//! handed, payload shared, to each mirroring shard's relay channel, where
//! a relay publisher (an internal publisher with no socket) fans it out to
//! the local viewers with their own forwarders, layer choice and GOP cache.
//! At most [`RELAY_QUEUE`] packets wait in a relay channel: a mirror that
//! cannot keep up loses packets (its viewers see loss, as from a full
//! socket) instead of queueing seconds of media in memory, and the
//! commands its shard serves (HTTP requests, joins) do not wait behind them.
//!
//! ```text
//!  home shard                                   mirror shard
//!  publisher ─► fan_out ─┬─► its viewers
//!                        └─► RelayLink ─► relay publisher ─► fan_out ─► its viewers
//!        ▲                                          │
//!        └──── Command::TapKeyframe (track, layer) ◄┘  (a viewer lost its picture)
//! ```
//!
//! Opening and closing: a mirror shard sends `RelayOpen` when a viewer is
//! about to join and it has no mirror of the room; the home answers with
//! `Live` (and later `Live` again on a publisher reconnect, `Ended` when the
//! publisher leaves). A mirror with no viewers for [`MIRROR_IDLE`] sends
//! `RelayClose` and forgets the room.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Rid};

use crate::engine::MediaPacket;
use crate::gop::KeyframeProbe;

/// A mirror with no viewer for this long is closed (its relay stops).
pub(crate) const MIRROR_IDLE: Duration = Duration::from_secs(10);
/// How long a viewer's join waits for its shard's mirror to go live.
pub(crate) const MIRROR_WAIT: Duration = Duration::from_secs(2);

/// Most relay packets waiting for one mirroring shard; past it the home
/// drops them. Room for a few seconds of a 2.5 Mbit/s simulcast publisher
/// (≈ 350 packets/s), so that keyframe bursts on every layer at once and a
/// mirror thread kept off its core for a while lose nothing (128 did, at
/// 100 viewers); a mirror that is behind for longer is overloaded.
pub(crate) const RELAY_QUEUE: usize = 1024;

/// One message on a relay channel: the room and what happened to it.
pub(crate) type RelayMessage = (Arc<str>, RelayEvent);

/// The sending end of a shard's relay channel (every shard has one to
/// every shard). Packets are counted against [`RELAY_QUEUE`]; the other
/// events, rare and not to be lost, always go, in order with the packets.
#[derive(Clone)]
pub(crate) struct RelayLink {
    tx: mpsc::UnboundedSender<RelayMessage>,
    queued: Arc<AtomicUsize>,
}

/// The receiving end of a shard's relay channel.
pub(crate) struct RelayInbox {
    rx: mpsc::UnboundedReceiver<RelayMessage>,
    queued: Arc<AtomicUsize>,
}

/// A relay channel for one shard.
pub(crate) fn relay_channel() -> (RelayLink, RelayInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        RelayLink {
            tx,
            queued: queued.clone(),
        },
        RelayInbox { rx, queued },
    )
}

impl RelayLink {
    /// Sends `event`; false when it was a packet dropped because the
    /// mirror is [`RELAY_QUEUE`] packets behind (or the shard is gone).
    pub fn send(&self, room: &Arc<str>, event: RelayEvent) -> bool {
        if matches!(event, RelayEvent::Packet { .. }) {
            if self.queued.load(Ordering::Relaxed) >= RELAY_QUEUE {
                return false;
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        self.tx.send((room.clone(), event)).is_ok()
    }
}

impl RelayInbox {
    /// The next message if one is queued (tests drive engines by hand).
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<RelayMessage> {
        let message = self.rx.try_recv().ok()?;
        if matches!(message.1, RelayEvent::Packet { .. }) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        Some(message)
    }

    pub async fn recv(&mut self) -> Option<RelayMessage> {
        let message = self.rx.recv().await?;
        if matches!(message.1, RelayEvent::Packet { .. }) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        Some(message)
    }
}

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
    /// The home's measured bitrate (bits/s) of each layer of home track
    /// `track`, every layer tick: mirrors choose viewers' layers by these
    /// rather than measure what reaches them (the GOPs a new mirror is
    /// seeded with would count as a burst of several times the rate).
    Rates { track: usize, bitrates: Vec<u64> },
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
    /// Each layer's measured bitrate, bits/s (see `RelayEvent::Rates`).
    pub bitrates: Vec<u64>,
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

    fn packet(seq_no: u64) -> RelayEvent {
        RelayEvent::Packet {
            track: 0,
            layer: 0,
            packet: MediaPacket {
                seq_no,
                timestamp: 0,
                marker: false,
                pt: 96.into(),
                payload: Arc::from(&[0u8; 10][..]),
                arrival: std::time::Instant::now(),
                ext: Default::default(),
            },
        }
    }

    /// A mirror that falls behind loses packets past RELAY_QUEUE, never
    /// the events that open and end a room, and catches up as it reads.
    #[tokio::test]
    async fn a_relay_link_bounds_packets_but_not_events() {
        let (link, mut inbox) = relay_channel();
        let room: Arc<str> = Arc::from("r");
        for i in 0..RELAY_QUEUE as u64 {
            assert!(link.send(&room, packet(i)));
        }
        assert!(
            !link.send(&room, packet(999)),
            "one past the bound is dropped"
        );
        assert!(link.send(&room, RelayEvent::Ended), "events always go");
        for i in 0..RELAY_QUEUE as u64 {
            let (_, event) = inbox.recv().await.unwrap();
            assert!(matches!(event, RelayEvent::Packet { packet, .. } if packet.seq_no == i));
        }
        assert!(matches!(inbox.recv().await, Some((_, RelayEvent::Ended))));
        assert!(link.send(&room, packet(1000)), "room again once read");
    }
}
