//! The engine: every peer's str0m [`Rtc`], the rooms, and the forwarding
//! between them. It does no I/O of its own: the driver feeds it datagrams,
//! commands and the time, and takes the datagrams it wants sent
//! (`poll_transmit`) and when it next wants the time (`poll_timeout`).
//!
//! ```text
//!  datagram ─► demux (addr, else STUN ufrag) ─► Peer.rtc ─► events
//!                                                   │
//!     publisher RtpPacket ─► Room.tracks ─► each subscriber's Forwarder
//!                                               ─► subscriber rtc.write_rtp ─► transmits
//! ```
//!
//! str0m's contract is "mutate, then drain `poll_output` to a timeout": every
//! mutation here is followed by [`drain`]. Events found while draining are
//! queued and handled after the drain, so one peer's events can mutate other
//! peers without aliasing.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Pt, Rid, Rids,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::codec::{self, VideoCodec};
use crate::driver::Command;
use crate::forwarder::{self, Forwarder, SourceId};
use crate::gop::{self, CachedPacket, DelayHint, GopCache, GopOffer, KeyframeProbe, StartDelay};
use crate::ingest::{IngestCodec, IngestPacket, IngestSignal};
use crate::layers::{congestion_cap, LayerCap, LayerInfo, LayerSelector};
use crate::picture;
use crate::relay::{self, RelayEvent, RelayLink, RelayTrack, MIRROR_IDLE, MIRROR_WAIT};
use crate::tap::{TapCodec, TapEvent, TapPacket, TapSender, TapTrack, TAP_SIGNAL_RESERVE};
use crate::{
    stun, IceFragment, LayerRequest, LayerState, LayerView, PatchOutcome, Role, SessionAnswer,
    SessionInfo, SfuConfig, SfuError, ViewerState,
};
use crate::{PublisherStatus, RoomStatus, TrackStatus, ViewerSummary};

/// Engine-internal handle of a peer (one WHIP or WHEP session).
type PeerId = u64;

/// A datagram the engine wants sent.
pub struct Outgoing {
    pub destination: SocketAddr,
    /// The local address the peer talks to, when known (multi-homed hosts).
    pub source_ip: Option<IpAddr>,
    pub contents: Vec<u8>,
}

pub struct Engine {
    config: SfuConfig,
    /// Host candidates advertised to every peer (same port, each address).
    candidates: Vec<Candidate>,
    peers: HashMap<PeerId, Peer>,
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    by_session: HashMap<String, PeerId>,
    rooms: HashMap<String, Room>,
    timeouts: BinaryHeap<Reverse<(Instant, PeerId)>>,
    transmits: VecDeque<Outgoing>,
    /// Viewers written to by the fan-out and not drained yet. They are
    /// drained once per batch of input (when transmits or the next timeout
    /// are asked for), so each viewer's packets leave back to back: one
    /// str0m poll per viewer per batch instead of per packet, and runs of
    /// datagrams to one address that the sender coalesces (UDP GSO).
    fanned_out: Vec<PeerId>,
    /// The latest time the engine was given (for work left by a drain).
    clock: Instant,
    events: VecDeque<(PeerId, Event)>,
    next_peer: PeerId,
    next_tick: Option<Instant>,
    /// New viewers waiting for a requested keyframe, and when to give up
    /// and start them from the cached GOP instead.
    start_deadlines: Vec<(Instant, PeerId)>,
    last_tick: Option<Instant>,
    /// In-process subscribers (the HLS bridge) by room name.
    taps: HashMap<String, Vec<TapSender>>,
    /// In-process publishers (the RTMP shim, relays), by their id (a PeerId).
    internal: HashMap<PeerId, Internal>,
    /// This engine's shard (media thread) index; it starts every session id
    /// and ICE ufrag it makes (`relay::shard_tag`).
    shard: usize,
    /// Every shard's command channel, by index (see `relay.rs`).
    links: Vec<mpsc::WeakUnboundedSender<Command>>,
    /// Every shard's relay channel, by index.
    relay_links: Vec<RelayLink>,
    /// Sessions per shard (relays not counted): `max_sessions` is for the
    /// whole SFU, and new viewers go to the least loaded shard.
    load: Arc<[AtomicUsize]>,
    /// Home side: the shards that mirror a room of ours.
    relays: HashMap<String, RelayOut>,
    /// Mirror side: rooms whose publisher is on another shard.
    mirrors: HashMap<String, Mirror>,
}

/// The mirrors of one home room.
struct RelayOut {
    room: Arc<str>,
    to: Vec<(usize, RelayLink)>,
    /// Packets dropped because a mirror was behind (see `RELAY_QUEUE`).
    dropped: Cell<u64>,
}

impl RelayOut {
    fn send(&self, event: impl Fn() -> RelayEvent) {
        for (shard, link) in &self.to {
            if !link.send(&self.room, event()) {
                let dropped = self.dropped.get() + 1;
                self.dropped.set(dropped);
                if dropped.is_power_of_two() {
                    warn!(room = %self.room, shard, dropped, "a mirroring media thread is behind: relay packets dropped");
                }
            }
        }
    }
}

/// A room mirrored from its home shard.
struct Mirror {
    home: usize,
    /// Its relay publisher while the home's room is live.
    publisher: Option<PeerId>,
    /// Viewers' joins waiting for the mirror to go live.
    waiting: Vec<(Instant, oneshot::Sender<Result<(), SfuError>>)>,
    /// Since when it has had no viewer.
    idle_since: Option<Instant>,
}

/// A publisher with no str0m peer (see `ingest.rs`).
struct Internal {
    room: String,
    session: String,
    ingest: String,
    created: Instant,
    /// Room track index of each of its tracks (a relay's: of each home track).
    tracks: Vec<Option<usize>>,
    last_media: Option<Instant>,
    upstream: Upstream,
}

/// Where an internal publisher's keyframe requests go.
enum Upstream {
    /// The publisher's own signal channel (the RTMP shim).
    Ingest(mpsc::UnboundedSender<IngestSignal>),
    /// A relay: the room's home shard.
    Relay { home: usize },
}

struct Peer {
    session: String,
    room: String,
    role: Role,
    rtc: Rtc,
    ufrag: String,
    /// The peer's ICE ufrag; a PATCH naming another one is an ICE restart.
    remote_ufrag: Option<String>,
    addrs: Vec<SocketAddr>,
    local_ip: Option<IpAddr>,
    next_timeout: Instant,
    created: Instant,
    connected: bool,
    /// Publisher: which room track and layer each incoming SSRC feeds.
    ingest: HashMap<Ssrc, (usize, u8)>,
    /// Subscriber: one entry per sending m-line.
    egress: Vec<Egress>,
    /// Subscriber: its available bandwidth (TWCC or REMB), bits/s, as
    /// str0m reports it: averaged over 3 s.
    estimate: Option<u64>,
    /// Subscriber: the TWCC estimate itself, at each stats interval.
    raw_estimate: Option<u64>,
    /// Publisher: when its last media packet arrived.
    last_media: Option<Instant>,
    /// Subscriber: a bandwidth ceiling from heavy loss, and until when.
    loss_cap: Option<(u64, Instant)>,
    /// Subscriber: may start from a cached GOP (the room's `gop_cache`).
    gop_replay: bool,
    /// Subscriber: has packets written since its last drain (`Engine::fanned_out`).
    fanned_out: bool,
}

/// One subscriber m-line fed from one room track.
struct Egress {
    mid: Mid,
    track: usize,
    ssrc: Ssrc,
    /// Publisher PT → our PT for this subscriber.
    pt_map: Vec<(Pt, Pt)>,
    forwarder: Forwarder,
    /// Video: which layer this viewer should get.
    selector: LayerSelector,
    /// Cumulative counters at the last egress stats, for loss and rates.
    last_egress: EgressCounts,
    /// Video started from a replayed GOP: the playout-delay hint it gets
    /// while catching up (see `gop::StartDelay`).
    start_delay: Option<StartDelay>,
}

/// A viewer's egress counters as str0m last reported them.
#[derive(Debug, Default, Clone, Copy)]
struct EgressCounts {
    packets: u64,
    nacks: u64,
    bytes: u64,
    at: Option<Instant>,
    /// From the viewer's last receiver report: (highest sequence number,
    /// cumulative packets lost).
    report: Option<(u64, u64)>,
}

struct Room {
    publisher: Option<PeerId>,
    /// Generation of the current publisher: the forwarders' source identity.
    generation: u64,
    tracks: Vec<Track>,
    subscribers: Vec<PeerId>,
    /// When the last publisher left; viewers wait `publisher_grace` for another.
    orphaned_since: Option<Instant>,
    /// Fed by a relay from the room's home shard (see `relay.rs`).
    mirror: bool,
}

/// One media track of a room. It outlives its publisher so that a
/// reconnecting publisher continues the same track for every viewer.
struct Track {
    kind: MediaKind,
    /// The current publisher's mid for this track.
    mid: Option<Mid>,
    /// What the publisher negotiated for this track.
    params: Vec<PayloadParams>,
    /// Simulcast layers by rid; `[None]` without simulcast.
    layers: Vec<Option<Rid>>,
    last_keyframe_request: Vec<Option<Instant>>,
    /// Whether each layer's publisher answers keyframe requests.
    probe: Vec<KeyframeProbe>,
    /// The current GOP of each layer (video only), for instant start.
    gop: Vec<GopCache>,
    /// Rate and liveness of each layer.
    stats: Vec<LayerStats>,
}
/// Measured state of one layer.
#[derive(Debug, Default, Clone)]
struct LayerStats {
    /// Payload bytes since the last tick.
    bytes: u64,
    /// Smoothed bitrate, bits/s.
    bitrate: u64,
    last_packet: Option<Instant>,
    height: u32,
}

impl Track {
    /// A mirror takes its home's measured bitrates.
    fn set_bitrates(&mut self, bitrates: &[u64]) {
        for (st, b) in self.stats.iter_mut().zip(bitrates) {
            st.bitrate = *b;
        }
    }

    fn layer_infos(&self, now: Instant) -> Vec<LayerInfo> {
        self.stats
            .iter()
            .map(|s| LayerInfo {
                bitrate: s.bitrate,
                height: s.height,
                active: self.mid.is_some()
                    && s.last_packet
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE),
            })
            .collect()
    }
}

impl Track {
    fn codec_of(&self, pt: Pt) -> Option<Codec> {
        self.params
            .iter()
            .find(|p| p.pt() == pt)
            .map(|p| p.spec().codec)
    }
}

fn video_codec(codec: Codec) -> Option<VideoCodec> {
    Some(match codec {
        Codec::H264 => VideoCodec::H264,
        Codec::Vp8 => VideoCodec::Vp8,
        Codec::Vp9 => VideoCodec::Vp9,
        Codec::Av1 => VideoCodec::Av1,
        Codec::H265 => VideoCodec::H265,
        _ => return None,
    })
}

/// The codecs we accept from publishers, in our order of preference.
fn publisher_rtc_config() -> RtcConfig {
    RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_vp8(true)
        .enable_vp9(true)
        .enable_av1(true)
        .enable_opus(true, false)
}

/// A room's choices for a new viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Start the viewer from the cached GOP (the room's `gop_cache`
    /// setting); off, it waits for the next keyframe.
    pub gop_replay: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions { gop_replay: true }
    }
}

