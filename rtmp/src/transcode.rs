//! The two transcodes the live server may need, kept off the connection's
//! read loop where they cost real CPU:
//!
//! ```text
//! AAC frames ─► AacToOpus (symphonia AAC-LC decode ─► linear resample to 48 kHz ─► opus-rs, 20 ms)
//!                 └─► Opus payloads with 48 kHz RTP timestamps          (inline: ≈ 1 % of a core)
//!
//! AVCC frames with B-frames ─► VideoReencoder thread
//!     avcc_to_annex_b ─► openh264 decode (display order) ─► openh264 encode (no B-frames)
//!       ─► packetize_annex_b ─► InternalPublisher::send              (its own OS thread)
//! ```
//!
//! Both are pure Rust or bundled C/C++ (openh264): no cmake, no system
//! libraries. Neither ever panics on what a peer sent: a frame that does not
//! decode is dropped (and the re-encoder waits for the next keyframe).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openh264::decoder::{DecodeOptions, Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, RateControlMode, UsageType,
};
use openh264::{OpenH264API, Timestamp};
use sfu::{IngestPacket, InternalPublisher};
use symphonia_core::audio::SampleBuffer;
use symphonia_core::codecs::{CodecParameters, Decoder as _, DecoderOptions, CODEC_TYPE_AAC};
use symphonia_core::formats::Packet;
use tracing::{debug, info, warn};

use crate::flv::AudioSpecificConfig;
use crate::h264::{avcc_to_annex_b, AvcDecoderConfig};
use crate::{H264Packetizer, RtpPayload, VideoFrame};

/// Opus at 48 kHz, 20 ms per packet (what browsers send and expect).
pub const OPUS_RATE: u32 = 48_000;
const OPUS_FRAME: usize = 960;
/// An AAC timestamp this far from the running sample clock restarts it
/// (the encoder paused, or its clock jumped).
const AUDIO_RESYNC_MS: i64 = 200;

/// AAC-LC (mono or stereo, any rate) → Opus 48 kHz packets.
pub struct AacToOpus {
    decoder: symphonia_codec_aac::AacDecoder,
    resampler: Resampler,
    encoder: opus_rs::OpusEncoder,
    channels: usize,
    in_rate: u32,
    /// Interleaved 48 kHz samples waiting for a full 20 ms frame.
    pending: Vec<f32>,
    resampled: Vec<f32>,
    samples: Option<SampleBuffer<f32>>,
    /// RTP timestamp of `pending[0]`, and the AAC clock it was derived from.
    next_ts: Option<u32>,
    origin_ms: i64,
    in_samples: u64,
    out: Vec<u8>,
}

/// Why the audio cannot be transcoded (the publication goes on video only).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AudioUnsupported(String);

impl AacToOpus {
    pub fn new(config: &AudioSpecificConfig, bitrate: i32) -> Result<Self, AudioUnsupported> {
        if config.object_type != 2 {
            return Err(AudioUnsupported(format!(
                "AAC object type {} (only AAC-LC is decoded; set the encoder to AAC-LC)",
                config.object_type
            )));
        }
        let channels = match config.channels() {
            Some(c @ 1..=2) => c as usize,
            _ => {
                return Err(AudioUnsupported(format!(
                    "AAC channel configuration {} (mono or stereo only)",
                    config.channel_config
                )))
            }
        };
        let mut params = CodecParameters::new();
        params
            .for_codec(CODEC_TYPE_AAC)
            .with_extra_data(config.raw.to_vec().into_boxed_slice());
        let decoder =
            <symphonia_codec_aac::AacDecoder as symphonia_core::codecs::Decoder>::try_new(
                &params,
                &DecoderOptions::default(),
            )
            .map_err(|e| AudioUnsupported(format!("AAC decoder: {e}")))?;
        let mut encoder =
            opus_rs::OpusEncoder::new(OPUS_RATE as i32, channels, opus_rs::Application::Audio)
                .map_err(|e| AudioUnsupported(format!("Opus encoder: {e}")))?;
        encoder.bitrate_bps = bitrate;
        Ok(AacToOpus {
            decoder,
            resampler: Resampler::new(config.sample_rate, channels),
            encoder,
            channels,
            in_rate: config.sample_rate,
            pending: Vec::new(),
            resampled: Vec::new(),
            samples: None,
            next_ts: None,
            origin_ms: 0,
            in_samples: 0,
            out: vec![0; 1500],
        })
    }

    pub fn channels(&self) -> u8 {
        self.channels as u8
    }

