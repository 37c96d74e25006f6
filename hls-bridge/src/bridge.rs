//! The room-level state machine: RTP of a room's tracks in, renditions,
//! playlists and files out.
//!
//! One [`Bridge`] per live room. The SFU side registers the tracks it wants
//! as HLS renditions and pushes their RTP with the time it arrived; the HTTP
//! side asks for playlists and files. `push_rtp` says whether a part was
//! published (wake the rendition's blocked playlist requests: one
//! `watch::Sender<Edge>` per rendition, updated only then) and whether a
//! chunk of the part being written appeared (wake the readers streaming the
//! preload-hinted part with [`Bridge::read_part`]).
//!
//! Time: `now` is the time since the bridge's epoch, whose Unix time is given
//! at construction; it becomes `EXT-X-PROGRAM-DATE-TIME`. Each track's first
//! frame is placed at its arrival time, which keeps audio and video of the
//! same room aligned to within the network jitter.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::fmp4::{self, CodecConfig, Sample};
use crate::h264::{AccessUnit, DepacketizerStats, H264Depacketizer};
use crate::opus::{OpusDepacketizer, OPUS_CLOCK_RATE};
use crate::playlist::{self, AudioMedia, MediaPlaylistOptions, RenditionReport, Resource, Variant};
use crate::reload::{self, Decision, Edge, PlaylistQuery};
use crate::rtp::{ReorderBuffer, ReorderConfig, Reordered, RtpPacket};
use crate::timeline::{Progress, Timeline, TimelineConfig, TimelineStats};
use crate::Error;

/// A timestamp jump larger than this (either way) is a new timeline from
/// the publisher (reconnect, encoder restart), not media time passing.
const MAX_TIMESTAMP_JUMP: Duration = Duration::from_secs(10);

/// Opus decoders skip this many samples at the start (libopus' encoder
/// delay at 48 kHz; RFC 7845 §4.2).
const OPUS_PRE_SKIP: u16 = 312;

/// At most one keyframe request per track per this interval: publishers
/// that ignore PLI (OBS) are not flooded, browsers answer within one RTT.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// The audio group every video variant refers to.
const AUDIO_GROUP: &str = "audio";

/// Configuration of a room's bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeConfig {
    pub timeline: TimelineConfig,
    pub reorder: ReorderConfig,
    /// Chunking of the part being written, for video (see
    /// [`Timeline::set_chunk_duration`]); default: a chunk per frame.
    pub video_chunk: Option<Duration>,
    /// The same for audio; default 100 ms, two chunks per part, because a
    /// chunk's ~100 bytes of `moof` would double a 20 ms Opus packet.
    pub audio_chunk: Option<Duration>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            timeline: TimelineConfig::default(),
            reorder: ReorderConfig::default(),
            video_chunk: Some(Duration::ZERO),
            audio_chunk: Some(Duration::from_millis(100)),
        }
    }
}

/// Bytes of a part read from an offset: all of them if it is complete,
/// the chunks written so far if it is the part being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRead {
    pub data: Vec<Bytes>,
    /// No more bytes will come: end the response after `data`.
    pub complete: bool,
}

/// A rendition registered with [`Bridge::add_h264_track`] or
/// [`Bridge::add_opus_track`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackId(usize);

#[derive(Debug)]
enum Input {
    // Boxed: the H.264 state is a few hundred bytes, Opus' a few words.
    RtpH264(Box<H264Depacketizer>),
    RtpOpus(OpusDepacketizer, u8),
    /// Access units from a transcoder (openh264 ladder).
    H264Frames,
    /// AAC-LC frames from an encoder (Opus → AAC).
    AacFrames,
}

/// Maps a track's RTP timestamps onto its media timeline.
#[derive(Debug, Default)]
struct Clock {
    /// (last extended RTP timestamp, its decode time in ticks)
    last: Option<(i64, u64)>,
}

impl Clock {
    /// Decode time in ticks of a frame with `rtp` arriving at `now_ticks`.
    fn dts(&mut self, rtp: u32, now_ticks: u64, max_jump: u64, fallback_step: u64) -> u64 {
        let dts = match self.last {
            None => now_ticks,
            Some((last_ext, last_dts)) => {
                let delta = rtp.wrapping_sub(last_ext as u32) as i32 as i64;
                if delta <= 0 || delta as u64 > max_jump {
                    // Backwards or a leap: the publisher's clock restarted.
                    // Continue right after the last frame.
                    last_dts + fallback_step
                } else {
                    last_dts + delta as u64
                }
            }
        };
        let ext = match self.last {
            None => rtp as i64,
            Some((last_ext, _)) => last_ext + rtp.wrapping_sub(last_ext as u32) as i32 as i64,
        };
        self.last = Some((ext, dts));
        dts
    }
}

/// A frame waiting for the next one to learn its duration.
#[derive(Debug)]
struct Pending {
    dts: u64,
    keyframe: bool,
    data: Bytes,
    /// The frame brought a new init segment: a segment starts with it.
    new_init: bool,
    init_version: u32,
}

/// One rendition: a track's depacketizer, timeline and init segments.
#[derive(Debug)]
pub struct Rendition {
    name: String,
    reorder: ReorderBuffer,
    input: Input,
    timeline: Timeline,
    codec: Option<CodecConfig>,
    /// Init segments by version, oldest first; old ones go with the
    /// segments that used them.
    inits: VecDeque<(u32, Bytes)>,
    clock: Clock,
    pending: Option<Pending>,
    released: Vec<Reordered>,
    last_keyframe_request: Option<Duration>,
    /// Copies of the access units depacketized (with their arrival), for
    /// the ladder; `None` unless asked for.
    tee: Option<Vec<(AccessUnit, Duration)>>,
    /// A ladder rendition: the multivariant playlist does not wait for it.
    optional: bool,
}

impl Rendition {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The codec, once known (H.264: after the first SPS/PPS).
    pub fn codec(&self) -> Option<&CodecConfig> {
        self.codec.as_ref()
    }

    /// A ladder rendition, made from another: it may start later than the
    /// others (or never, when the source is smaller than it).
    pub fn is_optional(&self) -> bool {
        self.optional
    }

