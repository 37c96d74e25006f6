//! The I/O edge of the SFU: one thread owns the UDP socket and the
//! [`Engine`], and serves three things in turn — datagrams (received in
//! batches, with the local address each was sent to), commands from the HTTP
//! side, and the engine's timer. Nothing else touches the engine, so it needs
//! no locks.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

#[cfg(not(target_os = "linux"))]
use quinn_udp::Transmit;
use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::engine::{Engine, Outgoing, SubscribeOptions};
use crate::RoomStatus;
use crate::{
    IceFragment, LayerRequest, PatchOutcome, SessionAnswer, SessionInfo, SfuConfig, SfuError,
    ViewerState,
};

/// Longest the loop sleeps without looking at the engine's housekeeping.
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
}

/// A handle to the running SFU; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Sfu {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    advertised: Vec<SocketAddr>,
}

impl Sfu {
    /// Binds the UDP socket and starts the media thread.
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
        let (commands, rx) = mpsc::unbounded_channel();
        let engine = Engine::new(config, advertised.clone());
        std::thread::Builder::new()
            .name("sfu".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => return warn!("cannot start the media runtime: {e}"),
                };
                if let Err(e) = runtime.block_on(run(socket, engine, rx)) {
                    warn!("media loop ended: {e}");
                }
            })?;
        Ok(Sfu {
            commands,
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

    /// A new publisher in `room` from its SDP offer.
    pub async fn publish(&self, room: &str, offer: String) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish {
            room: room.into(),
            offer,
            reply,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// A new viewer of `room` from its (receive-only) SDP offer.
    pub async fn subscribe(&self, room: &str, offer: String) -> Result<SessionAnswer, SfuError> {
        self.subscribe_with(room, offer, SubscribeOptions::default())
            .await
    }

    /// [`Sfu::subscribe`] with the room's choices for this viewer.
    pub async fn subscribe_with(
        &self,
        room: &str,
        offer: String,
        options: SubscribeOptions,
    ) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            room: room.into(),
            offer,
            options,
            reply,
        })?;
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
        self.send(Command::Patch {
            info,
            frag,
            expected,
            reply,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// A session's current ICE ufrag; `NoSession` if it does not exist.
    pub async fn ice_ufrag(&self, info: SessionInfo) -> Result<String, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::IceUfrag { info, reply })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Ends a session.
    pub async fn end(&self, info: SessionInfo) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::End { info, reply })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Whether the room has a publisher now.
    pub async fn is_live(&self, room: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .send(Command::IsLive {
                room: room.into(),
                reply,
            })
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// A viewer asks for a simulcast layer, a maximum height, or automatic choice.
    pub async fn set_layer(&self, info: SessionInfo, req: LayerRequest) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SetLayer { info, req, reply })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// What a viewer receives now (layers, estimate, counters).
    pub async fn viewer_state(&self, info: SessionInfo) -> Result<ViewerState, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ViewerState { info, reply })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Every room that has sessions now.
    pub async fn rooms_status(&self) -> Vec<RoomStatus> {
        let (reply, rx) = oneshot::channel();
        if self
            .send(Command::RoomsStatus { room: None, reply })
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// One room's live state; `None` when it has no session.
    pub async fn room_status(&self, room: &str) -> Option<RoomStatus> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::RoomsStatus {
            room: Some(room.into()),
            reply,
        })
        .ok()?;
        rx.await.ok()?.into_iter().next()
    }

    /// Ends one session (publisher or viewer) of a room.
    pub async fn kick(&self, room: &str, session: &str) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Kick {
            room: room.into(),
            session: session.into(),
            reply,
        })?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Ends every session of a room.
    pub async fn close_room(&self, room: &str) {
        let (reply, rx) = oneshot::channel();
        if self
            .send(Command::CloseRoom {
                room: room.into(),
                reply,
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Subscribes in process to a room's media (live now or later): the
    /// HLS bridge's input. Dropping the [`crate::Tap`] unsubscribes.
    pub fn tap(&self, room: &str) -> crate::Tap {
        let (tap, events) = mpsc::channel(crate::TAP_QUEUE);
        let _ = self.send(Command::AddTap {
            room: room.into(),
            tap,
        });
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
        let (reply, rx) = oneshot::channel();
        self.send(Command::PublishInternal {
            room: room.into(),
            ingest: ingest.into(),
            tracks,
            reply,
        })?;
        let (id, session, signals) = rx.await.map_err(|_| SfuError::Stopped)??;
        Ok(crate::InternalPublisher {
            id,
            session,
            commands: self.commands.clone(),
            signals,
        })
    }

    pub(crate) fn tap_keyframe(&self, room: &str, track: usize, layer: u8) {
        let _ = self.send(Command::TapKeyframe {
            room: room.into(),
            track,
            layer,
        });
    }

    fn send(&self, c: Command) -> Result<(), SfuError> {
        self.commands.send(c).map_err(|_| SfuError::Stopped)
    }
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

async fn run(
    socket: UdpSocket,
    mut engine: Engine,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> io::Result<()> {
    let state = UdpSocketState::new((&socket).into())?;
    // The kernel caps these at net.core.{r,w}mem_max; best effort.
    let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let local = socket.local_addr()?;
    info!(%local, "media socket ready");
    let mut storage = vec![[0u8; DATAGRAM_BUF]; BATCH_SIZE];
    let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
    let mut out = Sender::new(local.is_ipv6());
    loop {
        out.flush(&socket, &state, &mut engine).await;
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
            ready = socket.readable() => {
                ready?;
                receive(&socket, &state, &mut engine, &mut storage, &mut meta, local);
            }
            command = commands.recv() => match command {
                Some(c) => handle_command(&mut engine, c),
                None => return Ok(()), // every handle dropped: shut down
            },
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

/// Reads every datagram the socket has, in batches (recvmmsg).
fn receive(
    socket: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    engine: &mut Engine,
    storage: &mut [[u8; DATAGRAM_BUF]],
    meta: &mut [RecvMeta],
    local: SocketAddr,
) {
    loop {
        let mut bufs: Vec<IoSliceMut<'_>> = storage
            .iter_mut()
            .map(|b| IoSliceMut::new(&mut b[..]))
            .collect();
        let n = match socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut bufs, meta)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // ICMP errors from a vanished peer surface here; keep serving.
                tracing::debug!("recv: {e}");
                return;
            }
        };
        let now = Instant::now();
        for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
            let to = SocketAddr::new(m.dst_ip.unwrap_or(local.ip()), local.port());
            // With GRO one buffer may hold several datagrams of `stride` bytes.
            for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                engine.handle_datagram(now, m.addr, to, datagram);
            }
        }
    }
}

/// Sends what the engine wants sent: in batches of up to 64 datagrams per
/// `sendmmsg` on Linux, one `sendmsg` each elsewhere.
struct Sender {
    #[cfg(target_os = "linux")]
    batch: crate::sendmmsg::Batch,
    /// Datagrams taken from the engine, not sent yet (reused).
    pending: Vec<Outgoing>,
}

impl Sender {
    fn new(v6_socket: bool) -> Sender {
        #[cfg(not(target_os = "linux"))]
        let _ = v6_socket;
        Sender {
            #[cfg(target_os = "linux")]
            batch: crate::sendmmsg::Batch::new(v6_socket),
            pending: Vec::new(),
        }
    }

    #[cfg(target_os = "linux")]
    async fn flush(
        &mut self,
        socket: &tokio::net::UdpSocket,
        _state: &UdpSocketState,
        engine: &mut Engine,
    ) {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        loop {
            self.pending.clear();
            while self.pending.len() < crate::sendmmsg::BATCH {
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
                let (batch, rest) = (&mut self.batch, &self.pending[start..]);
                match socket.try_io(Interest::WRITABLE, || batch.send(fd, rest)) {
                    Ok(0) => start += 1,
                    Ok(n) => start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if socket.writable().await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // The first datagram failed (e.g. an unreachable
                        // destination): skip it, send the rest.
                        tracing::debug!(to = %rest[0].destination, "send: {e}");
                        start += 1;
                    }
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    async fn flush(
        &mut self,
        socket: &tokio::net::UdpSocket,
        state: &UdpSocketState,
        engine: &mut Engine,
    ) {
        while let Some(out) = engine.poll_transmit() {
            send(socket, state, &out).await;
        }
    }
}

#[cfg(not(target_os = "linux"))]
async fn send(socket: &tokio::net::UdpSocket, state: &UdpSocketState, out: &Outgoing) {
    let transmit = Transmit {
        destination: out.destination,
        ecn: None,
        contents: &out.contents,
        segment_size: None,
        src_ip: out.source_ip.filter(|ip| !ip.is_unspecified()),
    };
    loop {
        match socket.try_io(Interest::WRITABLE, || {
            state.try_send(socket.into(), &transmit)
        }) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(to = %out.destination, "send: {e}");
                return;
            }
        }
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
    }
}
