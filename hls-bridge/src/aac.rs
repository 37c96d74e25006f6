//! Opus → AAC-LC, so that Safari, iOS and TVs (which play HLS natively but
//! not Opus in fMP4) get audio.
//!
//! ```text
//!  Opus RTP payload ──► OpusDecoder (opus-rs, pure Rust; a lost packet is
//!   (seq, timestamp)      concealed, so time stays continuous)
//!                         ▼ 48 kHz PCM, interleaved
//!                     AacLcEncoder (fdk-aac: Fraunhofer FDK AAC, raw frames)
//!                         ▼ one frame per 1024 samples
//!                     (timestamp on the 48 kHz clock, frame) ─► Bridge::push_aac_frame
//! ```
//!
//! Sans-IO like the rest of the core: packets in, frames out, no clock.
//! Cost: decoding plus encoding 48 kHz stereo takes well under 1 % of a core.
//! The encoder is the only piece tied to a C library and a non-OSI licence
//! (see `docs/hls.md`); it stays behind [`AacLcEncoder`].
//!
//! Encoder delay: the first frames out carry the encoder's priming (about
//! 2048 samples, ≈ 43 ms); they are stamped from the first packet's time,
//! so the audio plays that much later than the video.

use bytes::Bytes;
use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};

/// Opus in WebRTC always runs its RTP clock at 48 kHz; so does the output.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples per channel in one AAC-LC frame.
pub const AAC_FRAME: usize = 1024;
/// The longest Opus packet (120 ms at 48 kHz), per channel.
const MAX_OPUS_FRAME: usize = 5760;
/// A gap of more than this many packets is not concealed packet by
/// packet (a publisher pause or a jump): the stream restarts after it.
const MAX_CONCEALED: u64 = 10;
/// Output bitrate per channel.
const BITRATE_PER_CHANNEL: u32 = 64_000;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("AAC encoder: {0}")]
    Encoder(String),
    #[error("Opus decoder: {0}")]
    Decoder(&'static str),
}

/// An AAC-LC encoder at 48 kHz producing raw frames (no ADTS).
pub struct AacLcEncoder {
    encoder: Encoder,
    out: Vec<u8>,
}

impl std::fmt::Debug for AacLcEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AacLcEncoder").finish_non_exhaustive()
    }
}

impl AacLcEncoder {
    pub fn new(channels: u8) -> Result<Self, TranscodeError> {
        let encoder = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(BITRATE_PER_CHANNEL * channels as u32),
            sample_rate: SAMPLE_RATE,
            transport: Transport::Raw,
            channels: if channels == 1 {
                ChannelMode::Mono
            } else {
                ChannelMode::Stereo
            },
            audio_object_type: AudioObjectType::Mpeg4LowComplexity,
        })
        .map_err(|e| TranscodeError::Encoder(format!("{e:?}")))?;
        Ok(Self {
            encoder,
            out: vec![0; 8192],
        })
    }

    /// Encodes exactly one frame of interleaved samples (1024 per channel);
    /// returns the frame it completes, if any (the first calls only fill
    /// the encoder's look-ahead).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Option<Bytes>, TranscodeError> {
        let mut input = pcm;
        let mut frame = None;
        // fdk-aac may take the input in more than one call.
        loop {
            let info = self
                .encoder
                .encode(input, &mut self.out)
                .map_err(|e| TranscodeError::Encoder(format!("{e:?}")))?;
            if info.output_size > 0 {
                frame = Some(Bytes::copy_from_slice(&self.out[..info.output_size]));
            }
            input = &input[info.input_consumed.min(input.len())..];
            if input.is_empty() || info.input_consumed == 0 {
                return Ok(frame);
            }
        }
    }
}

/// One Opus track's transcoder.
pub struct OpusToAac {
    channels: u8,
    decoder: opus_rs::OpusDecoder,
    encoder: AacLcEncoder,
    /// Decoded samples waiting for a full AAC frame, interleaved.
    pcm: Vec<i16>,
    decoded: Vec<f32>,
    /// Next expected sequence number.
    next_seq: Option<u64>,
    /// RTP time (48 kHz) of the first sample in `pcm`.
    pcm_start: u32,
    last_frame_samples: usize,
}

impl std::fmt::Debug for OpusToAac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusToAac")
            .field("channels", &self.channels)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// An AAC frame and its time on the 48 kHz clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacFrame {
    pub timestamp: u32,
    pub data: Bytes,
}