    pub fn is_video(&self) -> bool {
        matches!(self.input, Input::RtpH264(_) | Input::H264Frames)
    }

    pub fn stats(&self) -> TimelineStats {
        self.timeline.stats()
    }

    /// Packets the reorder window dropped as late or duplicate, and the
    /// depacketizer's counters (zero for frame inputs).
    pub fn input_stats(&self) -> (u64, DepacketizerStats) {
        let stats = match &self.input {
            Input::RtpH264(d) => d.stats(),
            Input::RtpOpus(d, _) => {
                let (frames, malformed, lost) = d.counters();
                DepacketizerStats {
                    frames,
                    dropped_frames: lost,
                    malformed_packets: malformed,
                    losses: lost,
                }
            }
            Input::H264Frames | Input::AacFrames => DepacketizerStats::default(),
        };
        (self.reorder.duplicates(), stats)
    }

    /// The live edge, for blocking requests.
    pub fn edge(&self) -> Edge {
        let tl = &self.timeline;
        let open = tl.open_segment();
        let last_complete_parts = tl.listed_segments().last().map_or(0, |s| s.parts.len());
        Edge {
            open_msn: open
                .map(|s| s.msn)
                .or_else(|| tl.listed_segments().last().map(|s| s.msn + 1))
                .unwrap_or(0),
            open_parts: open.map_or(0, |s| s.parts.len()) as u64,
            last_complete_parts: last_complete_parts as u64,
            target_duration_secs: tl.target_duration_secs(),
            part_target: Duration::from_nanos(
                tl.part_target_ticks() * 1_000_000_000 / tl.timescale() as u64,
            ),
            ended: tl.ended(),
        }
    }

    /// (peak, average) bits per second over the segments held, falling back
    /// to the open segment's parts before the first segment completes.
    pub fn bitrate(&self) -> Option<(u64, u64)> {
        let tl = &self.timeline;
        let ts = tl.timescale() as u64;
        let mut peak = 0u64;
        let (mut bytes, mut ticks) = (0u64, 0u64);
        for s in tl.listed_segments() {
            if let Some(rate) = (s.size() as u64 * 8 * ts).checked_div(s.duration) {
                peak = peak.max(rate);
            }
            bytes += s.size() as u64;
            ticks += s.duration;
        }
        if ticks == 0 {
            let open = tl.open_segment()?;
            if open.duration == 0 {
                return None;
            }
            let rate = open.size() as u64 * 8 * ts / open.duration;
            return Some((rate, rate));
        }
        Some((peak, bytes * 8 * ts / ticks))
    }

    /// Frames per second over the segments held.
    pub fn frame_rate(&self) -> Option<f64> {
        let tl = &self.timeline;
        let (mut frames, mut ticks) = (0u64, 0u64);
        for s in tl.listed_segments().chain(tl.open_segment()) {
            frames += s.parts.iter().map(|p| p.samples as u64).sum::<u64>();
            ticks += s.duration;
        }
        (ticks > 0).then(|| frames as f64 * tl.timescale() as f64 / ticks as f64)
    }

    fn init(&self, version: u32) -> Option<&Bytes> {
        self.inits
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, b)| b)
    }

    fn current_init_version(&self) -> u32 {
        self.inits.back().map_or(0, |(v, _)| *v)
    }

    fn push_rtp(&mut self, packet: RtpPacket, now: Duration) -> Progress {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.push(packet, now, &mut released);
        let mut progress = Progress::default();
        for item in released.drain(..) {
            progress |= self.push_released(item, now);
        }
        self.released = released;
        progress.keyframe_wanted = self.keyframe_wanted(now);
        progress
    }

    /// Whether to ask the publisher for a keyframe now: a segment is due,
    /// or the depacketizer is waiting for one after a loss.
    fn keyframe_wanted(&mut self, now: Duration) -> bool {
        let waiting = match &self.input {
            Input::RtpH264(d) => d.waiting_for_keyframe(),
            _ => false,
        };
        if !(self.is_video() && (waiting || self.timeline.segment_due())) {
            return false;
        }
        let recent = self
            .last_keyframe_request
            .is_some_and(|at| now.saturating_sub(at) < KEYFRAME_REQUEST_INTERVAL);
        if recent {
            return false;
        }
        self.last_keyframe_request = Some(now);
        true
    }

    fn push_released(&mut self, item: Reordered, now: Duration) -> Progress {
        match &mut self.input {
            Input::RtpH264(d) => match d.push(item) {
                Some(au) => {
                    if let Some(tee) = &mut self.tee {
                        tee.push((au.clone(), now)); // the NAL units are shared `Bytes`
                    }
                    self.push_access_unit(au, now)
                }
                None => Progress::default(),
            },
            Input::RtpOpus(d, channels) => {
                let channels = *channels;
                let Some(frame) = d.push(item) else {
                    return Progress::default();
                };
                if self.codec.is_none() {
                    self.set_codec(CodecConfig::Opus {
                        channels,
                        pre_skip: OPUS_PRE_SKIP,
                    });
                }
                self.push_audio(frame.rtp_timestamp, frame.duration, frame.data, now)
            }
            Input::H264Frames | Input::AacFrames => Progress::default(),
        }
    }

    fn now_ticks(&self, now: Duration) -> u64 {
        (now.as_nanos() * self.timeline.timescale() as u128 / 1_000_000_000) as u64
    }

    fn max_jump(&self) -> u64 {
        MAX_TIMESTAMP_JUMP.as_secs() * self.timeline.timescale() as u64
    }

    fn push_access_unit(&mut self, au: AccessUnit, now: Duration) -> Progress {
        let mut new_init = false;
        if let Some(ps) = &au.parameter_sets {
            let config = CodecConfig::H264 {
                sps: ps.sps.clone(),
                pps: ps.pps.clone(),
                info: ps.info,
            };
            if self.codec.as_ref() != Some(&config) {
                new_init = self.codec.is_some();
                self.set_codec(config);
            }
        }
        if self.codec.is_none() {
            // No parameter sets yet: nothing can be decoded.
            return Progress::default();
        }
        // 30 fps as the step when the clock restarts.
        let (now_ticks, max_jump) = (self.now_ticks(now), self.max_jump());
        let dts = self.clock.dts(au.rtp_timestamp, now_ticks, max_jump, 3000);
        self.push_frame(dts, au.keyframe, au.to_length_prefixed(), new_init)
    }

    fn push_audio(
        &mut self,
        timestamp: u32,
        duration: u32,
        data: Bytes,
        now: Duration,
    ) -> Progress {
        let (now_ticks, max_jump) = (self.now_ticks(now), self.max_jump());
        let dts = self
            .clock
            .dts(timestamp, now_ticks, max_jump, duration as u64);
        self.push_frame(dts, true, data, false)
    }

    fn set_codec(&mut self, config: CodecConfig) {
        let version = self.inits.back().map_or(0, |(v, _)| v + 1);
        self.inits.push_back((version, fmp4::init_segment(&config)));
        self.codec = Some(config);
    }

    /// Hands the previous frame to the timeline now that its duration is
    /// known, and keeps this one until the next arrives.
    fn push_frame(&mut self, dts: u64, keyframe: bool, data: Bytes, new_init: bool) -> Progress {
        let next = Pending {
            dts,
            keyframe,
            data,
            new_init,
            init_version: self.current_init_version(),
        };
        let Some(prev) = self.pending.replace(next) else {
            return Progress::default();
        };
        let duration = dts.saturating_sub(prev.dts).clamp(1, u32::MAX as u64) as u32;
        let published = self.timeline.push(
            prev.dts,
            Sample {
                duration,
                keyframe: prev.keyframe,
                data: prev.data,
            },
            prev.init_version,
            prev.new_init,
        );
        self.prune_inits();
        published
    }

    fn prune_inits(&mut self) {
        let oldest_used = self
            .timeline
            .segment_versions()
            .min()
            .unwrap_or_else(|| self.current_init_version());
        while self.inits.len() > 1 && self.inits.front().is_some_and(|(v, _)| *v < oldest_used) {
            self.inits.pop_front();
        }
    }
}

