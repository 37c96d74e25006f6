//! The Forwarder: one subscriber's view of one track. It turns packets from
//! a changing set of sources (the simulcast layers of a publisher; a
//! publisher that leaves and another that reconnects) into one continuous
//! outgoing stream, by choosing which packets go out and rewriting their
//! headers.
//!
//! ```text
//!  layer 0 ──┐
//!  layer 1 ──┼─► forward(source, seq, ts, keyframe_start, vp8) ─► Some(Rewrite { seq, ts, vp8 })
//!  gen 2 / 0 ┘        ▲ set_target(source)                     └► None: drop for this viewer
//!                     └── the caller (layer selection, publisher reconnects)
//! ```
//!
//! The browser must never see the sequence number go back, a timestamp jump
//! it would read as a discontinuity, or a picture that starts on a delta
//! frame. So video moves to the target source only on one of its keyframe
//! starts (until then the current source keeps flowing: a switch never blanks
//! the picture); audio moves at the target's first packet. At each start or
//! switch the output sequence continues at the newest one sent + 1 and the
//! timestamp advances by the wall-clock time since then; afterwards both are
//! `input + offset`, so the publisher's reordering and losses reach the
//! viewer 1:1 and NACK repairs (retransmissions) land on the sequence number
//! the lost packet would have had. For VP8, PictureID / TL0PICIDX / KEYIDX are
//! continued the same way (the "munger" of LiveKit and Membrane).
//!
//! Sans-IO and cheap: no allocation, lock or log per packet, time comes in
//! with each packet. Choosing the target (bandwidth, hysteresis) and asking
//! publishers for keyframes (see [`Forwarder::needs_keyframe`]) are the
//! caller's job.

use std::time::Instant;

use super::codec::Vp8Descriptor;

/// Where packets come from: a layer of one publisher's incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId {
    /// Changes when a publisher reconnects: its streams restart anywhere.
    pub generation: u64,
    /// The simulcast layer (0 without simulcast).
    pub layer: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
}

/// The header fields to send one packet to this subscriber with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// Extended output sequence number; below 2^16 at the start, so the
    /// receiver's rollover count starts at 0. The wire carries `seq_no as u16`.
    pub seq_no: u64,
    pub timestamp: u32,
    /// For a packet forwarded with a VP8 descriptor: the values to write into
    /// it (see [`super::codec::rewrite_vp8_descriptor`]).
    pub vp8: Option<Vp8Rewrite>,
}

/// Output values of the VP8 descriptor fields, each `Some` exactly when the
/// publisher's packet has the field, in that packet's width (PictureID 7 or
/// 15 bits as its M bit says; KEYIDX 5 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp8Rewrite {
    pub picture_id: Option<u16>,
    pub tl0picidx: Option<u8>,
    pub keyidx: Option<u8>,
}

/// Counters since the Forwarder was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    pub packets_forwarded: u64,
    pub packets_dropped: u64,
    /// Times the forwarded source changed, the first start included.
    pub switches: u64,
}

/// The largest timestamp advance at a switch (about 3 h at 90 kHz): beyond
/// 2^31 the receiver would read the jump as going backwards.
const MAX_SWITCH_TICKS: u32 = 1 << 30;

/// One subscriber's view of one track. See the module documentation.
#[derive(Clone, Debug)]
pub struct Forwarder {
    kind: MediaKind,
    clock_rate: u32,
    initial_seq: u16,
    initial_timestamp: u32,
    target: Option<SourceId>,
    current: Option<Segment>,
    /// The newest packet sent (highest output sequence number).
    newest: Option<Sent>,
    /// The smallest timestamp advance seen between consecutive packets: the
    /// duration of an audio packet or a video frame. A switch advances the
    /// timestamp by at least this much, so that the first packet of the new
    /// source does not overlap the last one of the old (NetEq would drop it as
    /// late when two sources flow side by side and the switch comes 5 ms after
    /// a 20 ms packet).
    min_step: Option<u32>,
    /// Highest VP8 field values sent, in extended (unwrapped) form.
    vp8_sent: Vp8Sent,
    /// The pending switch was asked for with
    /// [`switch_now`](Forwarder::switch_now): the current source's new
    /// frames are dropped until the target's keyframe.
    cut_over: bool,
    stats: ForwarderStats,
}

