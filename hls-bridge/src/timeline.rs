//! The LL-HLS timeline of one rendition: samples in, parts and segments out.
//!
//! Rules it enforces (draft-pantos-hls-rfc8216bis §4.4.4.9, §6.2.2):
//! - a segment starts on a keyframe; it closes at the first keyframe after
//!   the segment target, so segments follow the publisher's GOP;
//! - a part never exceeds the advertised `PART-TARGET`, and every part except
//!   the last of its segment (and parts starting with a keyframe, which the
//!   spec also exempts) lasts at least 85 % of it. Parts are filled greedily
//!   up to the nominal part duration; `PART-TARGET` is advertised 8 % above
//!   it so that capture-clock jitter does not push a six-frame 30 fps part
//!   over the target and force a five-frame (83 %) one. With that headroom
//!   every common rate fits: 10–60 fps video, 20 ms Opus, 21.3 ms AAC;
//! - memory is bounded: the window lists `window_segments` complete segments
//!   and keeps [`RETAINED_EXTRA_SEGMENTS`] more for clients still fetching
//!   them; anything older is dropped.
//!
//! Time is in the track's timescale ticks throughout; nothing here reads a
//! clock.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::fmp4::{self, Sample};

/// Segments kept after they leave the playlist, for late downloads.
pub const RETAINED_EXTRA_SEGMENTS: usize = 2;

/// `PART-TARGET` is advertised this much above the nominal part duration
/// (see the module doc), in percent.
pub const PART_TARGET_HEADROOM_PERCENT: u64 = 8;

/// A follower (audio) cuts on its own after this many segment targets
/// without a boundary from the leader (video), so a stalled video track
/// cannot grow an audio segment without bound.
pub const FOLLOWER_MAX_SEGMENT_TARGETS: u64 = 4;

/// Segment and part timing of every rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineConfig {
    /// Segments close at the first keyframe after this (1 s by default).
    pub segment_target: Duration,
    /// Nominal part duration (200 ms by default).
    pub part_duration: Duration,
    /// Complete segments listed in the media playlist.
    pub window_segments: usize,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        Self {
            segment_target: Duration::from_secs(1),
            part_duration: Duration::from_millis(200),
            // Twelve 1 s segments: more than the 6 target durations of the
            // skip boundary, so delta updates actually skip something.
            window_segments: 12,
        }
    }
}

impl TimelineConfig {
    /// The advertised `PART-TARGET`.
    pub fn part_target(&self) -> Duration {
        self.part_duration * (100 + PART_TARGET_HEADROOM_PERCENT as u32) / 100
    }
}

/// A part: one CMAF chunk (`moof` + `mdat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Global part number: names the part's URI, so a preload hint stays
    /// valid whichever segment the next part lands in.
    pub id: u64,
    /// Decode time of the first sample, in ticks.
    pub start: u64,
    /// Duration in ticks.
    pub duration: u64,
    /// Starts with a keyframe.
    pub independent: bool,
    /// Number of samples (frames) in it.
    pub samples: u32,
    pub data: Bytes,
}

/// A segment: the parts between two segment boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Media sequence number.
    pub msn: u64,
    /// Decode time of the first sample, in ticks.
    pub start: u64,
    /// Sum of the parts' durations, in ticks.
    pub duration: u64,
    pub parts: Vec<Part>,
    /// The init segment this segment needs.
    pub init_version: u32,
}

impl Segment {
    /// Total bytes of its parts.
    pub fn size(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// The segment's body: its parts' fragments, in order (serve them one
    /// after the other; nothing is copied).
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.parts.iter().map(|p| &p.data)
    }
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimelineStats {
    /// Samples dropped because no segment could start with them.
    pub dropped_before_keyframe: u64,
    /// Parts that had to exceed `PART-TARGET` (a single sample longer than it).
    pub part_target_overruns: u64,
}

/// What a push changed, so that the HTTP edge wakes only who needs it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// A part was published: the playlist changed (wake blocked reloads).
    pub part: bool,
    /// A chunk of the open part was written (wake its streaming readers).
    pub chunk: bool,
    /// Ask the publisher for a keyframe now (PLI/FIR): a segment is due, or
    /// the track lost packets and waits for one. Rate-limited by the bridge.
    pub keyframe_wanted: bool,
}

