//! FLV tag bodies as RTMP carries them in audio (8) and video (9) messages:
//! legacy AVC/AAC and Enhanced RTMP (FourCC `hvc1`, `av01`, `vp09`, `avc1`;
//! `Opus`, `fLaC`, `mp4a`…).
//!
//! Parsing is zero-copy: payloads are slices of the message's `Bytes`.
//! Timestamps: the RTMP message timestamp is the DTS; video frames add a
//! signed composition time offset (CTS), and PTS = DTS + CTS.

use bytes::Bytes;

use crate::Error;

/// Video codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264: legacy codec id 7 or FourCC `avc1`.
    Avc,
    /// H.265: FourCC `hvc1` (or the unofficial legacy codec id 12).
    Hevc,
    /// FourCC `av01`.
    Av1,
    /// FourCC `vp09`.
    Vp9,
    /// Legacy codec id (Sorenson 2, VP6 4, …).
    Legacy(u8),
    /// Unknown FourCC.
    FourCc([u8; 4]),
}

/// Video frame type (upper nibble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Key,
    Inter,
    DisposableInter,
    GeneratedKey,
    /// Video info/command frame: carries no picture.
    Command,
    Other(u8),
}

impl FrameType {
    fn from_bits(b: u8) -> Self {
        match b {
            1 => FrameType::Key,
            2 => FrameType::Inter,
            3 => FrameType::DisposableInter,
            4 => FrameType::GeneratedKey,
            5 => FrameType::Command,
            n => FrameType::Other(n),
        }
    }
}

/// What a video tag carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoPacket {
    /// Decoder configuration: AVCDecoderConfigurationRecord for AVC (see
    /// [`crate::h264::AvcDecoderConfig`]), HEVCDecoderConfigurationRecord,
    /// AV1CodecConfigurationRecord…
    SequenceHeader(Bytes),
    /// Coded frame; for AVC/HEVC length-prefixed NAL units (AVCC).
    Frame {
        /// Composition time offset in ms (PTS − DTS), signed.
        composition_time: i32,
        data: Bytes,
    },
    EndOfSequence,
    /// Enhanced RTMP metadata, multitrack, and other packet types: recognised, not interpreted.
    Other {
        packet_type: u8,
        data: Bytes,
    },
}

/// A parsed video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTag {
    pub codec: VideoCodec,
    pub frame_type: FrameType,
    pub packet: VideoPacket,
    /// The tag used the Enhanced RTMP extended header.
    pub enhanced: bool,
}

impl VideoTag {
    /// Parses the body of a video message.
    pub fn parse(data: &Bytes) -> Result<VideoTag, Error> {
        let &b0 = data.first().ok_or(Error::truncated("FLV video tag"))?;
        if b0 & 0x80 != 0 {
            return Self::parse_enhanced(data, b0);
        }
        let frame_type = FrameType::from_bits(b0 >> 4);
        let codec = match b0 & 0x0f {
            7 => VideoCodec::Avc,
            12 => VideoCodec::Hevc,
            n => VideoCodec::Legacy(n),
        };
        if frame_type == FrameType::Command {
            return Ok(VideoTag {
                codec,
                frame_type,
                packet: VideoPacket::Other {
                    packet_type: 0,
                    data: data.slice(1..),
                },
                enhanced: false,
            });
        }
        let packet = match codec {
            VideoCodec::Avc | VideoCodec::Hevc => {
                if data.len() < 5 {
                    return Err(Error::truncated("AVC video tag header"));
                }
                let cts = si24(&data[2..5]);
                match data[1] {
                    0 => VideoPacket::SequenceHeader(data.slice(5..)),
                    1 => VideoPacket::Frame {
                        composition_time: cts,
                        data: data.slice(5..),
                    },
                    2 => VideoPacket::EndOfSequence,
                    _ => return Err(Error::malformed("AVC video tag", "unknown packet type")),
                }
            }
            _ => VideoPacket::Other {
                packet_type: 0,
                data: data.slice(1..),
            },
        };
        Ok(VideoTag {
            codec,
            frame_type,
            packet,
            enhanced: false,
        })
    }

