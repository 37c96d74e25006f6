//! The viewers: each a real WebRTC peer (a str0m `Rtc` doing ICE as the
//! controlling agent, DTLS active, SRTP) on a sharded pool of threads.
//!
//! ```text
//!  connect threads: offer ─ POST /whep ─ answer ─► shard channel
//!  shard thread: one UDP socket (recvmmsg), many viewers
//!      datagram ─► viewer by destination IP (127.1.x.y, one per viewer)
//!         STUN, DTLS, RTCP ─► rtc
//!         SRTP ─► full viewer: rtc (decrypt) → seq, keyframe, delay
//!                 counting viewer: plain header → seq, bytes
//! ```
//!
//! Each viewer has its own loopback address, so the server sees one remote
//! address per peer as with real clients, while a shard reads all its
//! viewers' datagrams from one socket in batches. A sample of viewers (the
//! "full" ones) hand every packet to str0m for decryption and check
//! payloads; the rest count packets from the RTP header (which SRTP leaves
//! in the clear) to keep the generator's CPU for the server.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::media::h264_keyframe_start;
use crate::sendlog::SendLog;

/// How often a shard serves its viewers' str0m timers.
const TIMER_TICK: Duration = Duration::from_millis(5);
/// Kernel receive buffer per shard socket.
const RECV_BUFFER: usize = 16 * 1024 * 1024;
/// Gaps remembered per stream for the report.
const MAX_GAPS: usize = 4;

/// The loopback address of viewer `index` (127.1.0.1, 127.1.0.2, …).
pub fn viewer_ip(index: usize) -> Ipv4Addr {
    let (hi, lo) = (index / 250, index % 250 + 1);
    Ipv4Addr::new(127, 1 + (hi / 256) as u8, (hi % 256) as u8, lo as u8)
}

/// Live counters of one viewer, read by the main thread while shards run.
#[derive(Default)]
pub struct ViewerCounters {
    pub video_packets: AtomicU64,
    pub audio_packets: AtomicU64,
    pub rtx_packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Nanoseconds since the run's epoch, 0 while not yet: WHEP POST sent,
    /// answered, DTLS done, first video and audio packet.
    pub post_ns: AtomicU64,
    pub answered_ns: AtomicU64,
    pub connected_ns: AtomicU64,
    pub first_video_ns: AtomicU64,
    pub first_audio_ns: AtomicU64,
    pub failed: AtomicBool,
}

/// What every thread shares.
pub struct Shared {
    pub epoch: Instant,
    pub counters: Vec<ViewerCounters>,
    /// Delay samples are taken only inside the measuring window.
    pub measuring: AtomicBool,
    pub stop: AtomicBool,
    pub log: Arc<SendLog>,
}

impl Shared {
    pub fn since_epoch(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_nanos() as u64).max(1)
    }
}

/// Payload type → what it carries, from the answer SDP.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum PtKind {
    #[default]
    Unknown,
    Video,
    Audio,
    Rtx,
}

pub fn pt_kinds(answer: &str) -> [PtKind; 128] {
    let mut kinds = [PtKind::Unknown; 128];
    let mut kind = PtKind::Unknown;
    for line in answer.lines() {
        if line.starts_with("m=video") {
            kind = PtKind::Video;
        } else if line.starts_with("m=audio") {
            kind = PtKind::Audio;
        } else if line.starts_with("m=") {
            kind = PtKind::Unknown;
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let mut parts = rest.split_whitespace();
            let pt = parts.next().and_then(|p| p.parse::<usize>().ok());
            let name = parts.next().unwrap_or_default().to_ascii_lowercase();
            if let Some(pt) = pt.filter(|p| *p < 128) {
                kinds[pt] = if name.starts_with("rtx/") {
                    PtKind::Rtx
                } else {
                    kind
                };
            }
        }
    }
    kinds
}

/// A viewer between offer and answer: built on a connect thread.
pub struct Offer {
    pub rtc: Rtc,
    pub pending: SdpPendingOffer,
    pub sdp: String,
}