/// How often layer rates are measured and viewers' layers chosen.
const LAYER_TICK: Duration = Duration::from_millis(500);
/// A layer with no packet for this long is taken as stopped.
const LAYER_IDLE: Duration = Duration::from_millis(1500);
/// Bandwidth kept aside for a viewer's audio when sharing its estimate.
const AUDIO_ALLOWANCE: u64 = 100_000;
/// Packets of a viewer's video kept to answer its NACKs: ~0.6 s of a
/// 1.7 Mbit/s top layer (seconds of the lower ones), several round trips.
/// Each entry costs ~530 bytes of str0m bookkeeping per viewer (payloads
/// are shared): 300 packets measured 271 KiB of RSS per viewer, 150 191 KiB.
const RTX_CACHE_PACKETS: usize = 150;
/// str0m's defaults for the rest of the RTX cache, restated to empty it (see
/// `tick`): the oldest packet a NACK is answered for, and the share of
/// resends past which queued resends are dropped.
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
const RTX_RATIO_CAP: Option<f32> = Some(0.15);
/// A viewer's audio send buffer (str0m's default is 50 packets = 1 s).
const AUDIO_SEND_BUFFER: usize = 20;
/// A cached GOP of the viewer's own layer younger than this is replayed as
/// it is. An older one is a burst a decoder must get through before the
/// picture is live (without a playout-delay hint that stalled a browser
/// 2-3 s and played it late), so the smallest cached layer's GOP is
/// replayed instead, within `MAX_REPLAY_BYTES`, and the viewer switches up
/// at its own layer's next keyframe.
const MAX_REPLAY_AGE: Duration = Duration::from_millis(500);
/// Most payload bytes of an older GOP replayed to a new viewer (the
/// smallest cached layer is taken, see `gop::replay_layer`). With the zero
/// playout-delay hint Chromium decoded a 1.5 s-old 470 KB GOP of 720p and
/// was live 0.35-0.53 s after its first frame (without the hint: stalls of
/// 1-3.4 s, live after 2-5 s; docs/benchmarks.md). 1 MiB holds a whole 2 s
/// GOP at 4 Mbit/s; larger ones wait for the next keyframe.
const MAX_REPLAY_BYTES: usize = 1024 * 1024;
/// How long after the probe (a keyframe request sent with a layer's first
/// keyframe, see `gop::KeyframeProbe`) a keyframe counts as its answer.
/// Chromium answered in 30-150 ms; a natural GOP is longer (OBS: 1-10 s).
const KEYFRAME_PROBE_WINDOW: Duration = Duration::from_millis(800);
/// How long a new viewer of a publisher that answers keyframe requests
/// waits for the keyframe asked for before it starts from the cached GOP.
const ANSWERED_START_WAIT: Duration = Duration::from_millis(1000);
/// The same while the publisher is not probed yet (it just started).
const UNPROBED_START_WAIT: Duration = KEYFRAME_PROBE_WINDOW;
/// How long a viewer started from a replayed GOP is told to show frames as
/// soon as they are decoded (playout delay 0), and then how long the hint
/// is withdrawn for.
const START_ZERO_DELAY: Duration = Duration::from_millis(1500);
const START_DELAY_RESTORE: Duration = Duration::from_millis(1000);
/// RTP header extension id offered for playout-delay (Chromium's own
/// number; str0m adopts the offer's numbering anyway).
const PLAYOUT_DELAY_EXT_ID: u8 = 5;
/// How often viewers' egress stats (NACK counts, receiver reports,
/// transport-cc loss and estimate) are taken: a cut of bandwidth is seen
/// at the first interval after its loss is reported (250 ms rather than
/// 500 saved 0.1-0.3 s; no measurable CPU at 250 viewers).
const LOSS_INTERVAL: Duration = Duration::from_millis(250);
/// Share of a viewer's video packets NACKed in an interval that means its
/// link is saturated.
const LOSS_THRESHOLD: f64 = 0.08;
/// Share of a viewer's video packets its receiver reports say were lost
/// that means its link is saturated (a cut to 350 kbit/s under 1.2 Mbit/s
/// showed 58-79%; random loss of a few percent must not move layers).
const REPORTED_LOSS_THRESHOLD: f64 = 0.2;
/// Least time between layer ticks pulled forward by a viewer's new loss cap.
const LOSS_TICK_SPACING: Duration = Duration::from_millis(100);
/// How long a loss-based cap holds the viewer down.
const LOSS_HOLD: Duration = Duration::from_secs(4);
/// A publisher silent this long may be replaced by a new one in its room.
const STALE_PUBLISHER: Duration = Duration::from_secs(2);
/// Where a viewer's bandwidth estimate starts before probing.
const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(1_500);

/// What a publisher may send us, said in errors.
pub const ACCEPTED_CODECS: &str = "H264 (packetization-mode=1), VP8, VP9, AV1, Opus";

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