    /// Decodes one raw AAC frame and calls `emit(rtp_timestamp, opus)` for
    /// every 20 ms Opus packet it completes. A frame that does not decode is
    /// dropped (a short gap in the sound, nothing worse).
    pub fn push(&mut self, pts_ms: u32, aac: &[u8], mut emit: impl FnMut(u32, &[u8])) {
        let pts_ms = pts_ms as i64;
        let expected = self.origin_ms + (self.in_samples * 1000 / self.in_rate as u64) as i64;
        if self.next_ts.is_none() || (pts_ms - expected).abs() > AUDIO_RESYNC_MS {
            self.pending.clear();
            self.resampler.reset();
            self.origin_ms = pts_ms;
            self.in_samples = 0;
            self.next_ts = Some((pts_ms * (OPUS_RATE as i64 / 1000)) as u32);
        }
        let packet = Packet::new_from_slice(0, 0, 0, aac);
        let decoded = match self.decoder.decode(&packet) {
            Ok(d) => d,
            Err(e) => {
                debug!("AAC frame dropped: {e}");
                return;
            }
        };
        let frames = decoded.frames();
        let spec = *decoded.spec();
        let samples = match &mut self.samples {
            Some(s) if s.capacity() >= frames * spec.channels.count() => s,
            slot => slot.insert(SampleBuffer::new(frames.max(2048) as u64, spec)),
        };
        samples.copy_interleaved_ref(decoded);
        self.in_samples += frames as u64;
        self.resampled.clear();
        self.resampler
            .process(samples.samples(), &mut self.resampled);
        self.pending.extend_from_slice(&self.resampled);
        let per_packet = OPUS_FRAME * self.channels;
        let mut start = 0;
        while self.pending.len() - start >= per_packet {
            let frame = &self.pending[start..start + per_packet];
            start += per_packet;
            let ts = self.next_ts.unwrap_or(0);
            self.next_ts = Some(ts.wrapping_add(OPUS_FRAME as u32));
            match self.encoder.encode(frame, OPUS_FRAME, &mut self.out) {
                Ok(n) if n > 0 => emit(ts, &self.out[..n]),
                Ok(_) => {}
                Err(e) => debug!("Opus encode failed: {e}"),
            }
        }
        self.pending.drain(..start);
    }
}

/// Linear-interpolation resampler to 48 kHz. Upsampling from 44.1 kHz (the
/// common RTMP case) needs no anti-aliasing filter; downsampling from higher
/// rates would alias above 24 kHz, which is out of hearing.
struct Resampler {
    /// Input frames per output frame.
    step: f64,
    channels: usize,
    /// Position of the next output frame, in input frames, where -1 is
    /// `prev` (the last frame of the previous call).
    pos: f64,
    prev: Vec<f32>,
    passthrough: bool,
}

impl Resampler {
    fn new(in_rate: u32, channels: usize) -> Self {
        Resampler {
            step: in_rate as f64 / OPUS_RATE as f64,
            channels,
            pos: 0.0,
            prev: vec![0.0; channels],
            passthrough: in_rate == OPUS_RATE,
        }
    }

    fn reset(&mut self) {
        self.pos = 0.0;
        self.prev.iter_mut().for_each(|s| *s = 0.0);
    }

    fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.passthrough {
            out.extend_from_slice(input);
            return;
        }
        let ch = self.channels;
        let n = input.len() / ch;
        if n == 0 {
            return;
        }
        let frame = |i: isize, c: usize| -> f32 {
            if i < 0 {
                self.prev[c]
            } else {
                input[i as usize * ch + c]
            }
        };
        while self.pos < (n - 1) as f64 {
            let i = self.pos.floor();
            let frac = (self.pos - i) as f32;
            let i = i as isize;
            for c in 0..ch {
                let a = frame(i, c);
                let b = frame(i + 1, c);
                out.push(a + (b - a) * frac);
            }
            self.pos += self.step;
        }
        self.pos -= n as f64;
        self.prev.copy_from_slice(&input[(n - 1) * ch..n * ch]);
    }
}

/// One video track's RTP sequence numbers, shared by whichever path (the
/// passthrough or the re-encoder) owns the track at the moment.
pub struct VideoTrack {
    pub publisher: Arc<InternalPublisher>,
    pub index: usize,
    pub next_seq: u64,
}