/// The stretch of output fed by one source since the switch to it.
#[derive(Clone, Copy, Debug)]
struct Segment {
    source: SourceId,
    /// The switch point: older packets of the source are not ours to send.
    first_in_seq: u64,
    first_out_seq: u64,
    /// `out = in + offset`, wrapping (the input may be far above the output).
    seq_offset: u64,
    ts_offset: u32,
    vp8: Vp8Segment,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    seq: u64,
    timestamp: u32,
    arrival: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
struct Vp8Sent {
    picture_id: Option<i64>,
    tl0picidx: Option<i64>,
    keyidx: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Vp8Segment {
    picture_id: Option<FieldMap>,
    tl0picidx: Option<FieldMap>,
    keyidx: Option<FieldMap>,
}

/// The mapping of one wrapping VP8 field within a segment.
#[derive(Clone, Copy, Debug)]
struct FieldMap {
    /// Highest input value seen, unwrapped: the reference for the next one.
    newest_in: i64,
    offset: i64,
}

const PICTURE_ID_BITS_SHORT: u32 = 7;
const PICTURE_ID_BITS_LONG: u32 = 15;
const TL0PICIDX_BITS: u32 = 8;
const KEYIDX_BITS: u32 = 5;

impl Forwarder {
    /// `initial_seq` / `initial_timestamp` are the first output values (pick
    /// them at random, RFC 3550); `clock_rate` is the track's RTP clock.
    pub fn new(kind: MediaKind, clock_rate: u32, initial_seq: u16, initial_timestamp: u32) -> Self {
        Forwarder {
            kind,
            clock_rate,
            initial_seq,
            initial_timestamp,
            target: None,
            current: None,
            newest: None,
            min_step: None,
            vp8_sent: Vp8Sent::default(),
            cut_over: false,
            stats: ForwarderStats::default(),
        }
    }

    /// Which source this viewer should receive. Setting the current target
    /// again changes nothing; setting the current source cancels a pending
    /// switch.
    pub fn set_target(&mut self, source: SourceId) {
        if self.target != Some(source) {
            self.cut_over = false;
        }
        self.target = Some(source);
    }

    /// Like [`set_target`](Self::set_target), but video stops forwarding
    /// the current source's new frames at once (the frame in progress is
    /// finished) instead of keeping it until the target's keyframe. For a
    /// move down under congestion: the old layer's packets no longer fit the
    /// viewer's link, are mostly lost there, and queue in front of the
    /// keyframe the switch waits for. The picture holds its last frame
    /// meanwhile. Setting the current source cancels it like a switch.
    pub fn switch_now(&mut self, source: SourceId) {
        self.target = Some(source);
        self.cut_over = self.kind == MediaKind::Video && self.current() != Some(source);
    }

    /// Stops forwarding at once (viewer paused, track unwatched). A later
    /// [`set_target`](Self::set_target) resumes the same continuous output.
    #[allow(
        dead_code,
        reason = "API for pausing a viewer; the engine has no pause yet"
    )]
    pub fn clear_target(&mut self) {
        self.target = None;
        self.current = None;
        self.cut_over = false;
    }

    /// A switch asked for with [`switch_now`](Self::switch_now) is pending.
    pub fn cutting_over(&self) -> bool {
        self.cut_over && self.needs_keyframe()
    }

    pub fn target(&self) -> Option<SourceId> {
        self.target
    }

    /// The source being forwarded now.
    pub fn current(&self) -> Option<SourceId> {
        self.current.map(|s| s.source)
    }

    /// Video waiting for a keyframe of the target to start or to switch: the
    /// caller should ask the target's publisher for one (PLI/FIR), rate-limited.
    pub fn needs_keyframe(&self) -> bool {
        self.kind == MediaKind::Video && self.target.is_some() && self.target != self.current()
    }

    pub fn stats(&self) -> ForwarderStats {
        self.stats
    }

    /// One incoming packet of `source`. `seq_no` is the publisher stream's
    /// extended sequence number, `timestamp` its raw RTP timestamp,
    /// `keyframe_start` from [`super::codec::is_keyframe_start`], `arrival`
    /// the packet's arrival time, `vp8` its parsed descriptor for VP8.
    /// Returns the header fields to send to this subscriber, or None to drop
    /// the packet.
    pub fn forward(
        &mut self,
        arrival: Instant,
        source: SourceId,
        seq_no: u64,
        timestamp: u32,
        keyframe_start: bool,
        vp8: Option<&Vp8Descriptor>,
    ) -> Option<Rewrite> {
        let rewrite = self.map(arrival, source, seq_no, timestamp, keyframe_start, vp8);
        match rewrite {
            Some(_) => self.stats.packets_forwarded += 1,
            None => self.stats.packets_dropped += 1,
        }
        rewrite
    }

    fn map(
        &mut self,
        arrival: Instant,
        source: SourceId,
        seq_no: u64,
        timestamp: u32,
        keyframe_start: bool,
        vp8: Option<&Vp8Descriptor>,
    ) -> Option<Rewrite> {
        if self.current() != Some(source) {
            let can_start = self.kind == MediaKind::Audio || keyframe_start;
            if self.target != Some(source) || !can_start {
                return None;
            }
            self.start_segment(arrival, source, seq_no, timestamp);
        }
        let segment = self.current.as_mut()?;
        if seq_no < segment.first_in_seq {
            return None;
        }
        let seq = seq_no.wrapping_add(segment.seq_offset);
        let ts = timestamp.wrapping_add(segment.ts_offset);
        if self.cut_over
            && self.target != Some(source)
            && self.newest.is_none_or(|n| n.timestamp != ts)
        {
            return None; // a new frame of the layer being left: see `switch_now`
        }
        if self.newest.is_none_or(|n| seq > n.seq) {
            // Learn the packet duration only within one source: the advance
            // across a switch is our own invention.
            if let Some(n) = self.newest.filter(|n| n.seq >= segment.first_out_seq) {
                let step = ts.wrapping_sub(n.timestamp);
                if step > 0 && step <= self.clock_rate {
                    self.min_step = Some(self.min_step.map_or(step, |m| m.min(step)));
                }
            }
            self.newest = Some(Sent {
                seq,
                timestamp: ts,
                arrival,
            });
        }
        let vp8 = vp8.map(|d| {
            let (maps, sent) = (&mut segment.vp8, &mut self.vp8_sent);
            let picture_id_bits = if d.picture_id_15bit {
                PICTURE_ID_BITS_LONG
            } else {
                PICTURE_ID_BITS_SHORT
            };
            Vp8Rewrite {
                picture_id: d.picture_id.map(|v| {
                    map_field(
                        &mut maps.picture_id,
                        &mut sent.picture_id,
                        v,
                        picture_id_bits,
                    )
                }),
                tl0picidx: d.tl0picidx.map(|v| {
                    map_field(
                        &mut maps.tl0picidx,
                        &mut sent.tl0picidx,
                        v.into(),
                        TL0PICIDX_BITS,
                    ) as u8
                }),
                keyidx: d.keyidx.map(|v| {
                    map_field(&mut maps.keyidx, &mut sent.keyidx, v.into(), KEYIDX_BITS) as u8
                }),
            }
        });
        Some(Rewrite {
            seq_no: seq,
            timestamp: ts,
            vp8,
        })
    }

