//! One publish of a room as a [`Bridge`]: the SFU tap's tracks and layers
//! become renditions, its packets become [`Bridge::push_rtp`] calls.
//!
//! ```text
//!  TapEvent::Live { tracks }  ──► LiveSession::new: H.264 layer → rendition
//!                                                  Opus track  → audio rendition
//!                                                  (AAC-LC through aac::OpusToAac,
//!                                                   or Opus as it came)
//!  TapEvent::Packet           ──► LiveSession::push ──► Bridge::push_rtp
//!                                   │ (payload type checked: a VP8 packet never
//!                                   │  reaches the H.264 depacketizer)
//!                                   └─► Pushed { rendition, progress }
//! ```
//!
//! Still sans-IO: no clock, no channel. The HTTP edge ([`crate::service`])
//! owns the tap, the time and the wake-ups. Unlike the core modules this
//! one knows the SFU's tap types, which is all it knows of the SFU.

use std::time::Duration;

use bytes::Bytes;
use sfu::{TapCodec, TapPacket, TapTrack};

use crate::aac::{AacFrame, OpusToAac};
use crate::bridge::{Bridge, BridgeConfig, TrackId};
use crate::h264::AccessUnit;
use crate::ladder::{rungs_for, Ladder, LadderOutput};
use crate::{Progress, RtpPacket};

/// The audio codec of the HLS output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioOutput {
    /// AAC-LC (`mp4a.40.2`) transcoded from the publisher's Opus: plays
    /// everywhere, Safari, iOS and TVs included.
    #[default]
    Aac,
    /// The publisher's Opus as it came: no decoding, but only MSE players
    /// (hls.js in Chromium/Firefox) play it.
    Opus,
}

/// Where a tap packet goes.
#[derive(Debug)]
struct Route {
    track: TrackId,
    /// Index into [`LiveSession::renditions`].
    rendition: usize,
    /// The payload types of the codec the rendition depacketizes.
    payload_types: Vec<u8>,
    /// Opus → AAC, for an audio rendition in AAC.
    transcoder: Option<Box<OpusToAac>>,
}

/// A track of the publish that does not become a rendition, and why: the
/// edge logs these once per publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub track: usize,
    pub codec: TapCodec,
}

/// The publisher's original AAC-LC, offered by its ingest beside the RTP
/// (an RTMP encoder's audio: see [`sfu::SourceRegistry`]). When a publish
/// has one, the `audio` rendition carries it untouched instead of
/// transcoding the room's Opus back to AAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAac {
    pub sample_rate: u32,
    pub channels: u8,
}

impl SourceAac {
    /// The source if the bridge can carry it as is: AAC-LC (object type 2)
    /// at a rate and channel count an `esds` can describe.
    pub fn from_source(audio: &sfu::SourceAudio) -> Option<SourceAac> {
        let supported = audio.object_type == 2
            && crate::fmp4::CodecConfig::aac_audio_specific_config(
                audio.sample_rate,
                audio.channels,
            )
            .is_some();
        supported.then_some(SourceAac {
            sample_rate: audio.sample_rate,
            channels: audio.channels,
        })
    }
}

/// The source AAC rendition and its sample clock.
#[derive(Debug)]
struct SourceRoute {
    track: TrackId,
    rendition: usize,
    sample_rate: u32,
    /// Sample time of the next frame if it follows the last one.
    next: Option<u64>,
}

/// A source frame further than this from where the last one ended starts
/// the sample clock afresh (the encoder's clock jumped, or frames were lost).
const SOURCE_RESYNC_MS: u64 = 100;

/// Largest VP8 picture transcoded (4096×2304): larger key frames are
/// dropped, so a publisher cannot make the server allocate gigabytes.
#[cfg(feature = "vp8")]
const MAX_VP8_PIXELS: u64 = 4096 * 2304;

/// Least time between key frame requests for a VP8 source.
#[cfg(feature = "vp8")]
const VP8_KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Samples in an AAC-LC frame.
const AAC_FRAME_SAMPLES: u64 = 1024;

/// The ladder of a single-layer H.264 source: its rung renditions, and the
/// worker once the source's size is known (its first keyframe).
#[derive(Debug)]
struct LadderState {
    /// The teed H.264 rendition; None for a VP8 source.
    source: Option<TrackId>,
    heights: Vec<u32>,
    /// (track, index into `renditions`, height) per declared rung.
    renditions: Vec<(TrackId, usize, u32)>,
    running: Option<Ladder>,
    /// Rung index of the running ladder → index into `renditions`.
    map: Vec<Option<usize>>,
    out: tokio::sync::mpsc::UnboundedSender<LadderOutput>,
    teed: Vec<(AccessUnit, Duration)>,
    /// Could not start: do not try again.
    failed: bool,
}

/// The rendition height that stands for a VP8 source's own size (made by
/// the ladder too, and named `video`).
#[cfg(feature = "vp8")]
const SOURCE_RUNG: u32 = 0;