impl std::ops::BitOrAssign for Progress {
    fn bitor_assign(&mut self, rhs: Self) {
        self.part |= rhs.part;
        self.chunk |= rhs.chunk;
        self.keyframe_wanted |= rhs.keyframe_wanted;
    }
}

/// The timeline of one rendition.
#[derive(Debug)]
pub struct Timeline {
    config: TimelineConfig,
    timescale: u32,
    part_nominal: u64,
    part_target: u64,
    segment_target: u64,
    complete: VecDeque<Segment>,
    open: Option<Segment>,
    /// Samples of the open part not yet written into a chunk.
    open_samples: Vec<Sample>,
    /// Decode time of the first of `open_samples`.
    unchunked_start: u64,
    unchunked_duration: u64,
    /// Chunks (`moof`+`mdat`) of the open part written so far: what a
    /// client fetching the preload-hinted part gets before it completes.
    open_chunks: Vec<Bytes>,
    open_part_start: u64,
    open_part_duration: u64,
    open_part_samples: u32,
    open_part_independent: bool,
    /// Write a chunk once this many ticks are pending; `None`: whole parts.
    chunk_duration: Option<u64>,
    next_msn: u64,
    next_part_id: u64,
    fragment_sequence: u32,
    longest_segment: u64,
    boundary_hint: Option<u64>,
    /// Segment boundaries come from hints only; nothing starts before one.
    follower: bool,
    ended: bool,
    stats: TimelineStats,
}

fn ticks(d: Duration, timescale: u32) -> u64 {
    (d.as_nanos() * timescale as u128 / 1_000_000_000) as u64
}

impl Timeline {
    pub fn new(config: TimelineConfig, timescale: u32) -> Self {
        Self {
            part_nominal: ticks(config.part_duration, timescale),
            part_target: ticks(config.part_target(), timescale),
            segment_target: ticks(config.segment_target, timescale),
            config,
            timescale,
            complete: VecDeque::new(),
            open: None,
            open_samples: Vec::new(),
            unchunked_start: 0,
            unchunked_duration: 0,
            open_chunks: Vec::new(),
            open_part_start: 0,
            open_part_duration: 0,
            open_part_samples: 0,
            open_part_independent: false,
            chunk_duration: None,
            next_msn: 0,
            next_part_id: 0,
            fragment_sequence: 1,
            longest_segment: 0,
            boundary_hint: None,
            follower: false,
            ended: false,
            stats: TimelineStats::default(),
        }
    }

    pub fn config(&self) -> &TimelineConfig {
        &self.config
    }

    pub fn timescale(&self) -> u32 {
        self.timescale
    }

    pub fn stats(&self) -> TimelineStats {
        self.stats
    }

    /// Makes the next segment start at the first sample at or after `dts`
    /// (ticks), instead of after the segment target: audio renditions follow
    /// the video's keyframe-driven boundaries this way.
    pub fn hint_segment_boundary(&mut self, dts: u64) {
        self.boundary_hint = Some(dts);
    }

    /// Makes this timeline start segments only at hinted boundaries (an audio
    /// rendition in a room with video): samples before the first hint are
    /// dropped, so audio segment N and video segment N cover the same time.
    pub fn follow_boundaries(&mut self) {
        self.follower = true;
    }

    /// Undoes [`Timeline::follow_boundaries`]: an audio rendition with no
    /// video to follow (an audio-only publish) cuts its own segments.
    pub fn lead_boundaries(&mut self) {
        self.follower = false;
    }

