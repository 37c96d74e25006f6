//! The publisher: one real WHIP session (str0m in RTP mode, full ICE as the
//! controlling agent against the ICE-lite server, DTLS active) that loops
//! the pre-encoded clip: every layer's payloads with continuing sequence
//! numbers and timestamps, and a silent Opus frame every 20 ms. Each video
//! payload's send instant goes to the [`SendLog`].

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use crate::http;
use crate::media::{Clip, AUDIO_CLOCK, AUDIO_FRAME_MS, FPS, OPUS_SILENCE, VIDEO_CLOCK};
use crate::sendlog::SendLog;

/// What the publisher did, returned when it stops.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PublisherReport {
    pub video_packets: u64,
    pub audio_packets: u64,
    pub payload_bytes: u64,
    /// Seconds from the WHIP POST to DTLS done.
    pub connect_secs: f64,
    pub keyframe_requests: u64,
}

pub struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<PublisherReport>>>,
    session_url: String,
}

impl Publisher {
    /// Opens the WHIP session and starts sending once connected.
    pub fn start(
        base: &str,
        room: &str,
        key: &str,
        clip: Arc<Clip>,
        log: Arc<SendLog>,
    ) -> Result<Publisher> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("publisher socket")?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        let mut sdp = rtc.sdp_api();
        let mut simulcast = Simulcast::new();
        for layer in &clip.layers {
            simulcast.add_send_layer(SimulcastLayer::new(layer.spec.rid));
        }
        let video = sdp.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("bench".into()),
            Some("video".into()),
            Some(simulcast),
        );
        let audio = sdp.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("bench".into()),
            Some("audio".into()),
            None,
        );
        let (offer, pending) = sdp.apply().ok_or_else(|| anyhow!("no offer"))?;
        let agent = http::agent();
        let session = http::post_offer(
            &agent,
            base,
            &format!("/whip/{room}"),
            Some(key),
            &offer.to_sdp_string(),
            Duration::from_secs(5),
        )
        .context("WHIP publish")?;
        let answer = SdpAnswer::from_sdp_string(&session.answer).context("WHIP answer")?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .context("accepting the WHIP answer")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let mut sender = Sender {
                    rtc,
                    socket,
                    local,
                    clip,
                    log,
                    video,
                    audio,
                    report: PublisherReport::default(),
                    started: now,
                };
                sender.run(&flag)?;
                Ok(sender.report)
            })?;
        Ok(Publisher {
            stop,
            thread: Some(thread),
            session_url: session.url,
        })
    }

    /// Stops sending, ends the WHIP session, and says what was sent.
    pub fn stop(mut self) -> Result<PublisherReport> {
        self.stop.store(true, Ordering::Relaxed);
        let report = match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("publisher thread panicked"))??,
            None => PublisherReport::default(),
        };
        http::delete(&http::agent(), &self.session_url);
        Ok(report)
    }
}

impl Drop for Publisher {
    /// An early return of the run must not leave the sender looping.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Sender {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    clip: Arc<Clip>,
    log: Arc<SendLog>,
    video: Mid,
    audio: Mid,
    report: PublisherReport,
    started: Instant,
}

/// Per-layer position in the loop.
struct LayerState {
    rid: Rid,
    seq: u64,
    timestamp: u32,
}

