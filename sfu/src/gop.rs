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

    /// Payload bytes of the cached GOP: what a new viewer's decoder must
    /// get through before it reaches the live edge.
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

/// What one layer's cache offers a new viewer (see [`replay_layer`]).
#[derive(Debug, Clone, Copy)]
pub struct GopOffer {
    /// The cache holds a GOP from its keyframe on.
    pub ready: bool,
    pub age: Duration,
    pub bytes: usize,
}

/// Which layer's cached GOP to replay to a new viewer that should watch
/// layer `target`, or None to wait for the next keyframe.
///
/// A young GOP of the target itself (under `young`) is cheap and close to
/// live: take it. An older one is a burst of a whole GOP the viewer's decoder
/// must get through before it shows the live edge (a 2 s GOP of 720p stalled
/// a CPU-starved browser for seconds), so take the smallest ready GOP of any
/// layer within `max_bytes` — usually the lowest simulcast layer, a tenth of
/// the top one — and let the viewer switch up at the target's next keyframe.
/// Without `allow_old` (the publisher answers keyframe requests, so a fresh
/// keyframe is on its way), only the young target GOP is taken.
pub fn replay_layer(
    target: usize,
    offers: &[GopOffer],
    young: Duration,
    max_bytes: usize,
    allow_old: bool,
) -> Option<usize> {
    let usable = |o: &GopOffer| o.ready && o.bytes > 0 && o.bytes <= max_bytes;
    if offers
        .get(target)
        .is_some_and(|o| usable(o) && o.age < young)
    {
        return Some(target);
    }
    if !allow_old {
        return None;
    }
    offers
        .iter()
        .enumerate()
        .filter(|(_, o)| usable(o))
        .min_by_key(|(_, o)| o.bytes)
        .map(|(i, _)| i)
}

/// Whether a publisher's layer answers keyframe requests (PLI). Browsers
/// answer within a frame or two; OBS and RTMP encoders keep their own GOP
/// and ignore them. It decides how a new viewer starts: from a fresh
/// keyframe asked for (live at once) or from the cached GOP (a picture at
/// once, but as old as the GOP, caught up by playing it squeezed).
///
/// Learnt once per publisher and layer by a probe: a request sent as the
/// layer's first keyframe arrives, when no natural keyframe is due for a
/// whole GOP. A keyframe within `window` of it means the publisher answers
/// (or has a GOP shorter than the window, where waiting costs as little).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyframeProbe {
    /// No keyframe seen yet.
    #[default]
    NotSent,
    /// Sent at this instant, with the keyframe of this RTP timestamp (whose
    /// further packets, SPS and PPS then IDR, start no new keyframe).
    InFlight(Instant, u32),
    /// A keyframe came this long after the probe.
    Answered(Duration),
    Ignored,
}

impl KeyframeProbe {
    /// A packet starting a keyframe (RTP timestamp `timestamp`) arrived at
    /// `now`. Returns true when the probe is to be sent now (the first one).
    pub fn on_keyframe(&mut self, now: Instant, timestamp: u32, window: Duration) -> bool {
        match *self {
            KeyframeProbe::NotSent => {
                *self = KeyframeProbe::InFlight(now, timestamp);
                true
            }
            KeyframeProbe::InFlight(_, ts) if ts == timestamp => false,
            KeyframeProbe::InFlight(at, _) => {
                let after = now.saturating_duration_since(at);
                *self = if after <= window {
                    KeyframeProbe::Answered(after)
                } else {
                    KeyframeProbe::Ignored
                };
                false
            }
            _ => false,
        }
    }

    /// Time passes: a probe unanswered for longer than `window` was ignored.
    pub fn expire(&mut self, now: Instant, window: Duration) {
        if let KeyframeProbe::InFlight(at, _) = *self {
            if now.saturating_duration_since(at) > window {
                *self = KeyframeProbe::Ignored;
            }
        }
    }

    /// When an unanswered probe in flight will count as ignored (None when
    /// there is no probe in flight).
    pub fn resolves_at(&self, window: Duration) -> Option<Instant> {
        match *self {
            KeyframeProbe::InFlight(at, _) => Some(at + window),
            _ => None,
        }
    }

    /// Some(true) if the layer answers keyframe requests, Some(false) if it
    /// ignores them, None while unknown.
    pub fn answers(&self) -> Option<bool> {
        match self {
            KeyframeProbe::Answered(_) => Some(true),
            KeyframeProbe::Ignored => Some(false),
            _ => None,
        }
    }
}

/// The playout-delay hint (RTP header extension, min = max = 0) a viewer
/// gets while it catches up from a replayed GOP: the browser then decodes
/// and shows each frame at once rather than scheduling the squeezed frames
/// through its jitter buffer. Once caught up, the hint is withdrawn by
/// sending the unconstrained range for a while (the browser keeps the last
/// value it saw), so that normal jitter buffering returns.
#[derive(Debug, Clone, Copy)]
pub struct StartDelay {
    zero_until: Instant,
    restore_until: Instant,
}

/// What to put in the playout-delay extension of a packet now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayHint {
    /// min = max = 0: render as soon as decoded.
    Zero,
    /// min = 0, max = the largest the extension can say: no constraint.
    Unconstrained,
}