/// A recvonly offer for viewer `local`, without transport-cc (see
/// `docs/benchmarks.md`: the server then keeps each viewer on the layer it
/// chose, with no probing padding, so every run carries the same load).
pub fn make_offer(local: SocketAddr, twcc: bool) -> Result<Offer> {
    let mut exts = ExtensionMap::empty();
    exts.set(1, Extension::AudioLevel);
    exts.set(2, Extension::AbsoluteSendTime);
    if twcc {
        exts.set(3, Extension::TransportSequenceNumber);
    }
    exts.set(4, Extension::RtpMid);
    exts.set(10, Extension::RtpStreamId);
    exts.set(11, Extension::RepairedRtpStreamId);
    let mut rtc = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_extension_map(exts)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut sdp = rtc.sdp_api();
    sdp.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    sdp.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = sdp.apply().ok_or_else(|| anyhow!("no offer"))?;
    Ok(Offer {
        rtc,
        pending,
        sdp: offer.to_sdp_string(),
    })
}

/// A connected-to-be viewer handed to its shard.
pub struct NewViewer {
    pub index: usize,
    pub rtc: Rtc,
    pub local: SocketAddr,
    pub full: bool,
    pub kinds: [PtKind; 128],
}

impl NewViewer {
    pub fn accept(
        offer: Offer,
        answer: &str,
        index: usize,
        local: SocketAddr,
        full: bool,
    ) -> Result<NewViewer> {
        let Offer {
            mut rtc, pending, ..
        } = offer;
        let parsed = SdpAnswer::from_sdp_string(answer).context("WHEP answer")?;
        rtc.sdp_api()
            .accept_answer(pending, parsed)
            .context("accepting the WHEP answer")?;
        Ok(NewViewer {
            index,
            rtc,
            local,
            full,
            kinds: pt_kinds(answer),
        })
    }
}

/// Sequence-number accounting of one stream: loss is the gaps.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SeqTrack {
    started: bool,
    first: i64,
    max: i64,
    pub received: u64,
    /// The first few forward jumps: (packets received before, sequence
    /// numbers skipped, when since the run's epoch in ms), for diagnosis.
    pub gaps: Vec<(u64, i64, u64)>,
}

impl SeqTrack {
    pub fn push(&mut self, seq: u16, at_ms: u64) {
        if !self.started {
            self.started = true;
            self.first = seq as i64;
            self.max = seq as i64;
        } else {
            let delta = seq.wrapping_sub(self.max as u16) as i16 as i64;
            if delta > 1 && self.gaps.len() < MAX_GAPS {
                self.gaps.push((self.received, delta - 1, at_ms));
            }
            if delta > 0 {
                self.max += delta;
            }
        }
        self.received += 1;
    }

