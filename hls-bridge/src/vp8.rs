//! VP8 over RTP (RFC 7741) to whole frames.
//!
//! VP8 does not go into the HLS output as is (it is transcoded to H.264);
//! this hands the transcoder complete frames only. As for H.264, a frame with
//! a hole is never emitted: after a loss everything is dropped until the next
//! key frame.

use bytes::{BufMut, Bytes, BytesMut};

use crate::h264::DepacketizerStats;
use crate::rtp::{Reordered, RtpPacket};

/// One complete VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp8Frame {
    pub rtp_timestamp: u32,
    pub keyframe: bool,
    /// Picture size, read from key frame headers.
    pub size: Option<(u16, u16)>,
    pub data: Bytes,
}

/// Turns in-order RTP packets into [`Vp8Frame`]s.
#[derive(Debug)]
pub struct Vp8Depacketizer {
    current: Option<Building>,
    waiting_for_keyframe: bool,
    stats: DepacketizerStats,
}

#[derive(Debug)]
struct Building {
    rtp_timestamp: u32,
    data: BytesMut,
    broken: bool,
}

impl Default for Vp8Depacketizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Splits an RTP payload into (start of partition 0?, VP8 payload), skipping
/// the payload descriptor (RFC 7741 §4.2).
fn descriptor(payload: &[u8]) -> Option<(bool, &[u8])> {
    let &b0 = payload.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let &x = payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID, 7 or 15 bits.
            let &pid = payload.get(i)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / Y / KEYIDX
        }
    }
    let rest = payload.get(i..)?;
    (!rest.is_empty()).then_some((start, rest))
}

impl Vp8Depacketizer {
    pub fn new() -> Self {
        Self {
            current: None,
            waiting_for_keyframe: true,
            stats: DepacketizerStats::default(),
        }
    }

    pub fn stats(&self) -> DepacketizerStats {
        self.stats
    }

    /// Whether frames are dropped until the next key frame (at the start,
    /// and after a loss): the publisher should be asked for one.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// Feeds what the reorder window released.
    pub fn push(&mut self, item: Reordered) -> Option<Vp8Frame> {
        match item {
            Reordered::Lost { .. } => {
                self.stats.losses += 1;
                if self.current.take().is_some() {
                    self.stats.dropped_frames += 1;
                }
                self.waiting_for_keyframe = true;
                None
            }
            Reordered::Packet(p) => self.push_packet(p),
        }
    }

    fn push_packet(&mut self, p: RtpPacket) -> Option<Vp8Frame> {
        let Some((start, data)) = descriptor(&p.payload) else {
            self.stats.malformed_packets += 1;
            if let Some(cur) = &mut self.current {
                cur.broken = true;
            }
            return None;
        };
        if start {
            if self.current.take().is_some() {
                // The previous frame never saw its marker.
                self.stats.dropped_frames += 1;
            }
            self.current = Some(Building {
                rtp_timestamp: p.timestamp,
                data: BytesMut::with_capacity(data.len() * 4),
                broken: false,
            });
        }
        match &mut self.current {
            Some(cur) if cur.rtp_timestamp == p.timestamp => cur.data.put_slice(data),
            _ => {
                // A continuation without its start: already counted or
                // dropped while waiting for a key frame.
                return None;
            }
        }
        if !p.marker {
            return None;
        }
        let cur = self.current.take()?;
        let keyframe = cur.data.first().is_some_and(|b| b & 0x01 == 0);
        if cur.broken || (self.waiting_for_keyframe && !keyframe) {
            self.stats.dropped_frames += 1;
            self.waiting_for_keyframe = true;
            return None;
        }
        self.waiting_for_keyframe = false;
        let data = cur.data.freeze();
        let size = (keyframe && data.len() >= 10 && data[3..6] == [0x9d, 0x01, 0x2a]).then(|| {
            (
                u16::from_le_bytes([data[6], data[7]]) & 0x3fff,
                u16::from_le_bytes([data[8], data[9]]) & 0x3fff,
            )
        });
        self.stats.frames += 1;
        Some(Vp8Frame {
            rtp_timestamp: cur.rtp_timestamp,
            keyframe,
            size,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key frame header for 640x360 followed by filler.
    fn keyframe(len: usize) -> Vec<u8> {
        let mut f = vec![0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        f.resize(len, 0xaa);
        f
    }

    fn interframe(len: usize) -> Vec<u8> {
        let mut f = vec![0x31, 0x05, 0x00];
        f.resize(len, 0xbb);
        f
    }

    /// Packetizes like libwebrtc: extended descriptor with a 15-bit
    /// PictureID, S bit on the first packet of each frame.
    fn packetize(frames: &[Vec<u8>], mtu: usize) -> Vec<RtpPacket> {
        let mut out = Vec::new();
        let mut seq = 0;
        for (i, f) in frames.iter().enumerate() {
            let chunks: Vec<&[u8]> = f.chunks(mtu).collect();
            for (k, c) in chunks.iter().enumerate() {
                let mut p = BytesMut::new();
                p.put_u8(0x80 | if k == 0 { 0x10 } else { 0 });
                p.put_u8(0x80);
                p.put_u16(0x8000 | i as u16);
                p.put_slice(c);
                out.push(RtpPacket {
                    seq,
                    timestamp: i as u32 * 3000,
                    marker: k == chunks.len() - 1,
                    payload: p.freeze(),
                });
                seq += 1;
            }
        }
        out
    }

    fn feed(d: &mut Vp8Depacketizer, packets: Vec<RtpPacket>) -> Vec<Vp8Frame> {
        packets
            .into_iter()
            .filter_map(|p| d.push(Reordered::Packet(p)))
            .collect()
    }

    #[test]
    fn reassembles_frames_and_reads_the_key_frame_size() {
        let frames = vec![keyframe(2500), interframe(700), interframe(1300)];
        let mut d = Vp8Depacketizer::new();
        let out = feed(&mut d, packetize(&frames, 1000));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].size, Some((640, 360)));
        assert!(out[0].keyframe && !out[1].keyframe);
        for (o, f) in out.iter().zip(&frames) {
            assert_eq!(&o.data[..], &f[..]);
        }
    }

    #[test]
    fn loss_drops_until_the_next_key_frame() {
        let frames = vec![
            keyframe(2500),
            interframe(1500),
            interframe(500),
            keyframe(2100),
            interframe(400),
        ];
        let packets = packetize(&frames, 1000);
        let mut d = Vp8Depacketizer::new();
        let mut out = Vec::new();
        for (i, p) in packets.into_iter().enumerate() {
            // Packet 4 is the second half of frame 1.
            if i == 4 {
                out.extend(d.push(Reordered::Lost { count: 1 }));
                continue;
            }
            out.extend(d.push(Reordered::Packet(p)));
        }
        let ts: Vec<u32> = out.iter().map(|f| f.rtp_timestamp / 3000).collect();
        assert_eq!(ts, vec![0, 3, 4]);
        assert_eq!(d.stats().dropped_frames, 2);
    }

    #[test]
    fn joins_at_a_key_frame_and_ignores_junk() {
        let frames = vec![interframe(300), keyframe(300)];
        let mut d = Vp8Depacketizer::new();
        let mut packets = packetize(&frames, 1000);
        packets.insert(
            1,
            RtpPacket {
                seq: 99,
                timestamp: 1,
                marker: true,
                payload: Bytes::from_static(&[0x90, 0x80]),
            },
        );
        let out = feed(&mut d, packets);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        assert_eq!(d.stats().malformed_packets, 1);
    }
}