impl Engine {
    pub fn new(config: SfuConfig, advertised: Vec<SocketAddr>) -> Engine {
        let candidates = advertised
            .into_iter()
            .filter_map(|a| match Candidate::host(a, "udp") {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!("cannot advertise {a}: {e}");
                    None
                }
            })
            .collect();
        Engine {
            config,
            candidates,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_session: HashMap::new(),
            rooms: HashMap::new(),
            timeouts: BinaryHeap::new(),
            transmits: VecDeque::new(),
            fanned_out: Vec::new(),
            clock: Instant::now(),
            events: VecDeque::new(),
            next_peer: 1,
            next_tick: None,
            start_deadlines: Vec::new(),
            last_tick: None,
            taps: HashMap::new(),
            internal: HashMap::new(),
            shard: 0,
            links: Vec::new(),
            relay_links: Vec::new(),
            load: Arc::new([AtomicUsize::new(0)]),
            relays: HashMap::new(),
            mirrors: HashMap::new(),
        }
    }

    /// Makes this engine shard `shard` of `links.len()`, sharing `load`.
    pub(crate) fn set_shard(
        &mut self,
        shard: usize,
        links: Vec<mpsc::WeakUnboundedSender<Command>>,
        relay_links: Vec<RelayLink>,
        load: Arc<[AtomicUsize]>,
    ) {
        self.shard = shard;
        self.links = links;
        self.relay_links = relay_links;
        self.load = load;
    }

    /// Publishes this shard's session count (for capacity and placement).
    pub(crate) fn update_load(&self) {
        let relays = self
            .internal
            .values()
            .filter(|p| matches!(p.upstream, Upstream::Relay { .. }))
            .count();
        if let Some(slot) = self.load.get(self.shard) {
            slot.store(
                self.peers.len() + self.internal.len() - relays,
                Ordering::Relaxed,
            );
        }
    }

    /// A session id or ICE ufrag of this shard.
    fn token(&self, len: usize) -> String {
        let mut t = String::with_capacity(len);
        t.push(relay::shard_tag(self.shard));
        t.push_str(&random_token(len - 1));
        t
    }

    fn link(&self, shard: usize) -> Option<mpsc::UnboundedSender<Command>> {
        self.links.get(shard)?.upgrade()
    }

    // ---------------------------------------------------------------- inputs

    /// One datagram from the UDP socket. `local` is the address it was sent to.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) {
        self.clock = self.clock.max(now);
        let id = match self.by_addr.get(&source) {
            Some(id) => *id,
            None => {
                // An address we have not seen: only a STUN request naming one
                // of our sessions' ufrags may introduce it.
                let Some(id) = stun::local_ufrag(data)
                    .and_then(|u| self.by_ufrag.get(u))
                    .copied()
                else {
                    return;
                };
                self.by_addr.insert(source, id);
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.addrs.push(source);
                }
                id
            }
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            self.by_addr.remove(&source);
            return;
        };
        // str0m only takes datagrams addressed to one of its candidates. On a
        // wildcard-bound socket behind 1:1 NAT the kernel's destination is a
        // private address: present it as the advertised one of its family.
        let destination = self
            .candidates
            .iter()
            .map(|c| c.addr())
            .find(|a| *a == local)
            .or_else(|| {
                self.candidates
                    .iter()
                    .map(|c| c.addr())
                    .find(|a| a.is_ipv4() == local.is_ipv4())
            })
            .unwrap_or(local);
        let Ok(contents) = data.try_into() else {
            return; // not STUN, DTLS, RTP or RTCP
        };
        peer.local_ip = Some(local.ip());
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        if let Err(e) = peer.rtc.handle_input(input) {
            debug!(session = %peer.session, "input rejected: {e}");
        }
        self.drain(id);
        self.process_events(now);
    }

    /// Time passes: serve every peer whose timeout is due, and the rooms.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        while let Some(Reverse((at, id))) = self.timeouts.peek().copied() {
            if at > now {
                break;
            }
            self.timeouts.pop();
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if peer.next_timeout != at {
                continue; // superseded by a later drain
            }
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                debug!(session = %peer.session, "timeout input: {e}");
            }
            self.drain(id);
        }
        self.process_events(now);
        if self.start_deadlines.iter().any(|(at, _)| *at <= now) {
            let (due, later) = self
                .start_deadlines
                .drain(..)
                .partition(|(at, _)| *at <= now);
            self.start_deadlines = later;
            for (_, id) in due {
                // The keyframe asked for did not come: the cached GOP now
                // (and the layer the viewer should end up on asked again).
                let wanted = self.replay_gops(now, id, true);
                let Some(room) = self.peers.get(&id).map(|p| p.room.clone()) else {
                    continue;
                };
                for (track, layer) in wanted {
                    self.request_keyframe(now, &room, track, layer);
                }
            }
        }
        if self.next_tick.is_none_or(|t| now >= t) {
            self.tick(now);
            self.next_tick = Some(now + LAYER_TICK);
            self.expire_mirrors(now);
        }
        self.expire(now);
    }

    /// When the engine next wants `handle_timeout`.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.drain_fanned_out();
        if !self.events.is_empty() {
            return Some(self.clock); // a drain left events: now
        }
        while let Some(Reverse((at, id))) = self.timeouts.peek().copied() {
            match self.peers.get(&id) {
                Some(p) if p.next_timeout == at => {
                    let at = self.next_tick.map_or(at, |t| t.min(at));
                    let start = self.start_deadlines.iter().map(|(t, _)| *t).min();
                    return Some(start.map_or(at, |t| t.min(at)));
                }
                _ => {
                    self.timeouts.pop();
                }
            }
        }
        None
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        if self.transmits.is_empty() {
            self.drain_fanned_out();
        }
        self.transmits.pop_front()
    }

    /// Drains every viewer the fan-out wrote to since the last call.
    fn drain_fanned_out(&mut self) {
        for id in std::mem::take(&mut self.fanned_out) {
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.fanned_out = false;
            }
            self.drain(id);
        }
    }

    // -------------------------------------------------------------- commands

    pub fn publish(
        &mut self,
        now: Instant,
        room: &str,
        offer: &str,
    ) -> Result<SessionAnswer, SfuError> {
        self.check_capacity()?;
        self.free_room(now, room)?;
        let rtc = publisher_rtc_config().set_ice_lite(true).set_rtp_mode(true);
        let id = self.create_peer(now, room, Role::Publisher, rtc);
        let answer = self.accept(id, offer)?;

        self.seat_publisher(room, id);
        // Bind now: str0m reports MediaAdded only once DTLS is up.
        for mid in sdp_mids(&answer.sdp) {
            let Some(media) = self.peers.get(&id).and_then(|p| p.rtc.media(mid)) else {
                continue;
            };
            if !matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) {
                continue;
            }
            let kind = media.kind();
            let layers = match media.rids_rx() {
                Rids::Specific(rids) if !rids.is_empty() => rids.iter().map(|r| Some(*r)).collect(),
                _ => vec![None],
            };
            self.bind_publisher_media(id, mid, kind, layers);
        }
        self.process_events(now);
        let bound = self
            .rooms
            .get(room)
            .map(|r| r.tracks.iter().any(|t| t.mid.is_some()));
        if bound != Some(true) {
            self.remove_peer(id, now);
            return Err(SfuError::NoUsableMedia {
                direction: "receive",
                accepted: ACCEPTED_CODECS.into(),
            });
        }
        info!(room, session = %answer.session, "publisher joined");
        self.notify_taps(room);
        Ok(answer)
    }

    /// A new viewer of `room`, with the room's choices for it.
    pub fn subscribe(
        &mut self,
        now: Instant,
        room: &str,
        offer: &str,
        options: SubscribeOptions,
    ) -> Result<SessionAnswer, SfuError> {
        self.check_capacity()?;
        // Live means a publisher now: during a reconnect grace the viewers
        // already watching wait, new ones are told to retry.
        let Some(room_state) = self
            .rooms
            .get(room)
            .filter(|r| r.publisher.is_some() && !r.tracks.is_empty())
        else {
            return Err(SfuError::NotLive(room.to_string()));
        };
        // Offer exactly what the publisher sends, so the answer carries only
        // codecs we can forward without transcoding.
        // Fresh (unlocked) params: the viewer's offer numbers the payload
        // types its own way, and str0m must be free to adopt its numbers.
        let mut params: Vec<PayloadParams> = room_state
            .tracks
            .iter()
            .flat_map(|t| t.params.iter())
            .map(|p| PayloadParams::new(p.pt(), p.resend(), p.spec()))
            .collect();
        // A player offers audio and video whatever the room has (an
        // audio-only RTMP stream). An m-line with no codec is rejected
        // (port 0), and when it is the first one, Chromium with max-bundle
        // fails the whole answer ("Failed to setup RTCP mux"). So accept
        // it with a codec of its kind; nothing is ever sent on it.
        for (kind, placeholder) in [
            (
                MediaKind::Video,
                IngestCodec::H264 {
                    profile_level_id: 0x42e01f,
                },
            ),
            (MediaKind::Audio, IngestCodec::Opus { channels: 2 }),
        ] {
            let (_, p) = ingest_params(placeholder);
            let missing = !room_state.tracks.iter().any(|t| t.kind == kind);
            if missing && params.iter().all(|q| q.pt() != p.pt()) {
                params.push(p);
            }
        }
        let mut rtc = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_stats_interval(Some(LOSS_INTERVAL))
            // str0m's default (1,000 packets) cost ~700 KiB per viewer.
            .set_send_buffer_video(RTX_CACHE_PACKETS)
            .set_send_buffer_audio(AUDIO_SEND_BUFFER)
            // For starting from a replayed GOP without a jitter buffer's delay.
            .set_extension(PLAYOUT_DELAY_EXT_ID, Extension::PlayoutDelay);
        // Bandwidth estimation needs transport-cc feedback; without it the
        // estimator only paces and throttles (REMB still reports estimates).
        if offer.contains("transport-wide-cc") {
            rtc = rtc.enable_bwe(Some(INITIAL_ESTIMATE));
        };
        *rtc.codec_config() = str0m::format::CodecConfig::new_from_payload_params(params);
        let id = self.create_peer(now, room, Role::Subscriber, rtc);
        if let Some(p) = self.peers.get_mut(&id) {
            p.gop_replay = options.gop_replay;
        }
        let answer = self.accept(id, offer)?;
        if let Some(r) = self.rooms.get_mut(room) {
            r.subscribers.push(id);
        }
        for mid in sdp_mids(&answer.sdp) {
            let Some(media) = self.peers.get(&id).and_then(|p| p.rtc.media(mid)) else {
                continue;
            };
            if matches!(media.direction(), Direction::SendOnly | Direction::SendRecv) {
                let kind = media.kind();
                self.bind_subscriber_media(now, id, mid, kind);
            }
        }
        // Ask for a keyframe now: it often arrives while ICE and DTLS are
        // still being set up, and the viewer starts on it at once.
        let wanted: Vec<(usize, u8)> = self
            .peers
            .get(&id)
            .map(|p| {
                p.egress
                    .iter()
                    .filter_map(|e| e.forwarder.target().map(|s| (e.track, s.layer)))
                    .collect()
            })
            .unwrap_or_default();
        for (track, layer) in wanted {
            self.request_keyframe(now, room, track, layer);
        }
        self.process_events(now);
        let usable = self
            .peers
            .get(&id)
            .is_some_and(|p| p.egress.iter().any(|e| !e.pt_map.is_empty()));
        if !usable {
            self.remove_peer(id, now);
            return Err(SfuError::NoUsableMedia {
                direction: "send",
                accepted: self.room_codecs(room),
            });
        }
        info!(room, session = %answer.session, "viewer joined");
        Ok(answer)
    }

    /// A session's current ICE ufrag (its ETag).
    pub fn ice_ufrag(&self, info: &SessionInfo) -> Result<String, SfuError> {
        let id = self.session_peer(info)?;
        Ok(self
            .peers
            .get(&id)
            .map(|p| p.ufrag.clone())
            .unwrap_or_default())
    }

    /// Trickle or ICE restart. `expected`: the ufrags the client believes
    /// current (`None`: any, i.e. `If-Match: *`).
    pub fn patch(
        &mut self,
        now: Instant,
        info: &SessionInfo,
        frag: IceFragment,
        expected: Option<Vec<String>>,
    ) -> Result<PatchOutcome, SfuError> {
        let id = self.session_peer(info)?;
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoSession)?;
        if expected.is_some_and(|tags| !tags.contains(&peer.ufrag)) {
            return Err(SfuError::StaleIceSession);
        }
        let mut outcome = PatchOutcome::Trickled;
        if let (Some(ufrag), Some(pwd)) = (frag.ufrag.clone(), frag.pwd.clone()) {
            // Same credentials as before: plain trickle. New ones: ICE restart.
            if peer.remote_ufrag.as_deref() != Some(ufrag.as_str()) {
                let local = IceCreds {
                    ufrag: relay::shard_tag(self.shard).to_string() + &random_token(15),
                    pass: random_token(24),
                };
                peer.remote_ufrag = Some(ufrag.clone());
                let mut api = peer.rtc.direct_api();
                api.set_remote_ice_credentials(IceCreds { ufrag, pass: pwd });
                api.set_local_ice_credentials(local.clone());
                self.by_ufrag.remove(&peer.ufrag);
                peer.ufrag = local.ufrag.clone();
                self.by_ufrag.insert(local.ufrag.clone(), id);
                outcome = PatchOutcome::Restarted {
                    ufrag: local.ufrag,
                    pwd: local.pass,
                    candidates: self.candidates.iter().map(|c| c.to_sdp_string()).collect(),
                };
            }
        }
        for line in &frag.candidates {
            match Candidate::from_sdp_string(line) {
                Ok(c) => peer.rtc.add_remote_candidate(c),
                Err(e) => debug!("ignoring trickled candidate {line:?}: {e}"),
            }
        }
        self.drain(id);
        self.process_events(now);
        Ok(outcome)
    }

    pub fn end(&mut self, now: Instant, info: &SessionInfo) -> Result<(), SfuError> {
        let id = self.session_peer(info)?;
        self.remove_peer(id, now);
        Ok(())
    }

    // -------------------------------------------------------------- internals

    fn check_capacity(&self) -> Result<(), SfuError> {
        self.update_load();
        let sessions: usize = self.load.iter().map(|l| l.load(Ordering::Relaxed)).sum();
        if sessions >= self.config.max_sessions {
            return Err(SfuError::AtCapacity(self.config.max_sessions));
        }
        Ok(())
    }

    fn session_peer(&self, info: &SessionInfo) -> Result<PeerId, SfuError> {
        let id = *self
            .by_session
            .get(&info.session)
            .ok_or(SfuError::NoSession)?;
        let peer = self.peers.get(&id).ok_or(SfuError::NoSession)?;
        if peer.room != info.room || peer.role != info.role {
            return Err(SfuError::NoSession);
        }
        Ok(id)
    }

    fn room_codecs(&self, room: &str) -> String {
        let mut names: Vec<String> = self
            .rooms
            .get(room)
            .map(|r| {
                r.tracks
                    .iter()
                    .flat_map(|t| t.params.iter().map(|p| p.spec().codec.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        names.dedup();
        names.join(", ")
    }

    fn create_peer(&mut self, now: Instant, room: &str, role: Role, config: RtcConfig) -> PeerId {
        let id = self.next_peer;
        self.next_peer += 1;
        let ufrag = self.token(16);
        let creds = IceCreds {
            ufrag: ufrag.clone(),
            pass: random_token(24),
        };
        let mut rtc = config.set_local_ice_credentials(creds).build(now);
        for c in &self.candidates {
            rtc.add_local_candidate(c.clone());
        }
        let session = self.token(32);
        self.by_ufrag.insert(ufrag.clone(), id);
        self.by_session.insert(session.clone(), id);
        self.peers.insert(
            id,
            Peer {
                session,
                room: room.to_string(),
                role,
                rtc,
                ufrag,
                remote_ufrag: None,
                addrs: Vec::new(),
                local_ip: None,
                next_timeout: now,
                created: now,
                connected: false,
                ingest: HashMap::new(),
                egress: Vec::new(),
                estimate: None,
                raw_estimate: None,
                last_media: None,
                loss_cap: None,
                gop_replay: true,
                fanned_out: false,
            },
        );
        id
    }

    fn accept(&mut self, id: PeerId, offer_text: &str) -> Result<SessionAnswer, SfuError> {
        let offer = match SdpOffer::from_sdp_string(offer_text) {
            Ok(o) => o,
            Err(e) => {
                self.forget_peer(id);
                return Err(SfuError::BadOffer(e.to_string()));
            }
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return Err(SfuError::NoSession);
        };
        let peer_role = peer.role;
        peer.remote_ufrag = sdp_ice_ufrag(offer_text);
        let answer = match peer.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                let session = peer.session.clone();
                self.forget_peer(id);
                debug!(%session, "offer rejected: {e}");
                return Err(SfuError::BadOffer(e.to_string()));
            }
        };
        let answer_sdp = answer.to_sdp_string();
        let rejected = answer_sdp
            .lines()
            .find(|l| l.starts_with("m=") && l.split(' ').nth(1) == Some("0"));
        // A viewer's m-line the room has nothing for is simply inactive; a
        // publisher's offer is taken whole or not at all.
        if let Some(m) = rejected.filter(|_| peer_role == Role::Publisher) {
            // RFC 9725 §4.4.3: no partial answers; refuse the whole offer.
            let m = m.trim_end().to_string();
            self.forget_peer(id);
            return Err(SfuError::NoUsableMedia {
                direction: "use",
                accepted: format!("{ACCEPTED_CODECS} (rejected: {m})"),
            });
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return Err(SfuError::NoSession);
        };
        let (session, ice_ufrag) = (peer.session.clone(), peer.ufrag.clone());
        self.drain(id);
        Ok(SessionAnswer {
            session,
            sdp: with_rtcp_mux_only(&answer.to_sdp_string()),
            ice_ufrag,
        })
    }

    /// Drains one peer's output: datagrams to send, events to handle, and
    /// its next timeout.
    fn drain(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        drain_peer(
            id,
            peer,
            &mut self.transmits,
            &mut self.events,
            &mut self.timeouts,
        );
    }

    fn process_events(&mut self, now: Instant) {
        while let Some((id, event)) = self.events.pop_front() {
            self.handle_event(now, id, event);
        }
    }

    fn handle_event(&mut self, now: Instant, id: PeerId, event: Event) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match event {
            Event::RtpPacket(packet) => self.forward(now, id, packet),
            Event::KeyframeRequest(req) => {
                // A viewer lost its picture: ask the publisher of the layer it
                // goes to (a pending switch's keyframe repairs it too).
                if let Some(egress) = peer.egress.iter().find(|e| e.mid == req.mid) {
                    let track = egress.track;
                    let layer = egress
                        .forwarder
                        .target()
                        .or(egress.forwarder.current())
                        .map(|s| s.layer);
                    let room = peer.room.clone();
                    if let Some(layer) = layer {
                        self.request_keyframe(now, &room, track, layer);
                    }
                }
            }
            Event::MediaEgressStats(stats) => self.egress_loss(now, id, &stats),
            Event::PeerStats(stats) => self.transport_loss(now, id, &stats),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. })
            | Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. }) => {
                peer.estimate = Some(estimate.as_u64());
            }
            Event::Connected => {
                peer.connected = true;
                info!(session = %peer.session, room = %peer.room, role = ?peer.role, "connected");
                if peer.role == Role::Subscriber {
                    // A picture at once: replay the cached GOP where there is
                    // one, else ask the publisher for a keyframe.
                    let room = peer.room.clone();
                    let wanted = self.replay_gops(now, id, false);
                    for (track, layer) in wanted {
                        self.request_keyframe(now, &room, track, layer);
                    }
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) | Event::Closed => {
                info!(session = %peer.session, room = %peer.room, "disconnected");
                self.remove_peer(id, now);
            }
            _ => {}
        }
    }

    /// A publisher m-line becomes (or continues) a room track.
    fn bind_publisher_media(
        &mut self,
        id: PeerId,
        mid: Mid,
        kind: MediaKind,
        layers: Vec<Option<Rid>>,
    ) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(media) = peer.rtc.media(mid) else {
            return;
        };
        let remote_pts = media.remote_pts().to_vec();
        let params: Vec<PayloadParams> = peer
            .rtc
            .codec_config()
            .params()
            .iter()
            .filter(|p| remote_pts.contains(&p.pt()))
            .copied()
            .collect();
        if params.is_empty() {
            return;
        }
        let room = peer.room.clone();
        self.bind_track(&room, mid, kind, params, layers);
        if let Some(p) = self.peers.get_mut(&id) {
            p.ingest.clear();
        }
    }

    /// Makes `params` the room track of this kind that the publisher's
    /// `mid` feeds: the predecessor's track of the same kind and codec family
    /// when a publisher reconnects (viewers keep watching), else a new one.
    fn bind_track(
        &mut self,
        room_name: &str,
        mid: Mid,
        kind: MediaKind,
        params: Vec<PayloadParams>,
        layers: Vec<Option<Rid>>,
    ) -> Option<usize> {
        let gop_bytes = if kind == MediaKind::Video {
            self.config.gop_cache_bytes
        } else {
            0
        };
        let room = self.rooms.get_mut(room_name)?;
        // A reconnecting publisher continues the track of the same kind (and
        // codec family) that its predecessor fed, so viewers keep watching.
        let same_codec = |t: &Track| {
            t.params
                .iter()
                .any(|a| params.iter().any(|b| a.spec().codec == b.spec().codec))
        };
        let index = match room
            .tracks
            .iter()
            .position(|t| t.kind == kind && t.mid.is_none() && same_codec(t))
        {
            Some(i) => {
                let t = &mut room.tracks[i];
                t.params = params;
                t.last_keyframe_request = vec![None; layers.len()];
                t.probe = vec![KeyframeProbe::default(); layers.len()];
                t.gop = (0..layers.len())
                    .map(|_| GopCache::new(gop_bytes))
                    .collect();
                t.stats = vec![LayerStats::default(); layers.len()];
                t.layers = layers;
                i
            }
            None => {
                room.tracks.push(Track {
                    kind,
                    mid: None,
                    params,
                    last_keyframe_request: vec![None; layers.len()],
                    probe: vec![KeyframeProbe::default(); layers.len()],
                    gop: (0..layers.len())
                        .map(|_| GopCache::new(gop_bytes))
                        .collect(),
                    stats: vec![LayerStats::default(); layers.len()],
                    layers,
                });
                room.tracks.len() - 1
            }
        };
        room.tracks[index].mid = Some(mid);
        let generation = room.generation;
        // Viewers watching this track move to the new publisher's stream.
        let subscribers = room.subscribers.clone();
        for sid in subscribers {
            if let Some(sub) = self.peers.get_mut(&sid) {
                for e in sub.egress.iter_mut().filter(|e| e.track == index) {
                    e.forwarder.set_target(SourceId {
                        generation,
                        layer: 0,
                    });
                }
            }
        }
        Some(index)
    }

    /// A subscriber m-line is fed from the room's next free track of its kind.
    fn bind_subscriber_media(&mut self, now: Instant, id: PeerId, mid: Mid, kind: MediaKind) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        let used: Vec<usize> = peer.egress.iter().map(|e| e.track).collect();
        let Some(track_index) = room
            .tracks
            .iter()
            .enumerate()
            .position(|(i, t)| t.kind == kind && !used.contains(&i))
        else {
            return;
        };
        let track = &room.tracks[track_index];
        let config = peer.rtc.codec_config();
        let pt_map: Vec<(Pt, Pt)> = track
            .params
            .iter()
            .filter_map(|p| config.match_params(*p).map(|ours| (p.pt(), ours.pt())))
            .collect();
        let mut api = peer.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        // Forward as packets come (as mediasoup and Janus do): BWE is for
        // choosing layers, not for delaying packets in a pacer.
        tx.set_unpaced(true);
        let ssrc = tx.ssrc();
        let clock_rate = track
            .params
            .first()
            .map(|p| p.spec().clock_rate.get())
            .unwrap_or(90_000);
        let fkind = if kind == MediaKind::Audio {
            forwarder::MediaKind::Audio
        } else {
            forwarder::MediaKind::Video
        };
        let mut fwd = Forwarder::new(
            fkind,
            clock_rate,
            fastrand::u16(1..16_384),
            fastrand::u32(..),
        );
        let mut selector = LayerSelector::default();
        if track.mid.is_some() {
            let layer = selector
                .choose(now, &track.layer_infos(now), None)
                .unwrap_or(0);
            fwd.set_target(SourceId {
                generation: room.generation,
                layer: layer as u8,
            });
        }
        peer.egress.push(Egress {
            mid,
            track: track_index,
            ssrc,
            pt_map,
            forwarder: fwd,
            selector,
            last_egress: EgressCounts::default(),
            start_delay: None,
        });
    }

    /// One packet from a publisher to every viewer of its track.
    fn forward(&mut self, now: Instant, id: PeerId, packet: RtpPacket) {
        let Some(publisher) = self.peers.get_mut(&id) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        publisher.last_media = Some(now);
        let Some(room) = self.rooms.get_mut(&publisher.room) else {
            return;
        };
        let (track_index, layer) = match publisher.ingest.get(&ssrc) {
            Some(v) => *v,
            None => {
                // First packet of this stream: find its m-line and layer once.
                let mut api = publisher.rtc.direct_api();
                let Some((mid, rid)) = api.stream_rx(&ssrc).map(|rx| (rx.mid(), rx.rid())) else {
                    return;
                };
                let Some(t) = room.tracks.iter().position(|t| t.mid == Some(mid)) else {
                    return;
                };
                let layer = room.tracks[t]
                    .layers
                    .iter()
                    .position(|l| *l == rid)
                    .unwrap_or(0) as u8;
                publisher.ingest.insert(ssrc, (t, layer));
                (t, layer)
            }
        };
        let media = MediaPacket {
            seq_no: *packet.seq_no,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            pt: packet.header.payload_type,
            payload: packet.payload,
            arrival: packet.timestamp,
            ext: ExtensionValues {
                audio_level: packet.header.ext_vals.audio_level,
                voice_activity: packet.header.ext_vals.voice_activity,
                video_orientation: packet.header.ext_vals.video_orientation,
                ..Default::default()
            },
        };
        let outlets = Outlets {
            taps: self.taps.get_mut(&publisher.room),
            relays: self.relays.get(&publisher.room),
        };
        let wants_keyframe = fan_out(
            now,
            room,
            track_index,
            layer,
            &media,
            outlets,
            &mut self.peers,
            &mut self.fanned_out,
        );
        if wants_keyframe {
            let room_name = self
                .peers
                .get(&id)
                .map(|p| p.room.clone())
                .unwrap_or_default();
            self.request_keyframe(now, &room_name, track_index, layer);
        }
    }

    /// Every `LAYER_TICK`: measure each layer's bitrate, choose each
    /// viewer's layer from its bandwidth, and ask for the keyframes that
    /// pending switches wait for.
    fn tick(&mut self, now: Instant) {
        let elapsed = self
            .last_tick
            .map_or(LAYER_TICK, |t| now.saturating_duration_since(t));
        self.last_tick = Some(now);
        let secs = elapsed.as_secs_f64().max(0.05);
        let mut keyframes: Vec<(String, usize, u8)> = Vec::new();
        for (name, room) in self.rooms.iter_mut() {
            let relays = self.relays.get(name);
            for (track_index, t) in room.tracks.iter_mut().enumerate() {
                for st in t.stats.iter_mut() {
                    let rate = (st.bytes as f64 * 8.0 / secs) as u64;
                    st.bytes = 0;
                    if room.mirror {
                        continue; // the home's figures come by `RelayEvent::Rates`
                    }
                    st.bitrate = if st.bitrate == 0 {
                        rate
                    } else {
                        (st.bitrate * 3 + rate) / 4
                    };
                }
                if let Some(relays) = relays.filter(|_| t.mid.is_some()) {
                    relays.send(|| RelayEvent::Rates {
                        track: track_index,
                        bitrates: t.stats.iter().map(|s| s.bitrate).collect(),
                    });
                }
                for (layer, p) in t.probe.iter_mut().enumerate() {
                    let before = *p;
                    p.expire(now, KEYFRAME_PROBE_WINDOW);
                    if before != *p {
                        info!(room = %name, layer, "keyframe probe ignored: new viewers start from the cached GOP");
                        if let Some(relays) = relays {
                            let probe = *p;
                            relays.send(|| RelayEvent::Probe {
                                track: track_index,
                                layer: layer as u8,
                                probe,
                            });
                        }
                    }
                }
            }
            if room.publisher.is_none() {
                continue;
            }
            let infos: Vec<Vec<LayerInfo>> =
                room.tracks.iter().map(|t| t.layer_infos(now)).collect();
            for sid in &room.subscribers {
                let Some(sub) = self.peers.get_mut(sid) else {
                    continue;
                };
                let videos = sub
                    .egress
                    .iter()
                    .filter(|e| room.tracks[e.track].kind == MediaKind::Video)
                    .count()
                    .max(1);
                let cap = sub
                    .loss_cap
                    .filter(|(_, until)| now < *until)
                    .map(|(c, _)| c);
                // Up as soon as the estimate itself allows it (str0m's
                // 3 s average lagged a lifted limit by 3 s; the selector's
                // hold keeps it careful); down once both have fallen, or
                // at once by a loss cap.
                let estimate = match (sub.estimate, sub.raw_estimate) {
                    (Some(average), Some(raw)) => Some(average.max(raw)),
                    (average, raw) => average.or(raw),
                };
                let estimate = match (estimate, cap) {
                    (Some(e), Some(c)) => Some(e.min(c + AUDIO_ALLOWANCE)),
                    (e, None) => e,
                    (None, Some(c)) => Some(c + AUDIO_ALLOWANCE),
                };
                let share = estimate.map(|e| e.saturating_sub(AUDIO_ALLOWANCE) / videos as u64);
                // What BWE should probe for (the best layers, with headroom)
                // and the padding floor (the next layer up from each current).
                let (mut desired, mut minimum) = (0u64, 0u64);
                let mut overloaded_any = false;
                for e in sub.egress.iter_mut() {
                    let track = &room.tracks[e.track];
                    if track.kind != MediaKind::Video {
                        continue;
                    }
                    let layers = &infos[e.track];
                    let Some(layer) = e.selector.choose(now, layers, share) else {
                        continue;
                    };
                    let top = layers
                        .iter()
                        .filter(|l| l.active)
                        .map(|l| l.bitrate)
                        .max()
                        .unwrap_or(0);
                    let current = layers.get(layer).map_or(0, |l| l.bitrate);
                    let next_up = layers
                        .iter()
                        .filter(|l| l.active && l.bitrate > current)
                        .map(|l| l.bitrate)
                        .min()
                        .unwrap_or(current);
                    desired += with_headroom(top) * 5 / 4;
                    minimum += with_headroom(next_up);
                    let source = SourceId {
                        generation: room.generation,
                        layer: layer as u8,
                    };
                    // Down because the layer being sent no longer fits: it
                    // stops at once (see `Forwarder::switch_now`) rather than
                    // fill the link the new layer's keyframe has to cross.
                    let sending = e
                        .forwarder
                        .current()
                        .and_then(|s| layers.get(s.layer as usize))
                        .map_or(0, |l| l.bitrate);
                    let overloaded =
                        sending > current && (cap.is_some() || share.is_some_and(|s| s < sending));
                    if overloaded && e.forwarder.current() != Some(source) {
                        overloaded_any = true;
                        if e.forwarder.target() != Some(source) || !e.forwarder.cutting_over() {
                            debug!(session = %sub.session, layer, ?share, sending, ?layers, "viewer layer down at once");
                            // Nor resend the old layer's lost packets: its
                            // frames will not be completed, and resends
                            // would take the link from the new keyframe.
                            if let Some(tx) = sub.rtc.direct_api().stream_tx(&e.ssrc) {
                                tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, RTX_RATIO_CAP);
                            }
                        }
                        e.forwarder.switch_now(source);
                    } else if e.forwarder.target() != Some(source) {
                        debug!(session = %sub.session, layer, ?share, "viewer layer target changed");
                        e.forwarder.set_target(source);
                    }
                    if e.forwarder.needs_keyframe() {
                        keyframes.push((name.clone(), e.track, layer as u8));
                    }
                }
                // A layer that stopped fitting holds the viewer down (and
                // stops padding) as heavy loss does: the estimate that
                // showed it lags the cut and must not pad the link full.
                let cap = match (cap, share) {
                    (None, Some(s)) if overloaded_any => {
                        sub.loss_cap = Some((s * videos as u64, now + LOSS_HOLD));
                        Some(s * videos as u64)
                    }
                    (c, _) => c,
                };
                if desired > 0 && sub.connected {
                    let (minimum, desired) = match (cap, estimate) {
                        // Capped by loss: no padding toward the next layer
                        // and no probe (both would fill the link the new
                        // layer's keyframe has to cross) until the hold ends.
                        (Some(_), Some(e)) => (0, e),
                        _ => {
                            let desired = desired + AUDIO_ALLOWANCE;
                            ((minimum + AUDIO_ALLOWANCE).min(desired), desired)
                        }
                    };
                    sub.rtc
                        .bwe()
                        .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired));
                    drain_peer(
                        *sid,
                        sub,
                        &mut self.transmits,
                        &mut self.events,
                        &mut self.timeouts,
                    );
                }
            }
        }
        for (room, track, layer) in keyframes {
            self.request_keyframe(now, &room, track, layer);
        }
    }

    /// Delay-based estimates lag a sudden cut of bandwidth by seconds, while
    /// the viewer's NACKs and receiver reports show the loss at once: past
    /// `LOSS_THRESHOLD` of a video stream's packets NACKed or
    /// `REPORTED_LOSS_THRESHOLD` reported lost in an interval, the viewer's bandwidth is capped for `LOSS_HOLD` at
    /// what got through, at most half its current layer (see
    /// `layers::congestion_cap`), so one step reaches the layer that fits.
    fn egress_loss(&mut self, now: Instant, id: PeerId, stats: &str0m::stats::MediaEgressStats) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        let Some(e) = peer.egress.iter_mut().find(|e| e.mid == stats.mid) else {
            return;
        };
        let Some(track) = room
            .tracks
            .get(e.track)
            .filter(|t| t.kind == MediaKind::Video)
        else {
            return;
        };
        let last = e.last_egress;
        let report = stats
            .remote
            .as_ref()
            .map(|r| (*r.maximum_sequence_number, r.packets_lost));
        e.last_egress = EgressCounts {
            packets: stats.packets,
            nacks: stats.nacks,
            bytes: stats.bytes,
            at: Some(now),
            report,
        };
        let (packets, nacks) = (
            stats.packets.saturating_sub(last.packets),
            stats.nacks.saturating_sub(last.nacks),
        );
        // The share lost between the viewer's last two receiver reports
        // (NACK counts are RTCP messages, each naming several packets: they
        // show loss early but not how much).
        let reported_loss = match (last.report, report) {
            (Some((seq0, lost0)), Some((seq1, lost1))) if seq1 >= seq0 + 20 => {
                Some((lost1.saturating_sub(lost0) as f64 / (seq1 - seq0) as f64).min(1.0))
            }
            _ => None,
        };
        let lossy = (packets >= 20 && nacks as f64 > packets as f64 * LOSS_THRESHOLD)
            || reported_loss.is_some_and(|l| l > REPORTED_LOSS_THRESHOLD);
        if !lossy {
            return;
        }
        let current = e
            .forwarder
            .current()
            .and_then(|s| track.stats.get(s.layer as usize))
            .map_or(0, |s| s.bitrate);
        // What got through: the rate we sent less the reported loss.
        let delivered = match (last.at, reported_loss) {
            (Some(at), Some(loss)) if now > at => {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                let sent = stats.bytes.saturating_sub(last.bytes) as f64 * 8.0 / secs;
                Some((sent * (1.0 - loss)) as u64)
            }
            _ => None,
        };
        let cap = congestion_cap(current, delivered);
        debug!(session = %peer.session, packets, nacks, ?reported_loss, ?delivered, cap, "heavy loss: capping the viewer's bandwidth");
        self.cap_for_loss(now, id, cap);
    }

    /// The transport-wide view of a viewer's link (TWCC feedback comes
    /// every ~100 ms, receiver reports about once a second): its estimate,
    /// and the share of packets lost over the last second, which past
    /// `REPORTED_LOSS_THRESHOLD` caps the viewer at the estimate (which
    /// str0m's loss controller has already lowered) or half its layer.
    fn transport_loss(&mut self, now: Instant, id: PeerId, stats: &str0m::stats::PeerStats) {
        let Some(peer) = self
            .peers
            .get_mut(&id)
            .filter(|p| p.role == Role::Subscriber)
        else {
            return;
        };
        let Some(estimate) = stats.bwe_tx.map(|b| b.as_u64()) else {
            return;
        };
        peer.raw_estimate = Some(estimate);
        let loss = stats.egress_loss_fraction.unwrap_or(0.0) as f64;
        if loss <= REPORTED_LOSS_THRESHOLD {
            return;
        }
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        // The layers being sent, all video tracks together.
        let current: u64 = peer
            .egress
            .iter()
            .filter_map(|e| {
                let s = e.forwarder.current()?;
                room.tracks.get(e.track)?.stats.get(s.layer as usize)
            })
            .map(|s| s.bitrate)
            .sum();
        let cap = congestion_cap(current, Some(estimate.saturating_sub(AUDIO_ALLOWANCE)));
        debug!(session = %peer.session, loss, estimate, cap, "heavy transport loss: capping the viewer's bandwidth");
        self.cap_for_loss(now, id, cap);
    }

    /// Holds a viewer at most at `cap` (bits/s of video) for `LOSS_HOLD`.
    fn cap_for_loss(&mut self, now: Instant, id: PeerId, cap: u64) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        // A new or lower cap acts at once.
        let new_cap = peer
            .loss_cap
            .is_none_or(|(old, until)| now >= until || cap < old);
        peer.loss_cap = Some((cap, now + LOSS_HOLD));
        if new_cap {
            // Act on it now rather than at the next tick (up to 500 ms of
            // more overload), but tick at most every LOSS_TICK_SPACING when
            // many viewers hit loss at once.
            let soonest = self.last_tick.map_or(now, |t| t + LOSS_TICK_SPACING);
            let at = soonest.max(now);
            if self.next_tick.is_none_or(|t| at < t) {
                self.next_tick = Some(at);
            }
        }
    }

    /// A viewer asks for a layer (or automatic choice again).
    pub fn set_layer(
        &mut self,
        now: Instant,
        info: &SessionInfo,
        req: LayerRequest,
    ) -> Result<(), SfuError> {
        let id = self.session_peer(info)?;
        let peer = self.peers.get_mut(&id).ok_or(SfuError::NoSession)?;
        let room = self.rooms.get(&peer.room).ok_or(SfuError::NoSession)?;
        let mut matched = false;
        for e in peer.egress.iter_mut() {
            let track = &room.tracks[e.track];
            if track.kind != MediaKind::Video {
                continue;
            }
            if req.media_id.as_deref().is_some_and(|m| m != &*e.mid) {
                continue;
            }
            let cap = match (&req.rid, req.max_height) {
                (Some(rid), _) => {
                    let Some(i) = track
                        .layers
                        .iter()
                        .position(|l| l.as_deref() == Some(rid.as_str()))
                    else {
                        return Err(SfuError::BadLayer(format!(
                            "no layer {rid:?}; the publisher sends {}",
                            rid_list(track)
                        )));
                    };
                    LayerCap::Layer(i)
                }
                (None, Some(h)) => LayerCap::MaxHeight(h),
                (None, None) => LayerCap::Auto,
            };
            e.selector.set_cap(cap);
            matched = true;
        }
        if !matched {
            return Err(SfuError::BadLayer("no video m-line matches".into()));
        }
        // Act now rather than at the next tick.
        self.tick(now);
        Ok(())
    }

    /// What a viewer receives now.
    pub fn viewer_state(&self, now: Instant, info: &SessionInfo) -> Result<ViewerState, SfuError> {
        let id = self.session_peer(info)?;
        let peer = self.peers.get(&id).ok_or(SfuError::NoSession)?;
        let room = self.rooms.get(&peer.room).ok_or(SfuError::NoSession)?;
        let video = peer
            .egress
            .iter()
            .filter(|e| room.tracks[e.track].kind == MediaKind::Video)
            .map(|e| {
                let track = &room.tracks[e.track];
                let infos = track.layer_infos(now);
                LayerView {
                    media_id: e.mid.to_string(),
                    layers: track
                        .layers
                        .iter()
                        .zip(infos)
                        .map(|(rid, i)| LayerState {
                            rid: rid.map(|r| r.to_string()),
                            bitrate: i.bitrate,
                            height: i.height,
                            active: i.active,
                        })
                        .collect(),
                    current: e
                        .forwarder
                        .current()
                        .filter(|s| s.generation == room.generation)
                        .map(|s| s.layer as usize),
                    target: e.forwarder.target().map(|s| s.layer as usize),
                    requested: match e.selector.cap() {
                        LayerCap::Auto => "auto".into(),
                        LayerCap::Layer(i) => format!(
                            "rid:{}",
                            track
                                .layers
                                .get(i)
                                .copied()
                                .flatten()
                                .map(|r| r.to_string())
                                .unwrap_or_default()
                        ),
                        LayerCap::MaxHeight(h) => format!("max-height:{h}"),
                    },
                    packets_forwarded: e.forwarder.stats().packets_forwarded,
                    packets_dropped: e.forwarder.stats().packets_dropped,
                }
            })
            .collect();
        Ok(ViewerState {
            estimated_bitrate: peer.estimate,
            video,
        })
    }

    /// Starts a new viewer's video: from a young cached GOP of its layer at
    /// once; from a fresh keyframe where the publisher answers keyframe
    /// requests (or may: not yet probed), giving up after a while
    /// (`fallback`, see `start_deadlines`); else from the cached GOP,
    /// squeezed (see `gop::replay_layer`). Returns the (track, layer) pairs
    /// that need a keyframe.
    fn replay_gops(&mut self, now: Instant, id: PeerId, fallback: bool) -> Vec<(usize, u8)> {
        let mut missing = Vec::new();
        let Some(peer) = self.peers.get_mut(&id) else {
            return missing;
        };
        let Some(room) = self.rooms.get(&peer.room) else {
            return missing;
        };
        let mut wrote = false;
        for e in peer.egress.iter_mut() {
            let Some(source) = e.forwarder.target() else {
                continue;
            };
            let Some(track) = room.tracks.get(e.track) else {
                continue;
            };
            if track.kind != MediaKind::Video || e.forwarder.current().is_some() {
                continue;
            }
            if !peer.gop_replay {
                info!(
                    session = %peer.session,
                    "gop_cache is off in this room; waiting for a keyframe"
                );
                missing.push((e.track, source.layer));
                continue;
            }
            let offers: Vec<GopOffer> = track
                .gop
                .iter()
                .map(|g| GopOffer {
                    ready: g.packets().is_some(),
                    age: g.age(now).unwrap_or(Duration::MAX),
                    bytes: g.bytes(),
                })
                .collect();
            let answers = track
                .probe
                .get(source.layer as usize)
                .and_then(|p| p.answers());
            let allow_old = fallback || answers == Some(false);
            let Some(layer) = gop::replay_layer(
                source.layer as usize,
                &offers,
                MAX_REPLAY_AGE,
                MAX_REPLAY_BYTES,
                allow_old,
            ) else {
                missing.push((e.track, source.layer));
                if allow_old {
                    // The next keyframe (asked for at the POST) starts it live.
                    info!(session = %peer.session, "no cached GOP to replay; waiting for a keyframe");
                } else {
                    // A fresh keyframe is live at once; the cached one is as
                    // old as the GOP. Until it comes, or the wait is over.
                    // An unprobed layer's question is settled when its
                    // probe expires: no need to wait longer than that.
                    let wait = if answers == Some(true) {
                        ANSWERED_START_WAIT
                    } else {
                        track
                            .probe
                            .get(source.layer as usize)
                            .and_then(|p| p.resolves_at(KEYFRAME_PROBE_WINDOW))
                            .map_or(UNPROBED_START_WAIT, |at| {
                                at.saturating_duration_since(now).min(UNPROBED_START_WAIT)
                            })
                    };
                    info!(
                        session = %peer.session,
                        answers = ?answers,
                        wait_ms = wait.as_millis() as u64,
                        "the publisher answers keyframe requests; waiting for a fresh keyframe"
                    );
                    self.start_deadlines.push((now + wait, id));
                }
                continue;
            };
            let from = SourceId {
                generation: source.generation,
                layer: layer as u8,
            };
            let cached: Vec<&CachedPacket> = match track.gop.get(layer).and_then(|g| g.packets()) {
                Some(it) => it.collect(),
                None => {
                    missing.push((e.track, source.layer));
                    continue;
                }
            };
            let headers: Vec<(u64, u32, bool)> = cached
                .iter()
                .map(|p| (p.seq_no, p.timestamp, p.keyframe_start))
                .collect();
            let rewrites = e.forwarder.replay(now, from, &headers);
            if rewrites.is_empty() {
                missing.push((e.track, source.layer));
                continue;
            }
            if from != source {
                // Watch the replayed layer until the target's next keyframe.
                e.forwarder.set_target(source);
                missing.push((e.track, source.layer));
            }
            // An old GOP is a burst to catch up through: no jitter buffering
            // until the viewer is live. A young one is a few frames that
            // play as they are (and were measured fine without the hint).
            let old = offers[layer].age >= MAX_REPLAY_AGE;
            let ext = if old {
                let delay = StartDelay::new(now, START_ZERO_DELAY, START_DELAY_RESTORE);
                e.start_delay = Some(delay);
                with_delay_hint(ExtensionValues::default(), DelayHint::Zero)
            } else {
                ExtensionValues::default()
            };
            // Once per viewer start: worth a line at info.
            info!(
                session = %peer.session,
                packets = rewrites.len(),
                layer,
                age_ms = offers[layer].age.as_millis() as u64,
                bytes = offers[layer].bytes,
                "replaying the cached GOP"
            );
            for (p, rw) in cached.iter().zip(rewrites) {
                let (Some(rw), Some(&(_, out_pt))) =
                    (rw, e.pt_map.iter().find(|(i, _)| **i == p.pt))
                else {
                    continue;
                };
                let write = RtpWrite::new(
                    out_pt,
                    rw.seq_no.into(),
                    rw.timestamp,
                    now,
                    p.payload.clone(),
                )
                .marker(p.marker)
                .ext_vals(ext.clone())
                .nackable(true);
                if let Some(tx) = peer.rtc.direct_api().stream_tx(&e.ssrc) {
                    tx.write_rtp(write);
                    wrote = true;
                }
            }
        }
        if wrote {
            drain_peer(
                id,
                peer,
                &mut self.transmits,
                &mut self.events,
                &mut self.timeouts,
            );
        }
        missing
    }

    /// Asks the room's publisher for a keyframe on one layer, at most once
    /// per `keyframe_request_interval`.
    fn request_keyframe(&mut self, now: Instant, room: &str, track: usize, layer: u8) {
        let interval = self.config.keyframe_request_interval;
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(pid) = r.publisher else { return };
        let Some(t) = r.tracks.get_mut(track) else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        let (Some(mid), Some(rid)) = (t.mid, t.layers.get(layer as usize).copied()) else {
            return;
        };
        let last = &mut t.last_keyframe_request[layer as usize];
        if last.is_some_and(|at| now.saturating_duration_since(at) < interval) {
            return;
        }
        *last = Some(now);
        if let Some(internal) = self.internal.get(&pid) {
            match internal.upstream {
                Upstream::Ingest(ref signals) => {
                    let _ = signals.send(IngestSignal::KeyframeWanted);
                }
                Upstream::Relay { home } => {
                    let home_track = internal.tracks.iter().position(|t| *t == Some(track));
                    if let (Some(track), Some(link)) = (home_track, self.link(home)) {
                        let _ = link.send(Command::TapKeyframe {
                            room: room.to_string(),
                            track,
                            layer,
                        });
                    }
                }
            }
            return;
        }
        let Some(publisher) = self.peers.get_mut(&pid) else {
            return;
        };
        if let Some(rx) = publisher.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            debug!(room, track, layer, "keyframe requested");
        }
        self.drain(pid);
    }

    /// Drops sessions that never connected, and viewers of rooms whose
    /// publisher has been gone longer than the grace period.
    fn expire(&mut self, now: Instant) {
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.connected
                    && now.saturating_duration_since(p.created) > self.config.connect_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            info!("session never connected; dropped");
            self.remove_peer(id, now);
        }
        let grace = self.config.publisher_grace;
        let ended: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| {
                r.orphaned_since
                    .is_some_and(|t| now.saturating_duration_since(t) > grace)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            info!(room = %name, "publisher did not return; ending the room's viewers");
            if let Some(room) = self.rooms.remove(&name) {
                for sid in room.subscribers {
                    self.remove_peer(sid, now);
                }
            }
        }
    }

    /// Closes a session (RTCP BYE + DTLS close_notify go out) and frees all it held.
    fn remove_peer(&mut self, id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.rtc.is_alive() {
            let _ = peer.rtc.close();
            drain_peer(
                id,
                peer,
                &mut self.transmits,
                &mut self.events,
                &mut self.timeouts,
            );
        }
        let (room_name, role) = (peer.room.clone(), peer.role);
        self.forget_peer(id);
        // Drop the events the closing peer produced; nothing can act on them.
        self.events.retain(|(pid, _)| *pid != id);
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        match role {
            Role::Subscriber => room.subscribers.retain(|s| *s != id),
            Role::Publisher => self.publisher_left(&room_name, id, now),
        }
    }

    /// The room's publisher `id` is gone: its tracks wait for another
    /// publisher for `publisher_grace`, with the viewers still connected.
    fn publisher_left(&mut self, room_name: &str, id: PeerId, now: Instant) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        if room.publisher != Some(id) {
            return;
        }
        room.publisher = None;
        for t in &mut room.tracks {
            t.mid = None;
            t.gop.iter_mut().for_each(GopCache::clear);
        }
        if room.subscribers.is_empty() {
            self.rooms.remove(room_name);
        } else {
            room.orphaned_since = Some(now);
        }
        info!(room = %room_name, "publisher left");
        self.notify_taps(room_name);
    }

    fn forget_peer(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.remove(&id) {
            for a in &peer.addrs {
                self.by_addr.remove(a);
            }
            self.by_ufrag.remove(&peer.ufrag);
            self.by_session.remove(&peer.session);
        }
    }

    /// Every room with sessions, as the room API shows them.
    pub fn rooms_status(&self, now: Instant) -> Vec<RoomStatus> {
        let mut names: Vec<&String> = self.rooms.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.room_status(now, n))
            .collect()
    }

    /// One room's publisher, tracks and viewers; `None` if it has no session.
    pub fn room_status(&self, now: Instant, name: &str) -> Option<RoomStatus> {
        let room = self.rooms.get(name)?;
        let secs = |p: &Peer| now.saturating_duration_since(p.created).as_secs_f64();
        let publisher = room.publisher.and_then(|id| {
            if let Some(p) = self.internal.get(&id) {
                if matches!(p.upstream, Upstream::Relay { .. }) {
                    return None; // the home shard reports the publisher
                }
                return Some(PublisherStatus {
                    session: p.session.clone(),
                    ingest: p.ingest.clone(),
                    connected: true,
                    uptime_secs: now.saturating_duration_since(p.created).as_secs_f64(),
                });
            }
            self.peers.get(&id).map(|p| PublisherStatus {
                session: p.session.clone(),
                ingest: "whip".into(),
                connected: p.connected,
                uptime_secs: secs(p),
            })
        });
        let tracks = room
            .tracks
            .iter()
            .map(|t| TrackStatus {
                kind: if t.kind == MediaKind::Audio {
                    "audio"
                } else {
                    "video"
                }
                .into(),
                codec: t
                    .params
                    .first()
                    .map(|p| p.spec().codec.to_string())
                    .unwrap_or_default(),
                layers: t
                    .layers
                    .iter()
                    .zip(t.layer_infos(now))
                    .map(|(rid, i)| LayerState {
                        rid: rid.map(|r| r.to_string()),
                        bitrate: i.bitrate,
                        height: i.height,
                        active: i.active,
                    })
                    .collect(),
            })
            .collect();
        let viewers = room
            .subscribers
            .iter()
            .filter_map(|id| self.peers.get(id))
            .map(|p| ViewerSummary {
                session: p.session.clone(),
                connected: p.connected,
                uptime_secs: secs(p),
                estimated_bitrate: p.estimate,
                layer: p
                    .egress
                    .iter()
                    .filter(|e| room.tracks[e.track].kind == MediaKind::Video)
                    .find_map(|e| e.forwarder.current())
                    .and_then(|s| {
                        room.tracks
                            .iter()
                            .find(|t| t.kind == MediaKind::Video)?
                            .layers
                            .get(s.layer as usize)
                            .copied()
                            .flatten()
                    })
                    .map(|r| r.to_string()),
                packets_forwarded: p
                    .egress
                    .iter()
                    .map(|e| e.forwarder.stats().packets_forwarded)
                    .sum(),
                packets_dropped: p
                    .egress
                    .iter()
                    .map(|e| e.forwarder.stats().packets_dropped)
                    .sum(),
            })
            .collect();
        let live = publisher.as_ref().is_some_and(|p| p.connected);
        Some(RoomStatus {
            room: name.to_string(),
            live,
            publisher,
            tracks,
            viewers,
        })
    }

    /// Ends one session of a room, publisher or viewer (the room API's kick).
    pub fn kick(&mut self, now: Instant, room: &str, session: &str) -> Result<(), SfuError> {
        let id = *self.by_session.get(session).ok_or(SfuError::NoSession)?;
        if self.internal.get(&id).is_some_and(|p| p.room == room) {
            self.end_internal(now, id);
            return Ok(());
        }
        if self.peers.get(&id).is_none_or(|p| p.room != room) {
            return Err(SfuError::NoSession);
        }
        self.remove_peer(id, now);
        Ok(())
    }

    /// Ends every session of a room (the room was deleted or its key rotated).
    pub fn close_room(&mut self, now: Instant, room: &str) {
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.room == room)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove_peer(id, now);
        }
        let internal: Vec<PeerId> = self
            .internal
            .iter()
            .filter(|(_, p)| p.room == room)
            .map(|(id, _)| *id)
            .collect();
        for id in internal {
            self.end_internal(now, id);
        }
        self.rooms.remove(room);
        self.notify_taps(room);
    }

    /// Makes way for a new publisher: `PublisherExists` while the room's
    /// publisher is live; a silent one (a closed page, a crashed encoder) is
    /// replaced rather than blocking the room until its ICE times out.
    fn free_room(&mut self, now: Instant, room: &str) -> Result<(), SfuError> {
        if let Some(pid) = self.rooms.get(room).and_then(|r| r.publisher) {
            if !self.publisher_is_stale(pid, now) {
                return Err(SfuError::PublisherExists(room.to_string()));
            }
            info!(room, "replacing a silent publisher");
            self.remove_peer(pid, now);
            self.end_internal(now, pid);
        }
        Ok(())
    }

    /// Makes `id` the room's publisher (a new generation for every viewer's
    /// forwarder); its tracks are bound next.
    fn seat_publisher(&mut self, room: &str, id: PeerId) {
        let r = self.rooms.entry(room.to_string()).or_insert_with(|| Room {
            publisher: None,
            generation: 0,
            tracks: Vec::new(),
            subscribers: Vec::new(),
            orphaned_since: None,
            mirror: false,
        });
        r.publisher = Some(id);
        r.generation = id;
        r.orphaned_since = None;
        for t in &mut r.tracks {
            t.mid = None;
        }
    }

    /// Whether a room's publisher may be replaced by a new one: it has sent
    /// no media for `STALE_PUBLISHER`, or never connected within it.
    fn publisher_is_stale(&self, id: PeerId, now: Instant) -> bool {
        let since = |t: Instant| now.saturating_duration_since(t) >= STALE_PUBLISHER;
        match (self.peers.get(&id), self.internal.get(&id)) {
            (Some(p), _) => match p.last_media {
                Some(t) => since(t),
                None => since(p.created),
            },
            (None, Some(p)) => p.last_media.is_none_or(since) && since(p.created),
            (None, None) => true,
        }
    }

    /// An in-process publisher (`ingest`: e.g. "rtmp") joins `room` with
    /// these tracks; returns its id, session and signal receiver.
    pub fn publish_internal(
        &mut self,
        now: Instant,
        room: &str,
        ingest: &str,
        tracks: &[IngestCodec],
    ) -> Result<(PeerId, String, mpsc::UnboundedReceiver<IngestSignal>), SfuError> {
        self.check_capacity()?;
        self.free_room(now, room)?;
        if tracks.is_empty() {
            return Err(SfuError::NoUsableMedia {
                direction: "receive",
                accepted: ACCEPTED_CODECS.into(),
            });
        }
        let id = self.next_peer;
        self.next_peer += 1;
        let session = self.token(32);
        self.seat_publisher(room, id);
        let mut indices = Vec::with_capacity(tracks.len());
        for (i, codec) in tracks.iter().enumerate() {
            let (kind, params) = ingest_params(*codec);
            let mid = Mid::from(i.to_string().as_str());
            indices.push(self.bind_track(room, mid, kind, vec![params], vec![None]));
        }
        let (signals, rx) = mpsc::unbounded_channel();
        self.by_session.insert(session.clone(), id);
        self.internal.insert(
            id,
            Internal {
                room: room.to_string(),
                session: session.clone(),
                ingest: ingest.to_string(),
                created: now,
                tracks: indices,
                last_media: None,
                upstream: Upstream::Ingest(signals),
            },
        );
        info!(room, %session, ingest, "publisher joined");
        self.notify_taps(room);
        Ok((id, session, rx))
    }

    /// One packet from an internal publisher.
    pub fn ingest(&mut self, now: Instant, id: PeerId, track: usize, packet: IngestPacket) {
        let Some(publisher) = self.internal.get(&id) else {
            return;
        };
        let Some(track_index) = publisher.tracks.get(track).copied().flatten() else {
            return;
        };
        let Some(pt) = self
            .rooms
            .get(&publisher.room)
            .and_then(|r| r.tracks.get(track_index))
            .and_then(|t| t.params.first())
            .map(|p| p.pt())
        else {
            return;
        };
        let media = MediaPacket {
            seq_no: packet.seq_no,
            timestamp: packet.timestamp,
            marker: packet.marker,
            pt,
            payload: packet.payload,
            arrival: now,
            ext: ExtensionValues::default(),
        };
        self.ingest_media(now, id, track_index, 0, &media);
    }

    /// One packet of an internal publisher (RTMP shim or relay) into its
    /// room's track `track_index`.
    fn ingest_media(
        &mut self,
        now: Instant,
        id: PeerId,
        track_index: usize,
        layer: u8,
        media: &MediaPacket,
    ) {
        let Some(publisher) = self.internal.get_mut(&id) else {
            return;
        };
        publisher.last_media = Some(now);
        let publisher = &*publisher;
        let Some(room) = self
            .rooms
            .get_mut(&publisher.room)
            .filter(|r| r.publisher == Some(id))
        else {
            return;
        };
        let outlets = Outlets {
            taps: self.taps.get_mut(&publisher.room),
            relays: self.relays.get(&publisher.room),
        };
        let wants_keyframe = fan_out(
            now,
            room,
            track_index,
            layer,
            media,
            outlets,
            &mut self.peers,
            &mut self.fanned_out,
        );
        if wants_keyframe {
            let room_name = publisher.room.clone();
            self.request_keyframe(now, &room_name, track_index, layer);
        }
    }

    /// An internal publisher is done (its connection closed, or the room ended it).
    pub fn end_internal(&mut self, now: Instant, id: PeerId) {
        if let Some(p) = self.internal.remove(&id) {
            self.by_session.remove(&p.session);
            if let Upstream::Ingest(signals) = &p.upstream {
                let _ = signals.send(IngestSignal::Ended);
            }
            self.publisher_left(&p.room, id, now);
        }
    }

    /// Adds an in-process subscriber to a room (live now or later).
    pub fn add_tap(&mut self, room: &str, tap: TapSender) {
        if let Some(live) = self
            .rooms
            .get(room)
            .filter(|r| r.publisher.is_some())
            .map(tap_live)
        {
            let _ = tap.try_send(live);
        }
        self.taps.entry(room.to_string()).or_default().push(tap);
    }

    /// Tells a room's taps and mirrors about its publisher.
    fn notify_taps(&mut self, room: &str) {
        if let Some(relays) = self.relays.get(room) {
            relays.send(|| self.relay_live(room));
        }
        let Some(taps) = self.taps.get_mut(room) else {
            return;
        };
        let event = match self.rooms.get(room).filter(|r| r.publisher.is_some()) {
            Some(r) => tap_live(r),
            None => TapEvent::Ended,
        };
        taps.retain(|t| {
            !matches!(
                t.try_send(event.clone()),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
        if taps.is_empty() {
            self.taps.remove(room);
        }
    }

    /// What a mirror of `room` needs to know of its publisher now.
    fn relay_live(&self, room: &str) -> RelayEvent {
        let Some(r) = self.rooms.get(room).filter(|r| r.publisher.is_some()) else {
            return RelayEvent::Ended;
        };
        let tracks = r
            .tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.mid.is_some())
            .map(|(index, t)| RelayTrack {
                index,
                kind: t.kind,
                params: t.params.clone(),
                layers: t.layers.clone(),
                probe: t.probe.clone(),
                bitrates: t.stats.iter().map(|s| s.bitrate).collect(),
            })
            .collect();
        RelayEvent::Live { tracks }
    }

    /// Home side: shard `shard` mirrors `room` from now on.
    pub(crate) fn relay_open(&mut self, room: &str, shard: usize) {
        let Some(link) = self.relay_links.get(shard).cloned() else {
            return;
        };
        let out = self
            .relays
            .entry(room.to_string())
            .or_insert_with(|| RelayOut {
                room: Arc::from(room),
                to: Vec::new(),
                dropped: Cell::new(0),
            });
        out.to.retain(|(s, _)| *s != shard);
        out.to.push((shard, link.clone()));
        info!(room, shard, "relay opened");
        let room_name = out.room.clone();
        let send = |event| {
            let _ = link.send(&room_name, event);
        };
        send(self.relay_live(room));
        // The current GOPs too, so that the mirror's first viewers start
        // at once as the home's would (the packets keep their arrival).
        let Some(r) = self.rooms.get(room).filter(|r| r.publisher.is_some()) else {
            return;
        };
        for (index, t) in r.tracks.iter().enumerate() {
            for (layer, gop) in t.gop.iter().enumerate() {
                for p in gop.packets().into_iter().flatten() {
                    send(RelayEvent::Packet {
                        track: index,
                        layer: layer as u8,
                        packet: MediaPacket {
                            seq_no: p.seq_no,
                            timestamp: p.timestamp,
                            marker: p.marker,
                            pt: p.pt.into(),
                            payload: p.payload.clone(),
                            arrival: p.arrival,
                            ext: ExtensionValues::default(),
                        },
                    });
                }
            }
        }
    }

    /// Home side: shard `shard` no longer mirrors `room`.
    pub(crate) fn relay_close(&mut self, room: &str, shard: usize) {
        if let Some(out) = self.relays.get_mut(room) {
            out.to.retain(|(s, _)| *s != shard);
            if out.to.is_empty() {
                self.relays.remove(room);
            }
            info!(room, shard, "relay closed");
        }
    }

    /// Mirror side: a viewer is about to join `room`, whose home is shard
    /// `home`. `reply` is answered once the mirror is live (at once if it
    /// is), or with `NotLive` after `MIRROR_WAIT`.
    pub(crate) fn ensure_mirror(
        &mut self,
        now: Instant,
        room: &str,
        home: usize,
        reply: oneshot::Sender<Result<(), SfuError>>,
    ) {
        if let Some(m) = self.mirrors.get_mut(room) {
            if m.publisher.is_some() && self.rooms.get(room).is_some_and(|r| r.publisher.is_some())
            {
                m.idle_since = None;
                let _ = reply.send(Ok(()));
                return;
            }
            m.waiting.push((now, reply));
            return;
        }
        let Some(link) = self.link(home) else {
            let _ = reply.send(Err(SfuError::Stopped));
            return;
        };
        let _ = link.send(Command::RelayOpen {
            room: room.to_string(),
            shard: self.shard,
        });
        self.mirrors.insert(
            room.to_string(),
            Mirror {
                home,
                publisher: None,
                waiting: vec![(now, reply)],
                idle_since: None,
            },
        );
    }

    /// Mirror side: our index of home track `track` of relay publisher
    /// `publisher`.
    fn relayed_track(&self, publisher: Option<PeerId>, track: usize) -> Option<usize> {
        self.internal
            .get(&publisher?)?
            .tracks
            .get(track)
            .copied()
            .flatten()
    }

    /// Mirror side: what the home says about `room`.
    pub(crate) fn relay_event(&mut self, now: Instant, room: &str, event: RelayEvent) {
        let Some(mirror) = self.mirrors.get(room) else {
            return; // closed meanwhile
        };
        let (home, current) = (mirror.home, mirror.publisher);
        match event {
            RelayEvent::Packet {
                track,
                layer,
                packet,
            } => {
                let (Some(id), Some(index)) = (current, self.relayed_track(current, track)) else {
                    return;
                };
                self.ingest_media(now, id, index, layer, &packet);
            }
            RelayEvent::Probe {
                track,
                layer,
                probe,
            } => {
                let index = self.relayed_track(current, track);
                if let Some(p) = index
                    .and_then(|i| self.rooms.get_mut(room)?.tracks.get_mut(i))
                    .and_then(|t| t.probe.get_mut(layer as usize))
                {
                    *p = probe;
                }
            }
            RelayEvent::Rates { track, bitrates } => {
                let index = self.relayed_track(current, track);
                if let Some(t) = index.and_then(|i| self.rooms.get_mut(room)?.tracks.get_mut(i)) {
                    t.set_bitrates(&bitrates);
                }
            }
            RelayEvent::Ended => {
                if let Some(id) = current {
                    self.end_internal(now, id);
                }
                if let Some(m) = self.mirrors.get_mut(room) {
                    m.publisher = None;
                }
            }
            RelayEvent::Live { tracks } => {
                // A new publisher at home (or the first one we hear of): a
                // new relay publisher, continuing the tracks for our viewers
                // as a reconnecting publisher does.
                if let Some(id) = current {
                    self.end_internal(now, id);
                }
                let id = self.next_peer;
                self.next_peer += 1;
                let session = self.token(32);
                self.seat_publisher(room, id);
                let width = tracks.iter().map(|t| t.index + 1).max().unwrap_or(0);
                let mut indices = vec![None; width];
                for t in tracks {
                    let mid = Mid::from(t.index.to_string().as_str());
                    let index = self.bind_track(room, mid, t.kind, t.params, t.layers);
                    if let Some(track) = index
                        .and_then(|i| self.rooms.get_mut(room).and_then(|r| r.tracks.get_mut(i)))
                    {
                        track.probe = t.probe;
                        track.set_bitrates(&t.bitrates);
                    }
                    indices[t.index] = index;
                }
                if let Some(r) = self.rooms.get_mut(room) {
                    r.mirror = true;
                }
                self.by_session.insert(session.clone(), id);
                self.internal.insert(
                    id,
                    Internal {
                        room: room.to_string(),
                        session,
                        ingest: "relay".into(),
                        created: now,
                        tracks: indices,
                        last_media: None,
                        upstream: Upstream::Relay { home },
                    },
                );
                debug!(room, home, "mirror live");
                if let Some(m) = self.mirrors.get_mut(room) {
                    m.publisher = Some(id);
                    for (_, reply) in m.waiting.drain(..) {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
    }

    /// Mirror side: joins that waited too long are told the room is not
    /// live; mirrors without viewers for `MIRROR_IDLE` are closed.
    fn expire_mirrors(&mut self, now: Instant) {
        let mut closed = Vec::new();
        for (name, m) in self.mirrors.iter_mut() {
            let (late, waiting): (Vec<_>, Vec<_>) = m
                .waiting
                .drain(..)
                .partition(|(at, _)| now.saturating_duration_since(*at) > MIRROR_WAIT);
            m.waiting = waiting;
            for (_, reply) in late {
                let _ = reply.send(Err(SfuError::NotLive(name.clone())));
            }
            let viewers = self
                .rooms
                .get(name)
                .is_some_and(|r| !r.subscribers.is_empty());
            if viewers || !m.waiting.is_empty() {
                m.idle_since = None;
                continue;
            }
            let since = *m.idle_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= MIRROR_IDLE {
                closed.push((name.clone(), m.home, m.publisher));
            }
        }
        for (name, home, publisher) in closed {
            self.mirrors.remove(&name);
            if let Some(id) = publisher {
                self.end_internal(now, id);
            }
            if self
                .rooms
                .get(&name)
                .is_some_and(|r| r.subscribers.is_empty())
            {
                self.rooms.remove(&name);
            }
            if let Some(link) = self.link(home) {
                let _ = link.send(Command::RelayClose {
                    room: name.clone(),
                    shard: self.shard,
                });
            }
            debug!(room = %name, "mirror closed");
        }
    }

    /// A tap's keyframe request.
    pub fn tap_keyframe(&mut self, now: Instant, room: &str, track: usize, layer: u8) {
        self.request_keyframe(now, room, track, layer);
    }

    /// Is this room live (has a publisher), for the HTTP layer.
    pub fn room_is_live(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.publisher.is_some())
    }
}

fn tap_codec(c: Codec) -> TapCodec {
    match c {
        Codec::H264 => TapCodec::H264,
        Codec::Vp8 => TapCodec::Vp8,
        Codec::Vp9 => TapCodec::Vp9,
        Codec::Av1 => TapCodec::Av1,
        Codec::H265 => TapCodec::H265,
        Codec::Opus => TapCodec::Opus,
        _ => TapCodec::Other,
    }
}

/// The codec parameters an internal publisher's track is offered with.
fn ingest_params(codec: IngestCodec) -> (MediaKind, PayloadParams) {
    match codec {
        IngestCodec::H264 { profile_level_id } => (
            MediaKind::Video,
            PayloadParams::new(
                96.into(),
                None,
                CodecSpec {
                    codec: Codec::H264,
                    clock_rate: Frequency::NINETY_KHZ,
                    channels: None,
                    format: FormatParams {
                        level_asymmetry_allowed: Some(true),
                        packetization_mode: Some(1),
                        profile_level_id: Some(profile_level_id),
                        ..Default::default()
                    },
                },
            ),
        ),
        IngestCodec::Opus { channels } => (
            MediaKind::Audio,
            PayloadParams::new(
                111.into(),
                None,
                CodecSpec {
                    codec: Codec::Opus,
                    clock_rate: Frequency::FORTY_EIGHT_KHZ,
                    channels: Some(channels.max(1)),
                    format: FormatParams {
                        min_p_time: Some(10),
                        use_inband_fec: Some(true),
                        ..Default::default()
                    },
                },
            ),
        ),
    }
}

/// The `Live` event describing a room's current tracks.
fn tap_live(room: &Room) -> TapEvent {
    let tracks = room
        .tracks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.mid.is_some())
        .map(|(index, t)| {
            let spec = t.params.first().map(|p| p.spec());
            TapTrack {
                index,
                video: t.kind == MediaKind::Video,
                codec: spec.map_or(TapCodec::Other, |s| tap_codec(s.codec)),
                clock_rate: spec.map_or(90_000, |s| s.clock_rate.get()),
                channels: spec.and_then(|s| s.channels),
                layers: t.layers.iter().map(|l| l.map(|r| r.to_string())).collect(),
                payload_types: t
                    .params
                    .iter()
                    .map(|p| (*p.pt(), tap_codec(p.spec().codec)))
                    .collect(),
            }
        })
        .collect();
    TapEvent::Live {
        generation: room.generation,
        tracks,
    }
}

/// The estimate a layer needs before the selector moves up to it.
fn with_headroom(bitrate: u64) -> u64 {
    (bitrate as f64 / crate::layers::UP_HEADROOM) as u64
}

fn rid_list(track: &Track) -> String {
    let rids: Vec<String> = track
        .layers
        .iter()
        .flatten()
        .map(|r| r.to_string())
        .collect();
    if rids.is_empty() {
        "no simulcast layers".into()
    } else {
        rids.join(", ")
    }
}

/// RFC 9725 §4.4.1: every bundled section says `a=rtcp-mux-only` (RFC 8858);
/// str0m writes only `a=rtcp-mux`.
fn with_rtcp_mux_only(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        out.push_str(line);
        if line.trim_end() == "a=rtcp-mux" {
            out.push_str("a=rtcp-mux-only\r\n");
        }
    }
    out
}

/// The mids of an SDP's media sections, in order.
fn sdp_mids(sdp: &str) -> Vec<Mid> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(Mid::from)
        .collect()
}

/// The first `a=ice-ufrag:` of an SDP (session or media level).
fn sdp_ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(str::to_string)
}