    /// The first output sequence number and timestamp of a new segment.
    fn next_start(&self, arrival: Instant) -> (u64, u32) {
        match self.newest {
            None => (u64::from(self.initial_seq), self.initial_timestamp),
            Some(n) => {
                let elapsed = arrival.saturating_duration_since(n.arrival);
                let ticks = elapsed
                    .as_nanos()
                    .saturating_mul(u128::from(self.clock_rate))
                    / 1_000_000_000;
                let ticks = u32::try_from(ticks)
                    .unwrap_or(u32::MAX)
                    .min(MAX_SWITCH_TICKS);
                let floor = self.min_step.map_or(1, |s| s.min(self.clock_rate)).max(1);
                (
                    n.seq.wrapping_add(1),
                    n.timestamp.wrapping_add(ticks.max(floor)),
                )
            }
        }
    }

    fn start_segment(&mut self, arrival: Instant, source: SourceId, seq_no: u64, timestamp: u32) {
        let (seq, ts) = self.next_start(arrival);
        self.cut_over = false;
        self.current = Some(Segment {
            source,
            first_in_seq: seq_no,
            first_out_seq: seq,
            seq_offset: seq.wrapping_sub(seq_no),
            ts_offset: ts.wrapping_sub(timestamp),
            vp8: Vp8Segment::default(),
        });
        self.stats.switches += 1;
    }

    /// Starts a video viewer with a cached GOP of `source` instead of waiting
    /// for a keyframe. `packets` are `(seq_no, timestamp, keyframe_start)` of
    /// the cache in sequence order, the first a keyframe start. Returns one
    /// entry per packet (None: do not send it), or nothing at all when the
    /// replay cannot happen (audio, a source already flowing, no keyframe
    /// first): then wait for a keyframe as usual.
    ///
    /// The GOP's frames go out one timestamp tick apart, so the viewer
    /// decodes up to the live edge at once instead of playing the past GOP at
    /// its pace. The last cached frame and every later packet of `source` keep
    /// `in + offset` from there: live packets of that frame join it, and later
    /// frames follow at their real spacing. Live packets older than the last
    /// cached frame are dropped (already sent).
    ///
    /// Replayed packets carry no VP8 rewrite (the cache has no descriptors):
    /// send their PictureIDs as they are. The VP8 continuity restarts from
    /// them, so live packets then map 1:1 as well.
    pub fn replay(
        &mut self,
        now: Instant,
        source: SourceId,
        packets: &[(u64, u32, bool)],
    ) -> Vec<Option<Rewrite>> {
        let Some(&(first_seq, first_ts, true)) = packets.first() else {
            return Vec::new();
        };
        if self.kind != MediaKind::Video || self.current.is_some() {
            return Vec::new();
        }
        // Frames by timestamp order, relative to the keyframe (wrap-aware):
        // reordered packets of an earlier frame must not look like new ones.
        // Not a hot path: once per viewer start.
        let ahead = |ts: u32| Some(ts.wrapping_sub(first_ts)).filter(|d| *d < 1 << 31);
        let in_gop =
            |&(seq, ts, _): &(u64, u32, bool)| if seq >= first_seq { ahead(ts) } else { None };
        let mut frames: Vec<u32> = packets.iter().filter_map(in_gop).collect();
        frames.sort_unstable();
        frames.dedup();
        let last_frame = frames.last().copied().unwrap_or(0);
        let last_rank = u32::try_from(frames.len().saturating_sub(1)).unwrap_or(u32::MAX);

        let (out_seq, base_ts) = self.next_start(now);
        let seq_offset = out_seq.wrapping_sub(first_seq);
        let last_out_ts = base_ts.wrapping_add(last_rank);
        let first_live_seq = packets
            .iter()
            .filter(|p| in_gop(p) == Some(last_frame))
            .map(|p| p.0)
            .min()
            .unwrap_or(first_seq);

        let mut newest_seq = out_seq;
        let rewrites: Vec<Option<Rewrite>> = packets
            .iter()
            .map(|p| {
                let frame = in_gop(p)?;
                let rank = frames.binary_search(&frame).ok()?;
                let seq = p.0.wrapping_add(seq_offset);
                newest_seq = newest_seq.max(seq);
                Some(Rewrite {
                    seq_no: seq,
                    timestamp: base_ts.wrapping_add(u32::try_from(rank).unwrap_or(u32::MAX)),
                    vp8: None,
                })
            })
            .collect();

        let sent = rewrites.iter().filter(|r| r.is_some()).count() as u64;
        self.stats.packets_forwarded += sent;
        self.stats.packets_dropped += rewrites.len() as u64 - sent;
        self.stats.switches += 1;
        self.target = Some(source);
        self.cut_over = false;
        self.current = Some(Segment {
            source,
            first_in_seq: first_live_seq,
            first_out_seq: newest_seq,
            seq_offset,
            ts_offset: last_out_ts.wrapping_sub(first_ts.wrapping_add(last_frame)),
            vp8: Vp8Segment::default(),
        });
        // The squeezed ticks are not packet durations: learn from the next
        // live frame on (first_out_seq = newest makes the step from here count).
        self.newest = Some(Sent {
            seq: newest_seq,
            timestamp: last_out_ts,
            arrival: now,
        });
        self.vp8_sent = Vp8Sent::default();
        rewrites
    }
}