/// A VP8 video track (feature `vp8`): depacketized here, every rendition
/// made by the ladder (libvpx decode, openh264 encode).
#[cfg(feature = "vp8")]
#[derive(Debug)]
struct Vp8Input {
    track: usize,
    payload_types: Vec<u8>,
    /// The `video` rendition (the source's size), declared with the other
    /// tracks so that it leads the segment boundaries as a video track does.
    source: Option<(TrackId, usize)>,
    /// A key frame over [`MAX_VP8_PIXELS`] came: frames are dropped until a
    /// key frame of an acceptable size.
    oversize: bool,
    reorder: crate::rtp::ReorderBuffer,
    depacketizer: crate::vp8::Vp8Depacketizer,
    released: Vec<crate::rtp::Reordered>,
    last_keyframe_request: Option<Duration>,
}

impl LadderState {
    /// Not started yet; the encoded pictures will arrive on the receiver.
    fn new(
        source: Option<TrackId>,
        heights: Vec<u32>,
        renditions: Vec<(TrackId, usize, u32)>,
    ) -> (
        LadderState,
        tokio::sync::mpsc::UnboundedReceiver<LadderOutput>,
    ) {
        let (out, rx) = tokio::sync::mpsc::unbounded_channel();
        let state = LadderState {
            source,
            heights,
            renditions,
            running: None,
            map: Vec::new(),
            out,
            teed: Vec::new(),
            failed: false,
        };
        (state, rx)
    }

    /// Starts the worker for `rungs`, rung `i` feeding the rendition of
    /// height `heights[i]`; with no rungs, or if it cannot start, never again.
    fn start(&mut self, rungs: Vec<crate::ladder::Rung>, heights: &[u32]) {
        self.map = heights
            .iter()
            .map(|h| self.renditions.iter().position(|(_, _, r)| r == h))
            .collect();
        if rungs.is_empty() {
            self.failed = true;
            return;
        }
        match Ladder::start(rungs, self.out.clone()) {
            Ok(ladder) => self.running = Some(ladder),
            Err(e) => {
                tracing::warn!("hls: the ladder thread did not start: {e}");
                self.failed = true;
            }
        }
    }
}

/// One publish (one `Live` generation) of a room.
#[derive(Debug)]
pub struct LiveSession {
    pub bridge: Bridge,
    /// Rendition names, in the order they were added to the bridge.
    renditions: Vec<String>,
    /// `routes[track][layer]`
    routes: Vec<Vec<Option<Route>>>,
    skipped: Vec<Skipped>,
    /// Reused for the AAC frames of one packet.
    frames: Vec<AacFrame>,
    source: Option<SourceRoute>,
    ladder: Option<LadderState>,
    /// Tap track and layer count of each H.264 video track.
    video_tracks: Vec<(usize, usize)>,
    #[cfg(feature = "vp8")]
    vp8: Option<Vp8Input>,
}

/// What one packet did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The rendition it went to (index into [`LiveSession::renditions`]);
    /// `None` for a packet no rendition takes.
    pub rendition: Option<usize>,
    pub progress: Progress,
}

/// A rendition name for a video layer: `video` without simulcast,
/// `video-{rid}` with it; a second video track gets its index too. Rids the
/// bridge would not take as a path segment fall back to the layer index.
pub fn video_rendition_name(nth_video: usize, rid: Option<&str>, layer: usize) -> String {
    let base = if nth_video == 0 {
        "video".to_owned()
    } else {
        format!("video{nth_video}")
    };
    match rid {
        None => base,
        Some(rid)
            if !rid.is_empty()
                && rid.len() <= 16
                && rid.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!("{base}-{rid}")
        }
        Some(_) => format!("{base}-{layer}"),
    }
}

/// `audio`, then `audio1`, `audio2`… for further Opus tracks.
pub fn audio_rendition_name(nth_audio: usize) -> String {
    if nth_audio == 0 {
        "audio".to_owned()
    } else {
        format!("audio{nth_audio}")
    }
}

impl LiveSession {
    /// Renditions for `tracks`: every layer of every H.264 video track, and
    /// every Opus track. Other codecs are listed in [`Self::skipped`] (VP8
    /// and the others need the transcoding ladder, not built yet). Audio
    /// comes out as `audio` says; if the AAC encoder cannot start, as Opus.
    pub fn new(
        tracks: &[TapTrack],
        config: BridgeConfig,
        audio: AudioOutput,
        epoch_unix_ms: u64,
    ) -> LiveSession {
        LiveSession::with_source(tracks, config, audio, epoch_unix_ms, None)
    }