impl VideoTrack {
    /// Sends one access unit's payloads. Copies each payload into the
    /// `Arc<[u8]>` the SFU shares across viewers (one allocation per packet,
    /// at publisher rate, not per viewer).
    pub fn send(&mut self, payloads: &mut Vec<RtpPayload>) {
        for p in payloads.drain(..) {
            self.publisher.send(
                self.index,
                IngestPacket {
                    seq_no: self.next_seq,
                    timestamp: p.timestamp,
                    marker: p.marker,
                    payload: Arc::from(&p.payload[..]),
                },
            );
            self.next_seq += 1;
        }
    }
}

/// Tunables of the B-frame re-encode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReencodeConfig {
    pub bitrate: u32,
    /// Frames queued for the re-encoder before input is dropped up to the
    /// next keyframe (the machine cannot keep up).
    pub queue_frames: usize,
    /// At most one keyframe forced for viewers per this interval.
    pub min_keyframe_interval: Duration,
}

impl Default for ReencodeConfig {
    fn default() -> Self {
        ReencodeConfig {
            bitrate: 2_500_000,
            queue_frames: 10,
            min_keyframe_interval: Duration::from_secs(1),
        }
    }
}

enum Job {
    Frame {
        frame: VideoFrame,
        /// SPS/PPS to put before a keyframe.
        config: Option<AvcDecoderConfig>,
    },
    Keyframe,
}

/// Handle of a running re-encoder thread; dropping it stops the thread
/// (which then drops its share of the publisher).
pub struct VideoReencoder {
    jobs: SyncSender<Job>,
    /// The queue overflowed: drop frames until the next keyframe.
    skipping: bool,
    dropped: u64,
}