    /// Adds a sample whose decode time is `dts` (ticks). `new_init` forces a
    /// segment boundary here for a new init segment (the sample must be a
    /// keyframe). Says whether a part (or a chunk of the open part) was
    /// written.
    pub fn push(
        &mut self,
        dts: u64,
        sample: Sample,
        init_version: u32,
        new_init: bool,
    ) -> Progress {
        let mut progress = Progress::default();
        if self.ended {
            return progress;
        }
        let open_duration = self
            .open
            .as_ref()
            .map(|s| s.duration + self.open_part_duration);
        let cut = match (open_duration, self.boundary_hint) {
            (None, None) => !self.follower,
            (None, Some(hint)) => dts >= hint,
            (Some(_), _) if new_init => true,
            (Some(_), Some(hint)) => dts >= hint,
            // A follower waits for the leader's boundary, unless the leader
            // has stalled for long.
            (Some(d), None) if self.follower => {
                d >= FOLLOWER_MAX_SEGMENT_TARGETS * self.segment_target
            }
            // Cut at the first keyframe within a part of the target: that
            // absorbs capture jitter on a 1 s GOP, and a keyframe asked for
            // a part early (see `segment_due`) arrives in time.
            (Some(d), None) => d + self.part_nominal >= self.segment_target,
        };
        if cut && sample.keyframe {
            if self.open.is_some() {
                self.close_part();
                self.close_segment();
                progress.part = true;
            }
            self.boundary_hint = None;
            self.open = Some(Segment {
                msn: self.next_msn,
                start: dts,
                duration: 0,
                parts: Vec::new(),
                init_version,
            });
            self.next_msn += 1;
        }
        if self.open.is_none() {
            self.stats.dropped_before_keyframe += 1;
            return progress;
        }
        if self.open_part_samples > 0
            && self.open_part_duration + sample.duration as u64 > self.part_target
        {
            self.close_part();
            progress.part = true;
        }
        if self.open_part_samples == 0 {
            self.open_part_start = dts;
            self.open_part_independent = sample.keyframe;
        }
        if self.open_samples.is_empty() {
            self.unchunked_start = dts;
        }
        self.open_part_duration += sample.duration as u64;
        self.open_part_samples += 1;
        self.unchunked_duration += sample.duration as u64;
        self.open_samples.push(sample);
        if self.open_part_duration >= self.part_nominal {
            self.close_part();
            progress.part = true;
        } else if self
            .chunk_duration
            .is_some_and(|c| self.unchunked_duration >= c)
        {
            self.write_chunk();
            progress.chunk = true;
        }
        progress
    }

    /// Writes the pending samples of the open part as one chunk.
    fn write_chunk(&mut self) {
        if self.open_samples.is_empty() {
            return;
        }
        self.open_chunks.push(fmp4::fragment(
            self.fragment_sequence,
            self.unchunked_start,
            &self.open_samples,
        ));
        self.fragment_sequence = self.fragment_sequence.wrapping_add(1);
        self.open_samples.clear();
        self.unchunked_duration = 0;
    }

    /// Writes the open part in chunks of at least `chunk` (zero: one chunk
    /// per sample) instead of all at once when it completes, so that a
    /// client holding the preload-hinted part gets frames as they come. Each
    /// chunk costs a `moof` (about 100 bytes).
    pub fn set_chunk_duration(&mut self, chunk: Option<Duration>) {
        self.chunk_duration = chunk.map(|c| ticks(c, self.timescale));
    }

    /// The part being written: its id and the chunks written so far.
    pub fn open_part(&self) -> (u64, &[Bytes]) {
        (self.next_part_id, &self.open_chunks)
    }

    /// Whether the open segment is long enough that the next keyframe will
    /// end it: the moment to ask a publisher that sends keyframes only on
    /// request (browsers) for one. Always false for followers.
    pub fn segment_due(&self) -> bool {
        !self.follower
            && self.open.as_ref().is_some_and(|s| {
                s.duration + self.open_part_duration + self.part_nominal >= self.segment_target
            })
    }