    fn parse_enhanced(data: &Bytes, b0: u8) -> Result<VideoTag, Error> {
        let frame_type = FrameType::from_bits((b0 >> 4) & 0x07);
        let packet_type = b0 & 0x0f;
        let cc = data
            .get(1..5)
            .ok_or(Error::truncated("Enhanced RTMP FourCC"))?;
        let fourcc = [cc[0], cc[1], cc[2], cc[3]];
        let codec = match &fourcc {
            b"avc1" => VideoCodec::Avc,
            b"hvc1" => VideoCodec::Hevc,
            b"av01" => VideoCodec::Av1,
            b"vp09" => VideoCodec::Vp9,
            _ => VideoCodec::FourCc(fourcc),
        };
        let body = data.slice(5..);
        let packet = match packet_type {
            0 => VideoPacket::SequenceHeader(body),
            1 => {
                // CodedFrames: AVC and HEVC carry a CTS first; AV1/VP9 do not.
                if matches!(codec, VideoCodec::Avc | VideoCodec::Hevc) {
                    if body.len() < 3 {
                        return Err(Error::truncated("Enhanced RTMP composition time"));
                    }
                    VideoPacket::Frame {
                        composition_time: si24(&body[0..3]),
                        data: body.slice(3..),
                    }
                } else {
                    VideoPacket::Frame {
                        composition_time: 0,
                        data: body,
                    }
                }
            }
            2 => VideoPacket::EndOfSequence,
            // CodedFramesX: CTS implied zero.
            3 => VideoPacket::Frame {
                composition_time: 0,
                data: body,
            },
            _ => VideoPacket::Other {
                packet_type,
                data: body,
            },
        };
        Ok(VideoTag {
            codec,
            frame_type,
            packet,
            enhanced: true,
        })
    }

    pub fn is_keyframe(&self) -> bool {
        matches!(self.frame_type, FrameType::Key | FrameType::GeneratedKey)
    }
}

/// Audio codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    Mp3,
    /// Enhanced RTMP FourCC `Opus`.
    Opus,
    /// Other legacy sound format id (PCM 0/3, Nellymoser, G.711 7/8, Speex 11…).
    Legacy(u8),
    /// Enhanced RTMP FourCC not listed above (`fLaC`, `ac-3`, `mp4a`…).
    FourCc([u8; 4]),
}

/// What an audio tag carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioPacket {
    /// AAC AudioSpecificConfig (legacy or `mp4a` sequence start), parsed.
    AacSequenceHeader(AudioSpecificConfig),
    /// One raw AAC frame (no ADTS header).
    AacRaw(Bytes),
    /// Enhanced RTMP sequence start of a non-AAC codec (e.g. OpusHead).
    SequenceHeader(Bytes),
    /// Any other coded audio.
    Frame(Bytes),
}

/// A parsed audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTag {
    pub codec: AudioCodec,
    pub packet: AudioPacket,
}

impl AudioTag {
    pub fn parse(data: &Bytes) -> Result<AudioTag, Error> {
        let &b0 = data.first().ok_or(Error::truncated("FLV audio tag"))?;
        match b0 >> 4 {
            10 => {
                let &kind = data.get(1).ok_or(Error::truncated("AAC audio tag"))?;
                let body = data.slice(2..);
                let packet = match kind {
                    0 => AudioPacket::AacSequenceHeader(AudioSpecificConfig::parse(&body)?),
                    1 => AudioPacket::AacRaw(body),
                    _ => return Err(Error::malformed("AAC audio tag", "unknown packet type")),
                };
                Ok(AudioTag {
                    codec: AudioCodec::Aac,
                    packet,
                })
            }
            9 => {
                // Enhanced RTMP audio: packet type in the low nibble, then FourCC.
                let packet_type = b0 & 0x0f;
                let cc = data
                    .get(1..5)
                    .ok_or(Error::truncated("Enhanced RTMP FourCC"))?;
                let fourcc = [cc[0], cc[1], cc[2], cc[3]];
                let codec = match &fourcc {
                    b"Opus" => AudioCodec::Opus,
                    b".mp3" => AudioCodec::Mp3,
                    b"mp4a" => AudioCodec::Aac,
                    _ => AudioCodec::FourCc(fourcc),
                };
                let body = data.slice(5..);
                let packet = match (packet_type, codec) {
                    (0, AudioCodec::Aac) => {
                        AudioPacket::AacSequenceHeader(AudioSpecificConfig::parse(&body)?)
                    }
                    (0, _) => AudioPacket::SequenceHeader(body),
                    (1, AudioCodec::Aac) => AudioPacket::AacRaw(body),
                    _ => AudioPacket::Frame(body),
                };
                Ok(AudioTag { codec, packet })
            }
            2 => Ok(AudioTag {
                codec: AudioCodec::Mp3,
                packet: AudioPacket::Frame(data.slice(1..)),
            }),
            n => Ok(AudioTag {
                codec: AudioCodec::Legacy(n),
                packet: AudioPacket::Frame(data.slice(1..)),
            }),
        }
    }
}