    pub fn expected(&self) -> u64 {
        if self.started {
            (self.max - self.first + 1) as u64
        } else {
            0
        }
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// One viewer's outcome, returned by its shard at the end.
#[derive(Debug, Clone, Default)]
pub struct ViewerResult {
    pub index: usize,
    pub full: bool,
    pub video: SeqTrack,
    pub audio: SeqTrack,
    /// Full viewers: the first video packet started a keyframe.
    pub first_video_keyframe: Option<bool>,
    /// Full viewers: payloads found in the publisher's send log.
    pub matched: u64,
    /// Forwarding delays in microseconds (full viewers, measuring window).
    pub delays_us: Vec<u32>,
    pub error: Option<String>,
}

struct Viewer {
    rtc: Rtc,
    local: SocketAddr,
    timeout: Instant,
    full: bool,
    kinds: [PtKind; 128],
    connected_at: Option<Instant>,
    dead: bool,
    result: ViewerResult,
}

/// One shard: a socket and the viewers on it.
pub struct Shard {
    socket: UdpSocket,
    state: UdpSocketState,
    port: u16,
}

impl Shard {
    pub fn bind() -> Result<Shard> {
        // Wildcard-bound so one socket receives for every 127.1.x.y viewer
        // address; only loopback peers ever talk to it.
        let socket = UdpSocket::bind("0.0.0.0:0").context("viewer shard socket")?;
        socket.set_nonblocking(true)?;
        set_buffers(&socket);
        let state = UdpSocketState::new((&socket).into())?;
        let port = socket.local_addr()?.port();
        Ok(Shard {
            socket,
            state,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves viewers arriving on `incoming` until `shared.stop`.
    pub fn run(self, shared: Arc<Shared>, incoming: Receiver<NewViewer>) -> Vec<ViewerResult> {
        let mut viewers: Vec<Viewer> = Vec::new();
        let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
        // GRO may hand over several datagrams in one buffer: room for them all.
        let mut storage = vec![vec![0u8; 2048 * self.state.gro_segments().max(1)]; BATCH_SIZE];
        let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
        let mut next_tick = Instant::now();
        let mut open = true;
        while !shared.stop.load(Ordering::Relaxed) {
            while open {
                match incoming.try_recv() {
                    Ok(nv) => {
                        by_ip.insert(nv.local.ip(), viewers.len());
                        let mut v = Viewer {
                            rtc: nv.rtc,
                            local: nv.local,
                            timeout: Instant::now(),
                            full: nv.full,
                            kinds: nv.kinds,
                            connected_at: None,
                            dead: false,
                            result: ViewerResult {
                                index: nv.index,
                                full: nv.full,
                                ..Default::default()
                            },
                        };
                        let now = Instant::now();
                        let _ = v.rtc.handle_input(Input::Timeout(now));
                        self.drain(&shared, &mut v);
                        viewers.push(v);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            wait_readable(&self.socket, wait);
            // Read what is there, in batches, but come back to timers.
            for _ in 0..64 {
                let mut bufs: Vec<IoSliceMut<'_>> = storage
                    .iter_mut()
                    .map(|b| IoSliceMut::new(&mut b[..]))
                    .collect();
                let n = match self.state.recv((&self.socket).into(), &mut bufs, &mut meta) {
                    Ok(n) => n,
                    Err(_) => break, // WouldBlock, or an ICMP error to skip
                };
                let now = Instant::now();
                for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                    let Some(ip) = m.dst_ip else { continue };
                    let Some(&i) = by_ip.get(&ip) else { continue };
                    let v = &mut viewers[i];
                    for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                        self.receive(&shared, v, now, m.addr, datagram);
                    }
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                for v in viewers.iter_mut().filter(|v| !v.dead && v.timeout <= now) {
                    if let Err(e) = v.rtc.handle_input(Input::Timeout(now)) {
                        v.fail(&shared, format!("timeout input: {e}"));
                        continue;
                    }
                    self.drain(&shared, v);
                }
                next_tick = now + TIMER_TICK;
            }
        }
        viewers.into_iter().map(|v| v.result).collect()
    }

    fn receive(
        &self,
        shared: &Shared,
        v: &mut Viewer,
        now: Instant,
        source: SocketAddr,
        data: &[u8],
    ) {
        if v.dead || data.len() < 2 {
            return;
        }
        let is_rtp = (128..192).contains(&data[0]) && !(192..224).contains(&data[1]);
        if is_rtp && !v.full && v.connected_at.is_some() {
            v.count_rtp(shared, now, data);
            return;
        }
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: v.local,
                contents,
            },
        );
        if is_rtp {
            let c = &shared.counters[v.result.index];
            c.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let Err(e) = v.rtc.handle_input(input) {
            v.fail(shared, format!("input: {e}"));
            return;
        }
        self.drain(shared, v);
    }

    fn drain(&self, shared: &Shared, v: &mut Viewer) {
        loop {
            let out = match v.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    v.fail(shared, format!("poll: {e}"));
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    v.timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    let transmit = Transmit {
                        destination: t.destination,
                        ecn: None,
                        contents: &t.contents,
                        segment_size: None,
                        src_ip: Some(t.source.ip()),
                    };
                    for _ in 0..100 {
                        match self.state.try_send((&self.socket).into(), &transmit) {
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::yield_now()
                            }
                            _ => break,
                        }
                    }
                }
                Output::Event(e) => v.event(shared, e),
            }
        }
    }
}

impl Viewer {
    fn fail(&mut self, shared: &Shared, why: String) {
        if !self.dead {
            self.dead = true;
            shared.counters[self.result.index]
                .failed
                .store(true, Ordering::Relaxed);
            self.result.error = Some(why);
        }
    }

    fn event(&mut self, shared: &Shared, event: Event) {
        let c = &shared.counters[self.result.index];
        match event {
            Event::Connected => {
                let now = Instant::now();
                self.connected_at = Some(now);
                c.connected_ns
                    .store(shared.since_epoch(now), Ordering::Relaxed);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail(shared, "ICE disconnected".into());
            }
            Event::RtpPacket(p) => {
                let pt = *p.header.payload_type as usize;
                let kind = self.kinds.get(pt).copied().unwrap_or_default();
                let seq = p.header.sequence_number;
                match kind {
                    PtKind::Video => {
                        if self.result.first_video_keyframe.is_none() {
                            self.result.first_video_keyframe =
                                Some(h264_keyframe_start(&p.payload));
                        }
                        self.note_video(shared, p.timestamp, seq);
                        if let Some(sent) = shared.log.lookup(&p.payload) {
                            self.result.matched += 1;
                            let after_connect = self.connected_at.is_some_and(|c| sent >= c);
                            if after_connect && shared.measuring.load(Ordering::Relaxed) {
                                let d = p.timestamp.saturating_duration_since(sent);
                                self.result
                                    .delays_us
                                    .push(d.as_micros().min(u32::MAX as u128) as u32);
                            }
                        }
                    }
                    PtKind::Audio => self.note_audio(shared, p.timestamp, seq),
                    PtKind::Rtx => {
                        c.rtx_packets.fetch_add(1, Ordering::Relaxed);
                    }
                    PtKind::Unknown => {}
                }
            }
            _ => {}
        }
    }

    /// The counting path: the RTP header of an SRTP packet, undecrypted.
    fn count_rtp(&mut self, shared: &Shared, now: Instant, data: &[u8]) {
        if data.len() < 12 {
            return;
        }
        let c = &shared.counters[self.result.index];
        c.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let pt = (data[1] & 0x7f) as usize;
        let seq = u16::from_be_bytes([data[2], data[3]]);
        match self.kinds[pt] {
            PtKind::Video => self.note_video(shared, now, seq),
            PtKind::Audio => self.note_audio(shared, now, seq),
            PtKind::Rtx => {
                c.rtx_packets.fetch_add(1, Ordering::Relaxed);
            }
            PtKind::Unknown => {}
        }
    }

    fn note_video(&mut self, shared: &Shared, at: Instant, seq: u16) {
        let c = &shared.counters[self.result.index];
        self.result
            .video
            .push(seq, shared.since_epoch(at) / 1_000_000);
        c.video_packets.fetch_add(1, Ordering::Relaxed);
        if c.first_video_ns.load(Ordering::Relaxed) == 0 {
            c.first_video_ns
                .store(shared.since_epoch(at), Ordering::Relaxed);
        }
    }

    fn note_audio(&mut self, shared: &Shared, at: Instant, seq: u16) {
        let c = &shared.counters[self.result.index];
        self.result
            .audio
            .push(seq, shared.since_epoch(at) / 1_000_000);
        c.audio_packets.fetch_add(1, Ordering::Relaxed);
        if c.first_audio_ns.load(Ordering::Relaxed) == 0 {
            c.first_audio_ns
                .store(shared.since_epoch(at), Ordering::Relaxed);
        }
    }
}

/// Blocks until the socket is readable or `wait` passes.
fn wait_readable(socket: &UdpSocket, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: a 0 ms poll would spin until the tick.
    let ms = wait.as_micros().div_ceil(1_000).min(1_000) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
    }
}

/// Large kernel buffers, so a burst of a thousand viewers' packets is not
/// dropped before the shard reads it (SO_RCVBUFFORCE works as root).
fn set_buffers(socket: &UdpSocket) {
    let size = RECV_BUFFER as libc::c_int;
    let fd = socket.as_raw_fd();
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid fd and an int option value.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_track_counts_gaps_across_wrap() {
        let mut t = SeqTrack::default();
        for s in [65533u16, 65534, 65535, 0, 2, 3] {
            t.push(s, 0);
        }
        assert_eq!(t.gaps, vec![(4, 1, 0)]);
        assert_eq!(t.expected(), 7);
        assert_eq!(t.lost(), 1);
    }

    #[test]
    fn viewer_ips_are_distinct_loopback() {
        let a = viewer_ip(0);
        let b = viewer_ip(249);
        let c = viewer_ip(250);
        assert_eq!(a, Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(b, Ipv4Addr::new(127, 1, 0, 250));
        assert_eq!(c, Ipv4Addr::new(127, 1, 1, 1));
        assert!(viewer_ip(70_000).is_loopback());
    }

    #[test]
    fn pt_kinds_from_answer() {
        let sdp = "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 H264/90000\r\na=rtpmap:97 rtx/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let k = pt_kinds(sdp);
        assert_eq!(k[96], PtKind::Video);
        assert_eq!(k[97], PtKind::Rtx);
        assert_eq!(k[111], PtKind::Audio);
    }
}