    /// The publisher left: close what is open; the playlist gets ENDLIST.
    pub fn end(&mut self) {
        if self.ended {
            return;
        }
        self.close_part();
        self.close_segment();
        self.ended = true;
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    fn close_part(&mut self) {
        if self.open.is_none() || self.open_part_samples == 0 {
            return;
        }
        self.write_chunk();
        if self.open_part_duration > self.part_target {
            self.stats.part_target_overruns += 1;
        }
        // One copy per part when it was chunked: the complete part is then
        // a single buffer, byte-identical to what was streamed.
        let data = match self.open_chunks.len() {
            1 => self.open_chunks.pop().unwrap_or_default(),
            _ => Bytes::from(self.open_chunks.concat()),
        };
        self.open_chunks.clear();
        let part = Part {
            id: self.next_part_id,
            start: self.open_part_start,
            duration: self.open_part_duration,
            independent: self.open_part_independent,
            samples: self.open_part_samples,
            data,
        };
        if let Some(open) = &mut self.open {
            open.duration += part.duration;
            open.parts.push(part);
        }
        self.next_part_id += 1;
        self.open_part_duration = 0;
        self.open_part_samples = 0;
    }

    fn close_segment(&mut self) {
        let Some(segment) = self.open.take() else {
            return;
        };
        if segment.parts.is_empty() {
            return;
        }
        self.longest_segment = self.longest_segment.max(segment.duration);
        self.complete.push_back(segment);
        while self.complete.len() > self.config.window_segments + RETAINED_EXTRA_SEGMENTS {
            self.complete.pop_front();
        }
    }

    /// Complete segments listed in the playlist, oldest first.
    pub fn listed_segments(&self) -> impl Iterator<Item = &Segment> {
        let skip = self
            .complete
            .len()
            .saturating_sub(self.config.window_segments);
        self.complete.iter().skip(skip)
    }

    /// The segment being written, with the parts published so far.
    pub fn open_segment(&self) -> Option<&Segment> {
        self.open.as_ref()
    }

    /// A complete segment still held (listed or just removed).
    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.complete.front()?.msn;
        self.complete
            .get(msn.checked_sub(first)? as usize)
            .filter(|s| s.msn == msn)
    }

    /// A published part still held.
    pub fn part(&self, id: u64) -> Option<&Part> {
        fn find(s: &Segment, id: u64) -> Option<&Part> {
            let first = s.parts.first()?.id;
            s.parts
                .get(id.checked_sub(first)? as usize)
                .filter(|p| p.id == id)
        }
        if let Some(open) = &self.open {
            if open.parts.first().is_some_and(|p| p.id <= id) {
                return find(open, id);
            }
        }
        let idx = self
            .complete
            .partition_point(|s| s.parts.first().is_some_and(|p| p.id <= id));
        find(self.complete.get(idx.checked_sub(1)?)?, id)
    }

