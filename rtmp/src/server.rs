//! The live half of the shim: a tokio TCP server that drives one
//! [`ServerSession`] per connection and publishes accepted streams into the
//! SFU as internal publishers, so viewers, the GOP cache, HLS taps and the
//! room API see them like any WHIP publisher.
//!
//! ```text
//! TcpListener ─► accept (connection limit) ─► one task per connection
//!   read (idle / handshake deadlines) ─► ServerSession ─► PublishRequested
//!        keys(stream key) → room? ── no ─► reject_publish(BadName) + warn!, close
//!                                └─ yes ─► accept_publish
//!   first video frame ─► Sfu::publish_internal(room, "rtmp", [H264, Opus])
//!   (no video announced, or 1 s of audio and no video config: audio only)
//!     video: no B-frames ─► H264Packetizer ─► InternalPublisher (passthrough)
//!            B-frames    ─► VideoReencoder thread (openh264) ─► InternalPublisher
//!     audio: AAC ─► AacToOpus ─► InternalPublisher
//!            AAC-LC as it came ─► SourceRegistry (the HLS bridge serves it untouched)
//!   signals: KeyframeWanted ─► re-encoder IDR · Ended ─► close the connection
//! ```
//!
//! A connection that misbehaves (bad bytes, a stalled handshake, a peer that
//! stops sending) is closed; nothing it does reaches another connection or
//! room. Stream keys are never logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sfu::{
    IngestCodec, IngestPacket, IngestSignal, InternalPublisher, Sfu, SourceAudioPublisher,
    SourceRegistry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::amf0::Value;
use crate::flv::AudioSpecificConfig;
use crate::h264::{AvcDecoderConfig, Sps};
use crate::transcode::{AacToOpus, ReencodeConfig, VideoReencoder, VideoTrack};
use crate::{
    AudioEvent, AudioIngest, Event, H264Packetizer, PublishRejection, ServerSession, SessionConfig,
    VideoEvent, VideoFrame, VideoIngest, B_FRAMES_HINT,
};

/// Maps a stream key to the room it publishes into (`None`: unknown key).
/// The binary wires its room directory here.
pub type StreamKeys = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What an accepted RTMP publication appears as in the room API.
pub const INGEST_NAME: &str = "rtmp";

/// A refused publish, for the binary's `publisher.rejected` webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The room the key named, when it named one.
    pub room: Option<String>,
    /// `unknown stream key` or `already live`.
    pub reason: &'static str,
    pub remote_ip: IpAddr,
}

/// Called on every refused publish (never with the stream key).
#[derive(Clone)]
pub struct RejectionHook(pub Arc<dyn Fn(Rejection) + Send + Sync>);

impl std::fmt::Debug for RejectionHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RejectionHook")
    }
}

/// Asked at accept whether a source address may connect at all (false: the
/// connection is closed at once, e.g. an address past the server's limit
/// of failed authentications).
#[derive(Clone)]
pub struct AdmissionHook(pub Arc<dyn Fn(IpAddr) -> bool + Send + Sync>);

impl std::fmt::Debug for AdmissionHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdmissionHook")
    }
}

/// Without a video config after this much audio, a stream is audio-only.
const AUDIO_ONLY_AFTER_MS: u32 = 1000;

/// Whether a stream with no video config yet publishes audio only: its
/// metadata announced no video, or a second of audio came without one. A
/// timestamp before the first (encoders jitter) is no time waited; it used
/// to wrap around to "49 days" and drop the video that followed.
fn audio_only(video_announced: Option<bool>, first_ms: u32, pts_ms: u32) -> bool {
    video_announced == Some(false) || pts_ms.saturating_sub(first_ms) >= AUDIO_ONLY_AFTER_MS
}

