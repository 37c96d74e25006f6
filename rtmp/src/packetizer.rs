//! H.264 access units (AVCC as RTMP carries them, or Annex B as encoders
//! write them) → RTP payloads per RFC 6184, packetization mode 1: single NAL
//! unit packets, STAP-A for runs of small NAL units, FU-A for NAL units
//! larger than the payload budget.
//!
//! The packetizer produces payloads, marker bits and 90 kHz timestamps; the
//! RTP header (SSRC, sequence number, payload type) belongs to the SFU, which
//! rewrites it per subscriber anyway.
//!
//! SPS and PPS are sent before every IDR (taken from the sequence header, or
//! from the stream when the encoder repeats them in-band), so a viewer that
//! joins at any keyframe can decode. AUD and filler NAL units are dropped:
//! they cost bandwidth and WebRTC decoders ignore them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::h264::{nal_type, nal_unit_type, AnnexBNalus, AvcDecoderConfig, AvccNalus};
use crate::Error;

/// RTP payload budget that keeps packets under common path MTUs with
/// SRTP, header extensions and TURN overhead.
pub const DEFAULT_MAX_PAYLOAD: usize = 1200;

const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// One RTP packet's worth of H.264.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPayload {
    pub payload: Bytes,
    /// Set on the last packet of an access unit.
    pub marker: bool,
    /// 90 kHz, from the PTS.
    pub timestamp: u32,
}

/// 90 kHz RTP timestamp from an FLV DTS (ms) and composition time (ms).
/// Wraps consistently: 2^32 ms × 90 ≡ 0 (mod 2^32).
pub fn rtp_timestamp(dts_ms: u32, composition_time_ms: i32) -> u32 {
    ((dts_ms as i64 + composition_time_ms as i64) * 90) as u32
}

/// Packetizes one H.264 stream.
#[derive(Debug)]
pub struct H264Packetizer {
    max_payload: usize,
    nalu_length_size: u8,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    /// Reused across access units to avoid an allocation per frame.
    scratch: Vec<Bytes>,
}

impl Default for H264Packetizer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl H264Packetizer {
    /// `max_payload` is clamped to 64..=65535 (STAP-A sizes are 16-bit).
    pub fn new(max_payload: usize) -> Self {
        H264Packetizer {
            max_payload: max_payload.clamp(64, u16::MAX as usize),
            nalu_length_size: 4,
            sps: None,
            pps: None,
            scratch: Vec::new(),
        }
    }

    /// Takes the SPS/PPS and NAL length size from a sequence header.
    pub fn set_config(&mut self, config: &AvcDecoderConfig) {
        self.nalu_length_size = config.nalu_length_size;
        self.sps = config.sps.first().filter(|n| !n.is_empty()).cloned();
        self.pps = config.pps.first().filter(|n| !n.is_empty()).cloned();
    }

    /// True once SPS and PPS are known (from a sequence header or in-band).
    pub fn has_parameter_sets(&self) -> bool {
        self.sps.is_some() && self.pps.is_some()
    }

    /// Appends the payloads of one access unit to `out`. On error (a NAL
    /// length running past the end) nothing is appended.
    pub fn packetize(
        &mut self,
        access_unit: Bytes,
        timestamp: u32,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), Error> {
        let nalus = AvccNalus::new(access_unit, self.nalu_length_size);
        self.packetize_nalus(nalus, timestamp, out)
    }

    /// Same for one access unit as an Annex B byte stream (what the
    /// re-encoder, openh264, produces).
    pub fn packetize_annex_b(
        &mut self,
        access_unit: Bytes,
        timestamp: u32,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), Error> {
        self.packetize_nalus(AnnexBNalus::new(access_unit), timestamp, out)
    }

    fn packetize_nalus(
        &mut self,
        nalus: impl Iterator<Item = Result<Bytes, Error>>,
        timestamp: u32,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), Error> {
        let mut nals = std::mem::take(&mut self.scratch);
        nals.clear();
        let mut has_sps = false;
        let mut has_pps = false;
        let mut has_idr = false;
        for nal in nalus {
            let nal = match nal {
                Ok(n) => n,
                Err(e) => {
                    self.scratch = nals;
                    return Err(e);
                }
            };
            match nal_unit_type(&nal) {
                nal_type::AUD | nal_type::FILLER => continue,
                nal_type::SPS => {
                    has_sps = true;
                    self.sps = Some(nal.clone());
                }
                nal_type::PPS => {
                    has_pps = true;
                    self.pps = Some(nal.clone());
                }
                nal_type::IDR => has_idr = true,
                _ => {}
            }
            nals.push(nal);
        }
        if has_idr {
            // Parameter sets open the access unit (as x264 orders them: SPS,
            // PPS, SEI, slices; a buffering-period SEI refers to the SPS),
            // unless the encoder already sent them in it.
            let mut insert = Vec::with_capacity(2);
            if !has_sps {
                insert.extend(self.sps.clone());
            }
            if !has_pps {
                insert.extend(self.pps.clone());
            }
            nals.splice(0..0, insert);
        }

        let start = out.len();
        let mut group: Vec<Bytes> = Vec::new();
        let mut group_size = 1; // STAP-A header byte
        for nal in nals.drain(..) {
            if 2 + nal.len() + group_size <= self.max_payload {
                group_size += 2 + nal.len();
                group.push(nal);
                continue;
            }
            self.flush(&mut group, timestamp, out);
            group_size = 1;
            if nal.len() > self.max_payload {
                self.fragment(&nal, timestamp, out);
            } else {
                group_size += 2 + nal.len();
                group.push(nal);
            }
        }
        self.flush(&mut group, timestamp, out);
        if let Some(last) = out[start..].last_mut() {
            last.marker = true;
        }
        self.scratch = nals;
        Ok(())
    }

