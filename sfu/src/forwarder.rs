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
}
