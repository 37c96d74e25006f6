//! FLV tag bodies and everything downstream of them: AVCDecoderConfigurationRecord,
//! SPS, AVCC splitting and RTP packetization, AudioSpecificConfig.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rtmp::flv::{AudioTag, VideoPacket, VideoTag};
use rtmp::h264::{AvcDecoderConfig, Sps};
use rtmp::H264Packetizer;

fuzz_target!(|data: &[u8]| {
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
});
