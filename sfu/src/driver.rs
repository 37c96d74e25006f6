//! The I/O edge of the SFU: one UDP socket, one router thread that reads
//! it, and one media thread (shard) per core, each owning an [`Engine`].
//!
//! ```text
//!  UDP :8189 ─► router (recvmmsg; peer by address, else by the shard tag
//!               │        of the ufrag in its STUN request)
//!               ├─► shard 0: Engine ─ rooms, peers ─► sendmmsg on the same socket
//!               └─► shard 1: Engine ─ …
//!  Sfu handle ─ commands ─► the shard of a room (its home: publisher, taps),
//!                           of a session (its id's tag), or the least loaded one (viewers)
//! ```
//!
//! A shard serves, in this order of priority: connection datagrams (STUN,
//! DTLS) from the router, commands (from the HTTP side and other shards),
//! packets relayed from other shards (see `relay.rs`), media datagrams
//! (RTP, RTCP) from the router, and its engine's timer. Nothing else touches an engine, so it
//! needs no locks. The router never waits for a shard: a busy shard's
//! datagrams queue in its channels (and past `DATAGRAM_QUEUE` batches are
//! dropped, as a full socket buffer would), while the socket keeps being
//! read. Connection datagrams have their own channel, so an overloaded
//! shard still answers ICE consent checks and completes new viewers'
//! handshakes: overload costs media, not sessions.

use std::hash::{Hash, Hasher};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::engine::{Engine, Outgoing, SubscribeOptions};
use crate::relay;
use crate::RoomStatus;
use crate::{
    IceFragment, LayerRequest, PatchOutcome, SessionAnswer, SessionInfo, SfuConfig, SfuError,
    ViewerState,
};

/// Longest a shard sleeps without looking at the engine's housekeeping.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// Deadlines closer than this are served at once: tokio's timer has 1 ms
/// resolution, and str0m asks to be called back microseconds after each
/// packet it paces out (waiting a full tick per packet capped a viewer at
/// ~1,000 packets/s).
const NEAR_DEADLINE: Duration = Duration::from_millis(1);
/// Socket buffers: room for bursts of a fan-out to thousands of viewers.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// Receive buffer per datagram; WebRTC datagrams stay under ~1,500 bytes.
const DATAGRAM_BUF: usize = 2048;
/// Batches of datagrams a shard may fall behind the router by.
const DATAGRAM_QUEUE: usize = 128;
/// Most media threads (shard tags are one character).
const MAX_SHARDS: usize = relay::TAGS.len();
/// The router forgets a peer address silent for this long (ICE consent
/// checks come every few seconds from a live peer).
const ROUTE_IDLE: Duration = Duration::from_secs(60);

/// A shard's inputs from the router: connection datagrams (STUN, DTLS)
/// and media datagrams (RTP, RTCP), each batched.
struct ShardInput {
    control: mpsc::Sender<Vec<Datagram>>,
    media: mpsc::Sender<Vec<Datagram>>,
}

/// Whether a datagram is RTP or SRTCP (RFC 7983: first byte 128–191), as
/// opposed to STUN, DTLS or anything else.
fn is_media(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(128..=191))
}

/// What a shard is fed, in its order of priority (see the module's doc).
struct ShardInbox {
    control: mpsc::Receiver<Vec<Datagram>>,
    commands: mpsc::UnboundedReceiver<Command>,
    relay: relay::RelayInbox,
    media: mpsc::Receiver<Vec<Datagram>>,
}

/// One datagram for a shard.
struct Datagram {
    source: SocketAddr,
    local: SocketAddr,
    data: Vec<u8>,
}