/// A file's body: one chunk for init segments and parts, the part chunks for
/// a segment (write them out in order; nothing was copied to make them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(pub Vec<Bytes>);

impl Body {
    pub fn len(&self) -> usize {
        self.0.iter().map(|c| c.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A room as LL-HLS.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    epoch_unix_ms: u64,
    renditions: Vec<Rendition>,
    /// The video rendition whose keyframes set every audio segment boundary.
    leader: Option<usize>,
    leader_msn: Option<u64>,
}

impl Bridge {
    /// A bridge whose time zero (`now == Duration::ZERO`) is `epoch_unix_ms`.
    pub fn new(config: BridgeConfig, epoch_unix_ms: u64) -> Self {
        Self {
            config,
            epoch_unix_ms,
            renditions: Vec::new(),
            leader: None,
            leader_msn: None,
        }
    }

    /// Registers an H.264 track (a simulcast layer) as rendition `name`.
    pub fn add_h264_track(&mut self, name: &str) -> Result<TrackId, Error> {
        let id = self.add(name, Input::RtpH264(Box::default()), 90_000)?;
        self.leader.get_or_insert(id.0);
        Ok(id)
    }

    /// Registers an H.264 rendition fed with access units (a transcoder's
    /// output) through [`Bridge::push_access_unit`].
    pub fn add_h264_frame_track(&mut self, name: &str) -> Result<TrackId, Error> {
        let id = self.add(name, Input::H264Frames, 90_000)?;
        self.leader.get_or_insert(id.0);
        Ok(id)
    }

    /// Registers an AAC-LC rendition fed with raw AAC frames (no ADTS
    /// header) through [`Bridge::push_aac_frame`]. Its timescale is
    /// `sample_rate`.
    pub fn add_aac_track(
        &mut self,
        name: &str,
        sample_rate: u32,
        channels: u8,
    ) -> Result<TrackId, Error> {
        if CodecConfig::aac_audio_specific_config(sample_rate, channels).is_none() {
            return Err(Error::UnsupportedAudio {
                sample_rate,
                channels,
            });
        }
        let config = CodecConfig::AacLc {
            sample_rate,
            channels,
        };
        let id = self.add(name, Input::AacFrames, sample_rate)?;
        let r = &mut self.renditions[id.0];
        r.set_codec(config);
        r.timeline.follow_boundaries();
        Ok(id)
    }

    /// Registers an Opus track as audio rendition `name`.
    pub fn add_opus_track(&mut self, name: &str, channels: u8) -> Result<TrackId, Error> {
        let channels = channels.clamp(1, 2);
        let id = self.add(
            name,
            Input::RtpOpus(OpusDepacketizer::new(), channels),
            OPUS_CLOCK_RATE,
        )?;
        self.renditions[id.0].timeline.follow_boundaries();
        Ok(id)
    }

    fn add(&mut self, name: &str, input: Input, timescale: u32) -> Result<TrackId, Error> {
        let safe = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && Resource::parse(name).is_none();
        if !safe {
            return Err(Error::BadRenditionName(name.to_owned()));
        }
        if self.renditions.iter().any(|r| r.name == name) {
            return Err(Error::DuplicateRendition(name.to_owned()));
        }
        let mut timeline = Timeline::new(self.config.timeline, timescale);
        timeline.set_chunk_duration(match input {
            Input::RtpH264(_) | Input::H264Frames => self.config.video_chunk,
            Input::RtpOpus(..) | Input::AacFrames => self.config.audio_chunk,
        });
        self.renditions.push(Rendition {
            name: name.to_owned(),
            reorder: ReorderBuffer::new(self.config.reorder),
            input,
            timeline,
            codec: None,
            inits: VecDeque::new(),
            clock: Clock::default(),
            pending: None,
            released: Vec::new(),
            last_keyframe_request: None,
            tee: None,
            optional: false,
        });
        Ok(TrackId(self.renditions.len() - 1))
    }

    /// Feeds one RTP packet of `track`, received `now` (since the epoch).
    /// Says whether a part was published (wake that rendition's blocked
    /// playlist requests: its [`Rendition::edge`] changed), whether the
    /// part being written grew (wake its [`Bridge::read_part`] readers), and
    /// whether to send the publisher a PLI for this track now (browsers send
    /// keyframes only when asked; segments end on keyframes).
    pub fn push_rtp(
        &mut self,
        track: TrackId,
        packet: RtpPacket,
        now: Duration,
    ) -> Result<Progress, Error> {
        let r = self
            .renditions
            .get_mut(track.0)
            .ok_or(Error::UnknownTrack)?;
        if matches!(r.input, Input::H264Frames | Input::AacFrames) {
            return Err(Error::WrongInput);
        }
        let progress = r.push_rtp(packet, now);
        if self.leader == Some(track.0) {
            self.follow_leader();
        }
        Ok(progress)
    }

    /// Feeds one access unit of a track added with
    /// [`Bridge::add_h264_frame_track`]. `rtp_timestamp` is on a 90 kHz
    /// clock; keyframes must carry their SPS/PPS (openh264 does; see
    /// [`AccessUnit::from_annex_b`]). Frames must come in decode order.
    pub fn push_access_unit(
        &mut self,
        track: TrackId,
        au: AccessUnit,
        now: Duration,
    ) -> Result<Progress, Error> {
        let r = self
            .renditions
            .get_mut(track.0)
            .ok_or(Error::UnknownTrack)?;
        if !matches!(r.input, Input::H264Frames) {
            return Err(Error::WrongInput);
        }
        let mut progress = r.push_access_unit(au, now);
        progress.keyframe_wanted = r.keyframe_wanted(now);
        if self.leader == Some(track.0) {
            self.follow_leader();
        }
        Ok(progress)
    }

    /// Feeds one raw AAC-LC frame (1024 samples) of a track added with
    /// [`Bridge::add_aac_track`]; `timestamp` is on the track's sample-rate
    /// clock.
    pub fn push_aac_frame(
        &mut self,
        track: TrackId,
        timestamp: u32,
        data: Bytes,
        now: Duration,
    ) -> Result<Progress, Error> {
        let r = self
            .renditions
            .get_mut(track.0)
            .ok_or(Error::UnknownTrack)?;
        if !matches!(r.input, Input::AacFrames) {
            return Err(Error::WrongInput);
        }
        Ok(r.push_audio(timestamp, 1024, data, now))
    }

    /// Keeps a copy of every access unit `track` depacketizes, for
    /// [`Bridge::take_teed`] (the ladder's input).
    pub fn tee_access_units(&mut self, track: TrackId) {
        if let Some(r) = self.renditions.get_mut(track.0) {
            r.tee.get_or_insert_with(Vec::new);
        }
    }

    /// Moves the access units teed from `track` (with their arrival) to `out`.
    pub fn take_teed(&mut self, track: TrackId, out: &mut Vec<(AccessUnit, Duration)>) {
        if let Some(tee) = self
            .renditions
            .get_mut(track.0)
            .and_then(|r| r.tee.as_mut())
        {
            out.append(tee);
        }
    }

    /// Marks `track` as a ladder rendition ([`Rendition::is_optional`]).
    pub fn set_optional(&mut self, track: TrackId) {
        if let Some(r) = self.renditions.get_mut(track.0) {
            r.optional = true;
        }
    }

    /// Call once every track is added: with no video rendition (an
    /// audio-only publish) the audio renditions cut their own segments
    /// instead of waiting for a video keyframe that never comes.
    pub fn tracks_complete(&mut self) {
        if self.leader.is_some() {
            return;
        }
        for r in self.renditions.iter_mut().filter(|r| !r.is_video()) {
            r.timeline.lead_boundaries();
        }
    }

    /// Audio segments start where the leading video's do.
    fn follow_leader(&mut self) {
        let Some(leader) = self.leader else { return };
        let Some(open) = self.renditions[leader].timeline.open_segment() else {
            return;
        };
        if self.leader_msn == Some(open.msn) {
            return;
        }
        self.leader_msn = Some(open.msn);
        let (start, ts) = (open.start, self.renditions[leader].timeline.timescale());
        for r in self.renditions.iter_mut().filter(|r| !r.is_video()) {
            let at = (start as u128 * r.timeline.timescale() as u128 / ts as u128) as u64;
            r.timeline.hint_segment_boundary(at);
        }
    }

    /// The publisher left: every playlist gets `EXT-X-ENDLIST`.
    pub fn end(&mut self) {
        for r in &mut self.renditions {
            r.timeline.end();
        }
    }

    pub fn renditions(&self) -> &[Rendition] {
        &self.renditions
    }

    pub fn rendition(&self, name: &str) -> Result<&Rendition, Error> {
        self.renditions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::UnknownRendition(name.to_owned()))
    }

    /// Track id of rendition `name`.
    pub fn track(&self, name: &str) -> Option<TrackId> {
        self.renditions
            .iter()
            .position(|r| r.name == name)
            .map(TrackId)
    }

    /// Blocking-reload decision for a media playlist request (see
    /// [`reload::decide`]).
    pub fn decide(
        &self,
        rendition: &str,
        query: &PlaylistQuery,
        waited: Duration,
    ) -> Result<Decision, Error> {
        Ok(reload::decide(
            &self.rendition(rendition)?.edge(),
            query,
            waited,
        ))
    }

    /// The media playlist of `rendition`, with reports on all the others.
    pub fn media_playlist(&self, rendition: &str, query: &PlaylistQuery) -> Result<String, Error> {
        let r = self.rendition(rendition)?;
        let reports: Vec<RenditionReport> = self
            .renditions
            .iter()
            .filter(|o| o.name != r.name)
            .filter_map(|o| RenditionReport::of(&o.name, &o.timeline))
            .collect();
        Ok(playlist::media_playlist(
            &r.timeline,
            MediaPlaylistOptions {
                skip: query.skip,
                epoch_unix_ms: self.epoch_unix_ms,
            },
            &reports,
        ))
    }

    /// The multivariant playlist: one variant per video rendition whose codec
    /// and bitrate are known, all referring to the audio renditions.
    /// `None` until at least one variant can be listed.
    pub fn multivariant_playlist(&self) -> Option<String> {
        self.multivariant_playlist_under("")
    }

    /// The multivariant playlist with every media playlist URI under
    /// `prefix` (e.g. `"s1a2b/"`: the HTTP edge puts a per-publish session
    /// in the path, so a republish never reuses a cached file name).
    pub fn multivariant_playlist_under(&self, prefix: &str) -> Option<String> {
        let audio: Vec<&Rendition> = self
            .renditions
            .iter()
            .filter(|r| !r.is_video() && r.codec.is_some() && r.bitrate().is_some())
            .collect();
        let (audio_peak, audio_avg) = audio
            .iter()
            .filter_map(|r| r.bitrate())
            .fold((0, 0), |(p, a), (rp, ra)| (p.max(rp), a.max(ra)));
        let audio_codec = audio
            .first()
            .and_then(|r| r.codec())
            .map(|c| c.codec_string());
        let mut variants: Vec<Variant> = self
            .renditions
            .iter()
            .filter(|r| r.is_video())
            .filter_map(|r| {
                let codec = r.codec()?;
                let (peak, avg) = r.bitrate()?;
                let mut codecs = codec.codec_string();
                if let Some(a) = &audio_codec {
                    codecs = format!("{codecs},{a}");
                }
                Some(Variant {
                    uri: format!("{prefix}{}/{}", r.name, playlist::MEDIA_PLAYLIST),
                    bandwidth: peak + audio_peak,
                    average_bandwidth: Some(avg + audio_avg),
                    codecs,
                    resolution: codec.resolution(),
                    frame_rate: r.frame_rate(),
                    audio_group: audio_codec.as_ref().map(|_| AUDIO_GROUP.to_owned()),
                })
            })
            .collect();
        let audio_only = !self.renditions.iter().any(|r| r.is_video());
        if audio_only {
            // An audio-only publish: each audio rendition is a variant of
            // its own (RFC 8216 §4.3.4.2 allows a variant without video).
            variants = audio
                .iter()
                .filter_map(|r| {
                    let (peak, avg) = r.bitrate()?;
                    Some(Variant {
                        uri: format!("{prefix}{}/{}", r.name, playlist::MEDIA_PLAYLIST),
                        bandwidth: peak,
                        average_bandwidth: Some(avg),
                        codecs: r.codec()?.codec_string(),
                        resolution: None,
                        frame_rate: None,
                        audio_group: None,
                    })
                })
                .collect();
            return (!variants.is_empty()).then(|| playlist::multivariant_playlist(&variants, &[]));
        }
        if variants.is_empty() {
            return None;
        }
        // Highest first: players that ignore ABR start with the best.
        variants.sort_by_key(|v| std::cmp::Reverse(v.bandwidth));
        let media: Vec<AudioMedia> = audio
            .iter()
            .enumerate()
            .map(|(i, r)| AudioMedia {
                group_id: AUDIO_GROUP.to_owned(),
                name: r.name.clone(),
                uri: format!("{prefix}{}/{}", r.name, playlist::MEDIA_PLAYLIST),
                channels: r.codec().and_then(|c| c.channels()),
                default: i == 0,
            })
            .collect();
        Some(playlist::multivariant_playlist(&variants, &media))
    }

    /// An init segment, segment or part of `rendition`; `None` if it is not
    /// (or no longer) held. A part or segment not yet written is `None` too:
    /// the preload-hinted part is streamed with [`Bridge::read_part`].
    pub fn file(&self, rendition: &str, resource: Resource) -> Result<Option<Body>, Error> {
        let r = self.rendition(rendition)?;
        Ok(match resource {
            Resource::MediaPlaylist => None,
            Resource::Init(v) => r.init(v).map(|b| Body(vec![b.clone()])),
            Resource::Segment(msn) => r
                .timeline
                .segment(msn)
                .map(|s| Body(s.chunks().cloned().collect())),
            Resource::Part(id) => r.timeline.part(id).map(|p| Body(vec![p.data.clone()])),
        })
    }

    /// Part `id` of `rendition` from byte `offset`, including the part being
    /// written (the one `EXT-X-PRELOAD-HINT` names): its chunks so far, and
    /// `complete: false`. The HTTP layer sends what it gets, waits for the
    /// next chunk notification, and reads on from the new offset until
    /// `complete`. `None` for a part neither held nor being written.
    pub fn read_part(
        &self,
        rendition: &str,
        id: u64,
        offset: usize,
    ) -> Result<Option<PartRead>, Error> {
        let tl = &self.rendition(rendition)?.timeline;
        if let Some(part) = tl.part(id) {
            let from = offset.min(part.data.len());
            return Ok(Some(PartRead {
                data: vec![part.data.slice(from..)],
                complete: true,
            }));
        }
        let (open_id, chunks) = tl.open_part();
        if tl.ended() || id != open_id {
            return Ok(None);
        }
        let mut skip = offset;
        let mut data = Vec::new();
        for c in chunks {
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            data.push(c.slice(skip..));
            skip = 0;
        }
        Ok(Some(PartRead {
            data,
            complete: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fmp4::tests::{ffprobe, temp_dir};
    use crate::h264::tests::{fixture_access_units, packetize};

    fn opus_packet(seq: u64) -> RtpPacket {
        RtpPacket {
            seq,
            timestamp: 5000u32.wrapping_add(960 * seq as u32),
            marker: false,
            payload: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
        }
    }

    /// Three seconds of the H.264 fixture and of Opus, interleaved as they
    /// would arrive, video starting 100 ms into the epoch.
    fn run_room(loops: usize) -> Bridge {
        let mut b = Bridge::new(BridgeConfig::default(), 1_795_000_000_000);
        let v = b.add_h264_track("720p").unwrap();
        let a = b.add_opus_track("audio", 2).unwrap();
        let aus = fixture_access_units();
        let mut frames = Vec::new();
        for _ in 0..loops {
            frames.extend(aus.iter().cloned());
        }
        let packets = packetize(&frames, 300, 0);
        let mut audio_seq = 0;
        for p in packets {
            let frame = (p.timestamp.wrapping_sub(90_000) / 3000) as u64;
            let now = Duration::from_millis(100 + frame * 100 / 3);
            while audio_seq * 20 <= 100 + frame * 100 / 3 {
                let at = Duration::from_millis(audio_seq * 20);
                b.push_rtp(a, opus_packet(audio_seq), at).unwrap();
                audio_seq += 1;
            }
            b.push_rtp(v, p, now).unwrap();
        }
        b
    }

    #[test]
    fn a_room_becomes_playlists_and_files() {
        let b = run_room(2);
        let text = b.media_playlist("720p", &PlaylistQuery::default()).unwrap();
        assert!(text.contains("#EXT-X-MAP:URI=\"init0.mp4\""));
        assert!(text.contains("seg0.m4s"));
        assert!(text.contains("#EXT-X-RENDITION-REPORT:URI=\"../audio/media.m3u8\""));
        let audio = b
            .media_playlist("audio", &PlaylistQuery::default())
            .unwrap();
        assert!(audio.contains("#EXT-X-RENDITION-REPORT:URI=\"../720p/media.m3u8\""));

        let mv = b.multivariant_playlist().unwrap();
        assert!(mv.contains("CODECS=\"avc1.42c01f,opus\""), "{mv}");
        assert!(mv.contains("RESOLUTION=320x180"), "{mv}");
        assert!(mv.contains("FRAME-RATE=30.000"), "{mv}");
        assert!(mv.contains("AUDIO=\"audio\""), "{mv}");
        assert!(mv.contains("URI=\"audio/media.m3u8\""), "{mv}");
        assert!(mv.contains("\n720p/media.m3u8\n"), "{mv}");
        let under = b.multivariant_playlist_under("s9/").unwrap();
        assert!(under.contains("URI=\"s9/audio/media.m3u8\""), "{under}");
        assert!(under.contains("\ns9/720p/media.m3u8\n"), "{under}");

        // Files named in the playlist exist.
        for line in text.lines().filter(|l| l.starts_with("seg")) {
            let res = Resource::parse(line).unwrap();
            assert!(b.file("720p", res).unwrap().is_some(), "{line}");
        }
        let edge = b.rendition("720p").unwrap().edge();
        assert!(edge.open_parts > 0 || edge.last_complete_parts > 0);
        assert_eq!(
            b.file("nope", Resource::Init(0)),
            Err(Error::UnknownRendition("nope".into()))
        );
    }

    #[test]
    fn audio_segments_follow_video_segments() {
        let b = run_room(2);
        let video = b.rendition("720p").unwrap().timeline();
        let audio = b.rendition("audio").unwrap().timeline();
        let vs: Vec<f64> = video
            .listed_segments()
            .map(|s| video.ticks_to_secs(s.start))
            .collect();
        let aus: Vec<f64> = audio
            .listed_segments()
            .map(|s| audio.ticks_to_secs(s.start))
            .collect();
        assert!(vs.len() >= 4);
        // Audio waits for the first video segment, then every audio segment
        // starts within two audio frames of its video segment (the video
        // keyframe reaches the timeline one video frame late).
        assert_eq!(vs.len(), aus.len());
        assert!(
            (vs[0] - aus[0]).abs() <= 0.1,
            "video {} audio {}",
            vs[0],
            aus[0]
        );
        for (v, a) in vs.iter().zip(&aus).skip(1) {
            assert!((v - a).abs() <= 0.041, "video {v} audio {a}");
        }
    }

    #[test]
    fn blocking_decisions_through_the_bridge() {
        let b = run_room(1);
        let edge = b.rendition("720p").unwrap().edge();
        let q = PlaylistQuery {
            msn: Some(edge.open_msn),
            part: Some(edge.open_parts),
            skip: false,
        };
        assert!(matches!(
            b.decide("720p", &q, Duration::ZERO),
            Ok(Decision::Wait { .. })
        ));
        let q = PlaylistQuery {
            msn: Some(edge.open_msn + 2),
            part: None,
            skip: false,
        };
        assert_eq!(
            b.decide("720p", &q, Duration::ZERO),
            Ok(Decision::BadRequest)
        );
        let next = b.rendition("720p").unwrap().timeline().next_part_id();
        assert!(!b.read_part("720p", next, 0).unwrap().unwrap().complete);
        assert_eq!(b.read_part("720p", next + 1, 0).unwrap(), None);
        assert_eq!(b.file("720p", Resource::Part(next)).unwrap(), None);
    }

    #[test]
    fn rendition_names_must_be_safe_path_segments() {
        let mut b = Bridge::new(BridgeConfig::default(), 0);
        for bad in ["", "../x", "a/b", "media.m3u8", "seg1.m4s", "a b"] {
            assert!(
                matches!(b.add_h264_track(bad), Err(Error::BadRenditionName(_))),
                "{bad}"
            );
        }
        b.add_h264_track("high").unwrap();
        assert_eq!(
            b.add_opus_track("high", 2),
            Err(Error::DuplicateRendition("high".into()))
        );
        assert_eq!(
            b.push_rtp(TrackId(7), opus_packet(0), Duration::ZERO),
            Err(Error::UnknownTrack)
        );
    }

    #[test]
    fn a_new_sps_starts_a_segment_with_a_new_init() {
        let mut b = Bridge::new(BridgeConfig::default(), 0);
        let v = b.add_h264_track("cam").unwrap();
        let mut aus = fixture_access_units();
        // The publisher reconfigures its encoder: a different SPS (level 3.2
        // instead of 3.1) arrives with the IDR at frame 60.
        for au in &mut aus[60..61] {
            for nal in au.iter_mut() {
                if nal[0] & 0x1f == 7 {
                    let mut sps = nal.to_vec();
                    sps[3] = 32;
                    *nal = Bytes::from(sps);
                }
            }
        }
        for p in packetize(&aus, 1200, 0) {
            let frame = (p.timestamp - 90_000) / 3000;
            b.push_rtp(v, p, Duration::from_millis(frame as u64 * 100 / 3))
                .unwrap();
        }
        let text = b.media_playlist("cam", &PlaylistQuery::default()).unwrap();
        let maps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("#EXT-X-MAP"))
            .collect();
        assert_eq!(
            maps,
            vec![
                "#EXT-X-MAP:URI=\"init0.mp4\"",
                "#EXT-X-MAP:URI=\"init1.mp4\""
            ]
        );
        assert!(b.file("cam", Resource::Init(1)).unwrap().is_some());
        let mv = b.multivariant_playlist().unwrap();
        assert!(mv.contains("avc1.42c020"), "{mv}");
    }

    #[test]
    fn packet_loss_never_reaches_a_segment() {
        // Drop 1 % of video packets; every segment must still decode cleanly.
        let mut b = Bridge::new(BridgeConfig::default(), 0);
        let v = b.add_h264_track("cam").unwrap();
        let mut aus = Vec::new();
        for _ in 0..3 {
            aus.extend(fixture_access_units());
        }
        for (i, p) in packetize(&aus, 200, 0).into_iter().enumerate() {
            if i % 97 == 50 {
                continue;
            }
            let frame = (p.timestamp.wrapping_sub(90_000) / 3000) as u64;
            b.push_rtp(v, p, Duration::from_millis(frame * 100 / 3))
                .unwrap();
        }
        b.end();
        let r = b.rendition("cam").unwrap();
        let tl = r.timeline();
        let mut file = b.file("cam", Resource::Init(0)).unwrap().unwrap().0[0].to_vec();
        let mut frames = 0u64;
        for s in tl.listed_segments() {
            frames += s.parts.iter().map(|p| p.samples as u64).sum::<u64>();
            for c in b.file("cam", Resource::Segment(s.msn)).unwrap().unwrap().0 {
                file.extend_from_slice(&c);
            }
        }
        assert!(
            frames > 0 && frames < 270,
            "some frames must be dropped: {frames}"
        );
        let (_, input) = r.input_stats();
        assert!(input.losses > 0 && input.dropped_frames > 0);
        let dir = temp_dir("bridge-loss");
        let path = dir.join("cam.mp4");
        std::fs::write(&path, &file).unwrap();
        let Some(out) = ffprobe(
            &[
                "-count_frames",
                "-show_entries",
                "stream=nb_read_frames",
                "-of",
                "default=noprint_wrappers=1",
            ],
            &path,
        ) else {
            return;
        };
        assert!(
            out.contains(&format!("nb_read_frames={frames}")),
            "{out} vs {frames}"
        );
        // ffmpeg must decode it without a single error.
        let decode = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&path)
            .args(["-f", "null", "-"])
            .output();
        if let Ok(decode) = decode {
            assert!(
                decode.stderr.is_empty(),
                "{}",
                String::from_utf8_lossy(&decode.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Writes the room as static files, as a CDN would see them.
    fn write_room(b: &Bridge, dir: &std::path::Path) {
        std::fs::write(dir.join("index.m3u8"), b.multivariant_playlist().unwrap()).unwrap();
        for r in b.renditions() {
            let rdir = dir.join(r.name());
            std::fs::create_dir_all(&rdir).unwrap();
            let text = b
                .media_playlist(r.name(), &PlaylistQuery::default())
                .unwrap();
            for line in text.lines() {
                let uri = line
                    .strip_prefix("#EXT-X-MAP:URI=\"")
                    .and_then(|l| l.strip_suffix('"'))
                    .unwrap_or(line);
                if let Some(res) = Resource::parse(uri) {
                    let body = b.file(r.name(), res).unwrap().expect(uri);
                    std::fs::write(rdir.join(uri), body.0.concat()).unwrap();
                }
            }
            std::fs::write(rdir.join("media.m3u8"), text).unwrap();
        }
    }

    #[test]
    fn ffprobe_plays_the_room_through_its_playlists() {
        let mut b = run_room(3);
        b.end();
        let dir = temp_dir("bridge-room");
        write_room(&b, &dir);
        let entries = [
            "-show_entries",
            "stream=codec_name,width,height,sample_rate,channels:format=duration",
            "-of",
            "default=noprint_wrappers=1",
        ];
        let Some(out) = ffprobe(&entries, &dir.join("720p/media.m3u8")) else {
            return;
        };
        assert!(out.contains("codec_name=h264"), "{out}");
        assert!(out.contains("width=320\nheight=180"), "{out}");
        let duration: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("duration="))
            .unwrap()
            .parse()
            .unwrap();
        // 270 frames at 30 fps; the very last frame has no successor to
        // give it a duration.
        assert!((duration - 9.0).abs() < 0.05, "{out}");
        let out = ffprobe(&entries, &dir.join("audio/media.m3u8")).unwrap();
        assert!(out.contains("codec_name=opus"), "{out}");
        assert!(out.contains("sample_rate=48000\nchannels=2"), "{out}");
        // The multivariant playlist: ffmpeg opens the variant and its audio.
        let out = ffprobe(&entries, &dir.join("index.m3u8")).unwrap();
        assert!(out.contains("codec_name=h264"), "{out}");
        assert!(out.contains("codec_name=opus"), "{out}");
        if std::env::var_os("HLS_BRIDGE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn the_preload_hinted_part_streams_as_it_is_written() {
        let mut b = Bridge::new(BridgeConfig::default(), 0);
        let v = b.add_h264_track("cam").unwrap();
        // A reader asks for part 0 before any frame arrived (it is hinted).
        let hinted = b.rendition("cam").unwrap().timeline().next_part_id();
        let mut received: Vec<u8> = Vec::new();
        let (mut wakeups, mut complete) = (0, false);
        for p in packetize(&fixture_access_units(), 1200, 0) {
            let frame = (p.timestamp - 90_000) / 3000;
            let progress = b.push_rtp(v, p, Duration::from_millis(frame as u64 * 100 / 3));
            let progress = progress.unwrap();
            if !(progress.chunk || progress.part) {
                continue;
            }
            wakeups += 1;
            let read = b.read_part("cam", hinted, received.len()).unwrap().unwrap();
            for c in read.data {
                received.extend_from_slice(&c);
            }
            if read.complete {
                complete = true;
                break;
            }
        }
        assert!(complete);
        // Six frames: five chunk wake-ups, then the one completing the part.
        assert_eq!(wakeups, 6);
        let part = b.file("cam", Resource::Part(hinted)).unwrap().unwrap();
        assert_eq!(received, part.0.concat());
        // Reading a complete part from an offset gives its tail.
        let tail = b.read_part("cam", hinted, 10).unwrap().unwrap();
        assert_eq!(tail.data.concat(), part.0.concat()[10..]);
    }

    #[test]
    fn transcoder_output_becomes_an_h264_and_aac_room() {
        let mut b = Bridge::new(BridgeConfig::default(), 0);
        let v = b.add_h264_frame_track("480p").unwrap();
        let a = b.add_aac_track("aac", 48_000, 2).unwrap();
        let aac = crate::fmp4::tests::adts_frames(crate::fmp4::tests::AAC_FIXTURE);
        // The encoder hands over Annex-B access units (SPS/PPS on IDRs).
        let aus = crate::h264::tests::fixture_access_units();
        let mut audio = aac.iter().enumerate();
        for (i, au) in aus.iter().enumerate() {
            let mut annex_b = Vec::new();
            for nal in au {
                annex_b.extend_from_slice(&[0, 0, 0, 1]);
                annex_b.extend_from_slice(nal);
            }
            let unit = AccessUnit::from_annex_b(i as u32 * 3000, Bytes::from(annex_b)).unwrap();
            let now = Duration::from_millis(i as u64 * 100 / 3);
            b.push_access_unit(v, unit, now).unwrap();
            // Audio frames up to the same time (21.3 ms each).
            for (k, f) in audio.by_ref() {
                let at = Duration::from_micros(k as u64 * 1_000_000 * 1024 / 48_000);
                b.push_aac_frame(a, k as u32 * 1024, f.clone(), at).unwrap();
                if at >= now {
                    break;
                }
            }
        }
        let mv = b.multivariant_playlist().unwrap();
        assert!(mv.contains("CODECS=\"avc1.42c01f,mp4a.40.2\""), "{mv}");
        b.end();
        let dir = temp_dir("bridge-transcoded");
        write_room(&b, &dir);
        let entries = [
            "-show_entries",
            "stream=codec_name,profile,sample_rate",
            "-of",
            "default=noprint_wrappers=1",
        ];
        let Some(out) = ffprobe(&entries, &dir.join("index.m3u8")) else {
            return;
        };
        assert!(out.contains("codec_name=h264"), "{out}");
        assert!(
            out.contains("codec_name=aac\nprofile=LC\nsample_rate=48000"),
            "{out}"
        );
        // Wrong inputs are refused, not misinterpreted.
        assert_eq!(
            b.push_rtp(v, opus_packet(0), Duration::ZERO),
            Err(Error::WrongInput)
        );
        assert_eq!(
            b.push_aac_frame(v, 0, Bytes::new(), Duration::ZERO),
            Err(Error::WrongInput)
        );
        assert!(matches!(
            b.add_aac_track("x", 12_345, 2),
            Err(Error::UnsupportedAudio { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_bridge_can_move_between_threads() {
        fn send<T: Send + Sync>() {}
        send::<Bridge>();
    }

    #[test]
    fn keyframes_are_requested_when_a_segment_is_due_and_after_loss() {
        let mut b = Bridge::new(BridgeConfig::default(), 0);
        let v = b.add_h264_track("cam").unwrap();
        let a = b.add_opus_track("mic", 1).unwrap();
        // Frames 0..30 of the fixture: IDR at 0, then P frames only.
        let packets = packetize(&fixture_access_units()[..30], 1200, 0);
        let mut requests = Vec::new();
        for p in packets {
            let frame = (p.timestamp - 90_000) / 3000;
            let now = Duration::from_millis(frame as u64 * 100 / 3);
            if b.push_rtp(v, p, now).unwrap().keyframe_wanted {
                requests.push(frame);
            }
            assert!(
                !b.push_rtp(a, opus_packet(frame as u64), now)
                    .unwrap()
                    .keyframe_wanted
            );
        }
        // Asked for at once (a new subscriber wants an IDR to start from),
        // then when the segment reaches 0.8 s (24 frames in the timeline),
        // and not again within 500 ms.
        assert_eq!(requests, vec![0, 24]);
        // A loss: asked at once, since the last request is 500 ms old.
        let mut late = packetize(&fixture_access_units()[30..], 1200, 1000);
        late.remove(3);
        let mut asked_after_loss = false;
        for p in late {
            let frame = (p.timestamp - 90_000) / 3000;
            let now = Duration::from_millis(2000 + frame as u64 * 100 / 3);
            asked_after_loss |= b.push_rtp(v, p, now).unwrap().keyframe_wanted;
        }
        assert!(asked_after_loss);
    }

    #[test]
    fn garbage_rtp_never_panics() {
        let mut b = Bridge::new(BridgeConfig::default(), 0);
        let v = b.add_h264_track("v").unwrap();
        let a = b.add_opus_track("a", 2).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000u64 {
            let len = (rand() % 64) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            // Make a good share of them look like H.264 aggregates/fragments.
            if let Some(first) = payload.first_mut() {
                *first = [0x78, 0x7c, 0x65, 0x41, *first][(rand() % 5) as usize];
            }
            let packet = RtpPacket {
                seq: i + (rand() % 3),
                timestamp: (i / 3) as u32 * 3000,
                marker: rand() % 3 == 0,
                payload: Bytes::from(payload),
            };
            let track = if rand() % 2 == 0 { v } else { a };
            let _ = b.push_rtp(track, packet, Duration::from_millis(i * 10));
        }
        let _ = b.media_playlist("v", &PlaylistQuery::default()).unwrap();
        let _ = b.multivariant_playlist();
    }

    #[test]
    fn clock_continues_across_a_publisher_restart() {
        let mut c = Clock::default();
        let max = 10 * 90_000;
        assert_eq!(c.dts(u32::MAX - 1000, 9000, max, 3000), 9000);
        // Wraps around u32, forward by 3000.
        assert_eq!(
            c.dts((u32::MAX - 1000).wrapping_add(3000), 0, max, 3000),
            12_000
        );
        // A leap of 20 s is a restart too.
        assert_eq!(c.dts(2000 + 20 * 90_000, 0, max, 3000), 15_000);
        let mut c = Clock::default();
        c.dts(1000, 0, max, 3000);
        c.dts(4000, 0, max, 3000);
        // Jumps back (encoder restart): continues 3000 after.
        assert_eq!(c.dts(10, 0, max, 3000), 6000);
        assert_eq!(c.dts(3010, 0, max, 3000), 9000);
    }
}