impl VideoReencoder {
    pub fn start(track: VideoTrack, config: ReencodeConfig) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel(config.queue_frames.max(1));
        std::thread::Builder::new()
            .name("rtmp-reencode".into())
            .spawn(move || reencode(rx, track, config))?;
        Ok(VideoReencoder {
            jobs,
            skipping: false,
            dropped: 0,
        })
    }

    /// Queues one frame (`config` for keyframes); never blocks the caller.
    pub fn push(&mut self, frame: VideoFrame, config: Option<&AvcDecoderConfig>) {
        if self.skipping && !frame.keyframe {
            self.dropped += 1;
            return;
        }
        let job = Job::Frame {
            config: config.filter(|_| frame.keyframe).cloned(),
            frame,
        };
        match self.jobs.try_send(job) {
            Ok(()) => self.skipping = false,
            Err(TrySendError::Full(_)) => {
                if !self.skipping {
                    warn!("the B-frame re-encoder cannot keep up: dropping frames up to the next keyframe");
                }
                self.skipping = true;
                self.dropped += 1;
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A viewer wants a keyframe: the re-encoder makes one (rate-limited).
    pub fn keyframe(&self) {
        let _ = self.jobs.try_send(Job::Keyframe);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Bound on frames waiting in the decoder's reorder buffer (H.264 allows 16).
const MAX_REORDER: usize = 16;

fn reencode(jobs: Receiver<Job>, mut track: VideoTrack, config: ReencodeConfig) {
    // No flush after each frame: the decoder must hold frames back to
    // return them in display order, which is the order we re-encode in.
    let decoder = Decoder::with_api_config(
        OpenH264API::from_source(),
        DecoderConfig::new().flush_after_decode(Flush::NoFlush),
    );
    let encoder = Encoder::with_api_config(
        OpenH264API::from_source(),
        EncoderConfig::new()
            .bitrate(BitRate::from_bps(config.bitrate))
            .max_frame_rate(FrameRate::from_hz(60.0))
            .rate_control_mode(RateControlMode::Bitrate)
            .usage_type(UsageType::CameraVideoRealTime)
            // Low: about half the CPU of Medium at 720p; the source was
            // already compressed once, fine detail is gone anyway.
            .complexity(Complexity::Low)
            .skip_frames(false),
    );
    let (mut decoder, mut encoder) = match (decoder, encoder) {
        (Ok(d), Ok(e)) => (d, e),
        (Err(e), _) | (_, Err(e)) => {
            warn!("openh264 did not start ({e}): the B-frame stream is not re-encoded");
            return;
        }
    };
    // Decode-order inputs waiting for their picture: (PTS, RTP timestamp, keyframe).
    let mut waiting: BinaryHeap<Reverse<(i64, u32, bool)>> = BinaryHeap::new();
    let mut annex_b = Vec::new();
    let mut packetizer = H264Packetizer::default();
    let mut rtp = Vec::new();
    let mut want_keyframe = false;
    let mut last_forced: Option<Instant> = None;
    let mut synced = false;
    let mut stats = ReencodeStats::default();
    for job in jobs {
        let started = Instant::now();
        let (frame, parameter_sets) = match job {
            Job::Keyframe => {
                want_keyframe = true;
                continue;
            }
            Job::Frame { frame, config } => (frame, config),
        };
        if !synced && !frame.keyframe {
            continue; // nothing decodes before the first keyframe
        }
        annex_b.clear();
        if avcc_to_annex_b(
            &frame.data,
            frame.nalu_length_size,
            parameter_sets.as_ref(),
            &mut annex_b,
        )
        .is_err()
        {
            synced = false;
            continue;
        }
        synced = true;
        waiting.push(Reverse((frame.pts_ms, frame.rtp_timestamp, frame.keyframe)));
        let picture = match decoder.decode_with_options(
            &annex_b,
            DecodeOptions::new().flush_after_decode(Flush::NoFlush),
        ) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                debug!("re-encoder: frame did not decode: {e}");
                synced = false;
                waiting.clear();
                continue;
            }
        };
        while waiting.len() > MAX_REORDER {
            waiting.pop();
        }
        let Some(Reverse((pts, timestamp, keyframe))) = waiting.pop() else {
            continue;
        };
        // The source's keyframes stay keyframes (HLS segments and the GOP
        // cache follow the encoder's GOP); viewers' requests add some.
        let forced = want_keyframe
            && last_forced.is_none_or(|t| t.elapsed() >= config.min_keyframe_interval);
        if keyframe || forced {
            encoder.force_intra_frame();
            want_keyframe = false;
            if forced {
                last_forced = Some(Instant::now());
            }
        }
        let encoded = match encoder.encode_at(&picture, Timestamp::from_millis(pts.max(0) as u64)) {
            Ok(b) => b.to_vec(),
            Err(e) => {
                debug!("re-encoder: encode failed: {e}");
                continue;
            }
        };
        if encoded.is_empty() {
            continue;
        }
        rtp.clear();
        if packetizer
            .packetize_annex_b(Bytes::from(encoded), timestamp, &mut rtp)
            .is_ok()
        {
            track.send(&mut rtp);
        }
        stats.add(started.elapsed());
    }
    if stats.frames > 0 {
        info!(
            frames = stats.frames,
            mean_ms = format_args!(
                "{:.1}",
                stats.total.as_secs_f64() * 1000.0 / stats.frames as f64
            ),
            max_ms = stats.max.as_millis() as u64,
            "B-frame re-encode ended"
        );
    }
}

/// Time the re-encoder spent per frame (decode + encode + packetize).
#[derive(Default)]
struct ReencodeStats {
    frames: u64,
    total: Duration,
    max: Duration,
}

impl ReencodeStats {
    fn add(&mut self, d: Duration) {
        self.frames += 1;
        self.total += d;
        self.max = self.max.max(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampler_keeps_rate_and_continuity() {
        let mut r = Resampler::new(44_100, 1);
        let mut out = Vec::new();
        // 1 s of a ramp in 1024-sample chunks.
        let input: Vec<f32> = (0..44_100).map(|i| i as f32 / 44_100.0).collect();
        for chunk in input.chunks(1024) {
            r.process(chunk, &mut out);
        }
        assert!((out.len() as i64 - 48_000).abs() <= 2, "{}", out.len());
        // A ramp stays a ramp across chunk boundaries (no clicks).
        let steps: Vec<f32> = out.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
        let want = 1.0 / 48_000.0;
        assert!(steps.iter().all(|s| (s - want).abs() < want * 0.1));
    }

    #[test]
    fn resampler_stereo_and_passthrough() {
        let mut r = Resampler::new(32_000, 2);
        let mut out = Vec::new();
        r.process(&[0.5; 2 * 320], &mut out);
        assert_eq!(out.len() % 2, 0);
        assert!((out.len() / 2) as i64 - 480 <= 2);
        let mut p = Resampler::new(48_000, 2);
        out.clear();
        p.process(&[0.25; 8], &mut out);
        assert_eq!(out, vec![0.25; 8]);
    }

    #[test]
    fn unsupported_aac_is_refused() {
        let he = AudioSpecificConfig {
            object_type: 5,
            sample_rate: 44_100,
            channel_config: 2,
            raw: Bytes::from_static(&[0x2a, 0x10]),
        };
        assert!(AacToOpus::new(&he, 64_000).is_err());
        let surround = AudioSpecificConfig {
            object_type: 2,
            sample_rate: 48_000,
            channel_config: 6,
            raw: Bytes::from_static(&[0x11, 0xb0]),
        };
        assert!(AacToOpus::new(&surround, 64_000).is_err());
    }
}