/// One media packet entering a room, from any kind of publisher.
#[derive(Clone)]
pub(crate) struct MediaPacket {
    /// The publisher stream's extended sequence number.
    pub seq_no: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// The publisher's payload type (the room track's params).
    pub pt: Pt,
    pub payload: Arc<[u8]>,
    pub arrival: Instant,
    pub ext: ExtensionValues,
}

/// The hot path: one publisher packet into the room's layer bookkeeping,
/// GOP cache and taps, then to every viewer of its track — the payload is
/// shared (`Arc`), only headers are rewritten, nothing is allocated per
/// viewer. Returns whether to ask for a keyframe of this layer: a viewer
/// waits for one, or the layer's first keyframe sends the probe.
#[allow(clippy::too_many_arguments)]
fn fan_out(
    now: Instant,
    room: &mut Room,
    track_index: usize,
    layer: u8,
    packet: &MediaPacket,
    outlets: Outlets<'_>,
    peers: &mut HashMap<PeerId, Peer>,
    fanned_out: &mut Vec<PeerId>,
) -> bool {
    let pt = packet.pt;
    let Some(track) = room.tracks.get_mut(track_index) else {
        return false;
    };
    let vc = track.codec_of(pt).and_then(video_codec);
    let keyframe_start = vc.is_some_and(|vc| codec::is_keyframe_start(vc, &packet.payload));
    let size = match (keyframe_start, vc) {
        (true, Some(vc)) => picture::size(vc, &packet.payload),
        _ => None,
    };
    let mut probe = false;
    // A mirror learns its publisher's answer from the home (`RelayEvent::Probe`).
    if keyframe_start && !room.mirror {
        if let Some(p) = track.probe.get_mut(layer as usize) {
            let before = *p;
            probe = p.on_keyframe(now, packet.timestamp, KEYFRAME_PROBE_WINDOW);
            if probe {
                // Past any request rate limit: this one measures.
                track.last_keyframe_request[layer as usize] = None;
            } else if before != *p {
                info!(track = track_index, layer, probe = ?*p, "keyframe probe resolved");
                if let Some(relays) = outlets.relays {
                    let probe = *p;
                    relays.send(|| RelayEvent::Probe {
                        track: track_index,
                        layer,
                        probe,
                    });
                }
            }
        }
    }
    if let Some(st) = track.stats.get_mut(layer as usize) {
        st.bytes += packet.payload.len() as u64;
        st.last_packet = Some(now);
        if let Some((_, h)) = size {
            st.height = h;
        }
    }
    if let Some(gop) = track.gop.get_mut(layer as usize) {
        gop.push(CachedPacket {
            seq_no: packet.seq_no,
            timestamp: packet.timestamp,
            marker: packet.marker,
            pt: *pt,
            payload: packet.payload.clone(),
            keyframe_start,
            arrival: packet.arrival,
        });
    }
    if let Some(relays) = outlets.relays {
        relays.send(|| RelayEvent::Packet {
            track: track_index,
            layer,
            packet: packet.clone(),
        });
    }
    if let Some(taps) = outlets.taps {
        // A tap that cannot keep up loses packets (it sees the gap), and
        // one whose receiver is gone is dropped: neither slows the room.
        // The last TAP_SIGNAL_RESERVE slots are kept for Live and Ended,
        // which must never be lost (`notify_taps`).
        taps.retain(|t| {
            if t.capacity() <= TAP_SIGNAL_RESERVE {
                return !t.is_closed();
            }
            let p = TapPacket {
                track: track_index,
                layer,
                seq_no: packet.seq_no,
                timestamp: packet.timestamp,
                marker: packet.marker,
                keyframe_start,
                pt: *pt,
                payload: packet.payload.clone(),
                arrival: packet.arrival,
            };
            !matches!(
                t.try_send(TapEvent::Packet(p)),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }
    let room = &*room;
    let source = SourceId {
        generation: room.generation,
        layer,
    };
    let vp8 = match vc {
        Some(VideoCodec::Vp8) => codec::parse_vp8_descriptor(&packet.payload),
        _ => None,
    };
    let mut wants_keyframe = probe;
    for &sid in &room.subscribers {
        let Some(sub) = peers.get_mut(&sid) else {
            continue;
        };
        if !sub.connected {
            continue;
        }
        let mut wrote = false;
        for e in sub.egress.iter_mut().filter(|e| e.track == track_index) {
            let Some(&(_, out_pt)) = e.pt_map.iter().find(|(p, _)| *p == pt) else {
                continue;
            };
            let Some(rw) = e.forwarder.forward(
                packet.arrival,
                source,
                packet.seq_no,
                packet.timestamp,
                keyframe_start,
                vp8.as_ref(),
            ) else {
                wants_keyframe |=
                    e.forwarder.needs_keyframe() && e.forwarder.target() == Some(source);
                continue;
            };
            let mut ext = packet.ext.clone();
            if let Some(d) = e.start_delay {
                match d.hint(now) {
                    Some(hint) => ext = with_delay_hint(ext, hint),
                    None => e.start_delay = None,
                }
            }
            let mut write = RtpWrite::new(
                out_pt,
                rw.seq_no.into(),
                rw.timestamp,
                packet.arrival,
                packet.payload.clone(),
            )
            .marker(packet.marker)
            .ext_vals(ext)
            .nackable(true);
            if let Some(v) = rw.vp8 {
                if let Some(patch) = vp8_patch(&packet.payload, v) {
                    write = write.vp8_patch(patch);
                }
            }
            if let Some(tx) = sub.rtc.direct_api().stream_tx(&e.ssrc) {
                tx.write_rtp(write);
                wrote = true;
            }
        }
        if wrote && !sub.fanned_out {
            sub.fanned_out = true;
            fanned_out.push(sid);
        }
    }
    wants_keyframe
}

/// Where a room's packets go besides its viewers.
struct Outlets<'a> {
    taps: Option<&'a mut Vec<TapSender>>,
    relays: Option<&'a RelayOut>,
}

/// The playout-delay extension (in hundredths of a second, 12 bits) for a hint.
fn with_delay_hint(mut ext: ExtensionValues, hint: DelayHint) -> ExtensionValues {
    let max = match hint {
        DelayHint::Zero => 0,
        DelayHint::Unconstrained => 0xfff,
    };
    ext.play_delay_min = Some(MediaTime::from_hundredths(0));
    ext.play_delay_max = Some(MediaTime::from_hundredths(max));
    ext
}

/// str0m's VP8 descriptor patch for the forwarder's rewritten picture ids.
fn vp8_patch(payload: &[u8], v: forwarder::Vp8Rewrite) -> Option<str0m::rtp::Vp8Patch> {
    let mut builder = str0m::rtp::Vp8Descriptor::parse(payload).ok()?.patch();
    if let Some(id) = v.picture_id {
        builder = builder.picture_id(id);
    }
    if let Some(t) = v.tl0picidx {
        builder = builder.tl0_pic_idx(t);
    }
    if let Some(k) = v.keyidx {
        builder = builder.key_idx(k);
    }
    builder.build().ok()
}

/// Drains one peer's `poll_output` to its timeout.
fn drain_peer(
    id: PeerId,
    peer: &mut Peer,
    transmits: &mut VecDeque<Outgoing>,
    events: &mut VecDeque<(PeerId, Event)>,
    timeouts: &mut BinaryHeap<Reverse<(Instant, PeerId)>>,
) {
    loop {
        match peer.rtc.poll_output() {
            Ok(Output::Timeout(at)) => {
                if at != peer.next_timeout {
                    peer.next_timeout = at;
                    timeouts.push(Reverse((at, id)));
                }
                return;
            }
            Ok(Output::Transmit(t)) => transmits.push_back(Outgoing {
                destination: t.destination,
                source_ip: peer.local_ip,
                contents: t.contents.into(),
            }),
            Ok(Output::Event(e)) => events.push_back((id, e)),
            Err(e) => {
                debug!(session = %peer.session, "poll_output: {e}");
                // A broken Rtc is inert from now on; the queued Closed removes it.
                peer.rtc.disconnect();
                events.push_back((id, Event::Closed));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::new(SfuConfig::default(), vec!["127.0.0.1:9".parse().unwrap()])
    }

    fn packet(seq: u64, payload: &[u8]) -> IngestPacket {
        IngestPacket {
            seq_no: seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            payload: payload.into(),
        }
    }

    const H264: IngestCodec = IngestCodec::H264 {
        profile_level_id: 0x42e01f,
    };
    const OPUS: IngestCodec = IngestCodec::Opus { channels: 2 };
    /// An IDR NAL unit (single-NAL packet): a keyframe start.
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00];

    #[test]
    fn a_full_tap_loses_packets_but_never_the_end_of_a_publish() {
        let now = Instant::now();
        let mut e = engine();
        let (tx, mut tap) = mpsc::channel(16);
        e.add_tap("r", tx);
        let (id, _, _signals) = e.publish_internal(now, "r", "rtmp", &[H264]).unwrap();
        // The tap's reader is stalled: far more packets than its queue holds.
        for seq in 0..100 {
            e.ingest(now, id, 0, packet(seq, IDR));
        }
        e.end_internal(now, id);
        let events: Vec<TapEvent> = std::iter::from_fn(|| tap.try_recv().ok()).collect();
        assert!(matches!(events.first(), Some(TapEvent::Live { .. })));
        assert!(matches!(events.last(), Some(TapEvent::Ended)), "{events:?}");
        let packets = events
            .iter()
            .filter(|e| matches!(e, TapEvent::Packet(_)))
            .count();
        assert!(packets > 0 && packets < 100, "{packets}");
    }

    #[test]
    fn an_internal_publisher_feeds_taps_and_hears_keyframe_requests() {
        let now = Instant::now();
        let mut e = engine();
        let (tx, mut tap) = mpsc::channel(64);
        e.add_tap("r", tx);
        let (id, session, mut signals) =
            e.publish_internal(now, "r", "rtmp", &[H264, OPUS]).unwrap();
        assert!(e.room_is_live("r"));
        match tap.try_recv().unwrap() {
            TapEvent::Live { tracks, .. } => {
                assert_eq!(tracks.len(), 2);
                assert_eq!((tracks[0].codec, tracks[0].video), (TapCodec::H264, true));
                assert_eq!(
                    (tracks[1].codec, tracks[1].clock_rate),
                    (TapCodec::Opus, 48_000)
                );
            }
            other => panic!("expected Live, got {other:?}"),
        }
        e.ingest(now, id, 0, packet(7, IDR));
        e.ingest(now, id, 1, packet(8, &[0xfc, 1, 2]));
        let TapEvent::Packet(v) = tap.try_recv().unwrap() else {
            panic!("packet")
        };
        assert_eq!(
            (v.track, v.seq_no, v.keyframe_start, v.pt),
            (0, 7, true, 96)
        );
        let TapEvent::Packet(a) = tap.try_recv().unwrap() else {
            panic!("packet")
        };
        assert_eq!(
            (a.track, a.seq_no, a.keyframe_start, a.pt),
            (1, 8, false, 111)
        );
        // A tap's keyframe request reaches the publisher, throttled.
        e.tap_keyframe(now, "r", 0, 0);
        e.tap_keyframe(now + Duration::from_millis(10), "r", 0, 0);
        assert_eq!(signals.try_recv().unwrap(), IngestSignal::KeyframeWanted);
        assert!(signals.try_recv().is_err());
        // A second publisher is refused; the status names the ingest.
        assert!(matches!(
            e.publish_internal(now, "r", "rtmp", &[H264]),
            Err(SfuError::PublisherExists(_))
        ));
        let status = e.room_status(now, "r").unwrap();
        assert_eq!(
            status.publisher.as_ref().map(|p| p.ingest.as_str()),
            Some("rtmp")
        );
        assert_eq!(status.tracks.len(), 2);
        // Kicked: the publisher hears it, the tap sees the end.
        e.kick(now, "r", &session).unwrap();
        assert_eq!(signals.try_recv().unwrap(), IngestSignal::Ended);
        assert!(matches!(tap.try_recv().unwrap(), TapEvent::Ended));
        assert!(!e.room_is_live("r"));
    }

    #[test]
    fn a_mirror_chooses_layers_by_the_homes_rates_not_by_its_seeded_gop() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (commands, _rx): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::unbounded_channel()).unzip();
        let links: Vec<_> = commands.iter().map(|c| c.downgrade()).collect();
        let (relay_links, mut inboxes): (Vec<_>, Vec<_>) =
            (0..2).map(|_| relay::relay_channel()).unzip();
        let load: Arc<[AtomicUsize]> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        let (mut home, mut mirror) = (engine(), engine());
        home.set_shard(0, links.clone(), relay_links.clone(), load.clone());
        mirror.set_shard(1, links, relay_links, load);

        // Home: 100 kbit/s for 3 s (1,250 bytes every 100 ms), one GOP.
        let (id, _, _signals) = home.publish_internal(t0, "r", "rtmp", &[H264]).unwrap();
        let mut delta = vec![0x41; 1250];
        let mut idr = delta.clone();
        idr[..IDR.len()].copy_from_slice(IDR);
        for i in 0..30 {
            let payload = if i == 0 { &idr } else { &delta };
            home.ingest(at(i * 100), id, 0, packet(i, payload));
            if i % 5 == 4 {
                home.tick(at(i * 100));
            }
        }
        let rate = |e: &Engine| e.rooms["r"].tracks[0].stats[0].bitrate;
        let measured = rate(&home);
        assert!((80_000..=120_000).contains(&measured), "{measured}");

        // A viewer on shard 1: the mirror opens, seeded with the 30 KB GOP.
        let (reply, _live) = oneshot::channel();
        mirror.ensure_mirror(at(3000), "r", 0, reply);
        home.relay_open("r", 1);
        let mut relay = |mirror: &mut Engine, now| {
            while let Some((room, event)) = inboxes[1].try_recv() {
                mirror.relay_event(now, &room, event);
            }
        };
        relay(&mut mirror, at(3000));
        assert_eq!(rate(&mirror), measured);
        // The seed is no burst at the mirror's next tick, and the home's
        // later figures follow.
        mirror.tick(at(3500));
        assert_eq!(rate(&mirror), measured);
        delta.truncate(625);
        for i in 30..40 {
            home.ingest(at(i * 100), id, 0, packet(i, &delta));
            if i % 5 == 4 {
                home.tick(at(i * 100));
            }
        }
        relay(&mut mirror, at(4000));
        mirror.tick(at(4000));
        assert!(rate(&home) < measured);
        assert_eq!(rate(&mirror), rate(&home));
    }

    #[test]
    fn packets_of_an_ended_publisher_go_nowhere() {
        let now = Instant::now();
        let mut e = engine();
        let (id, _, _signals) = e.publish_internal(now, "r", "rtmp", &[H264]).unwrap();
        let (tx, mut tap) = mpsc::channel(64);
        e.add_tap("r", tx);
        assert!(matches!(tap.try_recv().unwrap(), TapEvent::Live { .. }));
        e.end_internal(now, id);
        assert!(matches!(tap.try_recv().unwrap(), TapEvent::Ended));
        e.ingest(now, id, 0, packet(1, IDR));
        assert!(tap.try_recv().is_err());
        // The room is free for the next publisher, which continues the track.
        let (id2, _, _s2) = e.publish_internal(now, "r", "rtmp", &[H264]).unwrap();
        assert!(matches!(tap.try_recv().unwrap(), TapEvent::Live { .. }));
        e.ingest(now, id2, 0, packet(1, IDR));
        assert!(matches!(tap.try_recv().unwrap(), TapEvent::Packet(_)));
    }
}
