//! One published stream's media, from the session's FLV tag bodies to what
//! the room needs: decoder configuration, timed video access units with a
//! B-frame verdict, and AAC frames.
//!
//! ```text
//! Event::Video ─► VideoIngest::push ─► Config { avcC, SPS }      (on each new sequence header)
//!                                   ├► BFramesDetected            (once: log B_FRAMES_HINT, re-encode)
//!                                   └► Frame(VideoFrame)          (AVCC, DTS/PTS, 90 kHz timestamp)
//!                                          └─ no B-frames: H264Packetizer ─► RTP payloads
//! Event::Audio ─► AudioIngest::push ─► Config(AudioSpecificConfig) / Frame(AacFrame)
//! ```
//!
//! Nothing here decodes or encodes media; transcoding (AAC → Opus, the
//! B-frame re-encode) is the caller's, on its own thread.

use bytes::Bytes;

use crate::flv::{
    AudioCodec, AudioPacket, AudioSpecificConfig, AudioTag, VideoCodec, VideoPacket, VideoTag,
};
use crate::h264::{AvcDecoderConfig, BFrameDetector, Reordering, Sps};
use crate::packetizer::rtp_timestamp;
use crate::Error;

/// What to tell the streamer when B-frames are found (log it once per publication).
pub const B_FRAMES_HINT: &str = "the encoder sends B-frames, which WebRTC viewers cannot play \
smoothly, so this stream is re-encoded (more CPU, more latency); set B-frames to 0 in the encoder \
(ffmpeg: -bf 0; OBS: x264 options \"bframes=0\" or the baseline profile)";

/// One H.264 access unit with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// Decode timestamp, ms (the RTMP message timestamp).
    pub dts_ms: u32,
    /// Presentation timestamp, ms (DTS + composition time).
    pub pts_ms: i64,
    /// 90 kHz RTP timestamp from the PTS.
    pub rtp_timestamp: u32,
    pub keyframe: bool,
    /// Length-prefixed NAL units.
    pub data: Bytes,
    /// Size of each length prefix in `data`.
    pub nalu_length_size: u8,
}

/// What a video tag produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoEvent {
    /// A new decoder configuration (first, or changed mid-stream). Check
    /// [`Sps::webrtc_incompatibility`]: such streams need the re-encode path too.
    Config {
        config: AvcDecoderConfig,
        sps: Sps,
    },
    /// Reordering was just proven (from the SPS or a composition time); sent once.
    BFramesDetected,
    Frame(VideoFrame),
    /// A codec the shim does not carry (HEVC/AV1 over Enhanced RTMP, VP6…);
    /// reported once, its frames dropped.
    Unsupported(VideoCodec),
}

/// Turns video tag bodies into [`VideoEvent`]s.
#[derive(Debug, Default)]
pub struct VideoIngest {
    config: Option<AvcDecoderConfig>,
    detector: BFrameDetector,
    b_frames_reported: bool,
    unsupported_reported: bool,
}

impl VideoIngest {
    /// The verdict so far: decides passthrough (`None`) or re-encode (`Present`);
    /// `Unknown` until a sequence header or a frame says more.
    pub fn reordering(&self) -> Reordering {
        self.detector.verdict()
    }