impl OpusToAac {
    pub fn new(channels: u8) -> Result<Self, TranscodeError> {
        let channels = channels.clamp(1, 2);
        Ok(Self {
            channels,
            decoder: opus_rs::OpusDecoder::new(SAMPLE_RATE as i32, channels as usize)
                .map_err(TranscodeError::Decoder)?,
            encoder: AacLcEncoder::new(channels)?,
            pcm: Vec::with_capacity(AAC_FRAME * 4),
            decoded: vec![0.0; MAX_OPUS_FRAME * channels as usize],
            next_seq: None,
            pcm_start: 0,
            last_frame_samples: 960,
        })
    }

    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// Feeds one Opus packet (extended sequence number, RTP timestamp,
    /// payload) and appends the AAC frames it completes to `out`.
    pub fn push(
        &mut self,
        seq: u64,
        timestamp: u32,
        payload: &[u8],
        out: &mut Vec<AacFrame>,
    ) -> Result<(), TranscodeError> {
        match self.next_seq {
            // Late or duplicate: its time was already concealed.
            Some(next) if seq < next => return Ok(()),
            Some(next) if seq - next <= MAX_CONCEALED => {
                for _ in next..seq {
                    // Conceal each lost packet with the previous length.
                    let n = self.decode(&[], self.last_frame_samples)?;
                    self.take(n, out)?;
                }
            }
            // First packet, or a gap too long to conceal: start afresh.
            _ => {
                self.pcm.clear();
                self.pcm_start = timestamp;
            }
        }
        self.next_seq = Some(seq + 1);
        let n = self.decode(payload, MAX_OPUS_FRAME)?;
        if n > 0 {
            self.last_frame_samples = n;
        }
        self.take(n, out)
    }

    fn decode(&mut self, payload: &[u8], frame_size: usize) -> Result<usize, TranscodeError> {
        match self.decoder.decode(payload, frame_size, &mut self.decoded) {
            Ok(n) => Ok(n.min(MAX_OPUS_FRAME)),
            // A malformed packet: conceal it rather than stop the track.
            Err(_) if !payload.is_empty() => self.decode(&[], self.last_frame_samples),
            Err(e) => Err(TranscodeError::Decoder(e)),
        }
    }

    /// Moves `n` decoded samples per channel into the PCM buffer and
    /// encodes every full AAC frame.
    fn take(&mut self, n: usize, out: &mut Vec<AacFrame>) -> Result<(), TranscodeError> {
        let ch = self.channels as usize;
        self.pcm.extend(
            self.decoded[..n * ch]
                .iter()
                .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16),
        );
        while self.pcm.len() >= AAC_FRAME * ch {
            if let Some(data) = self.encoder.encode(&self.pcm[..AAC_FRAME * ch])? {
                out.push(AacFrame {
                    timestamp: self.pcm_start,
                    data,
                });
                self.pcm_start = self.pcm_start.wrapping_add(AAC_FRAME as u32);
            }
            self.pcm.drain(..AAC_FRAME * ch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms Opus packets of a 440 Hz tone from opus-rs' encoder.
    fn tone_packets(count: usize) -> Vec<Vec<u8>> {
        let mut enc = opus_rs::OpusEncoder::new(48_000, 2, opus_rs::Application::Audio).unwrap();
        let mut packets = Vec::new();
        let mut t = 0usize;
        for _ in 0..count {
            let pcm: Vec<f32> = (0..960 * 2)
                .map(|i| {
                    let n = t + i / 2;
                    (n as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.3
                })
                .collect();
            t += 960;
            let mut buf = vec![0u8; 1500];
            let len = enc.encode(&pcm, 960, &mut buf).unwrap();
            buf.truncate(len);
            packets.push(buf);
        }
        packets
    }

    #[test]
    fn a_second_of_opus_becomes_aac_frames_on_the_same_clock() {
        let mut t = OpusToAac::new(2).unwrap();
        let mut out = Vec::new();
        for (i, p) in tone_packets(50).iter().enumerate() {
            t.push(100 + i as u64, 5000 + 960 * i as u32, p, &mut out)
                .unwrap();
        }
        // 48 000 samples make 46 full frames; the encoder holds back its
        // look-ahead, so a few are still inside.
        assert!((40..=46).contains(&out.len()), "{}", out.len());
        assert_eq!(out[0].timestamp, 5000);
        for w in out.windows(2) {
            assert_eq!(w[1].timestamp - w[0].timestamp, 1024);
        }
        // 128 kbit/s ≈ 340 bytes per frame; never empty, never ADTS.
        let sizes: Vec<usize> = out.iter().map(|f| f.data.len()).collect();
        assert!(out.iter().skip(3).all(|f| f.data.len() > 50), "{sizes:?}");
        assert!(out.iter().all(|f| !f.data.starts_with(&[0xff, 0xf1])));
    }

    #[test]
    fn loss_is_concealed_and_late_packets_ignored() {
        let packets = tone_packets(50);
        let mut t = OpusToAac::new(2).unwrap();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            if i == 10 || i == 11 {
                continue; // lost
            }
            t.push(i as u64, 960 * i as u32, p, &mut out).unwrap();
            if i == 12 {
                // 10 arrives late, and garbage: neither disturbs the stream.
                t.push(10, 9600, &packets[10], &mut out).unwrap();
            }
        }
        let mut reference = OpusToAac::new(2).unwrap();
        let mut all = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            reference
                .push(i as u64, 960 * i as u32, p, &mut all)
                .unwrap();
        }
        // Same number of frames on the same timestamps: time stayed whole.
        assert_eq!(out.len(), all.len());
        assert_eq!(out.last().unwrap().timestamp, all.last().unwrap().timestamp);
        t.push(50, 48_000, &[0xff, 0xff, 0xff], &mut out).unwrap();
    }
}