    /// Init versions used by the segments held.
    pub fn segment_versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.complete
            .iter()
            .chain(self.open.as_ref())
            .map(|s| s.init_version)
    }

    /// The id the next part will have (for `EXT-X-PRELOAD-HINT`).
    pub fn next_part_id(&self) -> u64 {
        self.next_part_id
    }

    /// `EXT-X-TARGETDURATION`: the segment target, or the longest segment
    /// seen if the publisher's GOP is longer, rounded as §4.4.3.1 requires
    /// (EXTINF rounded to the nearest integer must not exceed it). It only
    /// grows, so a player never sees it shrink.
    pub fn target_duration_secs(&self) -> u64 {
        let ts = self.timescale as u64;
        let open = self
            .open
            .as_ref()
            .map_or(0, |s| s.duration + self.open_part_duration);
        let longest = self.longest_segment.max(open);
        let configured = self.segment_target.div_ceil(ts);
        let rounded = (longest + ts / 2) / ts;
        configured.max(rounded).max(1)
    }

    /// The advertised part target in ticks.
    pub fn part_target_ticks(&self) -> u64 {
        self.part_target
    }

    pub fn ticks_to_secs(&self, t: u64) -> f64 {
        t as f64 / self.timescale as f64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Feeds `n` frames of `interval_ticks` ± jitter, keyframe every `gop`.
    pub(crate) fn feed(
        tl: &mut Timeline,
        n: usize,
        interval: u64,
        gop: usize,
        jitter: impl Fn(usize) -> i64,
    ) {
        let mut dts: Vec<u64> = (0..=n)
            .map(|i| (i as i64 * interval as i64 + jitter(i)).max(0) as u64)
            .collect();
        dts[0] = 0;
        for i in 0..n {
            let sample = Sample {
                duration: (dts[i + 1] - dts[i]) as u32,
                keyframe: i % gop == 0,
                data: Bytes::from(vec![0u8; 10]),
            };
            tl.push(dts[i], sample, 0, false);
        }
    }

    /// Checks every part rule of §4.4.4.9 on everything the timeline holds.
    pub(crate) fn assert_part_rules(tl: &Timeline) {
        let target = tl.part_target_ticks();
        let mut segments: Vec<&Segment> = tl.complete.iter().collect();
        segments.extend(tl.open_segment());
        for s in segments {
            for (i, p) in s.parts.iter().enumerate() {
                let last = i + 1 == s.parts.len();
                assert!(p.duration <= target, "part {} of {} > target", i, s.msn);
                if !last && !p.independent {
                    assert!(
                        p.duration * 100 >= target * 85,
                        "part {i} of segment {} is {} ticks, under 85% of {target}",
                        s.msn,
                        p.duration
                    );
                }
            }
            if let Some(first) = s.parts.first() {
                assert!(first.independent, "segment must start with a keyframe");
            }
        }
    }

    fn jitter(i: usize, amplitude: i64) -> i64 {
        // Deterministic pseudo-random jitter in [-amplitude, amplitude].
        let x = (i as u64).wrapping_mul(2654435761) % 1000;
        (x as i64 * 2 * amplitude / 999) - amplitude
    }

    #[test]
    fn part_target_is_advertised_with_headroom() {
        let c = TimelineConfig::default();
        assert_eq!(c.part_target(), Duration::from_millis(216));
    }

    #[test]
    fn parts_respect_the_bounds_at_common_frame_rates() {
        // (ticks per frame at 90 kHz, frames per GOP)
        for (interval, gop) in [
            (1500, 60),
            (1800, 50),
            (3000, 30),
            (3003, 30),
            (3600, 25),
            (3750, 24),
            (4500, 20),
            (6000, 15),
            (9000, 10),
            (18000, 5),
        ] {
            let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
            feed(&mut tl, 600, interval, gop, |_| 0);
            assert_part_rules(&tl);
            assert_eq!(tl.stats().part_target_overruns, 0);
        }
    }

    #[test]
    fn parts_respect_the_bounds_with_capture_jitter() {
        // 30 fps with ±4 ms of capture jitter on every timestamp.
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 900, 3000, 30, |i| jitter(i, 360));
        assert_part_rules(&tl);
        // 20 fps, ±3 ms.
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 600, 4500, 20, |i| jitter(i, 270));
        assert_part_rules(&tl);
    }

    #[test]
    fn audio_parts_respect_the_bounds() {
        // Opus 20 ms at 48 kHz and AAC 1024 samples at 48 kHz and 44.1 kHz.
        for (timescale, interval) in [(48_000, 960), (48_000, 1024), (44_100, 1024)] {
            let mut tl = Timeline::new(TimelineConfig::default(), timescale);
            feed(&mut tl, 500, interval, 1, |_| 0);
            assert_part_rules(&tl);
        }
    }

    #[test]
    fn segments_start_on_keyframes_and_follow_the_gop() {
        // 1 s GOP: 1 s segments.
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 300, 3000, 30, |_| 0);
        let durs: Vec<u64> = tl.complete.iter().map(|s| s.duration).collect();
        assert_eq!(durs, vec![90_000; 9]);
        assert_eq!(tl.target_duration_secs(), 1);
        // 2 s GOP (OBS's default keyframe interval): 2 s segments, TD 2.
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 300, 3000, 60, |_| 0);
        let durs: Vec<u64> = tl.complete.iter().map(|s| s.duration).collect();
        assert_eq!(durs, vec![180_000; 4]);
        assert_eq!(tl.target_duration_secs(), 2);
        // 0.5 s GOP: two GOPs per segment; the mid-segment keyframe starts
        // an INDEPENDENT part.
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 300, 3000, 15, |_| 0);
        let seg = &tl.complete[0];
        assert_eq!(seg.duration, 90_000);
        let independent: Vec<bool> = seg.parts.iter().map(|p| p.independent).collect();
        assert_eq!(independent.iter().filter(|&&b| b).count(), 1);
        assert_part_rules(&tl);
    }

    #[test]
    fn a_keyframe_a_little_early_still_cuts_the_segment() {
        // The 1 s keyframe lands 4 ms early: still a 1 s segment, not 2 s.
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(
            &mut tl,
            120,
            3000,
            30,
            |i| if i % 30 == 0 { -360 } else { 0 },
        );
        assert!(tl.complete.iter().all(|s| s.duration < 91_000));
    }

    #[test]
    fn a_segment_is_due_a_part_before_its_target() {
        // A browser: one keyframe at the start, then only on request.
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 23, 3000, 1000, |_| 0);
        assert!(!tl.segment_due(), "0.76 s");
        feed_from_key(&mut tl, 23, 25, false);
        assert!(tl.segment_due(), "0.8 s");
        // The requested keyframe comes at 0.9 s: the segment ends there.
        feed_from_key(&mut tl, 25, 27, false);
        feed_from_key(&mut tl, 27, 29, true);
        assert_eq!(tl.complete[0].duration, 27 * 3000);
        assert!(!tl.segment_due());
        let mut audio = Timeline::new(TimelineConfig::default(), 48_000);
        audio.follow_boundaries();
        audio.hint_segment_boundary(0);
        feed(&mut audio, 100, 960, 1, |_| 0);
        assert!(!audio.segment_due(), "followers never ask");
    }

    /// Frames `from..to` at 30 fps, the first a keyframe if `key`.
    fn feed_from_key(tl: &mut Timeline, from: u64, to: u64, key: bool) {
        for i in from..to {
            let s = Sample {
                duration: 3000,
                keyframe: key && i == from,
                data: Bytes::from_static(b"v"),
            };
            tl.push(i * 3000, s, 0, false);
        }
    }

    #[test]
    fn samples_before_the_first_keyframe_are_dropped() {
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        let s = |k| Sample {
            duration: 3000,
            keyframe: k,
            data: Bytes::from_static(b"x"),
        };
        assert!(!tl.push(0, s(false), 0, false).part);
        assert!(!tl.push(3000, s(false), 0, false).part);
        tl.push(6000, s(true), 0, false);
        assert_eq!(tl.stats().dropped_before_keyframe, 2);
        assert_eq!(tl.open_segment().unwrap().start, 6000);
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 30 * 120, 3000, 30, |_| 0);
        assert_eq!(tl.complete.len(), 12 + RETAINED_EXTRA_SEGMENTS);
        assert_eq!(tl.listed_segments().count(), 12);
        let first = tl.complete.front().unwrap().msn;
        assert_eq!(tl.segment(first - 1), None);
        assert!(tl.segment(first).is_some());
    }

    #[test]
    fn parts_are_found_by_global_id() {
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 100, 3000, 30, |_| 0);
        let last = tl.next_part_id() - 1;
        for id in 0..=last {
            assert_eq!(tl.part(id).map(|p| p.id), Some(id));
        }
        assert_eq!(tl.part(last + 1), None);
    }

    #[test]
    fn a_boundary_hint_aligns_audio_with_video() {
        let mut tl = Timeline::new(TimelineConfig::default(), 48_000);
        feed(&mut tl, 10, 960, 1, |_| 0);
        tl.hint_segment_boundary(48_000 * 3 / 10);
        feed_from(&mut tl, 10, 40, 960);
        let starts: Vec<u64> = tl.complete.iter().map(|s| s.start).collect();
        assert_eq!(starts, vec![0]);
        assert_eq!(tl.open_segment().unwrap().start, 14_400);
    }

    fn feed_from(tl: &mut Timeline, from: usize, to: usize, interval: u64) {
        for i in from..to {
            let s = Sample {
                duration: interval as u32,
                keyframe: true,
                data: Bytes::from_static(b"a"),
            };
            tl.push(i as u64 * interval, s, 0, false);
        }
    }

    #[test]
    fn ending_closes_the_open_segment() {
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, 40, 3000, 30, |_| 0);
        tl.end();
        assert!(tl.open_segment().is_none());
        assert_eq!(tl.complete.len(), 2);
        assert!(tl.ended());
    }
}