impl Sender {
    fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        let mut timeout = self.drain_events(&mut connected)?;
        let mut pts: Option<(Pt, Pt)> = None;
        let mut layers: Vec<LayerState> = self
            .clip
            .layers
            .iter()
            .map(|l| LayerState {
                rid: Rid::from(l.spec.rid),
                seq: fastrand::u64(1..30_000),
                timestamp: fastrand::u32(..),
            })
            .collect();
        let mut audio_seq = fastrand::u64(1..30_000);
        let mut audio_ts = fastrand::u32(..);
        let frame_interval = Duration::from_secs_f64(1.0 / FPS as f64);
        let audio_interval = Duration::from_millis(AUDIO_FRAME_MS);
        let (mut next_video, mut next_audio) = (Instant::now(), Instant::now());
        let mut frame = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if !connected && now.duration_since(self.started) > Duration::from_secs(15) {
                return Err(anyhow!("publisher did not connect within 15 s"));
            }
            let mut wake = timeout.min(now + Duration::from_millis(50));
            if connected {
                wake = wake.min(next_video).min(next_audio);
            }
            let wait = wake.saturating_duration_since(now);
            if !wait.is_zero() {
                self.socket
                    .set_read_timeout(Some(wait.max(Duration::from_micros(200))))?;
                match self.socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        if let Ok(contents) = buf[..n].try_into() {
                            let input = Input::Receive(
                                Instant::now(),
                                Receive {
                                    proto: Protocol::Udp,
                                    source,
                                    destination: self.local,
                                    contents,
                                },
                            );
                            self.rtc.handle_input(input)?;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let now = Instant::now();
            if now >= timeout {
                self.rtc.handle_input(Input::Timeout(now))?;
            }
            timeout = self.drain_events(&mut connected)?;
            if !connected {
                continue;
            }
            if pts.is_none() {
                pts = Some(self.payload_types()?);
                self.report.connect_secs = self.started.elapsed().as_secs_f64();
                let (now, mut api) = (Instant::now(), self.rtc.direct_api());
                for l in &layers {
                    if let Some(tx) = api.stream_tx_by_mid(self.video, Some(l.rid)) {
                        tx.set_unpaced(true);
                    }
                }
                if let Some(tx) = api.stream_tx_by_mid(self.audio, None) {
                    tx.set_unpaced(true);
                }
                next_video = now;
                next_audio = now;
            }
            let Some((video_pt, audio_pt)) = pts else {
                continue;
            };
            let now = Instant::now();
            if now >= next_video {
                let clip = self.clip.clone();
                for (state, layer) in layers.iter_mut().zip(&clip.layers) {
                    let f = &layer.frames[frame % layer.frames.len()];
                    let last = f.payloads.len().saturating_sub(1);
                    for (i, payload) in f.payloads.iter().enumerate() {
                        let write = RtpWrite::new(
                            video_pt,
                            state.seq.into(),
                            state.timestamp,
                            now,
                            payload.clone(),
                        )
                        .marker(i == last)
                        .nackable(true);
                        let mut api = self.rtc.direct_api();
                        if let Some(tx) = api.stream_tx_by_mid(self.video, Some(state.rid)) {
                            tx.write_rtp(write);
                        }
                        state.seq += 1;
                        self.report.video_packets += 1;
                        self.report.payload_bytes += payload.len() as u64;
                    }
                    state.timestamp = state.timestamp.wrapping_add(VIDEO_CLOCK / FPS);
                }
                // str0m sends queued packets on its next timeout: give it
                // one now, so the frame leaves at once, and log that instant
                // (the burst's encryption and sends count as forwarding delay).
                // Logged before sending, so no viewer can see a payload
                // before its send instant is known.
                let at = Instant::now();
                for layer in &clip.layers {
                    for payload in &layer.frames[frame % layer.frames.len()].payloads {
                        self.log.record(payload, at);
                    }
                }
                self.rtc.handle_input(Input::Timeout(at))?;
                timeout = self.drain_events(&mut connected)?;
                frame += 1;
                next_video += frame_interval;
                if now > next_video + Duration::from_millis(200) {
                    next_video = now; // we fell behind: do not burst to catch up
                }
            }
            if now >= next_audio {
                let write = RtpWrite::new(
                    audio_pt,
                    audio_seq.into(),
                    audio_ts,
                    now,
                    Arc::<[u8]>::from(&OPUS_SILENCE[..]),
                )
                .marker(false)
                .nackable(false);
                if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(self.audio, None) {
                    tx.write_rtp(write);
                }
                self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                audio_seq += 1;
                audio_ts = audio_ts.wrapping_add(AUDIO_CLOCK / 1000 * AUDIO_FRAME_MS as u32);
                self.report.audio_packets += 1;
                self.report.payload_bytes += OPUS_SILENCE.len() as u64;
                timeout = self.drain_events(&mut connected)?;
                next_audio += audio_interval;
                if now > next_audio + Duration::from_millis(200) {
                    next_audio = now;
                }
            }
        }
        Ok(())
    }

    /// The negotiated H.264 (packetization mode 1) and Opus payload types.
    fn payload_types(&mut self) -> Result<(Pt, Pt)> {
        let find = |rtc: &Rtc, mid: Mid, codec: Codec| -> Option<Pt> {
            let remote = rtc.media(mid)?.remote_pts().to_vec();
            rtc.codec_config()
                .params()
                .iter()
                .filter(|p| remote.contains(&p.pt()) && p.spec().codec == codec)
                .find(|p| codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
                .map(|p| p.pt())
        };
        let video = find(&self.rtc, self.video, Codec::H264)
            .ok_or_else(|| anyhow!("the server accepted no H.264 (packetization-mode=1)"))?;
        let audio =
            find(&self.rtc, self.audio, Codec::Opus).ok_or_else(|| anyhow!("no Opus accepted"))?;
        Ok((video, audio))
    }

    /// Sends what str0m wants sent; returns its next timeout.
    fn drain_events(&mut self, connected: &mut bool) -> Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => *connected = true,
                Output::Event(Event::KeyframeRequest(_)) => {
                    // The clip has a keyframe every GOP; the server's GOP
                    // cache serves new viewers at once.
                    self.report.keyframe_requests += 1;
                }
                Output::Event(_) => {}
            }
        }
    }
}