/// Tunables of the RTMP server; the defaults run out of the box.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub session: SessionConfig,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections served at once from one source IP address; more from it
    /// are closed at accept, so one host cannot take every slot.
    pub max_connections_per_ip: usize,
    /// From accept to an accepted `publish`: bounds truncated handshakes
    /// and connections that never get to the point.
    pub handshake_timeout: Duration,
    /// No byte from the peer for this long closes the connection.
    pub idle_timeout: Duration,
    /// Opus bitrate of the transcoded audio.
    pub opus_bitrate: i32,
    pub reencode: ReencodeConfig,
    /// Re-encode streams with B-frames (else they pass through and viewers stutter).
    pub reencode_b_frames: bool,
    /// Where the encoder's original AAC-LC is offered while it publishes
    /// (the HLS bridge serves it untouched); `None`: not offered.
    pub sources: Option<SourceRegistry>,
    /// Told about every refused publish.
    pub on_rejected: Option<RejectionHook>,
    /// Asked about every new connection; `None`: all are admitted.
    pub admit: Option<AdmissionHook>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            session: SessionConfig::default(),
            max_connections: 64,
            max_connections_per_ip: 8,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            opus_bitrate: 96_000,
            reencode: ReencodeConfig::default(),
            reencode_b_frames: true,
            sources: None,
            on_rejected: None,
            admit: None,
        }
    }
}

/// Serves RTMP publishers on `listener` until the task is dropped, with the
/// default [`ServerConfig`].
pub async fn serve(listener: TcpListener, sfu: Sfu, keys: StreamKeys) {
    serve_with(listener, sfu, keys, ServerConfig::default()).await
}

/// Serves RTMP publishers on `listener` until the task is dropped.
pub async fn serve_with(listener: TcpListener, sfu: Sfu, keys: StreamKeys, config: ServerConfig) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = PerIp::default();
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("RTMP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if config.admit.as_ref().is_some_and(|a| !(a.0)(peer.ip())) {
            debug!(%peer, "RTMP connection refused: this address is blocked for now");
            continue; // dropping `sock` closes it
        }
        let Some(ip_slot) = per_ip.acquire(peer.ip(), config.max_connections_per_ip) else {
            debug!(%peer, "RTMP connection refused: {} connections open from this address", config.max_connections_per_ip);
            continue; // dropping `sock` closes it
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "RTMP connection refused: {} connections open", config.max_connections);
            continue;
        };
        let (sfu, keys, config) = (sfu.clone(), keys.clone(), config.clone());
        tokio::spawn(async move {
            let _slot = (slot, ip_slot);
            let _ = sock.set_nodelay(true);
            let mut conn = Connection::new(peer, sfu, keys, config);
            let result = conn.run(sock).await;
            if let Some(dropped) = conn
                .reencoder
                .as_ref()
                .map(|r| r.dropped())
                .filter(|d| *d > 0)
            {
                warn!(%peer, dropped, "the B-frame re-encoder dropped frames: the machine could not keep up");
            }
            match result {
                Ok(()) if conn.room.is_some() => {
                    info!(%peer, room = conn.room.as_deref().unwrap_or(""), "RTMP connection closed by the encoder")
                }
                Ok(()) => debug!(%peer, "RTMP connection closed"),
                Err(why) if conn.room.is_some() => {
                    info!(%peer, room = conn.room.as_deref().unwrap_or(""), "RTMP connection ended: {why}")
                }
                Err(why) => debug!(%peer, "RTMP connection dropped: {why}"),
            }
        });
    }
}

/// The address a connection counts against: itself for IPv4 (and IPv4
/// mapped into IPv6), its /64 for IPv6, since one host or home network
/// usually holds a whole /64 and could otherwise open connections from
/// as many addresses as it likes.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
        v4 => v4,
    }
}

