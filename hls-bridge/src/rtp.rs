//! RTP input and the small reorder window in front of every depacketizer.
//!
//! The SFU hands the bridge the packets it already parsed (it owns the
//! sockets, SRTP and the 16-bit sequence unwrapping), so the bridge sees an
//! extended `u64` sequence number and never has to guess about wrap-around.
//! Packets can still arrive out of order; [`ReorderBuffer`] holds a few of them
//! back, releases them in sequence order and, when a hole does not fill in
//! time, reports it as [`Reordered::Lost`] so that the depacketizer throws the
//! broken frame away instead of writing it into a segment.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// One RTP packet as the SFU forwards it to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// Extended (unwrapped) sequence number.
    pub seq: u64,
    /// RTP timestamp in the track's clock rate (90 kHz video, 48 kHz Opus).
    pub timestamp: u32,
    /// The marker bit: last packet of a video frame.
    pub marker: bool,
    /// The RTP payload, header and padding removed.
    pub payload: Bytes,
}

/// What the reorder window releases, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reordered {
    /// The next packet in sequence.
    Packet(RtpPacket),
    /// `count` packets were given up on before the next released packet.
    Lost { count: u64 },
}

/// How long and how much the reorder window may hold back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReorderConfig {
    /// Packets held at most; past this a hole is declared lost.
    pub max_packets: usize,
    /// Time the oldest held packet may wait for a hole before it fills.
    pub max_delay: Duration,
}

impl Default for ReorderConfig {
    fn default() -> Self {
        // Browsers reorder by a few packets at most on real networks; 50 ms
        // covers that without adding visible latency to the HLS path.
        Self {
            max_packets: 64,
            max_delay: Duration::from_millis(50),
        }
    }
}

/// A bounded reorder window over extended sequence numbers.
///
/// Sans-IO: time comes in with each packet; there is no timer of its own (the
/// next packet of a live track is never far away).
#[derive(Debug)]
pub struct ReorderBuffer {
    config: ReorderConfig,
    /// The next sequence number to release; `None` before the first packet.
    next: Option<u64>,
    /// Held packets, with the time they arrived.
    held: BTreeMap<u64, (RtpPacket, Duration)>,
    duplicates: u64,
}

impl ReorderBuffer {
    /// An empty window.
    pub fn new(config: ReorderConfig) -> Self {
        Self {
            config,
            next: None,
            held: BTreeMap::new(),
            duplicates: 0,
        }
    }

    /// Packets dropped because they came too late or twice.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Feeds one packet received at `now`; what can be released is appended
    /// to `out` in sequence order.
    pub fn push(&mut self, packet: RtpPacket, now: Duration, out: &mut Vec<Reordered>) {
        let next = *self.next.get_or_insert(packet.seq);
        if packet.seq < next || self.held.contains_key(&packet.seq) {
            // Already released, already given up on, or a retransmission
            // of something we hold: nothing to do.
            self.duplicates += 1;
            return;
        }
        self.held.insert(packet.seq, (packet, now));
        self.release(now, out);
    }

    fn release(&mut self, now: Duration, out: &mut Vec<Reordered>) {
        loop {
            let Some(next) = self.next else { return };
            if let Some((packet, _)) = self.held.remove(&next) {
                self.next = Some(next + 1);
                out.push(Reordered::Packet(packet));
                continue;
            }
            // A hole at `next`. Give up on it when the window is full or
            // the oldest held packet has waited long enough.
            let Some((&first, (_, arrived))) = self.held.iter().next() else {
                return;
            };
            let overfull = self.held.len() >= self.config.max_packets;
            let too_old = now.saturating_sub(*arrived) >= self.config.max_delay;
            if !(overfull || too_old) {
                return;
            }
            out.push(Reordered::Lost {
                count: first - next,
            });
            self.next = Some(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u64) -> RtpPacket {
        RtpPacket {
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            payload: Bytes::from(vec![seq as u8]),
        }
    }

    fn seqs(out: &[Reordered]) -> Vec<i64> {
        out.iter()
            .map(|r| match r {
                Reordered::Packet(p) => p.seq as i64,
                Reordered::Lost { count } => -(*count as i64),
            })
            .collect()
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn in_order_packets_pass_straight_through() {
        let mut rb = ReorderBuffer::new(ReorderConfig::default());
        let mut out = Vec::new();
        for s in 100..105 {
            rb.push(pkt(s), ms(s), &mut out);
        }
        assert_eq!(seqs(&out), vec![100, 101, 102, 103, 104]);
    }

    #[test]
    fn swapped_packets_are_put_back_in_order() {
        let mut rb = ReorderBuffer::new(ReorderConfig::default());
        let mut out = Vec::new();
        for s in [10, 12, 11, 13, 15, 14] {
            rb.push(pkt(s), ms(1), &mut out);
        }
        assert_eq!(seqs(&out), vec![10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn a_hole_is_declared_lost_after_the_delay() {
        let mut rb = ReorderBuffer::new(ReorderConfig::default());
        let mut out = Vec::new();
        rb.push(pkt(1), ms(0), &mut out);
        rb.push(pkt(3), ms(10), &mut out);
        rb.push(pkt(4), ms(20), &mut out);
        assert_eq!(seqs(&out), vec![1]);
        // 3 has waited 50 ms when 5 arrives: 2 is given up on.
        rb.push(pkt(5), ms(60), &mut out);
        assert_eq!(seqs(&out), vec![1, -1, 3, 4, 5]);
        // 2 arriving now is too late and is dropped.
        rb.push(pkt(2), ms(61), &mut out);
        assert_eq!(seqs(&out), vec![1, -1, 3, 4, 5]);
        assert_eq!(rb.duplicates(), 1);
    }

    #[test]
    fn a_hole_is_declared_lost_when_the_window_is_full() {
        let cfg = ReorderConfig {
            max_packets: 4,
            max_delay: Duration::from_secs(10),
        };
        let mut rb = ReorderBuffer::new(cfg);
        let mut out = Vec::new();
        rb.push(pkt(0), ms(0), &mut out);
        for s in [3, 4, 5] {
            rb.push(pkt(s), ms(1), &mut out);
        }
        assert_eq!(seqs(&out), vec![0]);
        rb.push(pkt(6), ms(1), &mut out);
        assert_eq!(seqs(&out), vec![0, -2, 3, 4, 5, 6]);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut rb = ReorderBuffer::new(ReorderConfig::default());
        let mut out = Vec::new();
        for s in [1, 2, 2, 1, 3] {
            rb.push(pkt(s), ms(0), &mut out);
        }
        assert_eq!(seqs(&out), vec![1, 2, 3]);
        assert_eq!(rb.duplicates(), 2);
    }
}
