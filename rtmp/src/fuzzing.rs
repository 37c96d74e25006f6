//! The bodies of the fuzz targets (`rtmp/fuzz`), shared with the stable
//! test that runs them over random and mutated inputs
//! (`rtmp/tests/fuzz_bodies.rs`), so the parsers are exercised in every
//! test run, not only where a nightly toolchain and cargo-fuzz exist.
//! Each body must never panic, whatever `data` holds.

use bytes::Bytes;

use crate::flv::{AudioTag, VideoPacket, VideoTag};
use crate::h264::{AvcDecoderConfig, Sps};
use crate::{Event, H264Packetizer, ServerSession, SessionConfig};

/// AMF0: what decodes must re-encode and decode again.
pub fn amf0(data: &[u8]) {
    if let Ok(values) = crate::amf0::decode_all(data) {
        let bytes = crate::amf0::encode_all(&values);
        let _ = crate::amf0::decode_all(&bytes);
    }
}

/// FLV tag bodies and everything downstream of them: AVCDecoderConfigurationRecord,
/// SPS, AVCC splitting and RTP packetization, AudioSpecificConfig.
pub fn flv(data: &[u8]) {
    let data = Bytes::copy_from_slice(data);
    let _ = AudioTag::parse(&data);
    let _ = Sps::parse(&data);
    let mut packetizer = H264Packetizer::default();
    let mut out = Vec::new();
    if let Ok(tag) = VideoTag::parse(&data) {
        match tag.packet {
            VideoPacket::SequenceHeader(body) => {
                if let Ok(config) = AvcDecoderConfig::parse(&body) {
                    let _ = config.parse_sps();
                    packetizer.set_config(&config);
                }
            }
            VideoPacket::Frame { data, .. } => {
                let _ = packetizer.packetize(data, 0, &mut out);
                assert!(out.iter().all(|p| p.payload.len() <= 1200));
            }
            _ => {}
        }
    }
}

/// Handshake + chunk stream + commands: a valid handshake, then `data`
/// after its first byte, fed in reads of that first byte's size.
pub fn session(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let mut s = ServerSession::new(SessionConfig::default());
    let mut hello = vec![3u8];
    hello.extend_from_slice(&[0u8; 2 * 1536]);
    if s.handle_input(&hello).is_err() {
        return;
    }
    for piece in data.chunks(step.max(1) as usize) {
        if s.handle_input(piece).is_err() {
            return;
        }
        while let Some(e) = s.poll_event() {
            if let Event::PublishRequested { .. } = e {
                if s.accept_publish().is_err() {
                    return;
                }
            }
        }
        while s.poll_transmit().is_some() {}
    }
}