    /// Like [`LiveSession::new`]; with `source`, the `audio` rendition is
    /// the publisher's original AAC (fed by [`LiveSession::push_source_aac`])
    /// and the room's Opus tracks are not bridged.
    pub fn with_source(
        tracks: &[TapTrack],
        config: BridgeConfig,
        audio: AudioOutput,
        epoch_unix_ms: u64,
        source: Option<SourceAac>,
    ) -> LiveSession {
        #[cfg(feature = "vp8")]
        let reorder = config.reorder;
        let mut bridge = Bridge::new(config, epoch_unix_ms);
        let mut renditions = Vec::new();
        let mut routes = Vec::new();
        let mut skipped = Vec::new();
        let (mut nth_video, mut nth_audio) = (0, 0);
        let mut video_tracks = Vec::new();
        #[cfg(feature = "vp8")]
        let mut vp8: Option<Vp8Input> = None;
        // VP8 is transcoded only as the publish's one video track.
        #[cfg(feature = "vp8")]
        let video_count = tracks.iter().filter(|t| t.video).count();
        for t in tracks {
            if routes.len() <= t.index {
                routes.resize_with(t.index + 1, Vec::new);
            }
            let wanted = if t.video {
                TapCodec::H264
            } else {
                TapCodec::Opus
            };
            let mut payload_types: Vec<u8> = t
                .payload_types
                .iter()
                .filter(|(_, c)| *c == wanted)
                .map(|(pt, _)| *pt)
                .collect();
            payload_types.sort_unstable();
            payload_types.dedup();
            #[cfg(feature = "vp8")]
            if t.video && payload_types.is_empty() && video_count == 1 {
                let vp8_types: Vec<u8> = t
                    .payload_types
                    .iter()
                    .filter(|(_, c)| *c == TapCodec::Vp8)
                    .map(|(pt, _)| *pt)
                    .collect();
                // Single-layer VP8 only: a simulcast layer of its own size
                // is the ladder's job, not several decodes.
                if !vp8_types.is_empty() && t.layers.len() == 1 {
                    let name = video_rendition_name(0, None, 0);
                    let source = bridge
                        .add_h264_frame_track(&name)
                        .ok()
                        .map(|track| (track, push_name(&mut renditions, name)));
                    vp8 = Some(Vp8Input {
                        track: t.index,
                        payload_types: vp8_types,
                        source,
                        oversize: false,
                        reorder: crate::rtp::ReorderBuffer::new(reorder),
                        depacketizer: crate::vp8::Vp8Depacketizer::new(),
                        released: Vec::new(),
                        last_keyframe_request: None,
                    });
                    continue;
                }
            }
            if payload_types.is_empty() {
                skipped.push(Skipped {
                    track: t.index,
                    codec: t.codec,
                });
                continue;
            }
            let mut layer_routes = Vec::new();
            if t.video {
                video_tracks.push((t.index, t.layers.len()));
                for (layer, rid) in t.layers.iter().enumerate() {
                    let name = video_rendition_name(nth_video, rid.as_deref(), layer);
                    layer_routes.push(bridge.add_h264_track(&name).ok().map(|track| Route {
                        track,
                        rendition: push_name(&mut renditions, name),
                        payload_types: payload_types.clone(),
                        transcoder: None,
                    }));
                }
                nth_video += 1;
            } else if source.is_some() {
                // The original AAC replaces the Opus made from it.
                continue;
            } else {
                let name = audio_rendition_name(nth_audio);
                let channels = t.channels.unwrap_or(2).clamp(1, 2);
                let transcoder = match audio {
                    AudioOutput::Aac => OpusToAac::new(channels).ok().map(Box::new),
                    AudioOutput::Opus => None,
                };
                let track = match &transcoder {
                    Some(_) => bridge.add_aac_track(&name, crate::aac::SAMPLE_RATE, channels),
                    None => bridge.add_opus_track(&name, channels),
                };
                let route = track.ok().map(|track| Route {
                    track,
                    rendition: push_name(&mut renditions, name),
                    payload_types,
                    transcoder,
                });
                // An audio track has one layer; any layer index maps to it.
                layer_routes.push(route);
                nth_audio += 1;
            }
            routes[t.index] = layer_routes;
        }
        let source = source.and_then(|s| {
            let name = audio_rendition_name(0);
            let track = bridge
                .add_aac_track(&name, s.sample_rate, s.channels)
                .ok()?;
            Some(SourceRoute {
                track,
                rendition: push_name(&mut renditions, name),
                sample_rate: s.sample_rate,
                next: None,
            })
        });
        bridge.tracks_complete();
        LiveSession {
            bridge,
            renditions,
            routes,
            skipped,
            frames: Vec::new(),
            source,
            ladder: None,
            video_tracks,
            #[cfg(feature = "vp8")]
            vp8,
        }
    }

