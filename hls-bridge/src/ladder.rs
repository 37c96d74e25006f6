//! The transcoding ladder: lower renditions made from a single-layer H.264
//! source (a publisher without simulcast, an RTMP encoder), so that HLS
//! players on small screens or slow links have something to switch down to;
//! and, with the `vp8` feature (libvpx), every rendition of a VP8 publish,
//! the source's size included, since VP8 does not go into HLS as it is.
//!
//! ```text
//!  source rendition's access units (teed by the bridge, with their arrival time)
//!   │ Ladder::push ── bounded queue; full: drop to the next keyframe,
//!   ▼                 repeated overload: stop the lowest rung (warn + counter)
//!  worker thread: openh264 (or libvpx) decode ─► scale (bilinear, I420) ─► openh264 encode per rung
//!   │              (a source keyframe forces an IDR: segments stay aligned)
//!   ▼
//!  LadderOutput { rung, access unit, the source's arrival time } ─► room task ─► Bridge
//! ```
//!
//! The worker owns its codecs and never touches the bridge: it is off the
//! forwarding path and off the room task, and it can only fall behind by
//! dropping (never by queueing more than a few frames), so the ladder never
//! lags live.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, RateControlMode, UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::OpenH264API;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

use crate::h264::AccessUnit;

/// Rungs (lowest last) whose height is below the source's are made.
pub const DEFAULT_HEIGHTS: [u32; 2] = [480, 240];

/// A VP8 source gets an IDR in every rung this often (90 kHz RTP time):
/// its own keyframes may be far apart (a browser sends them on request),
/// and segments can only end on one.
#[cfg(feature = "vp8")]
const VP8_IDR_EVERY: u32 = 90_000;

/// Frames queued for the worker before input is dropped.
const QUEUE_FRAMES: usize = 6;

/// This many overload episodes (a full queue) stop the lowest running rung.
const EPISODES_PER_DROP: u32 = 3;

/// Rungs stopped for overload since start, all rooms (for `/metrics`).
pub static RUNGS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Source frames the ladder skipped because it could not keep up, all rooms.
pub static FRAMES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// One rung: its picture size and bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    pub width: u32,
    pub height: u32,
    pub bitrate: u32,
}

/// The rungs for a `width`×`height` source: every height of `heights`
/// below the source's, width keeping the aspect ratio (even, as 4:2:0
/// wants), ≈ 0.1 bit per pixel at 30 fps.
pub fn rungs_for(width: u32, height: u32, heights: &[u32]) -> Vec<Rung> {
    heights
        .iter()
        .filter(|&&h| h >= 16 && h < height && width > 0)
        .map(|&h| {
            let w = ((width as u64 * h as u64 / height as u64) as u32 + 1) & !1;
            Rung {
                width: w.max(16),
                height: h & !1,
                bitrate: (w * h * 3).max(100_000),
            }
        })
        .collect()
}

/// One source picture for the ladder.
#[derive(Debug)]
pub enum Source {
    H264(AccessUnit),
    #[cfg(feature = "vp8")]
    Vp8(crate::vp8::Vp8Frame),
}

impl Source {
    fn keyframe(&self) -> bool {
        match self {
            Source::H264(au) => au.keyframe,
            #[cfg(feature = "vp8")]
            Source::Vp8(f) => f.keyframe,
        }
    }

    fn rtp_timestamp(&self) -> u32 {
        match self {
            Source::H264(au) => au.rtp_timestamp,
            #[cfg(feature = "vp8")]
            Source::Vp8(f) => f.rtp_timestamp,
        }
    }
}

/// The rungs for a VP8 source of `width`×`height`: the source's own size
/// first (VP8 does not go into HLS as it is), then [`rungs_for`].
#[cfg(feature = "vp8")]
pub fn rungs_with_source(width: u32, height: u32, heights: &[u32]) -> Vec<Rung> {
    let (w, h) = ((width & !1).max(16), (height & !1).max(16));
    let source = Rung {
        width: w,
        height: h,
        bitrate: (w * h * 3).max(100_000),
    };
    std::iter::once(source)
        .chain(rungs_for(width, height, heights))
        .collect()
}

/// An encoded picture of rung `rung`, timed as the source picture was.
#[derive(Debug)]
pub struct LadderOutput {
    pub rung: usize,
    pub au: AccessUnit,
    /// The source access unit's arrival, since the session's epoch.
    pub now: Duration,
}