/// MPEG-4 AudioSpecificConfig (ISO 14496-3 §1.6.2.1), the fields a decoder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// 2 = AAC-LC, 5 = SBR (HE-AAC), 29 = PS (HE-AACv2)…
    pub object_type: u8,
    pub sample_rate: u32,
    /// 0 = defined in-band (program config element); 1–7 per the standard.
    pub channel_config: u8,
    /// The raw bytes, as a decoder wants them.
    pub raw: Bytes,
}

const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl AudioSpecificConfig {
    pub fn parse(data: &Bytes) -> Result<Self, Error> {
        let mut r = crate::h264::BitReader::new(data);
        let trunc = |_| Error::truncated("AudioSpecificConfig");
        let mut object_type = r.bits(5).map_err(trunc)? as u8;
        if object_type == 31 {
            object_type = 32 + r.bits(6).map_err(trunc)? as u8;
        }
        let index = r.bits(4).map_err(trunc)? as usize;
        let sample_rate = if index == 15 {
            r.bits(24).map_err(trunc)?
        } else {
            *AAC_RATES.get(index).ok_or(Error::malformed(
                "AudioSpecificConfig",
                "reserved sampling index",
            ))?
        };
        let channel_config = r.bits(4).map_err(trunc)? as u8;
        if object_type == 0 || sample_rate == 0 {
            return Err(Error::malformed(
                "AudioSpecificConfig",
                "null object type or rate",
            ));
        }
        Ok(AudioSpecificConfig {
            object_type,
            sample_rate,
            channel_config,
            raw: data.clone(),
        })
    }

    /// Channel count for configurations 1–7 (7 means 7.1 = 8 channels).
    pub fn channels(&self) -> Option<u8> {
        match self.channel_config {
            1..=6 => Some(self.channel_config),
            7 => Some(8),
            _ => None,
        }
    }
}

/// Signed 24-bit big-endian.
fn si24(b: &[u8]) -> i32 {
    let v = ((b[0] as i32) << 16) | ((b[1] as i32) << 8) | b[2] as i32;
    (v << 8) >> 8
}