    /// Adds the ladder's renditions (`video-{height}p`) when the publish has
    /// one H.264 video track without simulcast: they are made from it by
    /// [`crate::ladder`] once its first keyframe tells its size (heights at
    /// or above the source's are never made). Returns where the encoded
    /// pictures arrive: hand each to [`LiveSession::push_ladder_output`].
    /// Call before serving the session (its renditions are fixed then).
    pub fn enable_ladder(
        &mut self,
        heights: &[u32],
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<LadderOutput>> {
        #[cfg(feature = "vp8")]
        if self.vp8.is_some() {
            return self.enable_vp8_ladder(heights);
        }
        let [(track, 1)] = self.video_tracks[..] else {
            return None; // simulcast is the ladder already; or no video
        };
        let source = self.routes.get(track)?.first()?.as_ref()?;
        let source_track = source.track;
        let even = distinct_even(heights);
        let mut renditions = Vec::new();
        self.add_rung_renditions(&even, &mut renditions);
        if renditions.is_empty() {
            return None;
        }
        self.bridge.tee_access_units(source_track);
        let (state, rx) = LadderState::new(Some(source_track), even, renditions);
        self.ladder = Some(state);
        Some(rx)
    }

    /// Declares the optional rendition `video-{h}p` of each height.
    fn add_rung_renditions(&mut self, heights: &[u32], out: &mut Vec<(TrackId, usize, u32)>) {
        for &h in heights {
            let name = format!("video-{h}p");
            if let Ok(t) = self.bridge.add_h264_frame_track(&name) {
                self.bridge.set_optional(t);
                out.push((t, push_name(&mut self.renditions, name), h));
            }
        }
    }

    /// Hands the source's new access units to the ladder (starting it on
    /// the first keyframe).
    fn feed_ladder(&mut self) {
        let Some(l) = &mut self.ladder else { return };
        let Some(source) = l.source else { return };
        self.bridge.take_teed(source, &mut l.teed);
        let mut teed = std::mem::take(&mut l.teed);
        for (au, now) in teed.drain(..) {
            if l.running.is_none() && !l.failed {
                let Some(ps) = au.parameter_sets.as_ref().filter(|_| au.keyframe) else {
                    continue;
                };
                let rungs = rungs_for(ps.info.width, ps.info.height, &l.heights);
                let heights: Vec<u32> = rungs.iter().map(|r| r.height).collect();
                l.start(rungs, &heights);
            }
            if let Some(ladder) = &mut l.running {
                ladder.push(au, now);
            }
        }
        l.teed = teed; // keeps its allocation
    }

    /// The VP8 source's renditions: `video` at the source's size (known at
    /// its first key frame) and `video-{h}p` below it, all made by the
    /// ladder. Renditions are declared now; the ladder starts with the
    /// first key frame.
    #[cfg(feature = "vp8")]
    fn enable_vp8_ladder(
        &mut self,
        heights: &[u32],
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<LadderOutput>> {
        let even = distinct_even(heights);
        let mut renditions = Vec::new();
        // The source's own size (declared with the session's tracks).
        if let Some((t, r)) = self.vp8.as_ref().and_then(|v| v.source) {
            renditions.push((t, r, SOURCE_RUNG));
        }
        self.add_rung_renditions(&even, &mut renditions);
        if renditions.is_empty() {
            return None;
        }
        let (state, rx) = LadderState::new(None, even, renditions);
        self.ladder = Some(state);
        Some(rx)
    }

    /// One VP8 packet: reordered, depacketized, whole frames to the ladder
    /// (started on the first key frame, whose header tells the size).
    #[cfg(feature = "vp8")]
    fn push_vp8(&mut self, packet: &TapPacket, now: Duration) -> Pushed {
        let Some(v) = self.vp8.as_mut() else {
            return Pushed::default();
        };
        let rtp = RtpPacket {
            seq: packet.seq_no,
            timestamp: packet.timestamp,
            marker: packet.marker,
            payload: Bytes::copy_from_slice(&packet.payload),
        };
        v.reorder.push(rtp, now, &mut v.released);
        let mut frames = Vec::new();
        for item in v.released.drain(..) {
            if let Some(frame) = v.depacketizer.push(item) {
                frames.push(frame);
            }
        }
        let Some(l) = &mut self.ladder else {
            return Pushed::default();
        };
        // A key frame is needed to start, after a loss, and when the ladder
        // fell behind and skips to the next one (a browser sends VP8 key
        // frames only when asked).
        let mut progress = Progress::default();
        let skipping = l.running.as_ref().is_some_and(Ladder::skipping);
        if (v.depacketizer.waiting_for_keyframe() || skipping || v.oversize)
            && v.last_keyframe_request
                .is_none_or(|at| now.saturating_sub(at) >= VP8_KEYFRAME_REQUEST_INTERVAL)
        {
            v.last_keyframe_request = Some(now);
            progress.keyframe_wanted = true;
        }
        for frame in frames {
            // A picture too large to decode safely: nothing until a key
            // frame of a size we take (libvpx allocates for what it is told).
            if let Some((w, h)) = frame.size.filter(|_| frame.keyframe) {
                v.oversize = w as u64 * h as u64 > MAX_VP8_PIXELS;
                if v.oversize {
                    tracing::warn!(
                        width = w,
                        height = h,
                        "hls: VP8 picture too large to transcode"
                    );
                }
            }
            if v.oversize {
                continue;
            }
            if l.running.is_none() && !l.failed {
                let Some((w, h)) = frame.size.filter(|_| frame.keyframe) else {
                    continue;
                };
                let rungs = crate::ladder::rungs_with_source(w as u32, h as u32, &l.heights);
                // Rung 0 is the source's size: the `video` rendition.
                let heights: Vec<u32> = std::iter::once(SOURCE_RUNG)
                    .chain(rungs.iter().skip(1).map(|r| r.height))
                    .collect();
                l.start(rungs, &heights);
                if let Some(ladder) = &mut l.running {
                    // The source's size is the only rendition of it.
                    ladder.keep_at_least(1);
                }
            }
            if let Some(ladder) = &mut l.running {
                ladder.push_source(crate::ladder::Source::Vp8(frame), now);
            }
        }
        // Only to carry the keyframe request (see `service::notify`).
        Pushed {
            rendition: l.renditions.first().map(|(_, r, _)| *r),
            progress,
        }
    }

    /// One picture the ladder encoded.
    pub fn push_ladder_output(&mut self, output: LadderOutput) -> Pushed {
        let Some(l) = &self.ladder else {
            return Pushed::default();
        };
        let Some(&(track, rendition, _)) = l
            .map
            .get(output.rung)
            .copied()
            .flatten()
            .and_then(|i| l.renditions.get(i))
        else {
            return Pushed::default();
        };
        match self.bridge.push_access_unit(track, output.au, output.now) {
            Ok(mut progress) => {
                // The ladder makes its keyframes where the source has them.
                progress.keyframe_wanted = false;
                Pushed {
                    rendition: Some(rendition),
                    progress,
                }
            }
            Err(_) => Pushed::default(),
        }
    }

    /// Whether the audio rendition is the publisher's original AAC.
    pub fn has_source_audio(&self) -> bool {
        self.source.is_some()
    }

    /// Feeds one original AAC access unit (presentation time `pts_ms` on
    /// the encoder's clock) that arrived `now` after the session's epoch.
    /// Frames that follow each other get sample times exactly 1024 apart
    /// (the millisecond clock of FLV would make them jitter).
    pub fn push_source_aac(&mut self, pts_ms: u32, data: Bytes, now: Duration) -> Pushed {
        let Some(source) = &mut self.source else {
            return Pushed::default();
        };
        let rate = source.sample_rate as u64;
        let at = pts_ms as u64 * rate / 1000;
        let ts = match source.next {
            Some(next) if at.abs_diff(next) <= SOURCE_RESYNC_MS * rate / 1000 => next,
            _ => at,
        };
        source.next = Some(ts + AAC_FRAME_SAMPLES);
        match self
            .bridge
            .push_aac_frame(source.track, ts as u32, data, now)
        {
            Ok(progress) => Pushed {
                rendition: Some(source.rendition),
                progress,
            },
            Err(_) => Pushed::default(),
        }
    }

    pub fn renditions(&self) -> &[String] {
        &self.renditions
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Feeds one tap packet that arrived `now` after the session's epoch.
    pub fn push(&mut self, packet: &TapPacket, now: Duration) -> Pushed {
        #[cfg(feature = "vp8")]
        if self
            .vp8
            .as_ref()
            .is_some_and(|v| v.track == packet.track && v.payload_types.contains(&packet.pt))
        {
            return self.push_vp8(packet, now);
        }
        let Some(layers) = self.routes.get_mut(packet.track) else {
            return Pushed::default();
        };
        let route = match layers.len() {
            1 => layers[0].as_mut(),
            _ => layers
                .get_mut(packet.layer as usize)
                .and_then(Option::as_mut),
        };
        let Some(route) = route.filter(|r| r.payload_types.contains(&packet.pt)) else {
            return Pushed::default();
        };
        if let Some(transcoder) = &mut route.transcoder {
            let mut frames = std::mem::take(&mut self.frames);
            let mut progress = Progress::default();
            let decoded = transcoder.push(
                packet.seq_no,
                packet.timestamp,
                &packet.payload,
                &mut frames,
            );
            for frame in frames.drain(..) {
                let pushed =
                    self.bridge
                        .push_aac_frame(route.track, frame.timestamp, frame.data, now);
                if let Ok(p) = pushed {
                    progress |= p;
                }
            }
            self.frames = frames;
            return match decoded {
                Ok(()) => Pushed {
                    rendition: Some(route.rendition),
                    progress,
                },
                Err(_) => Pushed::default(),
            };
        }
        let rtp = RtpPacket {
            seq: packet.seq_no,
            timestamp: packet.timestamp,
            marker: packet.marker,
            // One copy per packet: the tap shares an `Arc<[u8]>`, the bridge
            // keeps `Bytes`. Cheap next to the depacketizer's own copies.
            payload: Bytes::copy_from_slice(&packet.payload),
        };
        let rendition = route.rendition;
        let pushed = match self.bridge.push_rtp(route.track, rtp, now) {
            Ok(progress) => Pushed {
                rendition: Some(rendition),
                progress,
            },
            Err(_) => Pushed::default(),
        };
        if self.ladder.is_some() {
            self.feed_ladder();
        }
        pushed
    }
}

/// Rung heights as made: even (4:2:0), at least 16, once each. Rungs are
/// found again by height, so a repeated one would send a rung's pictures
/// into another rung's rendition.
fn distinct_even(heights: &[u32]) -> Vec<u32> {
    let mut even: Vec<u32> = Vec::with_capacity(heights.len());
    for h in heights.iter().map(|h| h & !1).filter(|&h| h >= 16) {
        if !even.contains(&h) {
            even.push(h);
        }
    }
    even
}

fn push_name(names: &mut Vec<String>, name: String) -> usize {
    names.push(name);
    names.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h264::tests::{fixture_access_units, packetize};
    use crate::PlaylistQuery;
    use std::sync::Arc;
    use std::time::Instant;

    fn tracks() -> Vec<TapTrack> {
        vec![
            TapTrack {
                index: 0,
                video: false,
                codec: TapCodec::Opus,
                clock_rate: 48_000,
                channels: Some(2),
                layers: vec![None],
                payload_types: vec![(111, TapCodec::Opus)],
            },
            TapTrack {
                index: 1,
                video: true,
                codec: TapCodec::H264,
                clock_rate: 90_000,
                channels: None,
                layers: vec![Some("h".into()), Some("m".into()), Some("l".into())],
                payload_types: vec![(96, TapCodec::Vp8), (102, TapCodec::H264)],
            },
        ]
    }

    fn tap_packet(track: usize, layer: u8, pt: u8, p: &RtpPacket) -> TapPacket {
        TapPacket {
            track,
            layer,
            seq_no: p.seq,
            timestamp: p.timestamp,
            marker: p.marker,
            keyframe_start: false,
            pt,
            payload: Arc::from(&p.payload[..]),
            arrival: Instant::now(),
        }
    }

    #[test]
    fn names_are_safe_and_predictable() {
        assert_eq!(video_rendition_name(0, None, 0), "video");
        assert_eq!(video_rendition_name(0, Some("h"), 0), "video-h");
        assert_eq!(video_rendition_name(1, Some("q"), 2), "video1-q");
        assert_eq!(video_rendition_name(0, Some("../x"), 2), "video-2");
        assert_eq!(video_rendition_name(0, Some(""), 1), "video-1");
        assert_eq!(audio_rendition_name(0), "audio");
        assert_eq!(audio_rendition_name(2), "audio2");
    }

    #[test]
    fn every_h264_layer_and_opus_track_becomes_a_rendition() {
        let s = LiveSession::new(&tracks(), BridgeConfig::default(), AudioOutput::Opus, 0);
        assert_eq!(s.renditions(), ["audio", "video-h", "video-m", "video-l"]);
        assert!(s.skipped().is_empty());
    }

    #[test]
    fn opus_becomes_aac_by_default() {
        let mut s = LiveSession::new(&tracks(), BridgeConfig::default(), AudioOutput::Aac, 0);
        let mut enc = opus_rs::OpusEncoder::new(48_000, 2, opus_rs::Application::Audio).unwrap();
        let mut frames_seen = false;
        for i in 0..100u32 {
            let mut buf = vec![0u8; 1500];
            let len = enc.encode(&[0.1; 1920], 960, &mut buf).unwrap();
            buf.truncate(len);
            let p = RtpPacket {
                seq: i as u64,
                timestamp: 960 * i,
                marker: false,
                payload: Bytes::from(buf),
            };
            let pushed = s.push(
                &tap_packet(0, 0, 111, &p),
                Duration::from_millis(20 * i as u64),
            );
            assert_eq!(pushed.rendition, Some(0));
            frames_seen |= pushed.progress.chunk || pushed.progress.part;
        }
        let audio = s.bridge.rendition("audio").unwrap();
        assert_eq!(audio.codec().unwrap().codec_string(), "mp4a.40.2");
        let _ = frames_seen;
    }

    /// A stand-in for one raw AAC-LC frame (the bridge does not decode it).
    fn aac_frame(i: u32) -> Bytes {
        Bytes::from(vec![0x21, 0x10, (i & 0xff) as u8, 0x80])
    }

    #[test]
    fn source_aac_replaces_the_opus_and_keeps_the_encoders_rate() {
        let source = SourceAac {
            sample_rate: 44_100,
            channels: 2,
        };
        let mut s = LiveSession::with_source(
            &tracks(),
            BridgeConfig::default(),
            AudioOutput::Aac,
            0,
            Some(source),
        );
        assert!(s.has_source_audio());
        assert_eq!(s.renditions(), ["video-h", "video-m", "video-l", "audio"]);
        // The room's Opus goes nowhere: the source is the audio.
        let opus = RtpPacket {
            seq: 1,
            timestamp: 960,
            marker: false,
            payload: Bytes::from_static(&[0xfc, 0xff, 0xfe]),
        };
        assert_eq!(
            s.push(&tap_packet(0, 0, 111, &opus), Duration::ZERO)
                .rendition,
            None
        );
        let pushed = s.push_source_aac(0, aac_frame(0), Duration::ZERO);
        assert_eq!(pushed.rendition, Some(3));
        let audio = s.bridge.rendition("audio").unwrap();
        assert_eq!(
            audio.codec(),
            Some(&crate::fmp4::CodecConfig::AacLc {
                sample_rate: 44_100,
                channels: 2
            })
        );
        assert_eq!(audio.timeline().timescale(), 44_100);
    }

    #[test]
    fn an_audio_only_source_cuts_its_own_segments_and_is_a_variant() {
        let source = SourceAac {
            sample_rate: 48_000,
            channels: 1,
        };
        let mut s = LiveSession::with_source(
            &[],
            BridgeConfig::default(),
            AudioOutput::Aac,
            0,
            Some(source),
        );
        // 4 s of frames with FLV's millisecond jitter (21 or 22 ms apart).
        for i in 0..188u32 {
            let pts_ms = i * 1024 * 1000 / 48_000;
            let now = Duration::from_millis(pts_ms as u64);
            s.push_source_aac(pts_ms, aac_frame(i), now);
        }
        let audio = s.bridge.rendition("audio").unwrap();
        let segments: Vec<_> = audio.timeline().listed_segments().collect();
        assert!(segments.len() >= 3, "{}", segments.len());
        // Sample times exactly 1024 apart despite the millisecond clock.
        for seg in &segments {
            assert_eq!(seg.start % 1024, 0, "segment at {}", seg.start);
        }
        let text = s.bridge.multivariant_playlist().unwrap();
        assert!(text.contains("CODECS=\"mp4a.40.2\""), "{text}");
        assert!(
            !text.contains("RESOLUTION") && !text.contains("TYPE=AUDIO"),
            "{text}"
        );
        assert!(text.contains("audio/media.m3u8"), "{text}");
    }

    #[test]
    fn only_aac_lc_sources_are_taken() {
        let registry = sfu::SourceRegistry::default();
        let _he = registry.publish_audio("r", &[0x2b, 0x92], 5, 44_100, 2);
        assert_eq!(SourceAac::from_source(&registry.audio("r").unwrap()), None);
        let _lc = registry.publish_audio("r", &[0x12, 0x10], 2, 44_100, 2);
        assert_eq!(
            SourceAac::from_source(&registry.audio("r").unwrap()),
            Some(SourceAac {
                sample_rate: 44_100,
                channels: 2
            })
        );
    }

    #[test]
    fn a_single_layer_source_gets_ladder_renditions_made_from_it() {
        let single = single_video(TapCodec::H264, 102);
        let mut s = LiveSession::new(&single, BridgeConfig::default(), AudioOutput::Opus, 0);
        // The fixture is 320x180: 120p and 90p rungs; 480p is never made.
        let mut rx = s.enable_ladder(&[480, 120, 90]).expect("a ladder");
        assert_eq!(
            s.renditions(),
            ["video", "video-480p", "video-120p", "video-90p"]
        );
        // Odd or repeated heights: one rendition per even height made, and
        // each rung's pictures go to its own.
        let mut odd = LiveSession::new(&single, BridgeConfig::default(), AudioOutput::Opus, 0);
        let mut odd_rx = odd.enable_ladder(&[121, 90, 90]).expect("a ladder");
        assert_eq!(odd.renditions(), ["video", "video-120p", "video-90p"]);
        for p in &packetize(&fixture_access_units(), 1200, 0)[..8] {
            odd.push(&tap_packet(0, 0, 102, p), Duration::ZERO);
        }
        let l = odd.ladder.as_ref().unwrap();
        let made: Vec<u32> = l.map.iter().flatten().map(|&i| l.renditions[i].2).collect();
        assert_eq!(made, [120, 90]);
        while odd_rx.try_recv().is_ok() {}
        // Simulcast publishes get none.
        let mut simulcast =
            LiveSession::new(&tracks(), BridgeConfig::default(), AudioOutput::Opus, 0);
        assert!(simulcast.enable_ladder(&[120]).is_none());

        let packets = packetize(&fixture_access_units(), 1200, 0);
        run_ladder(&mut s, &mut rx, &packets, 102, &["video-120p", "video-90p"]);
        let text = s.bridge.multivariant_playlist().unwrap();
        assert!(text.contains("RESOLUTION=320x180"), "{text}");
        assert!(text.contains("RESOLUTION=214x120"), "{text}");
        assert!(text.contains("RESOLUTION=160x90"), "{text}");
        assert!(!text.contains("480p"), "{text}");
        // Segments of every rendition start together (same keyframes).
        let (src, low) = (segment_starts(&s, "video"), segment_starts(&s, "video-90p"));
        assert!(low.len() >= 2, "{low:?}");
        assert_eq!(
            &src[..low.len().min(src.len())][..2],
            &low[..2],
            "{src:?} vs {low:?}"
        );
    }

    /// One single-layer video track of `codec` on payload type `pt`.
    fn single_video(codec: TapCodec, pt: u8) -> Vec<TapTrack> {
        vec![TapTrack {
            index: 0,
            video: true,
            codec,
            clock_rate: 90_000,
            channels: None,
            layers: vec![None],
            payload_types: vec![(pt, codec)],
        }]
    }

    /// Where the segments of rendition `name` start.
    fn segment_starts(s: &LiveSession, name: &str) -> Vec<u64> {
        let r = s.bridge.rendition(name).unwrap();
        r.timeline()
            .listed_segments()
            .map(|seg| seg.start)
            .collect()
    }

    /// Feeds `packets` (track 0, payload type `pt`, 90 kHz from 90,000) in
    /// about real time and hands the ladder's pictures back to the session,
    /// until every one of `renditions` lists two segments (10 s at most).
    fn run_ladder(
        s: &mut LiveSession,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<LadderOutput>,
        packets: &[RtpPacket],
        pt: u8,
        renditions: &[&str],
    ) {
        for p in packets {
            let now = Duration::from_millis(((p.timestamp - 90_000) / 90) as u64);
            s.push(&tap_packet(0, 0, pt, p), now);
            std::thread::sleep(Duration::from_millis(2)); // real time-ish for the worker
            while let Ok(out) = rx.try_recv() {
                s.push_ladder_output(out);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match rx.try_recv() {
                Ok(out) => {
                    s.push_ladder_output(out);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if renditions.iter().all(|n| segment_starts(s, n).len() >= 2) {
                break;
            }
        }
    }

    /// The VP8 fixture's frames (IVF: 32-byte header, 12 bytes per frame).
    #[cfg(feature = "vp8")]
    fn vp8_frames() -> Vec<&'static [u8]> {
        let ivf: &'static [u8] = include_bytes!("../testdata/vp8_320x180_30fps.ivf");
        let mut frames = Vec::new();
        let mut at = 32;
        while at + 12 <= ivf.len() {
            let len = u32::from_le_bytes(ivf[at..at + 4].try_into().unwrap()) as usize;
            frames.push(&ivf[at + 12..at + 12 + len]);
            at += 12 + len;
        }
        frames
    }

    /// RFC 7741 packets of `frames`, 30 fps from RTP time 90,000.
    #[cfg(feature = "vp8")]
    fn vp8_packets(frames: &[&[u8]]) -> Vec<RtpPacket> {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let chunks: Vec<&[u8]> = f.chunks(1000).collect();
            for (k, c) in chunks.iter().enumerate() {
                let mut payload = vec![if k == 0 { 0x10 } else { 0x00 }];
                payload.extend_from_slice(c);
                out.push(RtpPacket {
                    seq: out.len() as u64,
                    timestamp: 90_000 + 3_000 * i as u32,
                    marker: k + 1 == chunks.len(),
                    payload: Bytes::from(payload),
                });
            }
        }
        out
    }

    /// A single-layer VP8 publish: every rendition is made by the ladder
    /// (libvpx decode, openh264 encode), the source's size first, with
    /// segments starting on the same pictures.
    #[cfg(feature = "vp8")]
    #[test]
    fn a_vp8_source_is_transcoded_into_every_rendition() {
        let vp8 = single_video(TapCodec::Vp8, 96);
        let mut s = LiveSession::new(&vp8, BridgeConfig::default(), AudioOutput::Opus, 0);
        assert!(s.skipped().is_empty());
        let mut rx = s.enable_ladder(&[480, 120]).expect("a ladder");
        assert_eq!(s.renditions(), ["video", "video-480p", "video-120p"]);
        let frames = vp8_frames();
        assert_eq!(frames.len(), 90);
        // Before the first key frame is complete, a key frame is asked for.
        let packets = vp8_packets(&frames);
        let first = s.push(&tap_packet(0, 0, 96, &packets[0]), Duration::ZERO);
        assert!(first.progress.keyframe_wanted);
        run_ladder(&mut s, &mut rx, &packets[1..], 96, &["video", "video-120p"]);
        let text = s.bridge.multivariant_playlist().unwrap();
        assert!(text.contains("RESOLUTION=320x180"), "{text}");
        assert!(text.contains("RESOLUTION=214x120"), "{text}");
        assert!(!text.contains("480p"), "{text}");
        assert!(text.contains("avc1."), "{text}");
        let (src, low) = (
            segment_starts(&s, "video"),
            segment_starts(&s, "video-120p"),
        );
        assert!(src.len() >= 2 && low.len() >= 2, "{src:?} / {low:?}");
        assert_eq!(&src[..2], &low[..2]);

        // A key frame that says 16383×16383 is not decoded (nor is what
        // follows it): no ladder, and a key frame is asked for instead.
        let mut huge = frames[0].to_vec();
        assert_eq!(&huge[3..6], &[0x9d, 0x01, 0x2a]);
        huge[6..10].copy_from_slice(&[0xff, 0x3f, 0xff, 0x3f]);
        let mut frames = frames.clone();
        frames[0] = &huge;
        let mut s = LiveSession::new(&vp8, BridgeConfig::default(), AudioOutput::Opus, 0);
        let _rx = s.enable_ladder(&[120]).expect("a ladder");
        let mut asked = false;
        for p in &vp8_packets(&frames[..10]) {
            let now = Duration::from_millis(((p.timestamp - 90_000) / 90) as u64);
            asked |= s
                .push(&tap_packet(0, 0, 96, p), now)
                .progress
                .keyframe_wanted;
        }
        assert!(s.ladder.as_ref().unwrap().running.is_none());
        assert!(asked);
    }

    #[test]
    fn vp8_only_tracks_are_skipped() {
        let mut t = tracks();
        t[1].codec = TapCodec::Vp8;
        t[1].payload_types = vec![(96, TapCodec::Vp8)];
        let s = LiveSession::new(&t, BridgeConfig::default(), AudioOutput::Opus, 0);
        assert_eq!(s.renditions(), ["audio"]);
        assert_eq!(
            s.skipped(),
            [Skipped {
                track: 1,
                codec: TapCodec::Vp8
            }]
        );
    }

    #[test]
    fn layers_route_to_their_rendition_and_other_payload_types_are_dropped() {
        let mut s = LiveSession::new(&tracks(), BridgeConfig::default(), AudioOutput::Opus, 0);
        let packets = packetize(&fixture_access_units(), 1200, 0);
        // The same stream on the middle layer only, with the H.264 payload
        // type; the same packets with the VP8 payload type go nowhere.
        let mut parts = 0;
        for p in &packets {
            let now = Duration::from_millis(((p.timestamp - 90_000) / 90) as u64);
            assert_eq!(s.push(&tap_packet(1, 1, 96, p), now).rendition, None);
            let pushed = s.push(&tap_packet(1, 1, 102, p), now);
            assert_eq!(pushed.rendition, Some(2));
            parts += pushed.progress.part as u32;
        }
        assert!(parts > 5, "{parts}");
        let text = s
            .bridge
            .media_playlist("video-m", &PlaylistQuery::default())
            .unwrap();
        assert!(text.contains("#EXT-X-PART:"), "{text}");
        let high = s.bridge.rendition("video-h").unwrap().edge();
        assert!(!high.has_content());
        // Unknown track or layer: ignored.
        assert_eq!(
            s.push(&tap_packet(7, 0, 102, &packets[0]), Duration::ZERO)
                .rendition,
            None
        );
        assert_eq!(
            s.push(&tap_packet(1, 9, 102, &packets[0]), Duration::ZERO)
                .rendition,
            None
        );
    }
}