    /// Handles one video message. Frames before the first sequence header are
    /// dropped (nothing could decode them).
    pub fn push(
        &mut self,
        timestamp: u32,
        data: &Bytes,
        out: &mut Vec<VideoEvent>,
    ) -> Result<(), Error> {
        let tag = VideoTag::parse(data)?;
        if tag.codec != VideoCodec::Avc {
            if !self.unsupported_reported {
                self.unsupported_reported = true;
                out.push(VideoEvent::Unsupported(tag.codec));
            }
            return Ok(());
        }
        let keyframe = tag.is_keyframe();
        match tag.packet {
            VideoPacket::SequenceHeader(body) => {
                let config = AvcDecoderConfig::parse(&body)?;
                if self.config.as_ref() == Some(&config) {
                    return Ok(()); // encoders repeat it; not news
                }
                let sps = config.parse_sps()?;
                self.detector.observe_sps(&sps);
                self.config = Some(config.clone());
                out.push(VideoEvent::Config { config, sps });
                self.report_b_frames(out);
            }
            VideoPacket::Frame {
                composition_time,
                data,
            } => {
                let Some(config) = &self.config else {
                    return Ok(());
                };
                let nalu_length_size = config.nalu_length_size;
                self.detector.observe_frame(composition_time);
                self.report_b_frames(out);
                out.push(VideoEvent::Frame(VideoFrame {
                    dts_ms: timestamp,
                    pts_ms: timestamp as i64 + composition_time as i64,
                    rtp_timestamp: rtp_timestamp(timestamp, composition_time),
                    keyframe,
                    data,
                    nalu_length_size,
                }));
            }
            VideoPacket::EndOfSequence | VideoPacket::Other { .. } => {}
        }
        Ok(())
    }

    fn report_b_frames(&mut self, out: &mut Vec<VideoEvent>) {
        if !self.b_frames_reported && self.detector.has_b_frames() {
            self.b_frames_reported = true;
            out.push(VideoEvent::BFramesDetected);
        }
    }
}

/// One raw AAC frame (no ADTS header); AAC has no reordering, PTS = DTS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacFrame {
    pub pts_ms: u32,
    pub data: Bytes,
}

/// What an audio tag produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioEvent {
    Config(AudioSpecificConfig),
    Frame(AacFrame),
    /// A codec other than AAC (MP3, Speex, Enhanced RTMP Opus…); reported once.
    Unsupported(AudioCodec),
}

/// Turns audio tag bodies into [`AudioEvent`]s.
#[derive(Debug, Default)]
pub struct AudioIngest {
    config: Option<AudioSpecificConfig>,
    unsupported_reported: bool,
}

