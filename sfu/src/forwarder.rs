//! TEMPORARY stub until the real forwarder lands.
use super::codec::Vp8Descriptor;
use std::time::Instant;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId {
    pub generation: u64,
    pub layer: u8,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
}
pub struct Rewrite {
    pub seq_no: u64,
    pub timestamp: u32,
    pub vp8: Option<Vp8Rewrite>,
}
#[derive(Clone, Copy)]
pub struct Vp8Rewrite {
    pub picture_id: Option<u16>,
    pub tl0picidx: Option<u8>,
    pub keyidx: Option<u8>,
}
pub struct Forwarder {
    kind: MediaKind,
    target: Option<SourceId>,
    current: Option<SourceId>,
    seq_off: u64,
    ts_off: u32,
    next_seq: u64,
    next_ts: u32,
    clock_rate: u32,
    retime: Option<(Instant, u32)>,
    replayed_up_to: Option<u64>,
}
impl Forwarder {
    pub fn new(
        kind: MediaKind,
        _clock_rate: u32,
        initial_seq: u16,
        initial_timestamp: u32,
    ) -> Self {
        Forwarder {
            kind,
            target: None,
            current: None,
            seq_off: 0,
            ts_off: 0,
            next_seq: initial_seq as u64,
            next_ts: initial_timestamp,
            clock_rate: _clock_rate,
            retime: None,
            replayed_up_to: None,
        }
    }
    pub fn set_target(&mut self, s: SourceId) {
        self.target = Some(s);
    }
    pub fn target(&self) -> Option<SourceId> {
        self.target
    }
    pub fn current(&self) -> Option<SourceId> {
        self.current
    }
    pub fn needs_keyframe(&self) -> bool {
        self.kind == MediaKind::Video && self.current != self.target
    }
    pub fn forward(
        &mut self,
        _arrival: Instant,
        source: SourceId,
        seq_no: u64,
        timestamp: u32,
        keyframe_start: bool,
        _vp8: Option<&Vp8Descriptor>,
    ) -> Option<Rewrite> {
        if Some(source) != self.current {
            if Some(source) != self.target || (self.kind == MediaKind::Video && !keyframe_start) {
                return None;
            }
            self.current = Some(source);
            self.seq_off = self.next_seq.wrapping_sub(seq_no);
            self.ts_off = self.next_ts.wrapping_sub(timestamp);
        }
        if self.replayed_up_to.is_some_and(|m| seq_no <= m) {
            return None;
        }
        if let Some((at, last_ts)) = self.retime.take() {
            let elapsed = _arrival.saturating_duration_since(at).as_micros() as u64
                * self.clock_rate as u64
                / 1_000_000;
            self.ts_off = last_ts
                .wrapping_add(elapsed.max(1) as u32)
                .wrapping_sub(timestamp);
        }
        let seq = seq_no.wrapping_add(self.seq_off);
        let ts = timestamp.wrapping_add(self.ts_off);
        if seq >= self.next_seq {
            self.next_seq = seq + 1;
            self.next_ts = ts.wrapping_add(3000);
        }
        Some(Rewrite {
            seq_no: seq,
            timestamp: ts,
            vp8: None,
        })
    }

    /// Starts the output with a cached GOP of `source` (keyframe first), its
    /// timestamps squeezed to one tick per frame so the viewer decodes it at
    /// once; the next live packet is re-timed from its arrival.
    pub fn replay(
        &mut self,
        now: Instant,
        source: SourceId,
        packets: &[(u64, u32, bool)],
    ) -> Vec<Option<Rewrite>> {
        let Some(&(first_seq, _, true)) = packets.first() else {
            return Vec::new();
        };
        if self.current.is_some() {
            return Vec::new();
        }
        self.target = Some(source);
        self.current = Some(source);
        self.seq_off = self.next_seq.wrapping_sub(first_seq);
        let mut ts = self.next_ts;
        let mut prev_in: Option<u32> = None;
        let mut out = Vec::with_capacity(packets.len());
        for &(seq, t, _) in packets {
            if prev_in.is_some_and(|p| p != t) {
                ts = ts.wrapping_add(1);
            }
            prev_in = Some(t);
            let s = seq.wrapping_add(self.seq_off);
            self.next_seq = self.next_seq.max(s + 1);
            out.push(Some(Rewrite {
                seq_no: s,
                timestamp: ts,
                vp8: None,
            }));
        }
        self.replayed_up_to = packets.last().map(|p| p.0);
        self.retime = Some((now, ts));
        self.next_ts = ts.wrapping_add(1);
        out
    }
}