/// Open connections per source address (per /64 for IPv6, see [`source_key`]).
#[derive(Clone, Default)]
struct PerIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in [`PerIp`]; released when dropped.
struct IpSlot {
    table: PerIp,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(&self, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let ip = source_key(ip);
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let open = table.entry(ip).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = table.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// The SDP `profile-level-id` a room offers viewers for this SPS.
///
/// str0m matches H.264 by exact profile (RFC 6184 §8.2.2), and browsers
/// offer constrained baseline and main (Chromium 42e01f/42001f/4d001f,
/// Firefox 42e01f/42001f, Safari 42e01f/640c1f): a High stream (x264's
/// default, 64001f) announced as High would give most viewers no video at
/// all. Every browser's software H.264 decoder decodes High, so a stream
/// that is not constrained baseline or main is announced as constrained
/// baseline at its own level. The bitstream is untouched; HLS reads the real
/// profile from the SPS.
pub fn advertised_profile_level_id(sps: &Sps) -> u32 {
    let level = sps.level_idc as u32;
    match sps.profile_idc {
        66 | 77 => ((sps.profile_idc as u32) << 16) | ((sps.constraint_flags as u32) << 8) | level,
        _ => 0x42e000 | level,
    }
}

/// One RTMP connection's state above the session: what it publishes where.
struct Connection {
    peer: SocketAddr,
    sfu: Sfu,
    keys: StreamKeys,
    config: Arc<ServerConfig>,
    session: ServerSession,
    /// Set once `publish` is accepted.
    room: Option<String>,
    publisher: Option<Arc<InternalPublisher>>,
    signals: Option<mpsc::UnboundedReceiver<IngestSignal>>,
    video: VideoIngest,
    audio: AudioIngest,
    video_events: Vec<VideoEvent>,
    avc: Option<(AvcDecoderConfig, Sps)>,
    b_frames: bool,
    /// The passthrough path's packetizer and track (None once re-encoding).
    packetizer: H264Packetizer,
    video_track: Option<VideoTrack>,
    reencoder: Option<VideoReencoder>,
    aac: Option<AacToOpus>,
    /// The AAC config, kept to offer the original audio to the HLS bridge.
    aac_config: Option<AudioSpecificConfig>,
    source_audio: Option<SourceAudioPublisher>,
    /// The Opus track's index in the publication.
    audio_track: usize,
    /// What `onMetaData` said: `Some(false)` when it announced no video.
    video_announced: Option<bool>,
    first_audio_ms: Option<u32>,
    audio_seq: u64,
    rtp: Vec<crate::RtpPayload>,
    bad_video_tags: u64,
    /// The encoder unpublished: media that still arrives is ignored.
    finished: bool,
}

impl Connection {
    fn new(peer: SocketAddr, sfu: Sfu, keys: StreamKeys, config: Arc<ServerConfig>) -> Self {
        let mut session_config = config.session.clone();
        session_config.handshake_seed ^= handshake_salt(peer);
        Connection {
            peer,
            sfu,
            keys,
            session: ServerSession::new(session_config),
            config,
            room: None,
            publisher: None,
            signals: None,
            video: VideoIngest::default(),
            audio: AudioIngest::default(),
            video_events: Vec::new(),
            avc: None,
            b_frames: false,
            packetizer: H264Packetizer::default(),
            video_track: None,
            reencoder: None,
            aac: None,
            aac_config: None,
            source_audio: None,
            audio_track: 1,
            video_announced: None,
            first_audio_ms: None,
            audio_seq: 0,
            rtp: Vec::new(),
            bad_video_tags: 0,
            finished: false,
        }
    }

    async fn run(&mut self, mut sock: TcpStream) -> Result<(), String> {
        let handshake_deadline = Instant::now() + self.config.handshake_timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let deadline = if self.room.is_some() {
                Instant::now() + self.config.idle_timeout
            } else {
                handshake_deadline.min(Instant::now() + self.config.idle_timeout)
            };
            let signals = &mut self.signals;
            let signal = async {
                match signals {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = tokio::time::timeout_at(deadline, sock.read(&mut buf)) => {
                    let n = match read {
                        Err(_) if self.room.is_some() => return Err("no data from the encoder (idle timeout)".into()),
                        Err(_) => return Err("no publish before the handshake timeout".into()),
                        Ok(Ok(0)) => return Ok(()),
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => return Err(format!("read: {e}")),
                    };
                    let input = self.session.handle_input(&buf[..n]);
                    let events = self.drain_events().await;
                    self.flush(&mut sock).await?;
                    input.map_err(|e| format!("malformed input: {e}"))?;
                    events?;
                    if self.session.is_closed() {
                        return Ok(());
                    }
                }
                signal = signal => match signal {
                    Some(IngestSignal::KeyframeWanted) => {
                        if let Some(r) = &self.reencoder {
                            r.keyframe();
                        }
                    }
                    Some(IngestSignal::Ended) | None => return Err("ended by the room (kicked, key rotated or room closed)".into()),
                },
            }
        }
    }

    async fn flush(&mut self, sock: &mut TcpStream) -> Result<(), String> {
        while let Some(bytes) = self.session.poll_transmit() {
            sock.write_all(&bytes)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        Ok(())
    }

    async fn drain_events(&mut self) -> Result<(), String> {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::PublishRequested { app, stream_key } => {
                    self.on_publish(&app, &stream_key).await;
                }
                Event::Video { timestamp, data } => {
                    let mut events = std::mem::take(&mut self.video_events);
                    events.clear();
                    if let Err(e) = self.video.push(timestamp, &data, &mut events) {
                        // One bad tag is the encoder's problem, not a reason
                        // to cut a live show; a stream of them is.
                        self.bad_video_tags += 1;
                        debug!(peer = %self.peer, "bad video tag: {e}");
                        if self.bad_video_tags > 100 {
                            return Err(format!("too many malformed video tags ({e})"));
                        }
                    }
                    for event in events.drain(..) {
                        self.on_video(event).await?;
                    }
                    self.video_events = events;
                }
                Event::Audio { timestamp, data } => match self.audio.push(timestamp, &data) {
                    Ok(Some(event)) => self.on_audio(event).await?,
                    Ok(None) => {}
                    Err(e) => debug!(peer = %self.peer, "bad audio tag: {e}"),
                },
                Event::PublishFinished => {
                    // The encoder stopped: end the publication now, not at TCP close.
                    self.reencoder = None;
                    self.video_track = None;
                    self.publisher = None;
                    self.source_audio = None;
                    self.signals = None;
                    self.finished = true;
                }
                Event::Metadata(props) => {
                    // ffmpeg and OBS list `videocodecid` only when they send video.
                    if self.video_announced.is_none() {
                        self.video_announced = Some(props.iter().any(|(k, v)| {
                            k == "videocodecid" && !matches!(v, Value::Null | Value::Undefined)
                        }));
                    }
                }
                Event::Connected { .. } => {}
            }
        }
        Ok(())
    }

    async fn on_publish(&mut self, app: &str, stream_key: &str) {
        // OBS and others may append a query (`key?token=…`) to the stream name.
        let key = stream_key.split('?').next().unwrap_or_default();
        let Some(room) = (self.keys)(key) else {
            warn!(peer = %self.peer, app, "RTMP publish refused: unknown stream key");
            self.rejected(None, "unknown stream key");
            let _ = self
                .session
                .reject_publish(PublishRejection::BadName, "Unknown stream key.");
            return;
        };
        if self.sfu.is_live(&room).await {
            warn!(peer = %self.peer, room, "RTMP publish refused: the room already has a publisher");
            self.rejected(Some(room), "already live");
            let _ = self.session.reject_publish(
                PublishRejection::BadName,
                "This stream key is already live.",
            );
            return;
        }
        if self.session.accept_publish().is_ok() {
            info!(peer = %self.peer, room, "RTMP publish accepted");
            self.room = Some(room);
        }
    }

    fn rejected(&self, room: Option<String>, reason: &'static str) {
        if let Some(hook) = &self.config.on_rejected {
            (hook.0)(Rejection {
                room,
                reason,
                remote_ip: self.peer.ip(),
            });
        }
    }

    async fn on_video(&mut self, event: VideoEvent) -> Result<(), String> {
        match event {
            VideoEvent::Config { config, sps } => {
                if let Some(why) = sps.webrtc_incompatibility() {
                    warn!(peer = %self.peer, "the video cannot be decoded by browsers as sent ({why}): re-encoding it");
                    self.b_frames = true;
                }
                self.packetizer.set_config(&config);
                self.avc = Some((config, sps));
            }
            VideoEvent::BFramesDetected => {
                warn!(peer = %self.peer, room = self.room.as_deref().unwrap_or(""), "{B_FRAMES_HINT}");
                self.b_frames = true;
            }
            VideoEvent::Frame(frame) => self.on_video_frame(frame).await?,
            VideoEvent::Unsupported(codec) => {
                warn!(peer = %self.peer, "RTMP video codec {codec:?} is not supported (H.264 only): its frames are dropped");
            }
        }
        Ok(())
    }

    async fn on_video_frame(&mut self, frame: VideoFrame) -> Result<(), String> {
        if self.finished {
            return Ok(());
        }
        if self.publisher.is_none() && self.avc.is_some() {
            self.start_publication().await?;
        }
        if self.b_frames && self.reencoder.is_none() && self.config.reencode_b_frames {
            if let Some(track) = self.video_track.take() {
                match VideoReencoder::start(track, self.config.reencode) {
                    Ok(r) => self.reencoder = Some(r),
                    Err(e) => return Err(format!("cannot start the re-encoder thread: {e}")),
                }
            }
        }
        if let Some(r) = &mut self.reencoder {
            r.push(frame, self.avc.as_ref().map(|(c, _)| c));
            return Ok(());
        }
        let Some(track) = &mut self.video_track else {
            return Ok(());
        };
        self.rtp.clear();
        match self
            .packetizer
            .packetize(frame.data, frame.rtp_timestamp, &mut self.rtp)
        {
            Ok(()) => track.send(&mut self.rtp),
            Err(e) => debug!(peer = %self.peer, "video frame dropped: {e}"),
        }
        Ok(())
    }

    async fn on_audio(&mut self, event: AudioEvent) -> Result<(), String> {
        match event {
            AudioEvent::Config(config) => {
                if self.publisher.is_some() && self.aac.is_none() {
                    // Tracks are fixed at publication; audio announced late is not carried.
                    debug!(peer = %self.peer, "AAC config after the publication started: audio ignored");
                    return Ok(());
                }
                if self.source_audio.is_some() && self.aac_config.as_ref() != Some(&config) {
                    // The HLS audio was announced with the old rate and
                    // channels: stop offering the original rather than mislabel it.
                    warn!(peer = %self.peer, "the AAC configuration changed mid-stream: HLS audio stops until the encoder republishes");
                    self.source_audio = None;
                }
                match AacToOpus::new(&config, self.config.opus_bitrate) {
                    Ok(t) => self.aac = Some(t),
                    Err(e) => {
                        warn!(peer = %self.peer, "RTMP audio is not carried: {e}");
                        self.aac = None;
                    }
                }
                self.aac_config = Some(config);
            }
            AudioEvent::Frame(frame) => {
                if self.publisher.is_none() && !self.finished && self.aac.is_some() {
                    let first = *self.first_audio_ms.get_or_insert(frame.pts_ms);
                    if self.avc.is_none() && audio_only(self.video_announced, first, frame.pts_ms) {
                        self.start_publication().await?;
                    }
                }
                if let Some(source) = &self.source_audio {
                    source.send(frame.pts_ms, &frame.data);
                }
                let (Some(aac), Some(publisher)) = (&mut self.aac, &self.publisher) else {
                    return Ok(());
                };
                let seq = &mut self.audio_seq;
                let track = self.audio_track;
                aac.push(frame.pts_ms, &frame.data, |timestamp, opus| {
                    publisher.send(
                        track,
                        IngestPacket {
                            seq_no: *seq,
                            timestamp,
                            marker: false,
                            payload: Arc::from(opus),
                        },
                    );
                    *seq += 1;
                });
            }
            AudioEvent::Unsupported(codec) => {
                warn!(peer = %self.peer, "RTMP audio codec {codec:?} is not supported (AAC-LC only): video only");
            }
        }
        Ok(())
    }

    /// Joins the room once the first frame shows what the tracks are.
    async fn start_publication(&mut self) -> Result<(), String> {
        let Some(room) = self.room.clone() else {
            return Err("media before an accepted publish".into());
        };
        let mut tracks = Vec::new();
        let video = match &self.avc {
            Some((_, sps)) => {
                let profile_level_id = if self.b_frames && self.config.reencode_b_frames {
                    0x42e000 | sps.level_idc as u32 // openh264 writes constrained baseline
                } else {
                    advertised_profile_level_id(sps)
                };
                tracks.push(IngestCodec::H264 { profile_level_id });
                format!(
                    "H.264 {}x{} {}",
                    sps.width,
                    sps.height,
                    sps.profile_level_id()
                )
            }
            None if self.aac.is_some() => "none".to_owned(),
            None => return Ok(()),
        };
        if self.aac.is_some() {
            // RFC 7587: Opus is always `opus/48000/2` in SDP, whatever the
            // stream holds (a mono stream's packets say so themselves), and
            // browsers match on it: announcing 1 channel would lose the audio.
            self.audio_track = tracks.len();
            tracks.push(IngestCodec::Opus { channels: 2 });
        }
        // Offered before the room goes live, so that the HLS bridge finds
        // it when it sees the publish.
        if let (Some(sources), Some(c)) = (&self.config.sources, &self.aac_config) {
            if let Some(channels) = c.channels().filter(|_| c.object_type == 2) {
                self.source_audio = Some(sources.publish_audio(
                    &room,
                    &c.raw,
                    c.object_type,
                    c.sample_rate,
                    channels,
                ));
            }
        }
        let mut publisher = self
            .sfu
            .publish_internal(&room, INGEST_NAME, tracks)
            .await
            .map_err(|e| format!("the room refused the publication: {e}"))?;
        let (_, dummy) = mpsc::unbounded_channel();
        self.signals = Some(std::mem::replace(&mut publisher.signals, dummy));
        let publisher = Arc::new(publisher);
        info!(
            peer = %self.peer,
            room,
            session = publisher.session(),
            video,
            audio = match (&self.aac, &self.source_audio) {
                (Some(_), Some(_)) => "AAC → Opus; AAC as it came for HLS",
                (Some(_), None) => "AAC → Opus",
                _ => "none",
            },
            b_frames = self.b_frames,
            "RTMP publication started"
        );
        if self.avc.is_some() {
            self.video_track = Some(VideoTrack {
                publisher: publisher.clone(),
                index: 0,
                next_seq: 0,
            });
        }
        self.publisher = Some(publisher);
        Ok(())
    }
}

/// Per-connection salt for the S1 filler bytes (not a secret, only unpredictable).
fn handshake_salt(peer: SocketAddr) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ peer.port() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sps(profile_idc: u8, constraint_flags: u8, level_idc: u8) -> Sps {
        let mut s = Sps::parse(&[
            0x67, 0x64, 0x00, 0x1e, 0xac, 0xb2, 0x01, 0x40, 0x5f, 0xf2, 0xe0, 0x22, 0x00, 0x00,
            0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x2c, 0x5c, 0x90,
        ])
        .unwrap();
        s.profile_idc = profile_idc;
        s.constraint_flags = constraint_flags;
        s.level_idc = level_idc;
        s
    }