/// What a full queue means: skip to the next keyframe, and after
/// [`EPISODES_PER_DROP`] such episodes stop the lowest rung.
#[derive(Debug, Default)]
struct Overload {
    skipping: bool,
    episodes: u32,
}

impl Overload {
    /// Whether to queue this frame at all.
    fn admit(&self, keyframe: bool) -> bool {
        !self.skipping || keyframe
    }

    fn queued(&mut self) {
        self.skipping = false;
    }

    /// The queue was full; says whether to stop the lowest rung now.
    fn full(&mut self) -> bool {
        if self.skipping {
            return false;
        }
        self.skipping = true;
        self.episodes += 1;
        if self.episodes < EPISODES_PER_DROP {
            return false;
        }
        self.episodes = 0;
        true
    }
}

/// Handle of a running ladder; dropping it stops the worker.
pub struct Ladder {
    jobs: SyncSender<(Source, Duration)>,
    /// Rungs still encoded (the lowest are stopped first).
    active: Arc<AtomicUsize>,
    /// Rungs never stopped for overload (1 for a VP8 source: its first
    /// rung is the only picture of the source's size there is).
    floor: usize,
    overload: Overload,
}

impl std::fmt::Debug for Ladder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ladder")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Ladder {
    /// Starts the worker thread for `rungs`; outputs go to `out`.
    pub fn start(rungs: Vec<Rung>, out: UnboundedSender<LadderOutput>) -> std::io::Result<Ladder> {
        let (jobs, rx) = std::sync::mpsc::sync_channel(QUEUE_FRAMES);
        let active = Arc::new(AtomicUsize::new(rungs.len()));
        let worker_active = active.clone();
        std::thread::Builder::new()
            .name("hls-ladder".into())
            .spawn(move || work(rx, rungs, worker_active, out))?;
        Ok(Ladder {
            jobs,
            active,
            floor: 0,
            overload: Overload::default(),
        })
    }

    /// Never stop the first `floor` rungs, however overloaded.
    pub fn keep_at_least(&mut self, floor: usize) {
        self.floor = floor;
    }

    /// Whether input is being skipped up to the next source keyframe (the
    /// worker fell behind): a source that makes keyframes only on request
    /// should be asked for one.
    pub fn skipping(&self) -> bool {
        self.overload.skipping
    }

    /// Rungs still being made.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Queues one source access unit; never blocks.
    pub fn push(&mut self, au: AccessUnit, now: Duration) {
        self.push_source(Source::H264(au), now);
    }

    /// Queues one source picture; never blocks.
    pub fn push_source(&mut self, source: Source, now: Duration) {
        if !self.overload.admit(source.keyframe()) {
            FRAMES_DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.jobs.try_send((source, now)) {
            Ok(()) => self.overload.queued(),
            Err(TrySendError::Full(_)) => {
                FRAMES_DROPPED.fetch_add(1, Ordering::Relaxed);
                let running = self.active.load(Ordering::Relaxed);
                if self.overload.full() && running > self.floor {
                    let left = running - 1;
                    self.active.store(left, Ordering::Relaxed);
                    RUNGS_DROPPED.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        rungs_left = left,
                        "hls: the ladder cannot keep up: its lowest rendition stops"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A ladder whose queue the test reads itself (a worker that stalls).
    #[cfg(test)]
    fn stalled(rungs: usize) -> (Ladder, Receiver<(Source, Duration)>) {
        let (jobs, rx) = std::sync::mpsc::sync_channel(QUEUE_FRAMES);
        let ladder = Ladder {
            jobs,
            active: Arc::new(AtomicUsize::new(rungs)),
            floor: 0,
            overload: Overload::default(),
        };
        (ladder, rx)
    }
}

/// A picture in I420 with tight strides.
struct Picture {
    width: usize,
    height: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Picture {
    fn new(width: usize, height: usize) -> Picture {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        Picture {
            width,
            height,
            y: vec![0; width * height],
            u: vec![128; cw * ch],
            v: vec![128; cw * ch],
        }
    }
}

/// Bilinear resampling of one plane (fixed point, 8 fractional bits).
fn scale_plane(
    src: &[u8],
    sw: usize,
    sh: usize,
    stride: usize,
    dst: &mut [u8],
    dw: usize,
    dh: usize,
) {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
        return;
    }
    let x_step = ((sw as u64) << 16) / dw as u64;
    let y_step = ((sh as u64) << 16) / dh as u64;
    for dy in 0..dh {
        let fy = (dy as u64 * y_step + y_step / 2).saturating_sub(1 << 15);
        let y0 = ((fy >> 16) as usize).min(sh - 1);
        let y1 = (y0 + 1).min(sh - 1);
        let wy = ((fy >> 8) & 0xff) as u32;
        let (r0, r1) = (&src[y0 * stride..], &src[y1 * stride..]);
        let out = &mut dst[dy * dw..(dy + 1) * dw];
        for (dx, o) in out.iter_mut().enumerate() {
            let fx = (dx as u64 * x_step + x_step / 2).saturating_sub(1 << 15);
            let x0 = ((fx >> 16) as usize).min(sw - 1);
            let x1 = (x0 + 1).min(sw - 1);
            let wx = ((fx >> 8) & 0xff) as u32;
            let top = r0[x0] as u32 * (256 - wx) + r0[x1] as u32 * wx;
            let bottom = r1[x0] as u32 * (256 - wx) + r1[x1] as u32 * wx;
            *o = ((top * (256 - wy) + bottom * wy + (1 << 15)) >> 16) as u8;
        }
    }
}

fn scale(src: &impl YUVSource, dst: &mut Picture) {
    let (sw, sh) = src.dimensions();
    let (ys, us, vs) = src.strides();
    let (dw, dh) = (dst.width, dst.height);
    scale_plane(src.y(), sw, sh, ys, &mut dst.y, dw, dh);
    let (scw, sch, dcw, dch) = (
        sw.div_ceil(2),
        sh.div_ceil(2),
        dw.div_ceil(2),
        dh.div_ceil(2),
    );
    scale_plane(src.u(), scw, sch, us, &mut dst.u, dcw, dch);
    scale_plane(src.v(), scw, sch, vs, &mut dst.v, dcw, dch);
}

/// The access unit as Annex B, parameter sets first on keyframes.
fn annex_b(au: &AccessUnit, out: &mut BytesMut) {
    out.clear();
    if let Some(ps) = au.parameter_sets.as_ref().filter(|_| au.keyframe) {
        for nal in [&ps.sps, &ps.pps] {
            out.put_slice(&[0, 0, 0, 1]);
            out.put_slice(nal);
        }
    }
    for nal in &au.nalus {
        out.put_slice(&[0, 0, 0, 1]);
        out.put_slice(nal);
    }
}

fn encoder(rung: Rung) -> Result<Encoder, openh264::Error> {
    Encoder::with_api_config(
        OpenH264API::from_source(),
        EncoderConfig::new()
            .bitrate(BitRate::from_bps(rung.bitrate))
            .max_frame_rate(FrameRate::from_hz(60.0))
            .rate_control_mode(RateControlMode::Bitrate)
            .usage_type(UsageType::CameraVideoRealTime)
            .complexity(Complexity::Low)
            .skip_frames(false),
    )
}

/// The rungs' encoders and pictures, and where their output goes.
struct Rungs {
    rungs: Vec<Rung>,
    encoders: Vec<Encoder>,
    pictures: Vec<Picture>,
    active: Arc<AtomicUsize>,
    out: UnboundedSender<LadderOutput>,
}

impl Rungs {
    /// Scales and encodes one decoded picture into every running rung.
    /// Returns false once the session is over.
    fn encode(
        &mut self,
        decoded: &impl YUVSource,
        idr: bool,
        rtp_timestamp: u32,
        now: Duration,
    ) -> bool {
        let running = self.active.load(Ordering::Relaxed).min(self.rungs.len());
        for (i, (encoder, picture)) in self
            .encoders
            .iter_mut()
            .zip(&mut self.pictures)
            .enumerate()
            .take(running)
        {
            scale(decoded, picture);
            if idr {
                // Same GOP as the source: every rendition's segments start
                // on the same pictures.
                encoder.force_intra_frame();
            }
            let (w, h) = (picture.width, picture.height);
            let slices = YUVSlices::new(
                (&picture.y, &picture.u, &picture.v),
                (w, h),
                (w, w.div_ceil(2), w.div_ceil(2)),
            );
            let encoded = match encoder.encode(&slices) {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    debug!("hls ladder: encode failed: {e}");
                    continue;
                }
            };
            let Some(au) = AccessUnit::from_annex_b(rtp_timestamp, Bytes::from(encoded)) else {
                continue;
            };
            if self.out.send(LadderOutput { rung: i, au, now }).is_err() {
                return false;
            }
        }
        true
    }
}

fn work(
    jobs: Receiver<(Source, Duration)>,
    rungs: Vec<Rung>,
    active: Arc<AtomicUsize>,
    out: UnboundedSender<LadderOutput>,
) {
    let encoders = match rungs.iter().map(|r| encoder(*r)).collect() {
        Ok(e) => e,
        Err(e) => {
            warn!("hls: openh264 did not start ({e}): no ladder renditions");
            return;
        }
    };
    let pictures = rungs
        .iter()
        .map(|r| Picture::new(r.width as usize, r.height as usize))
        .collect();
    let mut rungs = Rungs {
        rungs,
        encoders,
        pictures,
        active,
        out,
    };
    let mut h264: Option<Decoder> = None;
    #[cfg(feature = "vp8")]
    let mut vp8: Option<crate::vpx::Vp8Decoder> = None;
    #[cfg(feature = "vp8")]
    let mut last_idr: Option<u32> = None;
    let mut bitstream = BytesMut::new();
    let mut started = false;
    while let Ok((source, now)) = jobs.recv() {
        started |= source.keyframe();
        if !started {
            continue; // nothing decodes before the first keyframe
        }
        let ts = source.rtp_timestamp();
        let going = match source {
            Source::H264(au) => {
                if h264.is_none() {
                    match Decoder::new() {
                        Ok(d) => h264 = Some(d),
                        Err(e) => {
                            warn!("hls: openh264 did not start ({e}): no ladder renditions");
                            return;
                        }
                    }
                }
                let Some(decoder) = h264.as_mut() else { return };
                annex_b(&au, &mut bitstream);
                match decoder.decode(&bitstream) {
                    Ok(Some(picture)) => rungs.encode(&picture, au.keyframe, ts, now),
                    Ok(None) => true,
                    Err(e) => {
                        debug!("hls ladder: frame did not decode: {e}");
                        true
                    }
                }
            }
            #[cfg(feature = "vp8")]
            Source::Vp8(frame) => {
                if vp8.is_none() {
                    match crate::vpx::Vp8Decoder::new() {
                        Ok(d) => vp8 = Some(d),
                        Err(e) => {
                            warn!("hls: libvpx did not start ({e}): no VP8 renditions");
                            return;
                        }
                    }
                }
                let Some(decoder) = vp8.as_mut() else { return };
                // IDRs where the source has keyframes, and at least every
                // VP8_IDR_EVERY, so that segments can end.
                let idr =
                    frame.keyframe || last_idr.is_none_or(|t| ts.wrapping_sub(t) >= VP8_IDR_EVERY);
                match decoder.decode(&frame.data) {
                    Ok(Some(picture)) => {
                        if idr {
                            last_idr = Some(ts);
                        }
                        rungs.encode(&picture, idr, ts, now)
                    }
                    Ok(None) => true,
                    Err(e) => {
                        debug!("hls ladder: VP8 frame did not decode: {e}");
                        true
                    }
                }
            }
        };
        if !going {
            return; // the session is over
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h264::tests::fixture_access_units;

    fn picture(keyframe: bool) -> AccessUnit {
        AccessUnit {
            rtp_timestamp: 0,
            keyframe,
            nalus: vec![Bytes::from_static(&[0x65, 0x88])],
            parameter_sets: None,
        }
    }

    #[test]
    fn a_worker_that_cannot_keep_up_loses_frames_then_its_lowest_rungs() {
        let (mut ladder, queue) = Ladder::stalled(2);
        let dropped_before = FRAMES_DROPPED.load(Ordering::Relaxed);
        for episode in 1..=EPISODES_PER_DROP as usize * 2 {
            ladder.push(picture(true), Duration::ZERO);
            for _ in 0..QUEUE_FRAMES + 3 {
                ladder.push(picture(false), Duration::ZERO);
            }
            // Frames past the queue are skipped up to the next keyframe.
            assert!(ladder.overload.skipping);
            let queued: Vec<_> = queue.try_iter().collect();
            assert_eq!(queued.len(), QUEUE_FRAMES, "episode {episode}");
            let expected = 2 - episode / EPISODES_PER_DROP as usize;
            assert_eq!(ladder.active(), expected, "episode {episode}");
        }
        assert!(FRAMES_DROPPED.load(Ordering::Relaxed) >= dropped_before + 6 * 3);
        assert!(RUNGS_DROPPED.load(Ordering::Relaxed) >= 2);
        // Never below zero rungs.
        for _ in 0..EPISODES_PER_DROP {
            ladder.push(picture(true), Duration::ZERO);
            for _ in 0..QUEUE_FRAMES + 1 {
                ladder.push(picture(false), Duration::ZERO);
            }
            let _ = queue.try_iter().count();
        }
        assert_eq!(ladder.active(), 0);

        // With a floor, the first rungs are never stopped.
        let (mut ladder, queue) = Ladder::stalled(2);
        ladder.keep_at_least(1);
        for _ in 0..EPISODES_PER_DROP * 3 {
            ladder.push(picture(true), Duration::ZERO);
            for _ in 0..QUEUE_FRAMES + 1 {
                ladder.push(picture(false), Duration::ZERO);
            }
            assert!(ladder.skipping());
            let _ = queue.try_iter().count();
        }
        assert_eq!(ladder.active(), 1);
    }

    #[test]
    fn rungs_keep_the_aspect_ratio_and_never_upscale() {
        assert_eq!(
            rungs_for(1280, 720, &DEFAULT_HEIGHTS)
                .iter()
                .map(|r| (r.width, r.height))
                .collect::<Vec<_>>(),
            [(854, 480), (426, 240)]
        );
        assert_eq!(rungs_for(640, 360, &DEFAULT_HEIGHTS).len(), 1);
        assert!(rungs_for(320, 180, &DEFAULT_HEIGHTS).is_empty());
    }

    #[test]
    fn scaling_keeps_a_flat_picture_flat_and_a_gradient_monotonic() {
        let (sw, sh) = (64, 32);
        let src: Vec<u8> = (0..sw * sh).map(|i| ((i % sw) * 4) as u8).collect();
        let mut dst = vec![0u8; 32 * 16];
        scale_plane(&src, sw, sh, sw, &mut dst, 32, 16);
        for row in dst.chunks(32) {
            assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
        }
        let flat = vec![77u8; sw * sh];
        scale_plane(&flat, sw, sh, sw, &mut dst, 32, 16);
        assert!(dst.iter().all(|&v| v == 77));
    }

    #[test]
    fn a_source_becomes_decodable_lower_renditions_with_the_same_keyframes() {
        // 320x180 baseline, IDR every 30 frames.
        let units: Vec<AccessUnit> = fixture_access_units()
            .iter()
            .enumerate()
            .filter_map(|(i, nals)| {
                let mut b = BytesMut::new();
                for n in nals {
                    b.put_slice(&[0, 0, 0, 1]);
                    b.put_slice(n);
                }
                AccessUnit::from_annex_b(i as u32 * 3000, b.freeze())
            })
            .collect();
        assert!(units.len() > 60);
        let rungs = rungs_for(320, 180, &[120, 90]);
        assert_eq!(rungs.len(), 2);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut ladder = Ladder::start(rungs.clone(), tx).unwrap();
        let keyframes_in = units.iter().filter(|u| u.keyframe).count();
        for (i, au) in units.iter().enumerate() {
            ladder.push(au.clone(), Duration::from_millis(33 * i as u64));
            // Give the worker time: this test checks output, not overload.
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(ladder);
        let mut got = vec![Vec::new(), Vec::new()];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got[0].len() + got[1].len() < 2 * units.len() && std::time::Instant::now() < deadline
        {
            match rx.try_recv() {
                Ok(o) => got[o.rung].push(o),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => break,
            }
        }
        for (rung, outs) in rungs.iter().zip(&got) {
            assert!(
                outs.len() + 2 >= units.len(),
                "{} of {}",
                outs.len(),
                units.len()
            );
            let first = outs[0]
                .au
                .parameter_sets
                .as_ref()
                .expect("SPS on the first picture");
            assert_eq!(
                (first.info.width, first.info.height),
                (rung.width, rung.height)
            );
            let keyframes = outs.iter().filter(|o| o.au.keyframe).count();
            assert!(keyframes >= keyframes_in, "{keyframes} < {keyframes_in}");
            // What comes out decodes.
            let mut dec = Decoder::new().unwrap();
            let mut decoded = 0;
            let mut buf = BytesMut::new();
            for o in outs {
                annex_b(&o.au, &mut buf);
                if let Ok(Some(p)) = dec.decode(&buf) {
                    assert_eq!(p.dimensions(), (rung.width as usize, rung.height as usize));
                    decoded += 1;
                }
            }
            assert!(decoded + 2 >= outs.len(), "{decoded} of {}", outs.len());
        }
    }
}
