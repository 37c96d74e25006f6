//! The last group of pictures of one video layer, kept so that a new viewer
//! gets a picture at once even from a publisher that ignores keyframe
//! requests (OBS does): on join, the cached packets are replayed from the
//! keyframe to the live edge, then the viewer continues live.
//!
//! The cache holds shared payloads (`Arc<[u8]>`, no copies), in sequence
//! order, from the newest keyframe on. It is bounded in bytes: a GOP larger
//! than the bound is dropped whole (a partial GOP is useless to a decoder)
//! and caching resumes at the next keyframe.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One cached RTP packet of the current GOP.
#[derive(Debug, Clone)]
pub struct CachedPacket {
    /// The publisher stream's extended sequence number.
    pub seq_no: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// The publisher's payload type.
    pub pt: u8,
    pub payload: Arc<[u8]>,
    pub keyframe_start: bool,
    pub arrival: Instant,
}

#[derive(Debug)]
pub struct GopCache {
    packets: VecDeque<CachedPacket>,
    bytes: usize,
    max_bytes: usize,
    /// Whether `packets` starts at a keyframe (caching is on).
    started: bool,
    /// When the GOP's keyframe arrived.
    started_at: Option<Instant>,
}

impl GopCache {
    pub fn new(max_bytes: usize) -> GopCache {
        GopCache {
            packets: VecDeque::new(),
            bytes: 0,
            max_bytes,
            started: false,
            started_at: None,
        }
    }

    /// Adds one packet of the layer. A keyframe start begins a new GOP;
    /// before the first keyframe nothing is kept.
    pub fn push(&mut self, p: CachedPacket) {
        if self.max_bytes == 0 {
            return;
        }
        // Several packets of one keyframe may each look like its start (SPS
        // and PPS in a STAP-A, then the IDR): only a keyframe with a new
        // timestamp begins a new GOP, or the parameter sets would be lost.
        let same_frame = self.started
            && self
                .packets
                .front()
                .is_some_and(|f| f.timestamp == p.timestamp);
        if p.keyframe_start && !same_frame {
            // Keep packets of the new GOP that overtook its first packet.
            let first = p.seq_no;
            self.packets.retain(|q| q.seq_no > first);
            self.bytes = self.packets.iter().map(|q| q.payload.len()).sum();
            self.started = true;
            self.started_at = Some(p.arrival);
        } else if !self.started {
            return;
        } else if self.packets.front().is_some_and(|f| p.seq_no < f.seq_no) {
            return; // older than the GOP (a late retransmission of the last one)
        }
        // Usually the packet goes at the end; reordered ones are inserted.
        let at = self
            .packets
            .iter()
            .rposition(|q| q.seq_no <= p.seq_no)
            .map_or(0, |i| i + 1);
        if at > 0 && self.packets[at - 1].seq_no == p.seq_no {
            return; // duplicate
        }
        self.bytes += p.payload.len();
        self.packets.insert(at, p);
        if self.bytes > self.max_bytes {
            self.clear();
        }
    }

    /// The GOP, from its keyframe on, if there is one.
    pub fn packets(&self) -> Option<impl Iterator<Item = &CachedPacket>> {
        let ready = self.started && self.packets.front().is_some_and(|p| p.keyframe_start);
        ready.then(|| self.packets.iter())
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How old the GOP's keyframe is: replaying an old GOP puts a viewer
    /// that far behind live until its decoder catches up.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.started_at.map(|t| now.saturating_duration_since(t))
    }

    /// Forgets everything (the publisher left, or the GOP outgrew the bound).
    pub fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
        self.started = false;
        self.started_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u64, key: bool, len: usize) -> CachedPacket {
        CachedPacket {
            seq_no: seq,
            timestamp: (seq as u32) * 3000,
            marker: false,
            pt: 96,
            payload: vec![0u8; len].into(),
            keyframe_start: key,
            arrival: Instant::now(),
        }
    }

    fn seqs(c: &GopCache) -> Option<Vec<u64>> {
        c.packets().map(|it| it.map(|p| p.seq_no).collect())
    }

    #[test]
    fn keeps_nothing_before_the_first_keyframe() {
        let mut c = GopCache::new(10_000);
        c.push(pkt(1, false, 100));
        assert!(seqs(&c).is_none());
        c.push(pkt(2, true, 100));
        c.push(pkt(3, false, 100));
        assert_eq!(seqs(&c), Some(vec![2, 3]));
        assert_eq!(c.bytes(), 200);
    }

    #[test]
    fn a_new_keyframe_starts_a_new_gop() {
        let mut c = GopCache::new(10_000);
        for s in 10..20 {
            c.push(pkt(s, s == 10, 10));
        }
        c.push(pkt(20, true, 10));
        c.push(pkt(21, false, 10));
        assert_eq!(seqs(&c), Some(vec![20, 21]));
        assert_eq!(c.bytes(), 20);
    }

    #[test]
    fn reordered_duplicate_and_late_packets() {
        let mut c = GopCache::new(10_000);
        c.push(pkt(5, true, 10));
        c.push(pkt(7, false, 10));
        c.push(pkt(6, false, 10)); // reordered
        c.push(pkt(7, false, 10)); // duplicate (e.g. retransmitted)
        c.push(pkt(4, false, 10)); // older than the GOP
        assert_eq!(seqs(&c), Some(vec![5, 6, 7]));
        assert_eq!(c.bytes(), 30);
        // A packet of the next GOP that overtook its keyframe is kept.
        c.push(pkt(9, false, 10));
        c.push(pkt(8, true, 10));
        assert_eq!(seqs(&c), Some(vec![8, 9]));
    }

    #[test]
    fn a_gop_over_the_bound_is_dropped_until_the_next_keyframe() {
        let mut c = GopCache::new(250);
        c.push(pkt(1, true, 100));
        c.push(pkt(2, false, 100));
        assert!(seqs(&c).is_some());
        c.push(pkt(3, false, 100)); // 300 > 250
        assert!(seqs(&c).is_none());
        assert_eq!(c.bytes(), 0);
        c.push(pkt(4, false, 100));
        assert!(seqs(&c).is_none());
        c.push(pkt(5, true, 100));
        assert_eq!(seqs(&c), Some(vec![5]));
    }

    #[test]
    fn parameter_sets_and_idr_of_one_keyframe_stay_together() {
        // aiortc / OBS style: STAP-A(SPS, PPS) then the IDR, same timestamp.
        let mut c = GopCache::new(10_000);
        let mut sps = pkt(10, true, 10);
        let mut idr = pkt(11, true, 100);
        sps.timestamp = 90_000;
        idr.timestamp = 90_000;
        c.push(sps);
        c.push(idr);
        let mut next = pkt(12, false, 50);
        next.timestamp = 93_000;
        c.push(next);
        assert_eq!(seqs(&c), Some(vec![10, 11, 12]));
        // The next keyframe (a new timestamp) does start a new GOP.
        let mut k2 = pkt(13, true, 10);
        k2.timestamp = 180_000;
        c.push(k2);
        assert_eq!(seqs(&c), Some(vec![13]));
    }

    #[test]
    fn disabled_when_the_bound_is_zero() {
        let mut c = GopCache::new(0);
        c.push(pkt(1, true, 1));
        assert!(seqs(&c).is_none());
    }
}
