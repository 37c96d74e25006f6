//! Opus over RTP (RFC 7587): one RTP payload is one Opus packet.
//!
//! Nothing to reassemble; what this adds is the packet's duration read from
//! its TOC byte (RFC 6716 §3.1), which the fMP4 writer needs as sample
//! duration, and a check that turns an empty or impossible packet into a
//! counted drop instead of a corrupt sample. Loss needs no special handling:
//! every Opus packet decodes on its own.

use bytes::Bytes;

use crate::rtp::Reordered;

/// The Opus RTP clock (RFC 7587 §4.1: always 48 kHz).
pub const OPUS_CLOCK_RATE: u32 = 48_000;

/// One Opus packet with its duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusFrame {
    pub rtp_timestamp: u32,
    /// Duration in 48 kHz samples (120 for 2.5 ms up to 5760 for 120 ms).
    pub duration: u32,
    pub data: Bytes,
}

/// Duration of an Opus packet in 48 kHz samples, from its TOC (RFC 6716).
pub fn packet_duration(packet: &[u8]) -> Option<u32> {
    let &toc = packet.first()?;
    let config = toc >> 3;
    // Frame size in units of 2.5 ms (120 samples at 48 kHz).
    let frame_units: u32 = match config {
        0..=11 => [4, 8, 16, 24][(config % 4) as usize],
        12..=15 => [4, 8][(config % 2) as usize],
        _ => [1, 2, 4, 8][(config % 4) as usize],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => (*packet.get(1)? & 0x3f) as u32,
    };
    let duration = frames * frame_units * 120;
    // RFC 6716 §3.2.5: at most 120 ms per packet, and at least one frame.
    (frames > 0 && duration <= 5760).then_some(duration)
}

/// Turns in-order RTP packets into [`OpusFrame`]s.
#[derive(Debug, Default)]
pub struct OpusDepacketizer {
    frames: u64,
    malformed: u64,
    lost_packets: u64,
}

impl OpusDepacketizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds what the reorder window released.
    pub fn push(&mut self, item: Reordered) -> Option<OpusFrame> {
        match item {
            Reordered::Lost { count } => {
                self.lost_packets += count;
                None
            }
            Reordered::Packet(p) => match packet_duration(&p.payload) {
                Some(duration) => {
                    self.frames += 1;
                    Some(OpusFrame {
                        rtp_timestamp: p.timestamp,
                        duration,
                        data: p.payload,
                    })
                }
                None => {
                    self.malformed += 1;
                    None
                }
            },
        }
    }

    /// (frames emitted, malformed packets, packets lost)
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.frames, self.malformed, self.lost_packets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{ReorderBuffer, ReorderConfig, RtpPacket};
    use std::time::Duration;

    /// The 20 ms CELT fullband silence frame browsers send during DTX-free
    /// silence.
    pub(crate) const SILENCE_20MS: [u8; 3] = [0xf8, 0xff, 0xfe];

    #[test]
    fn durations_from_toc() {
        assert_eq!(packet_duration(&SILENCE_20MS), Some(960));
        // SILK NB 10 ms, one frame.
        assert_eq!(packet_duration(&[0x00, 1]), Some(480));
        // SILK WB 60 ms.
        assert_eq!(packet_duration(&[(11 << 3), 1]), Some(2880));
        // Hybrid FB 20 ms, two frames (code 1).
        assert_eq!(packet_duration(&[(15 << 3) | 1, 1]), Some(1920));
        // CELT 2.5 ms, code 3 with 6 frames.
        assert_eq!(packet_duration(&[(16 << 3) | 3, 6]), Some(720));
        // Code 3 asking for 7 × 20 ms = 140 ms: invalid.
        assert_eq!(packet_duration(&[(31 << 3) | 3, 7]), None);
        assert_eq!(packet_duration(&[(31 << 3) | 3, 0]), None);
        assert_eq!(packet_duration(&[(31 << 3) | 3]), None);
        assert_eq!(packet_duration(&[]), None);
    }

    #[test]
    fn frames_come_out_in_order_and_loss_is_counted() {
        let mut rb = ReorderBuffer::new(ReorderConfig::default());
        let mut d = OpusDepacketizer::new();
        let mut out = Vec::new();
        let mut frames = Vec::new();
        // 20 ms packets; 3 and 4 swapped, 6 lost, one empty payload.
        let order = [0u64, 1, 2, 4, 3, 5, 7, 8, 9, 10];
        for (i, &s) in order.iter().enumerate() {
            let payload = if s == 8 {
                Bytes::new()
            } else {
                Bytes::from_static(&SILENCE_20MS)
            };
            let p = RtpPacket {
                seq: s,
                timestamp: 960 * s as u32,
                marker: false,
                payload,
            };
            rb.push(p, Duration::from_millis(20 * i as u64), &mut out);
            for r in out.drain(..) {
                frames.extend(d.push(r));
            }
        }
        let ts: Vec<u32> = frames.iter().map(|f| f.rtp_timestamp / 960).collect();
        assert_eq!(ts, vec![0, 1, 2, 3, 4, 5, 7, 9, 10]);
        assert!(frames.iter().all(|f| f.duration == 960));
        assert_eq!(d.counters(), (9, 1, 1));
    }
}