/// Maps one wrapping field value (`bits` wide) of the current segment to its
/// output value of the same width, keeping the output continuous: the first
/// value of a segment follows the highest one sent (a switch happens at a
/// keyframe, so a new picture, a new TL0 picture and a new key index).
fn map_field(
    map: &mut Option<FieldMap>,
    highest_sent: &mut Option<i64>,
    value: u16,
    bits: u32,
) -> u16 {
    let extended = match map {
        Some(m) => unwrap(m.newest_in, value, bits),
        None => i64::from(value),
    };
    let m = map.get_or_insert_with(|| FieldMap {
        newest_in: extended,
        offset: highest_sent.map_or(0, |h| h.wrapping_add(1).wrapping_sub(extended)),
    });
    m.newest_in = m.newest_in.max(extended);
    let out = extended.wrapping_add(m.offset);
    if highest_sent.is_none_or(|h| out > h) {
        *highest_sent = Some(out);
    }
    // Fits: rem_euclid by 2^bits with bits <= 15.
    out.rem_euclid(1 << bits) as u16
}

/// The extended value nearest to `reference` whose low `bits` are `value`.
/// Per packet, not per source: a 7-bit and a 15-bit PictureID unwrap against
/// the same reference, so a width change does not break the count.
fn unwrap(reference: i64, value: u16, bits: u32) -> i64 {
    let modulus = 1i64 << bits;
    let forward = (i64::from(value) - reference).rem_euclid(modulus);
    if forward < modulus / 2 {
        reference.wrapping_add(forward)
    } else {
        reference.wrapping_add(forward - modulus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: SourceId = SourceId {
        generation: 1,
        layer: 0,
    };
    const B: SourceId = SourceId {
        generation: 1,
        layer: 1,
    };
    const NEXT_GEN: SourceId = SourceId {
        generation: 2,
        layer: 0,
    };

    /// Injected time: `at(ms)` is a fixed base plus `ms`.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Clock(Instant::now())
        }

        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn video() -> Forwarder {
        Forwarder::new(MediaKind::Video, 90_000, 1000, 50_000)
    }

    /// (seq, ts) of a forwarded packet, or None if dropped.
    fn send(
        f: &mut Forwarder,
        at: Instant,
        source: SourceId,
        seq: u64,
        ts: u32,
        key: bool,
    ) -> Option<(u64, u32)> {
        f.forward(at, source, seq, ts, key, None)
            .map(|r| (r.seq_no, r.timestamp))
    }

    #[test]
    fn video_starts_only_at_a_keyframe_of_the_target() {
        let clock = Clock::new();
        let mut f = video();
        assert!(!f.needs_keyframe(), "no target yet");
        assert_eq!(
            send(&mut f, clock.at(0), A, 10, 900, true),
            None,
            "no target"
        );
        f.set_target(A);
        assert!(f.needs_keyframe());
        assert_eq!(send(&mut f, clock.at(10), A, 11, 900, false), None);
        assert_eq!(
            send(&mut f, clock.at(10), B, 500, 77, true),
            None,
            "not the target"
        );
        assert_eq!(f.current(), None);

        assert_eq!(
            send(&mut f, clock.at(40), A, 12, 3900, true),
            Some((1000, 50_000))
        );
        assert_eq!(f.current(), Some(A));
        assert!(!f.needs_keyframe());
        assert_eq!(
            send(&mut f, clock.at(41), A, 13, 3900, false),
            Some((1001, 50_000))
        );
        assert_eq!(
            send(&mut f, clock.at(75), A, 14, 6900, false),
            Some((1002, 53_000))
        );
        // Older than the start: part of a picture the viewer cannot decode.
        assert_eq!(send(&mut f, clock.at(76), A, 11, 900, false), None);
    }

    #[test]
    fn switch_waits_for_a_keyframe_and_continues_seq_and_ts() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(0), A, 100, 0, true),
            Some((1000, 50_000))
        );
        assert_eq!(
            send(&mut f, clock.at(33), A, 101, 3000, false),
            Some((1001, 53_000))
        );

        f.set_target(B);
        assert!(f.needs_keyframe());
        assert_eq!(f.current(), Some(A));
        // B's delta frames are dropped; A keeps the picture going.
        assert_eq!(send(&mut f, clock.at(40), B, 7000, 1_000_000, false), None);
        assert_eq!(
            send(&mut f, clock.at(66), A, 102, 6000, false),
            Some((1002, 56_000))
        );

        // B's keyframe, 100 ms after A's last packet: +9000 ticks.
        assert_eq!(
            send(&mut f, clock.at(166), B, 7001, 1_003_000, true),
            Some((1003, 65_000))
        );
        assert_eq!(f.current(), Some(B));
        assert!(!f.needs_keyframe());
        assert_eq!(
            send(&mut f, clock.at(167), A, 103, 9000, false),
            None,
            "old layer"
        );
        assert_eq!(
            send(&mut f, clock.at(168), B, 7002, 1_003_000, false),
            Some((1004, 65_000))
        );
        assert_eq!(
            send(&mut f, clock.at(200), B, 7003, 1_006_000, false),
            Some((1005, 68_000))
        );
        assert_eq!(
            send(&mut f, clock.at(201), B, 7000, 1_000_000, false),
            None,
            "before the switch"
        );
        assert_eq!(f.stats().switches, 2);
    }

    #[test]
    fn switch_now_drops_the_old_layer_until_the_keyframe() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(0), A, 100, 0, true),
            Some((1000, 50_000))
        );
        f.switch_now(B);
        assert!(f.needs_keyframe() && f.cutting_over());
        // The rest of A's frame in progress still goes out (a whole frame)...
        assert_eq!(
            send(&mut f, clock.at(5), A, 101, 0, false),
            Some((1001, 50_000))
        );
        // ...its next frames do not, nor B's delta frames.
        assert_eq!(send(&mut f, clock.at(33), A, 102, 3000, false), None);
        assert_eq!(send(&mut f, clock.at(34), B, 7000, 90_000, false), None);
        assert_eq!(f.current(), Some(A));
        // B's keyframe: continuous output, timestamps by wall clock.
        assert_eq!(
            send(&mut f, clock.at(105), B, 7001, 99_000, true),
            Some((1002, 59_000))
        );
        assert_eq!(f.current(), Some(B));
        assert!(!f.cutting_over());
        assert_eq!(
            send(&mut f, clock.at(138), B, 7002, 102_000, false),
            Some((1003, 62_000))
        );

        // Going back to the current source cancels the cut.
        f.switch_now(A);
        assert_eq!(send(&mut f, clock.at(170), B, 7003, 105_000, false), None);
        f.set_target(B);
        assert_eq!(
            send(&mut f, clock.at(171), B, 7004, 105_000, false),
            Some((1005, 65_000))
        );
        // A plain switch keeps the old layer flowing until the keyframe.
        f.switch_now(A);
        f.set_target(B);
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(200), B, 7005, 108_000, false),
            Some((1006, 68_000))
        );
    }

    #[test]
    fn switch_advances_at_least_one_frame_or_tick() {
        let clock = Clock::new();
        // Nothing learned yet: same arrival instant still advances one tick.
        let mut f = video();
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(0), A, 1, 0, true),
            Some((1000, 50_000))
        );
        f.set_target(B);
        assert_eq!(
            send(&mut f, clock.at(0), B, 9, 42, true),
            Some((1001, 50_001))
        );

        // With a known 30 fps frame step, a switch 5 ms after a frame moves
        // one frame on, not 5 ms: the new picture must not share the slot.
        let mut f = video();
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(0), A, 1, 0, true),
            Some((1000, 50_000))
        );
        assert_eq!(
            send(&mut f, clock.at(33), A, 2, 3000, false),
            Some((1001, 53_000))
        );
        f.set_target(B);
        assert_eq!(
            send(&mut f, clock.at(38), B, 9, 42, true),
            Some((1002, 56_000))
        );
        // A long gap (the publisher was away 10 s) is the elapsed time.
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(10_038), A, 50, 7, true),
            Some((1003, 956_000))
        );
    }

    #[test]
    fn same_target_again_is_a_no_op_and_current_cancels_a_switch() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        send(&mut f, clock.at(0), A, 1, 0, true).expect("starts");
        f.set_target(A);
        f.set_target(A);
        assert!(!f.needs_keyframe());
        assert_eq!(
            send(&mut f, clock.at(33), A, 2, 3000, false),
            Some((1001, 53_000))
        );
        assert_eq!(
            send(&mut f, clock.at(34), A, 3, 3000, true),
            Some((1002, 53_000))
        );
        assert_eq!(f.stats().switches, 1);

        f.set_target(B);
        f.set_target(A);
        assert!(!f.needs_keyframe());
        assert_eq!(
            send(&mut f, clock.at(50), B, 9, 0, true),
            None,
            "switch cancelled"
        );
        assert_eq!(
            send(&mut f, clock.at(66), A, 4, 6000, false),
            Some((1003, 56_000))
        );
        assert_eq!(f.stats().switches, 1);
    }

    #[test]
    fn reordering_and_losses_pass_through_one_to_one() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        let input = [
            (10, 0, true),
            (12, 3000, false),
            (11, 0, false),
            (15, 9000, false),
            (14, 6000, false),
        ];
        let out: Vec<_> = input
            .iter()
            .enumerate()
            .map(|(i, &(seq, ts, key))| send(&mut f, clock.at(i as u64), A, seq, ts, key))
            .collect();
        assert_eq!(
            out,
            [
                Some((1000, 50_000)),
                Some((1002, 53_000)),
                Some((1001, 50_000)),
                Some((1005, 59_000)),
                Some((1004, 56_000)),
            ]
        );
        // The retransmission of lost 13, much later, fills its own slot; a
        // duplicate maps to the same values again.
        assert_eq!(
            send(&mut f, clock.at(500), A, 13, 6000, false),
            Some((1003, 56_000))
        );
        assert_eq!(
            send(&mut f, clock.at(501), A, 12, 3000, false),
            Some((1002, 53_000))
        );
        // A switch after that continues after the newest, not the last.
        f.set_target(B);
        assert_eq!(
            send(&mut f, clock.at(502), B, 3, 3, true).map(|o| o.0),
            Some(1006)
        );
    }

    #[test]
    fn publisher_restart_near_wraps_continues_monotonically() {
        let clock = Clock::new();
        // Output starts near 2^16 and its timestamp near 2^32.
        let mut f = Forwarder::new(MediaKind::Video, 90_000, 65_534, u32::MAX - 2999);
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(0), A, 5, 1000, true),
            Some((65_534, u32::MAX - 2999))
        );
        assert_eq!(
            send(&mut f, clock.at(33), A, 6, 4000, false),
            Some((65_535, 0))
        );

        // The publisher comes back with a new generation whose stream starts
        // just below the 16-bit and 32-bit wraps.
        f.set_target(NEXT_GEN);
        assert_eq!(
            send(
                &mut f,
                clock.at(2033),
                NEXT_GEN,
                65_535,
                u32::MAX - 100,
                false
            ),
            None
        );
        let restart = send(
            &mut f,
            clock.at(2066),
            NEXT_GEN,
            65_535,
            u32::MAX - 100,
            true,
        );
        assert_eq!(restart, Some((65_536, 182_970))); // 0 + 2033 ms at 90 kHz
                                                      // Its extended seq crosses 2^16, its timestamp wraps: the output just
                                                      // goes on.
        assert_eq!(
            send(&mut f, clock.at(2099), NEXT_GEN, 65_536, 2899, false),
            Some((65_537, 185_970))
        );
        assert_eq!(
            send(&mut f, clock.at(2100), NEXT_GEN, 65_538, 2899, false),
            Some((65_539, 185_970))
        );

        // Another restart from a low sequence number and timestamp 0.
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(2200), A, 0, 0, true),
            Some((65_540, 194_970))
        );
    }

    #[test]
    fn audio_switches_at_the_first_packet_of_the_target() {
        let clock = Clock::new();
        let mut f = Forwarder::new(MediaKind::Audio, 48_000, 7, 1000);
        f.set_target(A);
        assert!(!f.needs_keyframe(), "audio never waits for keyframes");
        assert_eq!(send(&mut f, clock.at(0), A, 300, 0, false), Some((7, 1000)));
        assert_eq!(
            send(&mut f, clock.at(20), A, 301, 960, false),
            Some((8, 1960))
        );
        f.set_target(NEXT_GEN);
        assert_eq!(
            send(&mut f, clock.at(30), A, 302, 1920, false),
            Some((9, 2920)),
            "until the new one arrives"
        );
        // 5 ms after a 20 ms packet: the next 20 ms slot, not 5 ms on.
        assert_eq!(
            send(&mut f, clock.at(35), NEXT_GEN, 9, 4242, false),
            Some((10, 3880))
        );
        assert_eq!(
            send(&mut f, clock.at(55), NEXT_GEN, 10, 5202, false),
            Some((11, 4840))
        );
        assert_eq!(send(&mut f, clock.at(56), A, 303, 2880, false), None);
        // After silence (1 s without packets) the elapsed time counts.
        f.set_target(A);
        assert_eq!(
            send(&mut f, clock.at(1055), A, 400, 0, false),
            Some((12, 52_840))
        );
        assert_eq!(f.stats().switches, 3);
    }

    #[test]
    fn clear_target_pauses_and_resumes_continuously() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        send(&mut f, clock.at(0), A, 1, 0, true).expect("starts");
        f.clear_target();
        assert_eq!(
            (f.target(), f.current(), f.needs_keyframe()),
            (None, None, false)
        );
        assert_eq!(send(&mut f, clock.at(33), A, 2, 3000, false), None);
        f.set_target(A);
        assert!(f.needs_keyframe());
        assert_eq!(send(&mut f, clock.at(66), A, 3, 6000, false), None);
        assert_eq!(
            send(&mut f, clock.at(1000), A, 30, 90_000, true),
            Some((1001, 140_000))
        );
    }

    fn vp8_desc(picture_id: u16, long: bool, tl0: u8, keyidx: u8) -> Vp8Descriptor {
        Vp8Descriptor {
            picture_id: Some(picture_id),
            picture_id_15bit: long,
            tl0picidx: Some(tl0),
            tid: Some(0),
            keyidx: Some(keyidx),
            start_of_partition: true,
            partition_id: 0,
            header_len: if long { 6 } else { 5 },
        }
    }

    fn send_vp8(
        f: &mut Forwarder,
        at: Instant,
        source: SourceId,
        seq: u64,
        key: bool,
        d: Vp8Descriptor,
    ) -> Option<(u16, u8, u8)> {
        let r = f.forward(at, source, seq, seq as u32 * 3000, key, Some(&d))?;
        let v = r.vp8.expect("a VP8 rewrite for a VP8 packet");
        Some((v.picture_id?, v.tl0picidx?, v.keyidx?))
    }

    #[test]
    fn vp8_fields_continue_across_switches() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        // The first source passes through; its picture id wraps 15 bits.
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(0),
                A,
                1,
                true,
                vp8_desc(0x7ffe, true, 255, 31)
            ),
            Some((0x7ffe, 255, 31))
        );
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(33),
                A,
                2,
                false,
                vp8_desc(0x7fff, true, 0, 31)
            ),
            Some((0x7fff, 0, 31))
        );
        assert_eq!(
            send_vp8(&mut f, clock.at(66), A, 3, false, vp8_desc(0, true, 1, 31)),
            Some((0, 1, 31))
        );

        // 15-bit → 15-bit: B's own numbering is replaced by the next values.
        f.set_target(B);
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(70),
                B,
                40,
                false,
                vp8_desc(9000, true, 80, 3)
            ),
            None
        );
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(99),
                B,
                41,
                true,
                vp8_desc(9001, true, 81, 4)
            ),
            Some((1, 2, 0))
        );
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(132),
                B,
                42,
                false,
                vp8_desc(9002, true, 82, 4)
            ),
            Some((2, 3, 0))
        );
        // A retransmission of the keyframe packet keeps its values.
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(140),
                B,
                41,
                true,
                vp8_desc(9001, true, 81, 4)
            ),
            Some((1, 2, 0))
        );

        // 15-bit → 7-bit: the count goes on in the 7-bit field's width.
        f.set_target(NEXT_GEN);
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(165),
                NEXT_GEN,
                7,
                true,
                vp8_desc(120, false, 5, 9)
            ),
            Some((3, 4, 1))
        );
        let mut last = 3;
        for (i, pid) in (121u16..=127).chain(0..=3).enumerate() {
            let seq = 8 + i as u64;
            let out = send_vp8(
                &mut f,
                clock.at(165 + 33 * seq),
                NEXT_GEN,
                seq,
                false,
                vp8_desc(pid, false, 5, 9),
            );
            last += 1;
            assert_eq!(out, Some((last, 4, 1)), "7-bit wrap at input {pid}");
        }
        assert_eq!(last, 14);

        // 7-bit → 15-bit: continues from the full count, not the 7-bit one.
        f.set_target(A);
        assert_eq!(
            send_vp8(
                &mut f,
                clock.at(900),
                A,
                100,
                true,
                vp8_desc(555, true, 7, 2)
            ),
            Some((15, 5, 2))
        );
    }

    #[test]
    fn vp8_seven_bit_output_wraps_within_its_width() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        send_vp8(
            &mut f,
            clock.at(0),
            A,
            1,
            true,
            vp8_desc(0x7ff0, true, 0, 0),
        )
        .expect("starts");
        f.set_target(B);
        // Continuing 0x7ff1 in a 7-bit field: its low 7 bits.
        assert_eq!(
            send_vp8(&mut f, clock.at(33), B, 5, true, vp8_desc(3, false, 0, 0)),
            Some((0x71, 1, 1))
        );
        assert_eq!(
            send_vp8(&mut f, clock.at(66), B, 6, false, vp8_desc(4, false, 0, 0)),
            Some((0x72, 1, 1))
        );
    }

    #[test]
    fn vp8_fields_absent_stay_absent() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        let bare = Vp8Descriptor {
            start_of_partition: true,
            header_len: 1,
            ..Vp8Descriptor::default()
        };
        let r = f
            .forward(clock.at(0), A, 1, 0, true, Some(&bare))
            .expect("starts");
        assert_eq!(r.vp8, Some(Vp8Rewrite::default()));
        let r = f
            .forward(clock.at(1), A, 2, 0, false, None)
            .expect("forwards");
        assert_eq!(r.vp8, None);
    }

    #[test]
    fn stats_count_forwarded_dropped_and_switches() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        send(&mut f, clock.at(0), A, 1, 0, false); // dropped: no keyframe
        send(&mut f, clock.at(1), A, 2, 0, true); // start
        send(&mut f, clock.at(2), A, 3, 0, false);
        f.set_target(B);
        send(&mut f, clock.at(3), B, 1, 0, false); // dropped
        send(&mut f, clock.at(4), B, 2, 0, true); // switch
        send(&mut f, clock.at(5), A, 4, 0, false); // dropped
        assert_eq!(
            f.stats(),
            ForwarderStats {
                packets_forwarded: 3,
                packets_dropped: 3,
                switches: 2,
            }
        );
    }

    #[test]
    fn replay_squeezes_the_gop_and_continues_live() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        let gop = [
            (100, 0, true),
            (101, 0, false),
            (102, 3000, false),
            (104, 6000, false),
            (105, 6000, false),
        ];
        let out: Vec<_> = f
            .replay(clock.at(0), A, &gop)
            .into_iter()
            .map(|r| r.map(|r| (r.seq_no, r.timestamp)))
            .collect();
        assert_eq!(
            out,
            [
                Some((1000, 50_000)),
                Some((1001, 50_000)),
                Some((1002, 50_001)),
                Some((1004, 50_002)),
                Some((1005, 50_002)),
            ]
        );
        assert_eq!((f.current(), f.needs_keyframe()), (Some(A), false));
        // The rest of the last frame joins it; lost 103 cannot be re-timed.
        assert_eq!(
            send(&mut f, clock.at(1), A, 106, 6000, false),
            Some((1006, 50_002))
        );
        assert_eq!(send(&mut f, clock.at(2), A, 103, 3000, false), None);
        assert_eq!(
            send(&mut f, clock.at(30), A, 107, 9000, false),
            Some((1007, 53_002))
        );
        assert_eq!(
            f.stats(),
            ForwarderStats {
                packets_forwarded: 7,
                packets_dropped: 1,
                switches: 1,
            }
        );
        // A source already flowing, or no keyframe first: no replay.
        assert!(f.replay(clock.at(40), A, &gop).is_empty());
        let mut g = video();
        assert!(g.replay(clock.at(0), A, &gop[1..]).is_empty());
        assert!(g.replay(clock.at(0), A, &[]).is_empty());
        let mut audio = Forwarder::new(MediaKind::Audio, 48_000, 0, 0);
        assert!(audio.replay(clock.at(0), A, &gop).is_empty());
    }

    #[test]
    fn replay_after_earlier_output_continues_it() {
        let clock = Clock::new();
        let mut f = video();
        f.set_target(A);
        send(&mut f, clock.at(0), A, 1, 0, true).expect("starts");
        f.clear_target();
        // Wrap-aware frame order, and a packet from before the keyframe.
        let gop = [
            (50, u32::MAX - 10, true),
            (49, u32::MAX - 3010, false),
            (51, 2990, false),
        ];
        let out: Vec<_> = f
            .replay(clock.at(1000), NEXT_GEN, &gop)
            .into_iter()
            .map(|r| r.map(|r| (r.seq_no, r.timestamp)))
            .collect();
        assert_eq!(out, [Some((1001, 140_000)), None, Some((1002, 140_001))]);
        assert_eq!(f.target(), Some(NEXT_GEN));
        assert_eq!(
            send(&mut f, clock.at(1033), NEXT_GEN, 52, 5990, false),
            Some((1003, 143_001))
        );
    }

    /// Random sources, orders, losses and restarts: every packet that is new
    /// for its source goes out above everything sent before, and every
    /// timestamp stays within half the u32 circle of the newest.
    #[test]
    fn output_never_goes_back_under_random_input() {
        let clock = Clock::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let sources = [A, B, NEXT_GEN];
        let mut f = video();
        let mut heads = [(0u64, 0u32); 3];
        for h in &mut heads {
            *h = (next() % 200_000, next() as u32);
        }
        let mut newest_in: [Option<u64>; 3] = [None; 3];
        let mut newest_out: Option<(u64, u32)> = None;
        for step in 0..50_000u64 {
            let r = next();
            if r % 50 == 0 {
                f.set_target(sources[(r / 50 % 3) as usize]);
            }
            let s = (r >> 8) as usize % 3;
            // Mostly in order, some reordering/retransmission, some losses.
            let back = if r % 7 == 0 { (r >> 16) % 20 } else { 0 };
            let (seq, ts) = (
                heads[s].0 - back.min(heads[s].0),
                heads[s].1.wrapping_sub(back as u32 * 3000),
            );
            if back == 0 {
                heads[s].0 += 1 + u64::from(r % 11 == 0);
                heads[s].1 = heads[s].1.wrapping_add(3000);
            }
            let current_before = f.current();
            let key = (r >> 24) % 30 == 0;
            let Some(out) = f.forward(clock.at(step * 10), sources[s], seq, ts, key, None) else {
                continue;
            };
            if current_before != f.current() {
                newest_in = [None; 3];
            }
            let is_new = newest_in[s].is_none_or(|n| seq > n);
            if is_new {
                newest_in[s] = Some(seq);
                if let Some((o, t)) = newest_out {
                    assert!(out.seq_no > o, "step {step}: seq {} after {o}", out.seq_no);
                    assert!(
                        out.timestamp.wrapping_sub(t) < 1 << 31,
                        "step {step}: ts went back"
                    );
                }
                newest_out = Some((out.seq_no, out.timestamp));
            }
        }
        assert!(f.stats().switches > 10, "{:?}", f.stats());
    }
}