pub(crate) enum Command {
    Publish {
        room: String,
        offer: String,
        reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
    },
    Subscribe {
        room: String,
        offer: String,
        options: SubscribeOptions,
        reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
    },
    Patch {
        info: SessionInfo,
        frag: IceFragment,
        expected: Option<Vec<String>>,
        reply: oneshot::Sender<Result<PatchOutcome, SfuError>>,
    },
    IceUfrag {
        info: SessionInfo,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    End {
        info: SessionInfo,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    IsLive {
        room: String,
        reply: oneshot::Sender<bool>,
    },
    SetLayer {
        info: SessionInfo,
        req: LayerRequest,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    ViewerState {
        info: SessionInfo,
        reply: oneshot::Sender<Result<ViewerState, SfuError>>,
    },
    RoomsStatus {
        room: Option<String>,
        reply: oneshot::Sender<Vec<RoomStatus>>,
    },
    Kick {
        room: String,
        session: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    CloseRoom {
        room: String,
        reply: oneshot::Sender<()>,
    },
    AddTap {
        room: String,
        tap: mpsc::Sender<crate::TapEvent>,
    },
    TapKeyframe {
        room: String,
        track: usize,
        layer: u8,
    },
    PublishInternal {
        room: String,
        ingest: String,
        tracks: Vec<crate::IngestCodec>,
        #[allow(clippy::type_complexity)]
        reply: oneshot::Sender<
            Result<(u64, String, mpsc::UnboundedReceiver<crate::IngestSignal>), SfuError>,
        >,
    },
    Ingest {
        id: u64,
        track: usize,
        packet: crate::IngestPacket,
    },
    EndInternal {
        id: u64,
    },
    /// To a viewer's shard: make sure it mirrors `room` from shard `home`.
    EnsureMirror {
        room: String,
        home: usize,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// To a room's home: shard `shard` mirrors it from now on / no more.
    RelayOpen {
        room: String,
        shard: usize,
    },
    RelayClose {
        room: String,
        shard: usize,
    },
}

/// A handle to the running SFU; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Sfu {
    /// Each shard's command channel, by index.
    shards: Arc<[mpsc::UnboundedSender<Command>]>,
    /// Sessions per shard, as each shard last published it.
    load: Arc<[AtomicUsize]>,
    local_addr: SocketAddr,
    advertised: Vec<SocketAddr>,
}

impl Sfu {
    /// Binds the UDP socket and starts the router and the media threads.
    pub fn start(config: SfuConfig) -> io::Result<Sfu> {
        let socket = UdpSocket::bind(config.udp_listen)?;
        socket.set_nonblocking(true)?;
        let local_addr = socket.local_addr()?;
        let advertised = advertised_addrs(&config, local_addr);
        if advertised.is_empty() {
            return Err(io::Error::other(
                "no address to advertise as an ICE candidate",
            ));
        }
        let state = UdpSocketState::new((&socket).into())?;
        // The kernel caps these at net.core.{r,w}mem_max; best effort.
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
        let count = shard_count(config.media_threads);
        let gso_segments = if config.udp_gso {
            state.max_gso_segments()
        } else {
            1
        };
        // With GRO the kernel may hand over several datagrams in one buffer.
        let gro_segments = state.gro_segments();
        let load: Arc<[AtomicUsize]> = (0..count).map(|_| AtomicUsize::new(0)).collect();
        let mut commands = Vec::with_capacity(count);
        let mut datagrams = Vec::with_capacity(count);
        let mut relay_links = Vec::with_capacity(count);
        let mut inboxes = Vec::with_capacity(count);
        for _ in 0..count {
            let (command_tx, commands_rx) = mpsc::unbounded_channel();
            commands.push(command_tx);
            let (control, control_rx) = mpsc::channel(DATAGRAM_QUEUE);
            let (media, media_rx) = mpsc::channel(DATAGRAM_QUEUE);
            datagrams.push(ShardInput { control, media });
            let (relay_link, relay_rx) = relay::relay_channel();
            relay_links.push(relay_link);
            inboxes.push(ShardInbox {
                control: control_rx,
                commands: commands_rx,
                relay: relay_rx,
                media: media_rx,
            });
        }
        let links: Vec<_> = commands.iter().map(|c| c.downgrade()).collect();
        for (shard, inbox) in inboxes.into_iter().enumerate() {
            let mut engine = Engine::new(config.clone(), advertised.clone());
            engine.set_shard(shard, links.clone(), relay_links.clone(), load.clone());
            let socket = socket.try_clone()?;
            spawn_loop(format!("sfu-{shard}"), async move {
                run(socket, engine, inbox, gso_segments).await
            })?;
        }
        spawn_loop("sfu-router".into(), async move {
            route(socket, state, gro_segments, datagrams).await
        })?;
        info!(%local_addr, media_threads = count, gso_segments, gro_segments, "media socket ready");
        Ok(Sfu {
            shards: commands.into(),
            load,
            local_addr,
            advertised,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The ICE host candidates every session gets.
    pub fn advertised(&self) -> &[SocketAddr] {
        &self.advertised
    }

    /// How many media threads (shards) run.
    pub fn media_threads(&self) -> usize {
        self.shards.len()
    }

    /// A new publisher in `room` from its SDP offer.
    pub async fn publish(&self, room: &str, offer: String) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.home(room),
            Command::Publish {
                room: room.into(),
                offer,
                reply,
            },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// A new viewer of `room` from its (receive-only) SDP offer.
    pub async fn subscribe(&self, room: &str, offer: String) -> Result<SessionAnswer, SfuError> {
        self.subscribe_with(room, offer, SubscribeOptions::default())
            .await
    }

    /// [`Sfu::subscribe`] with the room's choices for this viewer. The
    /// viewer joins the least loaded shard; when that is not the room's
    /// home, the shard mirrors the room first (see `relay.rs`).
    pub async fn subscribe_with(
        &self,
        room: &str,
        offer: String,
        options: SubscribeOptions,
    ) -> Result<SessionAnswer, SfuError> {
        let home = self.home(room);
        let shard = self.least_loaded(home);
        if shard != home {
            if !self.is_live(room).await {
                return Err(SfuError::NotLive(room.into()));
            }
            let (reply, rx) = oneshot::channel();
            self.send(
                shard,
                Command::EnsureMirror {
                    room: room.into(),
                    home,
                    reply,
                },
            )?;
            rx.await.map_err(|_| SfuError::Stopped)??;
        }
        let (reply, rx) = oneshot::channel();
        self.send(
            shard,
            Command::Subscribe {
                room: room.into(),
                offer,
                options,
                reply,
            },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Trickled candidates or an ICE restart for a session. `expected`: the
    /// ICE ufrags the client believes current (`None`: any).
    pub async fn patch(
        &self,
        info: SessionInfo,
        frag: IceFragment,
        expected: Option<Vec<String>>,
    ) -> Result<PatchOutcome, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.session_shard(&info.session),
            Command::Patch {
                info,
                frag,
                expected,
                reply,
            },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// A session's current ICE ufrag; `NoSession` if it does not exist.
    pub async fn ice_ufrag(&self, info: SessionInfo) -> Result<String, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.session_shard(&info.session),
            Command::IceUfrag { info, reply },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Ends a session.
    pub async fn end(&self, info: SessionInfo) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.session_shard(&info.session),
            Command::End { info, reply },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Whether the room has a publisher now.
    pub async fn is_live(&self, room: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let asked = self.send(
            self.home(room),
            Command::IsLive {
                room: room.into(),
                reply,
            },
        );
        asked.is_ok() && rx.await.unwrap_or(false)
    }

    /// A viewer asks for a simulcast layer, a maximum height, or automatic choice.
    pub async fn set_layer(&self, info: SessionInfo, req: LayerRequest) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.session_shard(&info.session),
            Command::SetLayer { info, req, reply },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// What a viewer receives now (layers, estimate, counters).
    pub async fn viewer_state(&self, info: SessionInfo) -> Result<ViewerState, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.session_shard(&info.session),
            Command::ViewerState { info, reply },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Every room that has sessions now.
    pub async fn rooms_status(&self) -> Vec<RoomStatus> {
        self.gather_status(None).await
    }

    /// One room's live state; `None` when it has no session.
    pub async fn room_status(&self, room: &str) -> Option<RoomStatus> {
        self.gather_status(Some(room)).await.into_iter().next()
    }

    /// Every shard's view of the rooms, merged: the publisher and tracks
    /// from the room's home, the viewers from every shard.
    async fn gather_status(&self, room: Option<&str>) -> Vec<RoomStatus> {
        let mut pending = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let (reply, rx) = oneshot::channel();
            let asked = self.send(
                shard,
                Command::RoomsStatus {
                    room: room.map(String::from),
                    reply,
                },
            );
            if asked.is_ok() {
                pending.push((shard, rx));
            }
        }
        let mut merged: Vec<RoomStatus> = Vec::new();
        for (shard, rx) in pending {
            for status in rx.await.unwrap_or_default() {
                let home = self.home(&status.room) == shard;
                match merged.iter_mut().find(|m| m.room == status.room) {
                    Some(m) => merge_status(m, status, home),
                    None => merged.push(status),
                }
            }
        }
        merged.sort_by(|a, b| a.room.cmp(&b.room));
        merged
    }

    /// Ends one session (publisher or viewer) of a room.
    pub async fn kick(&self, room: &str, session: &str) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.session_shard(session),
            Command::Kick {
                room: room.into(),
                session: session.into(),
                reply,
            },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Ends every session of a room, on every shard.
    pub async fn close_room(&self, room: &str) {
        let mut pending = Vec::new();
        for shard in 0..self.shards.len() {
            let (reply, rx) = oneshot::channel();
            let asked = self.send(
                shard,
                Command::CloseRoom {
                    room: room.into(),
                    reply,
                },
            );
            if asked.is_ok() {
                pending.push(rx);
            }
        }
        for rx in pending {
            let _ = rx.await;
        }
    }

    /// Subscribes in process to a room's media (live now or later): the
    /// HLS bridge's input. Dropping the [`crate::Tap`] unsubscribes.
    pub fn tap(&self, room: &str) -> crate::Tap {
        let (tap, events) = mpsc::channel(crate::TAP_QUEUE);
        let _ = self.send(
            self.home(room),
            Command::AddTap {
                room: room.into(),
                tap,
            },
        );
        crate::Tap {
            events,
            room: room.into(),
            sfu: self.clone(),
        }
    }

    /// An in-process publisher (e.g. an RTMP connection, `ingest` = "rtmp")
    /// joins `room` with these tracks, in this order.
    pub async fn publish_internal(
        &self,
        room: &str,
        ingest: &str,
        tracks: Vec<crate::IngestCodec>,
    ) -> Result<crate::InternalPublisher, SfuError> {
        let home = self.home(room);
        let (reply, rx) = oneshot::channel();
        self.send(
            home,
            Command::PublishInternal {
                room: room.into(),
                ingest: ingest.into(),
                tracks,
                reply,
            },
        )?;
        let (id, session, signals) = rx.await.map_err(|_| SfuError::Stopped)??;
        Ok(crate::InternalPublisher {
            id,
            session,
            commands: self.shards[home].clone(),
            signals,
        })
    }

    pub(crate) fn tap_keyframe(&self, room: &str, track: usize, layer: u8) {
        let _ = self.send(
            self.home(room),
            Command::TapKeyframe {
                room: room.into(),
                track,
                layer,
            },
        );
    }

    /// The shard of a room's publisher and taps: a hash of its name.
    fn home(&self, room: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        (h.finish() % self.shards.len() as u64) as usize
    }

    /// The shard a session lives on, from its id's tag.
    fn session_shard(&self, session: &str) -> usize {
        relay::shard_of(session)
            .filter(|s| *s < self.shards.len())
            .unwrap_or(0)
    }

    /// The shard with the fewest sessions; `home` on a tie (no relay needed).
    fn least_loaded(&self, home: usize) -> usize {
        let load = |s: usize| self.load[s].load(Ordering::Relaxed);
        (0..self.shards.len())
            .filter(|s| load(*s) < load(home))
            .min_by_key(|s| load(*s))
            .unwrap_or(home)
    }

    fn send(&self, shard: usize, c: Command) -> Result<(), SfuError> {
        self.shards[shard].send(c).map_err(|_| SfuError::Stopped)
    }
}

/// Runs `main` on a thread of its own (named `name`) with a
/// single-threaded runtime; an error ending it is logged.
fn spawn_loop(
    name: String,
    main: impl std::future::Future<Output = io::Result<()>> + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        let name = std::thread::current().name().unwrap_or("sfu").to_string();
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                if let Err(e) = runtime.block_on(main) {
                    warn!(thread = name, "media loop ended: {e}");
                }
            }
            Err(e) => warn!(thread = name, "cannot start the runtime: {e}"),
        }
    })?;
    Ok(())
}

/// `media_threads` as configured, 0 meaning one per core.
fn shard_count(configured: usize) -> usize {
    let n = match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    n.clamp(1, MAX_SHARDS)
}

/// Adds one shard's view of a room to the merged one. `home`: it comes
/// from the room's home shard, whose publisher and tracks are the truth.
fn merge_status(merged: &mut RoomStatus, other: RoomStatus, home: bool) {
    let mut viewers = std::mem::take(&mut merged.viewers);
    let mut other = other;
    viewers.append(&mut other.viewers);
    if home || merged.publisher.is_none() && other.publisher.is_some() {
        *merged = other;
    } else {
        merged.live |= other.live;
    }
    merged.viewers = viewers;
}

/// The candidate addresses: configured IPs, else the bound IP, else every
/// interface address of the bound family (loopback included, so a browser
/// on the same machine connects).
fn advertised_addrs(config: &SfuConfig, bound: SocketAddr) -> Vec<SocketAddr> {
    let port = bound.port();
    if !config.candidate_ips.is_empty() {
        return config
            .candidate_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
    }
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    ips.retain(|ip| match ip {
        IpAddr::V4(_) => bound.is_ipv4(),
        // Link-local v6 needs a scope id that SDP candidates cannot carry.
        IpAddr::V6(v6) => bound.is_ipv6() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    });
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Which shard a datagram's peer lives on: by its address once known, and
/// an address becomes known by a STUN request naming one of our ufrags
/// (whose first character is its shard's tag). Anything else is dropped,
/// as an engine would drop it.
struct Routes {
    shards: usize,
    by_addr: std::collections::HashMap<SocketAddr, (usize, Instant)>,
    last_sweep: Instant,
}

impl Routes {
    fn new(shards: usize) -> Routes {
        Routes {
            shards,
            by_addr: std::collections::HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    fn shard(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) -> Option<usize> {
        if self.shards == 1 {
            return Some(0);
        }
        if let Some(shard) = crate::stun::local_ufrag(datagram)
            .and_then(relay::shard_of)
            .filter(|s| *s < self.shards)
        {
            self.by_addr.insert(source, (shard, now));
            return Some(shard);
        }
        let (shard, seen) = self.by_addr.get_mut(&source)?;
        *seen = now;
        Some(*shard)
    }

    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < ROUTE_IDLE {
            return;
        }
        self.last_sweep = now;
        self.by_addr
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ROUTE_IDLE);
    }
}

/// The router: reads every datagram the socket has, in batches
/// (recvmmsg), and hands each to its shard. Ends when the shards are gone.
async fn route(
    socket: UdpSocket,
    state: UdpSocketState,
    gro_segments: usize,
    shards: Vec<ShardInput>,
) -> io::Result<()> {
    let local = socket.local_addr()?;
    let socket = register(socket, Interest::READABLE)?;
    // Room for a GRO buffer of `gro_segments` datagrams: a smaller buffer
    // would truncate it, losing all but the first datagrams.
    let mut storage = vec![vec![0u8; DATAGRAM_BUF * gro_segments.max(1)]; BATCH_SIZE];
    let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
    let mut routes = Routes::new(shards.len());
    // Per shard: connection datagrams, media datagrams.
    let mut batches: Vec<[Vec<Datagram>; 2]> = shards.iter().map(|_| Default::default()).collect();
    let mut dropped: u64 = 0;
    loop {
        let mut guard = tokio::select! {
            ready = socket.readable() => ready?,
            _ = shards[0].media.closed() => return Ok(()), // the SFU was dropped
        };
        loop {
            let mut bufs: Vec<IoSliceMut<'_>> = storage
                .iter_mut()
                .map(|b| IoSliceMut::new(&mut b[..]))
                .collect();
            let n = match guard.try_io(|s| state.recv(s.get_ref().into(), &mut bufs, &mut meta)) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    // ICMP errors from a vanished peer surface here; keep serving.
                    tracing::debug!("recv: {e}");
                    continue;
                }
                Err(_would_block) => break,
            };
            let now = Instant::now();
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let to = SocketAddr::new(m.dst_ip.unwrap_or(local.ip()), local.port());
                // With GRO one buffer may hold several datagrams of `stride` bytes.
                for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                    if let Some(shard) = routes.shard(now, m.addr, datagram) {
                        batches[shard][usize::from(is_media(datagram))].push(Datagram {
                            source: m.addr,
                            local: to,
                            data: datagram.to_vec(),
                        });
                    }
                }
            }
            for (input, [control, media]) in shards.iter().zip(batches.iter_mut()) {
                for (tx, batch) in [(&input.control, control), (&input.media, media)] {
                    if batch.is_empty() {
                        continue;
                    }
                    let lost = batch.len() as u64;
                    if tx.try_send(std::mem::take(batch)).is_err() {
                        dropped += lost;
                        if dropped.is_power_of_two() {
                            warn!(dropped, "a media thread is behind: datagrams dropped");
                        }
                    }
                }
            }
            routes.sweep(now);
        }
    }
}

/// One shard: its engine, fed datagrams by the router and commands by the
/// handles and other shards; it sends on its own handle of the socket.
async fn run(
    socket: UdpSocket,
    mut engine: Engine,
    mut inbox: ShardInbox,
    gso_segments: usize,
) -> io::Result<()> {
    let v6 = socket.local_addr()?.is_ipv6();
    // Writable readiness only: the router reads, and a shard must not be
    // woken by every datagram that arrives.
    let socket = register(socket, Interest::WRITABLE)?;
    let mut out = Sender::new(v6, gso_segments);
    loop {
        out.flush(&socket, &mut engine).await;
        engine.update_load();
        let now = Instant::now();
        let deadline = engine
            .poll_timeout()
            .unwrap_or(now + HOUSEKEEPING)
            .min(now + HOUSEKEEPING);
        let wake = if deadline <= now + NEAR_DEADLINE {
            now
        } else {
            deadline
        };
        tokio::select! {
            biased; // the order of priority (see the module's doc)
            batch = inbox.control.recv() => {
                let Some(batch) = batch else { return Ok(()) };
                handle_batch(&mut engine, batch);
            }
            command = inbox.commands.recv() => match command {
                Some(c) => handle_command(&mut engine, c),
                None => return Ok(()), // every handle dropped: shut down
            },
            // Never None: every engine holds every shard's relay link.
            Some((room, event)) = inbox.relay.recv() => {
                engine.relay_event(Instant::now(), &room, event);
            }
            batch = inbox.media.recv() => {
                let Some(batch) = batch else { return Ok(()) };
                handle_batch(&mut engine, batch);
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if now + NEAR_DEADLINE >= deadline {
            // Feeding str0m a time up to 1 ms early is harmless; sleeping to
            // it is not (see NEAR_DEADLINE).
            engine.handle_timeout(now.max(deadline));
        }
    }
}

fn handle_batch(engine: &mut Engine, batch: Vec<Datagram>) {
    let now = Instant::now();
    for d in batch {
        engine.handle_datagram(now, d.source, d.local, &d.data);
    }
}

/// Registers a socket handle with this thread's reactor for `interest` only.
fn register(socket: UdpSocket, interest: Interest) -> io::Result<AsyncFd<UdpSocket>> {
    // SAFETY: a std `UdpSocket` owns its descriptor, which stays open and
    // the same for as long as the `AsyncFd` owns the socket.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(|e| e.into_parts().1)
}

/// Sends what the engine wants sent: in batches of up to 64 datagrams per
/// `sendmmsg` on Linux, one `sendmsg` each elsewhere.
struct Sender {
    #[cfg(target_os = "linux")]
    batch: crate::sendmmsg::Batch,
    #[cfg(not(target_os = "linux"))]
    state: Option<UdpSocketState>,
    /// Datagrams taken from the engine, not sent yet (reused).
    pending: Vec<Outgoing>,
}

impl Sender {
    fn new(v6_socket: bool, gso_segments: usize) -> Sender {
        #[cfg(not(target_os = "linux"))]
        let _ = (v6_socket, gso_segments);
        Sender {
            #[cfg(target_os = "linux")]
            batch: crate::sendmmsg::Batch::new(v6_socket, gso_segments),
            #[cfg(not(target_os = "linux"))]
            state: None,
            pending: Vec::new(),
        }
    }

    async fn flush(&mut self, socket: &AsyncFd<UdpSocket>, engine: &mut Engine) {
        loop {
            self.pending.clear();
            while self.pending.len() < 64 {
                match engine.poll_transmit() {
                    Some(o) => self.pending.push(o),
                    None => break,
                }
            }
            if self.pending.is_empty() {
                return;
            }
            let mut start = 0;
            while start < self.pending.len() {
                match self.send_some(socket, start) {
                    Ok(0) => start += 1,
                    Ok(n) => start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match socket.writable().await {
                            Ok(mut guard) => guard.clear_ready(),
                            Err(_) => return,
                        }
                    }
                    Err(e) => {
                        // The first datagram failed (e.g. an unreachable
                        // destination): skip it, send the rest.
                        tracing::debug!(to = %self.pending[start].destination, "send: {e}");
                        start += 1;
                    }
                }
            }
        }
    }

    /// Sends from `pending[start..]` what the socket takes now.
    #[cfg(target_os = "linux")]
    fn send_some(&mut self, socket: &AsyncFd<UdpSocket>, start: usize) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.batch
            .send(socket.get_ref().as_raw_fd(), &self.pending[start..])
    }

    #[cfg(not(target_os = "linux"))]
    fn send_some(&mut self, socket: &AsyncFd<UdpSocket>, start: usize) -> io::Result<usize> {
        let sock = socket.get_ref();
        if self.state.is_none() {
            self.state = Some(UdpSocketState::new(sock.into())?);
        }
        let out = &self.pending[start];
        let transmit = quinn_udp::Transmit {
            destination: out.destination,
            ecn: None,
            contents: &out.contents,
            segment_size: None,
            src_ip: out.source_ip.filter(|ip| !ip.is_unspecified()),
        };
        let state = self.state.as_ref().expect("set above");
        state.try_send(sock.into(), &transmit).map(|()| 1)
    }
}

fn handle_command(engine: &mut Engine, command: Command) {
    let now = Instant::now();
    match command {
        Command::Publish { room, offer, reply } => {
            let _ = reply.send(engine.publish(now, &room, &offer));
        }
        Command::Subscribe {
            room,
            offer,
            options,
            reply,
        } => {
            let _ = reply.send(engine.subscribe(now, &room, &offer, options));
        }
        Command::Patch {
            info,
            frag,
            expected,
            reply,
        } => {
            let _ = reply.send(engine.patch(now, &info, frag, expected));
        }
        Command::IceUfrag { info, reply } => {
            let _ = reply.send(engine.ice_ufrag(&info));
        }
        Command::End { info, reply } => {
            let _ = reply.send(engine.end(now, &info));
        }
        Command::IsLive { room, reply } => {
            let _ = reply.send(engine.room_is_live(&room));
        }
        Command::SetLayer { info, req, reply } => {
            let _ = reply.send(engine.set_layer(now, &info, req));
        }
        Command::ViewerState { info, reply } => {
            let _ = reply.send(engine.viewer_state(now, &info));
        }
        Command::RoomsStatus { room, reply } => {
            let status = match room {
                Some(r) => engine.room_status(now, &r).into_iter().collect(),
                None => engine.rooms_status(now),
            };
            let _ = reply.send(status);
        }
        Command::Kick {
            room,
            session,
            reply,
        } => {
            let _ = reply.send(engine.kick(now, &room, &session));
        }
        Command::CloseRoom { room, reply } => {
            engine.close_room(now, &room);
            let _ = reply.send(());
        }
        Command::AddTap { room, tap } => engine.add_tap(&room, tap),
        Command::TapKeyframe { room, track, layer } => {
            engine.tap_keyframe(now, &room, track, layer)
        }
        Command::PublishInternal {
            room,
            ingest,
            tracks,
            reply,
        } => {
            let _ = reply.send(engine.publish_internal(now, &room, &ingest, &tracks));
        }
        Command::Ingest { id, track, packet } => engine.ingest(now, id, track, packet),
        Command::EndInternal { id } => engine.end_internal(now, id),
        Command::EnsureMirror { room, home, reply } => {
            engine.ensure_mirror(now, &room, home, reply)
        }
        Command::RelayOpen { room, shard } => engine.relay_open(&room, shard),
        Command::RelayClose { room, shard } => engine.relay_close(&room, shard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(room: &str, publisher: bool, viewers: &[&str]) -> RoomStatus {
        RoomStatus {
            room: room.into(),
            live: publisher,
            publisher: publisher.then(|| crate::PublisherStatus {
                session: "pub".into(),
                ingest: "whip".into(),
                connected: true,
                uptime_secs: 1.0,
            }),
            tracks: Vec::new(),
            viewers: viewers
                .iter()
                .map(|v| crate::ViewerSummary {
                    session: v.to_string(),
                    connected: true,
                    uptime_secs: 1.0,
                    estimated_bitrate: None,
                    layer: None,
                    packets_forwarded: 0,
                    packets_dropped: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn merged_status_takes_the_home_publisher_and_every_viewer() {
        // A mirror's view first, then the home's.
        let mut merged = status("r", false, &["b1"]);
        merge_status(&mut merged, status("r", true, &["a1", "a2"]), true);
        assert!(merged.live);
        assert_eq!(
            merged.publisher.as_ref().map(|p| p.session.as_str()),
            Some("pub")
        );
        let mut names: Vec<_> = merged.viewers.iter().map(|v| v.session.clone()).collect();
        names.sort();
        assert_eq!(names, ["a1", "a2", "b1"]);
        // The home's view first: a mirror's adds only viewers.
        let mut merged = status("r", true, &["a1"]);
        merge_status(&mut merged, status("r", false, &["b1"]), false);
        assert!(merged.publisher.is_some());
        assert_eq!(merged.viewers.len(), 2);
    }

    #[test]
    fn rtp_and_rtcp_are_media_stun_and_dtls_are_not() {
        let rtp = [0x80, 96, 0, 1];
        let rtcp = [0x81, 200, 0, 6];
        let stun = binding_request("a:b");
        let dtls = [22, 0xfe, 0xfd];
        assert!(is_media(&rtp) && is_media(&rtcp));
        assert!(!is_media(&stun) && !is_media(&dtls) && !is_media(&[]));
    }

    #[test]
    fn routes_follow_the_ufrag_tag_of_stun_requests() {
        let mut routes = Routes::new(2);
        let now = Instant::now();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        // Unknown address, not STUN: dropped.
        assert_eq!(routes.shard(now, a, &[0x80, 0x60, 0, 1]), None);
        let stun = binding_request("bQWERTY:remote");
        assert_eq!(routes.shard(now, a, &stun), Some(1));
        // Now known: RTP from it goes to the same shard.
        assert_eq!(routes.shard(now, a, &[0x80, 0x60, 0, 1]), Some(1));
        // A new session from the same address on another shard moves it.
        assert_eq!(routes.shard(now, a, &binding_request("aXYZ:r")), Some(0));
        assert_eq!(routes.shard(now, a, &[0x80, 0x60, 0, 1]), Some(0));
        // A tag past the shard count is not ours.
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert_eq!(routes.shard(now, b, &binding_request("cXYZ:r")), None);
        // Silent addresses are forgotten.
        routes.sweep(now + ROUTE_IDLE * 2);
        assert_eq!(routes.shard(now, a, &[0x80, 0x60, 0, 1]), None);
    }

    fn binding_request(username: &str) -> Vec<u8> {
        let mut value = username.as_bytes().to_vec();
        let len = value.len();
        while !value.len().is_multiple_of(4) {
            value.push(0);
        }
        let mut d = vec![0x00, 0x01];
        d.extend_from_slice(&((value.len() + 4) as u16).to_be_bytes());
        d.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        d.extend_from_slice(&[7; 12]);
        d.extend_from_slice(&0x0006u16.to_be_bytes());
        d.extend_from_slice(&(len as u16).to_be_bytes());
        d.extend_from_slice(&value);
        d
    }
}