/// PTS in milliseconds from the message timestamp (DTS) and the composition
/// time; may be negative at stream start with some encoders.
pub fn pts_ms(dts: u32, composition_time: i32) -> i64 {
    dts as i64 + composition_time as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_avc_tags() {
        let seq = Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1, 0x64, 0, 0x1f]);
        let t = VideoTag::parse(&seq).unwrap();
        assert_eq!(t.codec, VideoCodec::Avc);
        assert!(t.is_keyframe());
        assert_eq!(
            t.packet,
            VideoPacket::SequenceHeader(Bytes::from_static(&[1, 0x64, 0, 0x1f]))
        );

        // Inter frame, CTS = -33 (0xFFFFDF).
        let f = Bytes::from_static(&[0x27, 0x01, 0xff, 0xff, 0xdf, 0, 0, 0, 1, 0x41]);
        let t = VideoTag::parse(&f).unwrap();
        assert_eq!(t.frame_type, FrameType::Inter);
        assert_eq!(
            t.packet,
            VideoPacket::Frame {
                composition_time: -33,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x41])
            }
        );
        let f = Bytes::from_static(&[0x27, 0x01, 0x00, 0x00, 0x42]);
        match VideoTag::parse(&f).unwrap().packet {
            VideoPacket::Frame {
                composition_time, ..
            } => assert_eq!(pts_ms(1000, composition_time), 1066),
            p => panic!("{p:?}"),
        }
        assert_eq!(
            VideoTag::parse(&Bytes::from_static(&[0x17, 2, 0, 0, 0]))
                .unwrap()
                .packet,
            VideoPacket::EndOfSequence
        );
    }

    #[test]
    fn enhanced_video_tags_are_recognised() {
        // Key frame (1), SequenceStart (0), hvc1.
        let t = VideoTag::parse(&Bytes::from_static(b"\x90hvc1\x01\x02")).unwrap();
        assert_eq!(t.codec, VideoCodec::Hevc);
        assert!(t.enhanced && t.is_keyframe());
        assert!(matches!(t.packet, VideoPacket::SequenceHeader(ref b) if b.len() == 2));
        // Inter (2), CodedFrames (1), hvc1 with CTS 66.
        let t = VideoTag::parse(&Bytes::from_static(b"\xA1hvc1\x00\x00\x42\xAA")).unwrap();
        assert_eq!(
            t.packet,
            VideoPacket::Frame {
                composition_time: 66,
                data: Bytes::from_static(&[0xAA])
            }
        );
        // AV1 CodedFrames: no CTS.
        let t = VideoTag::parse(&Bytes::from_static(b"\x91av01\x12\x00")).unwrap();
        assert_eq!(t.codec, VideoCodec::Av1);
        assert_eq!(
            t.packet,
            VideoPacket::Frame {
                composition_time: 0,
                data: Bytes::from_static(&[0x12, 0])
            }
        );
        // CodedFramesX.
        let t = VideoTag::parse(&Bytes::from_static(b"\x93vp09\x01")).unwrap();
        assert_eq!(t.codec, VideoCodec::Vp9);
        // Unknown FourCC and metadata packet type.
        let t = VideoTag::parse(&Bytes::from_static(b"\x94abcd")).unwrap();
        assert_eq!(t.codec, VideoCodec::FourCc(*b"abcd"));
        assert!(matches!(
            t.packet,
            VideoPacket::Other { packet_type: 4, .. }
        ));
    }

    #[test]
    fn malformed_video_tags_are_errors() {
        for bad in [
            &[][..],
            &[0x17],
            &[0x17, 1, 0],
            &[0x17, 9, 0, 0, 0],
            &[0x90, b'h', b'v'],
            &[0x91, b'h', b'v', b'c', b'1', 0],
        ] {
            assert!(
                VideoTag::parse(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn aac_tags() {
        // AAC-LC, 44.1 kHz, stereo: 0x12 0x10 (as ffmpeg writes it).
        let t = AudioTag::parse(&Bytes::from_static(&[0xAF, 0, 0x12, 0x10])).unwrap();
        match t.packet {
            AudioPacket::AacSequenceHeader(c) => {
                assert_eq!(
                    (c.object_type, c.sample_rate, c.channels()),
                    (2, 44100, Some(2))
                );
            }
            p => panic!("{p:?}"),
        }
        // AAC-LC 48 kHz mono: 0x11 0x88.
        let t = AudioTag::parse(&Bytes::from_static(&[0xAF, 0, 0x11, 0x88])).unwrap();
        assert!(matches!(
            t.packet,
            AudioPacket::AacSequenceHeader(AudioSpecificConfig {
                sample_rate: 48000,
                channel_config: 1,
                ..
            })
        ));
        let t = AudioTag::parse(&Bytes::from_static(&[0xAF, 1, 0x21, 0x10])).unwrap();
        assert_eq!(
            t.packet,
            AudioPacket::AacRaw(Bytes::from_static(&[0x21, 0x10]))
        );
        // Enhanced Opus.
        let t = AudioTag::parse(&Bytes::from_static(b"\x91Opus\xfc")).unwrap();
        assert_eq!(t.codec, AudioCodec::Opus);
        assert_eq!(t.packet, AudioPacket::Frame(Bytes::from_static(&[0xfc])));
        // MP3 is recognised, not decoded.
        let t = AudioTag::parse(&Bytes::from_static(&[0x2F, 0xff])).unwrap();
        assert_eq!(t.codec, AudioCodec::Mp3);
    }

    #[test]
    fn malformed_audio_tags_are_errors() {
        for bad in [
            &[][..],
            &[0xAF],
            &[0xAF, 0],
            &[0xAF, 0, 0x12],
            &[0xAF, 0, 0x16, 0x90], // reserved sampling index 13
            &[0xAF, 0, 0x17, 0x90], // explicit 24-bit rate, truncated
            &[0xAF, 0, 0x00, 0x10], // object type 0
            &[0xAF, 7, 0],
            &[0x90, b'O'],
        ] {
            assert!(
                AudioTag::parse(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