    #[test]
    fn connections_count_per_address_and_per_ipv6_64() {
        let table = PerIp::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Two addresses of one /64 share its limit; another /64 has its own.
        let a = table.acquire(ip("2001:db8:1:2::10"), 2).unwrap();
        let b = table.acquire(ip("2001:db8:1:2:ffff::1"), 2).unwrap();
        assert!(table.acquire(ip("2001:db8:1:2::99"), 2).is_none());
        assert!(table.acquire(ip("2001:db8:1:3::10"), 2).is_some());
        // IPv4, and IPv4 mapped into IPv6, count per address.
        let c = table.acquire(ip("192.0.2.1"), 1).unwrap();
        assert!(table.acquire(ip("::ffff:192.0.2.1"), 1).is_none());
        assert!(table.acquire(ip("192.0.2.2"), 1).is_some());
        // A closed connection frees its place.
        drop((a, c));
        assert!(table.acquire(ip("2001:db8:1:2::99"), 2).is_some());
        assert!(table.acquire(ip("192.0.2.1"), 1).is_some());
        drop(b);
    }

    #[test]
    fn audio_only_after_a_second_of_audio_or_when_no_video_is_announced() {
        assert!(!audio_only(None, 5_000, 5_999));
        assert!(audio_only(None, 5_000, 6_000));
        assert!(audio_only(Some(false), 5_000, 5_000));
        assert!(!audio_only(Some(true), 5_000, 5_500));
        // A frame a little before the first is not 49 days later.
        assert!(!audio_only(None, 5_000, 4_977));
        assert!(!audio_only(Some(true), 5_000, 4_977));
    }

    #[test]
    fn high_profile_is_offered_as_constrained_baseline() {
        assert_eq!(advertised_profile_level_id(&sps(100, 0, 0x1f)), 0x42e01f);
        assert_eq!(advertised_profile_level_id(&sps(100, 0, 0x28)), 0x42e028);
        assert_eq!(advertised_profile_level_id(&sps(66, 0xc0, 0x1e)), 0x42c01e);
        assert_eq!(advertised_profile_level_id(&sps(77, 0x40, 0x1f)), 0x4d401f);
    }
}