impl AudioIngest {
    /// Handles one audio message; frames before the AAC config are dropped.
    pub fn push(&mut self, timestamp: u32, data: &Bytes) -> Result<Option<AudioEvent>, Error> {
        let tag = AudioTag::parse(data)?;
        Ok(match tag.packet {
            AudioPacket::AacSequenceHeader(c) => {
                if self.config.as_ref() == Some(&c) {
                    None
                } else {
                    self.config = Some(c.clone());
                    Some(AudioEvent::Config(c))
                }
            }
            AudioPacket::AacRaw(data) if self.config.is_some() => {
                Some(AudioEvent::Frame(AacFrame {
                    pts_ms: timestamp,
                    data,
                }))
            }
            AudioPacket::AacRaw(_) => None,
            _ if !self.unsupported_reported => {
                self.unsupported_reported = true;
                Some(AudioEvent::Unsupported(tag.codec))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn sequence_header(sps_hex: &str) -> Bytes {
        let sps = hex(sps_hex);
        let mut v = vec![0x17, 0, 0, 0, 0, 1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        v.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        v.extend_from_slice(&sps);
        v.extend_from_slice(&[1, 0, 2, 0x68, 0xeb]);
        Bytes::from(v)
    }

    fn frame(key: bool, cts: i32) -> Bytes {
        let c = cts.to_be_bytes();
        let b0 = if key { 0x17 } else { 0x27 };
        let nal = if key { 0x65 } else { 0x41 };
        Bytes::from(vec![b0, 1, c[1], c[2], c[3], 0, 0, 0, 2, nal, 0])
    }

    const SPS_BF0: &str = "6764001eacb201405ff2e022000003000200000300781e2c5c90";
    const SPS_BF2: &str = "6764001eacd940a02ff970110000030001000003003c0f162d96";

    #[test]
    fn passthrough_stream() {
        let mut v = VideoIngest::default();
        let mut out = Vec::new();
        v.push(0, &frame(true, 0), &mut out).unwrap();
        assert!(out.is_empty(), "frames before the config are dropped");
        v.push(0, &sequence_header(SPS_BF0), &mut out).unwrap();
        v.push(0, &sequence_header(SPS_BF0), &mut out).unwrap();
        assert!(matches!(&out[..], [VideoEvent::Config { sps, .. }] if sps.width == 640));
        out.clear();
        v.push(1000, &frame(true, 0), &mut out).unwrap();
        v.push(1033, &frame(false, 0), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let VideoEvent::Frame(f) = &out[0] else {
            panic!()
        };
        assert!(f.keyframe);
        assert_eq!((f.dts_ms, f.pts_ms, f.rtp_timestamp), (1000, 1000, 90_000));
        assert_eq!(v.reordering(), Reordering::None);
    }

    #[test]
    fn b_frames_are_reported_once_from_the_sps() {
        let mut v = VideoIngest::default();
        let mut out = Vec::new();
        v.push(0, &sequence_header(SPS_BF2), &mut out).unwrap();
        v.push(0, &frame(true, 66), &mut out).unwrap();
        v.push(33, &frame(false, 100), &mut out).unwrap();
        let detected = out
            .iter()
            .filter(|e| **e == VideoEvent::BFramesDetected)
            .count();
        assert_eq!(detected, 1);
        assert!(matches!(out[1], VideoEvent::BFramesDetected));
        let VideoEvent::Frame(f) = &out[3] else {
            panic!()
        };
        assert_eq!((f.dts_ms, f.pts_ms), (33, 133));
    }

    #[test]
    fn b_frames_are_reported_from_composition_time_alone() {
        // Main profile SPS without VUI would be Unknown; use BF0's SPS and lie with CTS.
        let mut v = VideoIngest::default();
        let mut out = Vec::new();
        v.push(0, &sequence_header(SPS_BF0), &mut out).unwrap();
        v.push(0, &frame(true, 0), &mut out).unwrap();
        assert_eq!(v.reordering(), Reordering::None);
        v.push(33, &frame(false, 33), &mut out).unwrap();
        assert_eq!(v.reordering(), Reordering::Present);
        assert!(out.contains(&VideoEvent::BFramesDetected));
    }

    #[test]
    fn unsupported_codecs_are_reported_once() {
        let mut v = VideoIngest::default();
        let mut out = Vec::new();
        v.push(0, &Bytes::from_static(b"\x90hvc1\x01"), &mut out)
            .unwrap();
        v.push(
            0,
            &Bytes::from_static(b"\x91hvc1\x00\x00\x00\x01"),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![VideoEvent::Unsupported(VideoCodec::Hevc)]);

        let mut a = AudioIngest::default();
        assert_eq!(
            a.push(0, &Bytes::from_static(&[0x2f, 1])).unwrap(),
            Some(AudioEvent::Unsupported(AudioCodec::Mp3))
        );
        assert_eq!(a.push(0, &Bytes::from_static(&[0x2f, 1])).unwrap(), None);
    }

    #[test]
    fn aac_stream() {
        let mut a = AudioIngest::default();
        assert_eq!(
            a.push(0, &Bytes::from_static(&[0xAF, 1, 0x21])).unwrap(),
            None
        );
        assert!(matches!(
            a.push(0, &Bytes::from_static(&[0xAF, 0, 0x12, 0x10])).unwrap(),
            Some(AudioEvent::Config(c)) if c.sample_rate == 44100
        ));
        assert_eq!(
            a.push(0, &Bytes::from_static(&[0xAF, 0, 0x12, 0x10]))
                .unwrap(),
            None
        );
        assert_eq!(
            a.push(23, &Bytes::from_static(&[0xAF, 1, 0x21])).unwrap(),
            Some(AudioEvent::Frame(AacFrame {
                pts_ms: 23,
                data: Bytes::from_static(&[0x21])
            }))
        );
        assert!(a.push(0, &Bytes::new()).is_err());
    }

    #[test]
    fn malformed_video_is_an_error() {
        let mut v = VideoIngest::default();
        let mut out = Vec::new();
        assert!(v
            .push(0, &Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]), &mut out)
            .is_err());
        assert!(v.push(0, &Bytes::new(), &mut out).is_err());
        assert!(out.is_empty());
    }
}