impl StartDelay {
    /// From `now`, `zero` of zero delay, then `restore` of withdrawing it.
    pub fn new(now: Instant, zero: Duration, restore: Duration) -> StartDelay {
        StartDelay {
            zero_until: now + zero,
            restore_until: now + zero + restore,
        }
    }

    /// The hint for a packet sent at `now`; None once the start is over.
    pub fn hint(&self, now: Instant) -> Option<DelayHint> {
        if now < self.zero_until {
            Some(DelayHint::Zero)
        } else if now < self.restore_until {
            Some(DelayHint::Unconstrained)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(ready: bool, age_ms: u64, bytes: usize) -> GopOffer {
        GopOffer {
            ready,
            age: Duration::from_millis(age_ms),
            bytes,
        }
    }

    #[test]
    fn a_young_target_gop_is_replayed_as_is() {
        let young = Duration::from_millis(500);
        let offers = [offer(true, 300, 400_000), offer(true, 300, 40_000)];
        assert_eq!(replay_layer(0, &offers, young, 1_000_000, true), Some(0));
        assert_eq!(replay_layer(0, &offers, young, 1_000_000, false), Some(0));
    }

    #[test]
    fn an_old_gop_is_replayed_from_the_smallest_layer_within_the_budget() {
        let young = Duration::from_millis(500);
        // h, m, l of a 2 s GOP, 1.5 s old.
        let offers = [
            offer(true, 1500, 320_000),
            offer(true, 1500, 110_000),
            offer(true, 1500, 37_000),
        ];
        assert_eq!(replay_layer(0, &offers, young, 256_000, true), Some(2));
        // A publisher that answers keyframe requests: wait for a fresh one.
        assert_eq!(replay_layer(0, &offers, young, 256_000, false), None);
        // The lowest layer not cached (yet): the next smallest.
        let offers = [offers[0], offers[1], offer(false, 0, 0)];
        assert_eq!(replay_layer(0, &offers, young, 256_000, true), Some(1));
        // One layer only (RTMP): itself, if within the budget, else wait.
        assert_eq!(
            replay_layer(0, &[offer(true, 1500, 200_000)], young, 256_000, true),
            Some(0)
        );
        assert_eq!(
            replay_layer(0, &[offer(true, 1500, 300_000)], young, 256_000, true),
            None
        );
        assert_eq!(
            replay_layer(0, &[offer(false, 0, 0)], young, 256_000, true),
            None
        );
        assert_eq!(replay_layer(0, &[], young, 256_000, true), None);
    }

    #[test]
    fn a_probe_learns_whether_the_publisher_answers_keyframe_requests() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let window = ms(800);
        // A browser: the probe goes out with the first keyframe, the answer
        // comes a few frames later.
        let mut p = KeyframeProbe::default();
        assert_eq!(p.answers(), None);
        assert_eq!(p.resolves_at(window), None);
        assert!(p.on_keyframe(t0, 1000, window));
        assert_eq!(p.answers(), None);
        // A viewer joining now need not wait past the probe's window.
        assert_eq!(p.resolves_at(window), Some(t0 + window));
        // The same keyframe's next NAL unit (IDR after SPS) is no answer.
        assert!(!p.on_keyframe(t0, 1000, window));
        assert_eq!(p.answers(), None);
        p.expire(t0 + ms(500), window);
        assert!(!p.on_keyframe(t0 + ms(120), 1000 + 90 * 120, window));
        assert_eq!(p, KeyframeProbe::Answered(ms(120)));
        assert_eq!(p.resolves_at(window), None);
        // Later keyframes (and time) change nothing, nor is it sent again.
        assert!(!p.on_keyframe(t0 + ms(5000), 9000, window));
        p.expire(t0 + ms(9000), window);
        assert_eq!(p.answers(), Some(true));

        // OBS: no keyframe until its GOP of 2 s is over.
        let mut p = KeyframeProbe::default();
        assert!(p.on_keyframe(t0, 0, window));
        p.expire(t0 + ms(800), window);
        assert_eq!(p.answers(), None);
        p.expire(t0 + ms(801), window);
        assert_eq!(p.answers(), Some(false));
        assert!(!p.on_keyframe(t0 + ms(2000), 180_000, window));
        assert_eq!(p.answers(), Some(false));

        // A keyframe after the window (no tick in between) is no answer.
        let mut p = KeyframeProbe::default();
        assert!(p.on_keyframe(t0, 0, window));
        assert!(!p.on_keyframe(t0 + ms(1000), 90_000, window));
        assert_eq!(p.answers(), Some(false));
    }

    #[test]
    fn start_delay_is_zero_then_withdrawn_then_gone() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let d = StartDelay::new(t0, ms(2000), ms(1000));
        assert_eq!(d.hint(t0), Some(DelayHint::Zero));
        assert_eq!(d.hint(t0 + ms(1999)), Some(DelayHint::Zero));
        assert_eq!(d.hint(t0 + ms(2000)), Some(DelayHint::Unconstrained));
        assert_eq!(d.hint(t0 + ms(2999)), Some(DelayHint::Unconstrained));
        assert_eq!(d.hint(t0 + ms(3000)), None);
    }

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