    /// One NAL → single NAL unit packet (zero-copy); several → STAP-A.
    fn flush(&self, group: &mut Vec<Bytes>, timestamp: u32, out: &mut Vec<RtpPayload>) {
        match group.len() {
            0 => {}
            1 => out.push(RtpPayload {
                payload: group.remove(0),
                marker: false,
                timestamp,
            }),
            _ => {
                // Cost: one allocation and copy per STAP-A (parameter sets, SEI, small slices).
                let size = 1 + group.iter().map(|n| 2 + n.len()).sum::<usize>();
                let mut p = BytesMut::with_capacity(size);
                let f = group.iter().map(|n| n[0] & 0x80).max().unwrap_or(0);
                let nri = group.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                p.put_u8(f | nri | STAP_A);
                for n in group.drain(..) {
                    p.put_u16(n.len() as u16);
                    p.put_slice(&n);
                }
                out.push(RtpPayload {
                    payload: p.freeze(),
                    marker: false,
                    timestamp,
                });
            }
        }
    }

    /// FU-A: the NAL header moves into the FU indicator/header pair.
    /// Cost: one allocation and copy per fragment.
    fn fragment(&self, nal: &Bytes, timestamp: u32, out: &mut Vec<RtpPayload>) {
        let header = nal[0];
        let indicator = (header & 0xE0) | FU_A;
        let body = &nal[1..];
        let pieces = body.chunks(self.max_payload - 2);
        let count = pieces.len();
        for (i, piece) in pieces.enumerate() {
            let mut fu_header = header & 0x1F;
            if i == 0 {
                fu_header |= 0x80;
            }
            if i + 1 == count {
                fu_header |= 0x40;
            }
            let mut p = BytesMut::with_capacity(2 + piece.len());
            p.put_u8(indicator);
            p.put_u8(fu_header);
            p.put_slice(piece);
            out.push(RtpPayload {
                payload: p.freeze(),
                marker: false,
                timestamp,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avcc(nals: &[&[u8]]) -> Bytes {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        Bytes::from(v)
    }

    /// Reassembles NAL units from payloads, as a receiver would.
    fn depacketize(ps: &[RtpPayload]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in ps {
            let d = &p.payload[..];
            assert!(d.len() <= DEFAULT_MAX_PAYLOAD);
            match d[0] & 0x1f {
                STAP_A => {
                    let mut i = 1;
                    while i < d.len() {
                        let len = u16::from_be_bytes([d[i], d[i + 1]]) as usize;
                        nals.push(d[i + 2..i + 2 + len].to_vec());
                        i += 2 + len;
                    }
                }
                FU_A => {
                    if d[1] & 0x80 != 0 {
                        fu = Some(vec![(d[0] & 0xE0) | (d[1] & 0x1f)]);
                    }
                    fu.as_mut().unwrap().extend_from_slice(&d[2..]);
                    if d[1] & 0x40 != 0 {
                        nals.push(fu.take().unwrap());
                    }
                }
                _ => nals.push(d.to_vec()),
            }
        }
        nals
    }

    fn config() -> AvcDecoderConfig {
        AvcDecoderConfig {
            profile_indication: 0x64,
            profile_compatibility: 0,
            level_indication: 0x1e,
            nalu_length_size: 4,
            sps: vec![Bytes::from_static(&[0x67, 0x64, 0, 0x1e])],
            pps: vec![Bytes::from_static(&[0x68, 0xeb])],
        }
    }

    #[test]
    fn idr_gets_parameter_sets_in_a_stap_a_and_big_nals_fragment() {
        let mut p = H264Packetizer::default();
        p.set_config(&config());
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..5000).map(|i| i as u8))
            .collect();
        let au = avcc(&[&[0x09, 0xf0], &[0x06, 5, 1, 0x80], &idr]);
        let mut out = Vec::new();
        p.packetize(au, 3000, &mut out).unwrap();
        // STAP-A (SPS, PPS, SEI), then FU-A fragments of the IDR.
        assert_eq!(out[0].payload[0] & 0x1f, STAP_A);
        assert!(out[1..].iter().all(|r| r.payload[0] & 0x1f == FU_A));
        assert_eq!(out.len(), 1 + 5);
        assert!(out.iter().all(|r| r.timestamp == 3000));
        let markers: Vec<bool> = out.iter().map(|r| r.marker).collect();
        assert_eq!(markers.iter().filter(|m| **m).count(), 1);
        assert!(out.last().unwrap().marker);
        let nals = depacketize(&out);
        assert_eq!(nals.len(), 4, "AUD dropped");
        assert_eq!(nals[0][0], 0x67);
        assert_eq!(nals[1][0], 0x68);
        assert_eq!(nals[2][0], 0x06);
        assert_eq!(nals[3], idr);
        // NRI of the STAP-A is the highest of its NALs (SPS: 3).
        assert_eq!(out[0].payload[0] & 0x60, 0x60);
    }

    #[test]
    fn non_idr_small_frame_is_a_single_nal_packet() {
        let mut p = H264Packetizer::default();
        p.set_config(&config());
        let mut out = Vec::new();
        p.packetize(avcc(&[&[0x41, 1, 2, 3]]), 90, &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![RtpPayload {
                payload: Bytes::from_static(&[0x41, 1, 2, 3]),
                marker: true,
                timestamp: 90
            }]
        );
    }

    #[test]
    fn in_band_parameter_sets_are_not_duplicated_and_are_remembered() {
        let mut p = H264Packetizer::default();
        let mut out = Vec::new();
        assert!(!p.has_parameter_sets());
        let au = avcc(&[&[0x67, 1], &[0x68, 2], &[0x65, 3]]);
        p.packetize(au, 0, &mut out).unwrap();
        assert_eq!(depacketize(&out).len(), 3);
        assert!(p.has_parameter_sets());
        out.clear();
        p.packetize(avcc(&[&[0x65, 4]]), 0, &mut out).unwrap();
        assert_eq!(
            depacketize(&out),
            vec![vec![0x67, 1], vec![0x68, 2], vec![0x65, 4]]
        );
    }

    #[test]
    fn every_size_round_trips_within_the_budget() {
        let mut p = H264Packetizer::default();
        p.set_config(&config());
        for size in [
            1usize, 2, 1197, 1198, 1199, 1200, 1201, 2396, 2397, 2398, 10_000,
        ] {
            for ty in [0x41u8, 0x65] {
                let nal: Vec<u8> = std::iter::once(ty)
                    .chain((1..size).map(|i| (i * 7) as u8))
                    .collect();
                let small = [0x06u8, 1, 2];
                let mut out = Vec::new();
                p.packetize(avcc(&[&small, &nal, &small]), 1, &mut out)
                    .unwrap();
                let mut want = Vec::new();
                if ty == 0x65 {
                    want.push(vec![0x67, 0x64, 0, 0x1e]);
                    want.push(vec![0x68, 0xeb]);
                }
                want.push(small.to_vec());
                want.push(nal.clone());
                want.push(small.to_vec());
                assert_eq!(depacketize(&out), want, "size {size} type {ty:#x}");
                assert!(out.iter().rev().skip(1).all(|r| !r.marker));
            }
        }
    }

    #[test]
    fn malformed_access_units_emit_nothing() {
        let mut p = H264Packetizer::default();
        let mut out = Vec::new();
        for bad in [&[0, 0, 0, 9, 0x65][..], &[0, 0, 0, 0], &[0, 0, 0]] {
            assert!(p
                .packetize(Bytes::copy_from_slice(bad), 0, &mut out)
                .is_err());
        }
        // An AU with a good NAL then garbage emits nothing either.
        let mut au = avcc(&[&[0x41, 1]]).to_vec();
        au.extend_from_slice(&[0, 0, 0, 50, 1]);
        assert!(p.packetize(Bytes::from(au), 0, &mut out).is_err());
        assert!(out.is_empty());
        // An AU of only an AUD emits nothing and is fine.
        p.packetize(avcc(&[&[0x09, 0xf0]]), 0, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn annex_b_access_units_packetize_the_same() {
        let mut p = H264Packetizer::default();
        p.set_config(&config());
        let mut annex_b = vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x65];
        annex_b.extend((0..3000).map(|i| (i % 251) as u8 | 1));
        let mut out = Vec::new();
        p.packetize_annex_b(Bytes::from(annex_b.clone()), 5, &mut out)
            .unwrap();
        let nals = depacketize(&out);
        assert_eq!(nals.len(), 3, "SPS, PPS, IDR; AUD dropped");
        assert_eq!(&nals[2][..], &annex_b[9..]);
        assert!(out.last().unwrap().marker);
    }

    #[test]
    fn timestamps_come_from_pts() {
        assert_eq!(rtp_timestamp(1000, 0), 90_000);
        assert_eq!(rtp_timestamp(1000, 66), 95_940);
        assert_eq!(rtp_timestamp(0, -33), (-2970i64) as u32);
        // Wrap of the 32-bit ms clock keeps the 90 kHz clock continuous.
        assert_eq!(
            rtp_timestamp(u32::MAX, 0).wrapping_add(90),
            rtp_timestamp(0, 0)
        );
    }
}
