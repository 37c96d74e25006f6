//! Playlist text: the media playlist of a rendition (full or delta update)
//! and the multivariant playlist of a room.
//!
//! Follows draft-pantos-hls-rfc8216bis: `EXT-X-PART` for the segments in the
//! last three target durations (§6.2.2), `PART-HOLD-BACK` of three part
//! targets (§4.4.3.8 asks for at least two and recommends three),
//! `CAN-SKIP-UNTIL` of six target durations (its minimum, §4.4.3.8), and
//! `EXT-X-SKIP` replacing the segments older than that in a delta update
//! (§4.4.5.2, which needs `EXT-X-VERSION` 9).
//!
//! URIs are relative: a room's files live under `/hls/{room}/`, each
//! rendition's media playlist and files under `/hls/{room}/{rendition}/`.

use std::fmt::Write;

use crate::timeline::{Segment, Timeline};

/// `EXT-X-VERSION` of every playlist: 9 is what `EXT-X-SKIP` needs, and every
/// LL-HLS client understands it.
pub const VERSION: u32 = 9;

/// File name of a rendition's media playlist.
pub const MEDIA_PLAYLIST: &str = "media.m3u8";
/// File name of the room's multivariant playlist.
pub const MULTIVARIANT_PLAYLIST: &str = "index.m3u8";

/// A file of a rendition, as named in its playlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    MediaPlaylist,
    /// `init{version}.mp4`
    Init(u32),
    /// `seg{msn}.m4s`
    Segment(u64),
    /// `part{id}.m4s`, by global part id.
    Part(u64),
}

impl Resource {
    /// The file name.
    pub fn uri(&self) -> String {
        match self {
            Resource::MediaPlaylist => MEDIA_PLAYLIST.to_owned(),
            Resource::Init(v) => format!("init{v}.mp4"),
            Resource::Segment(msn) => format!("seg{msn}.m4s"),
            Resource::Part(id) => format!("part{id}.m4s"),
        }
    }

    /// Parses a file name from a request path; `None` for anything else.
    pub fn parse(name: &str) -> Option<Resource> {
        fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
            // Canonical digits only: no signs, spaces or leading zeros, so
            // one file has one URI (and one cache key).
            if s.is_empty()
                || !s.bytes().all(|b| b.is_ascii_digit())
                || s.len() > 1 && s.starts_with('0')
            {
                return None;
            }
            s.parse().ok()
        }
        if name == MEDIA_PLAYLIST {
            return Some(Resource::MediaPlaylist);
        }
        if let Some(v) = name
            .strip_prefix("init")
            .and_then(|s| s.strip_suffix(".mp4"))
        {
            return number(v).map(Resource::Init);
        }
        if let Some(n) = name
            .strip_prefix("seg")
            .and_then(|s| s.strip_suffix(".m4s"))
        {
            return number(n).map(Resource::Segment);
        }
        if let Some(n) = name
            .strip_prefix("part")
            .and_then(|s| s.strip_suffix(".m4s"))
        {
            return number(n).map(Resource::Part);
        }
        None
    }
}

/// `EXT-X-RENDITION-REPORT` for another rendition of the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionReport {
    /// Relative URI of its media playlist (`../{name}/media.m3u8`).
    pub uri: String,
    pub last_msn: u64,
    pub last_part: u64,
}

impl RenditionReport {
    /// The report for `timeline`, published as rendition `name`; `None`
    /// before its first part.
    pub fn of(name: &str, timeline: &Timeline) -> Option<Self> {
        let (last_msn, last_part) = last_part_position(timeline)?;
        Some(Self {
            uri: format!("../{name}/{MEDIA_PLAYLIST}"),
            last_msn,
            last_part,
        })
    }
}

/// (msn, part index) of the last published part.
pub fn last_part_position(timeline: &Timeline) -> Option<(u64, u64)> {
    if let Some(open) = timeline.open_segment() {
        if !open.parts.is_empty() {
            return Some((open.msn, open.parts.len() as u64 - 1));
        }
    }
    let last = timeline.listed_segments().last()?;
    Some((last.msn, last.parts.len() as u64 - 1))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub fn format_date_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Options of one media playlist response.
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaPlaylistOptions {
    /// A delta update was asked for (`_HLS_skip=YES`).
    pub skip: bool,
    /// Unix time (ms) of decode time 0 of the timeline, for
    /// `EXT-X-PROGRAM-DATE-TIME`.
    pub epoch_unix_ms: u64,
}

/// Renders the media playlist of `timeline`.
pub fn media_playlist(
    timeline: &Timeline,
    options: MediaPlaylistOptions,
    reports: &[RenditionReport],
) -> String {
    let td = timeline.target_duration_secs();
    let part_target = timeline.ticks_to_secs(timeline.part_target_ticks());
    let listed: Vec<&Segment> = timeline.listed_segments().collect();
    let open = timeline.open_segment().filter(|s| !s.parts.is_empty());
    let end = open
        .map(|s| s.start + s.duration)
        .or_else(|| listed.last().map(|s| s.start + s.duration))
        .unwrap_or(0);
    let ts = timeline.timescale() as u64;
    let skip_until = 6 * td;
    let part_window_start = end.saturating_sub(3 * td * ts);
    let skip_before = end.saturating_sub(skip_until * ts);
    let skipped = if options.skip {
        listed
            .iter()
            .take_while(|s| s.start + s.duration <= skip_before)
            .count()
    } else {
        0
    };

    let mut out = String::with_capacity(256 + 160 * listed.len());
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{td}");
    let _ = writeln!(
        out,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={:.1},HOLD-BACK={:.3},PART-HOLD-BACK={:.3}",
        skip_until as f64,
        3.0 * td as f64,
        3.0 * part_target
    );
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    let first_msn = listed
        .first()
        .map(|s| s.msn)
        .or(open.map(|s| s.msn))
        .unwrap_or(0);
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first_msn}");
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    if skipped > 0 {
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }

    let mut map: Option<u32> = None;
    let mut segment_head = |out: &mut String, s: &Segment| {
        if map != Some(s.init_version) {
            let uri = Resource::Init(s.init_version).uri();
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{uri}\"");
            map = Some(s.init_version);
        }
        let pdt = options.epoch_unix_ms + s.start * 1000 / ts;
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", format_date_time(pdt));
        if s.start + s.duration > part_window_start {
            for p in &s.parts {
                let _ = write!(
                    out,
                    "#EXT-X-PART:DURATION={:.5},URI=\"{}\"",
                    timeline.ticks_to_secs(p.duration),
                    Resource::Part(p.id).uri()
                );
                if p.independent {
                    out.push_str(",INDEPENDENT=YES");
                }
                out.push('\n');
            }
        }
    };
    for s in &listed[skipped..] {
        segment_head(&mut out, s);
        let _ = writeln!(out, "#EXTINF:{:.5},", timeline.ticks_to_secs(s.duration));
        let _ = writeln!(out, "{}", Resource::Segment(s.msn).uri());
    }
    if let Some(s) = open {
        segment_head(&mut out, s);
    }
    if timeline.ended() {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    } else {
        let next = Resource::Part(timeline.next_part_id()).uri();
        let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{next}\"");
    }
    for r in reports {
        let _ = writeln!(
            out,
            "#EXT-X-RENDITION-REPORT:URI=\"{}\",LAST-MSN={},LAST-PART={}",
            r.uri, r.last_msn, r.last_part
        );
    }
    out
}

/// A video variant of the multivariant playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Relative URI of its media playlist (`{name}/media.m3u8`).
    pub uri: String,
    /// Peak bits per second, audio included.
    pub bandwidth: u64,
    /// Average bits per second, audio included.
    pub average_bandwidth: Option<u64>,
    /// Video and audio codec strings, comma-separated.
    pub codecs: String,
    pub resolution: Option<(u32, u32)>,
    pub frame_rate: Option<f64>,
    /// `GROUP-ID` of its audio renditions.
    pub audio_group: Option<String>,
}

/// An audio rendition (`EXT-X-MEDIA:TYPE=AUDIO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioMedia {
    pub group_id: String,
    pub name: String,
    pub uri: String,
    pub channels: Option<u8>,
    pub default: bool,
}

/// Renders the multivariant playlist.
pub fn multivariant_playlist(variants: &[Variant], audio: &[AudioMedia]) -> String {
    let mut out = String::with_capacity(256 + 256 * variants.len());
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    let _ = writeln!(out, "#EXT-X-INDEPENDENT-SEGMENTS");
    for a in audio {
        let yes_no = |b: bool| if b { "YES" } else { "NO" };
        let _ = write!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{}\",NAME=\"{}\",DEFAULT={},AUTOSELECT=YES",
            a.group_id,
            a.name,
            yes_no(a.default)
        );
        if let Some(c) = a.channels {
            let _ = write!(out, ",CHANNELS=\"{c}\"");
        }
        let _ = writeln!(out, ",URI=\"{}\"", a.uri);
    }
    for v in variants {
        let _ = write!(out, "#EXT-X-STREAM-INF:BANDWIDTH={}", v.bandwidth);
        if let Some(avg) = v.average_bandwidth {
            let _ = write!(out, ",AVERAGE-BANDWIDTH={avg}");
        }
        let _ = write!(out, ",CODECS=\"{}\"", v.codecs);
        if let Some((w, h)) = v.resolution {
            let _ = write!(out, ",RESOLUTION={w}x{h}");
        }
        if let Some(fps) = v.frame_rate {
            let _ = write!(out, ",FRAME-RATE={fps:.3}");
        }
        if let Some(g) = &v.audio_group {
            let _ = write!(out, ",AUDIO=\"{g}\"");
        }
        let _ = writeln!(out, "\n{}", v.uri);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::tests::feed;
    use crate::timeline::TimelineConfig;

    /// Lines starting with `tag`.
    fn lines<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(tag)).collect()
    }

    /// The value of `attr` in an attribute list line.
    fn attr<'a>(line: &'a str, attr: &str) -> Option<&'a str> {
        let list = line.split_once(':')?.1;
        list.split(',')
            .find_map(|kv| kv.strip_prefix(attr)?.strip_prefix('='))
    }

    fn timeline(frames: usize, gop: usize) -> Timeline {
        let mut tl = Timeline::new(TimelineConfig::default(), 90_000);
        feed(&mut tl, frames, 3000, gop, |_| 0);
        tl
    }

    fn opts() -> MediaPlaylistOptions {
        MediaPlaylistOptions {
            skip: false,
            epoch_unix_ms: 1_795_000_000_000,
        }
    }

    #[test]
    fn resource_names_round_trip_and_reject_junk() {
        for r in [
            Resource::MediaPlaylist,
            Resource::Init(3),
            Resource::Segment(42),
            Resource::Part(1234),
        ] {
            assert_eq!(Resource::parse(&r.uri()), Some(r));
        }
        for junk in [
            "seg.m4s",
            "seg-1.m4s",
            "seg+1.m4s",
            "part1.mp4",
            "../x",
            "init.mp4",
            "segx.m4s",
        ] {
            assert_eq!(Resource::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn date_time_format() {
        assert_eq!(format_date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_date_time(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            format_date_time(1_795_000_000_000),
            "2026-11-18T11:06:40.000Z"
        );
    }

    #[test]
    fn header_tags() {
        let tl = timeline(100, 30);
        let text = media_playlist(&tl, opts(), &[]);
        assert!(text.starts_with("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n"));
        let sc = lines(&text, "#EXT-X-SERVER-CONTROL:")[0];
        assert_eq!(attr(sc, "CAN-BLOCK-RELOAD"), Some("YES"));
        assert_eq!(attr(sc, "CAN-SKIP-UNTIL"), Some("6.0"));
        assert_eq!(attr(sc, "HOLD-BACK"), Some("3.000"));
        let part_target: f64 = attr(lines(&text, "#EXT-X-PART-INF:")[0], "PART-TARGET")
            .unwrap()
            .parse()
            .unwrap();
        let phb: f64 = attr(sc, "PART-HOLD-BACK").unwrap().parse().unwrap();
        assert!(
            phb >= 3.0 * part_target - 1e-9,
            "PART-HOLD-BACK {phb} < 3 × {part_target}"
        );
        assert_eq!(
            lines(&text, "#EXT-X-MEDIA-SEQUENCE:"),
            vec!["#EXT-X-MEDIA-SEQUENCE:0"]
        );
        assert_eq!(
            lines(&text, "#EXT-X-MAP:"),
            vec!["#EXT-X-MAP:URI=\"init0.mp4\""]
        );
    }

    #[test]
    fn segments_parts_and_preload_hint() {
        // 100 frames at 30 fps, 1 s GOP: 3 complete segments + 10 frames.
        let tl = timeline(100, 30);
        let text = media_playlist(&tl, opts(), &[]);
        assert_eq!(lines(&text, "#EXTINF:"), vec!["#EXTINF:1.00000,"; 3]);
        assert_eq!(
            lines(&text, "seg"),
            vec!["seg0.m4s", "seg1.m4s", "seg2.m4s"]
        );
        let parts = lines(&text, "#EXT-X-PART:");
        // 5 parts per segment, 1 in the open one (6 frames, 4 pending).
        assert_eq!(parts.len(), 3 * 5 + 1);
        assert_eq!(
            parts[0],
            "#EXT-X-PART:DURATION=0.20000,URI=\"part0.m4s\",INDEPENDENT=YES"
        );
        assert_eq!(parts[1], "#EXT-X-PART:DURATION=0.20000,URI=\"part1.m4s\"");
        // Every segment's first part is independent, and only those.
        let independent: Vec<usize> = parts
            .iter()
            .enumerate()
            .filter(|(_, l)| l.ends_with("INDEPENDENT=YES"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(independent, vec![0, 5, 10, 15]);
        // The open segment's parts come after the last EXTINF.
        let last_uri = text.rfind("seg2.m4s").unwrap();
        assert!(text.rfind("part15.m4s").unwrap() > last_uri);
        assert_eq!(
            lines(&text, "#EXT-X-PRELOAD-HINT:"),
            vec!["#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part16.m4s\""]
        );
        assert!(!text.contains("#EXT-X-ENDLIST"));
    }

    #[test]
    fn program_date_time_on_every_segment() {
        let tl = timeline(100, 30);
        let text = media_playlist(&tl, opts(), &[]);
        assert_eq!(
            lines(&text, "#EXT-X-PROGRAM-DATE-TIME:"),
            vec![
                "#EXT-X-PROGRAM-DATE-TIME:2026-11-18T11:06:40.000Z",
                "#EXT-X-PROGRAM-DATE-TIME:2026-11-18T11:06:41.000Z",
                "#EXT-X-PROGRAM-DATE-TIME:2026-11-18T11:06:42.000Z",
                "#EXT-X-PROGRAM-DATE-TIME:2026-11-18T11:06:43.000Z",
            ]
        );
    }

    #[test]
    fn parts_are_listed_for_the_last_three_target_durations_only() {
        // 20 s at 30 fps: 12 listed segments; parts only for the last ~3 s.
        let tl = timeline(600, 30);
        let text = media_playlist(&tl, opts(), &[]);
        let segs = lines(&text, "seg");
        assert_eq!(segs.len(), 12);
        assert_eq!(segs[0], "seg7.m4s");
        assert_eq!(
            lines(&text, "#EXT-X-MEDIA-SEQUENCE:")[0],
            "#EXT-X-MEDIA-SEQUENCE:7"
        );
        // Segments 7..=18 complete, 19 open with 5 parts: the playlist ends
        // at 20 s, so parts are listed for segments ending after 17 s.
        let first_part_line = text.find("#EXT-X-PART:").unwrap();
        let before: Vec<&str> = lines(&text[..first_part_line], "seg");
        assert_eq!(before.len(), 10, "parts of segments 17, 18 and 19 only");
        assert!(
            text[first_part_line..].starts_with("#EXT-X-PART:DURATION=0.20000,URI=\"part85.m4s\"")
        );
    }

    #[test]
    fn delta_update_skips_older_than_six_target_durations() {
        let tl = timeline(600, 30);
        let full = media_playlist(&tl, opts(), &[]);
        let delta = media_playlist(
            &tl,
            MediaPlaylistOptions {
                skip: true,
                ..opts()
            },
            &[],
        );
        // The playlist ends at 20 s; segments 7..=13 end by 14 s = 20 - 6.
        assert_eq!(
            lines(&delta, "#EXT-X-SKIP:"),
            vec!["#EXT-X-SKIP:SKIPPED-SEGMENTS=7"]
        );
        let segs = lines(&delta, "seg");
        assert_eq!(segs.len(), 5);
        assert_eq!(segs[0], "seg14.m4s");
        // MEDIA-SEQUENCE still names the first segment, skipped or not.
        assert_eq!(
            lines(&delta, "#EXT-X-MEDIA-SEQUENCE:"),
            lines(&full, "#EXT-X-MEDIA-SEQUENCE:")
        );
        // The first listed segment still gets its MAP and date.
        let skip_at = delta.find("#EXT-X-SKIP").unwrap();
        assert!(delta.find("#EXT-X-MAP").unwrap() > skip_at);
        // Five complete segments and the open one.
        assert_eq!(lines(&delta, "#EXT-X-PROGRAM-DATE-TIME:").len(), 6);
        // The full playlist has no SKIP.
        assert!(!full.contains("#EXT-X-SKIP"));
        // Too short to skip anything: no SKIP tag at all.
        let short = timeline(100, 30);
        let delta = media_playlist(
            &short,
            MediaPlaylistOptions {
                skip: true,
                ..opts()
            },
            &[],
        );
        assert!(!delta.contains("#EXT-X-SKIP"));
    }

    #[test]
    fn rendition_reports() {
        let tl = timeline(100, 30);
        let report = RenditionReport::of("720p", &tl).unwrap();
        assert_eq!(
            report,
            RenditionReport {
                uri: "../720p/media.m3u8".into(),
                last_msn: 3,
                last_part: 0
            }
        );
        let text = media_playlist(&tl, opts(), &[report]);
        assert!(text.ends_with(
            "#EXT-X-RENDITION-REPORT:URI=\"../720p/media.m3u8\",LAST-MSN=3,LAST-PART=0\n"
        ));
        // Right after a keyframe the open segment has no part yet: the report
        // names the last part of the last complete segment.
        let tl = timeline(91, 30);
        let report = RenditionReport::of("a", &tl).unwrap();
        assert_eq!((report.last_msn, report.last_part), (2, 4));
        let empty = Timeline::new(TimelineConfig::default(), 90_000);
        assert_eq!(RenditionReport::of("a", &empty), None);
    }

    #[test]
    fn a_long_gop_raises_the_target_duration() {
        // 2 s GOP: EXTINF 2.0, TARGETDURATION 2, skip and hold-back follow.
        let tl = timeline(300, 60);
        let text = media_playlist(&tl, opts(), &[]);
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"));
        assert!(text.contains("CAN-SKIP-UNTIL=12.0"));
        assert!(text.contains("HOLD-BACK=6.000"));
        for l in lines(&text, "#EXTINF:") {
            let d: f64 = l[8..l.len() - 1].parse().unwrap();
            assert!(d.round() <= 2.0);
        }
    }

    #[test]
    fn ended_playlist() {
        let mut tl = timeline(100, 30);
        tl.end();
        let text = media_playlist(&tl, opts(), &[]);
        assert!(text.ends_with("#EXT-X-ENDLIST\n"));
        assert!(!text.contains("PRELOAD-HINT"));
        assert_eq!(lines(&text, "seg").len(), 4);
    }

    #[test]
    fn multivariant() {
        let text = multivariant_playlist(
            &[
                Variant {
                    uri: "720p/media.m3u8".into(),
                    bandwidth: 2_600_000,
                    average_bandwidth: Some(2_100_000),
                    codecs: "avc1.42e01f,mp4a.40.2".into(),
                    resolution: Some((1280, 720)),
                    frame_rate: Some(30.0),
                    audio_group: Some("audio".into()),
                },
                Variant {
                    uri: "360p/media.m3u8".into(),
                    bandwidth: 700_000,
                    average_bandwidth: None,
                    codecs: "avc1.42e01e,mp4a.40.2".into(),
                    resolution: Some((640, 360)),
                    frame_rate: None,
                    audio_group: Some("audio".into()),
                },
            ],
            &[AudioMedia {
                group_id: "audio".into(),
                name: "main".into(),
                uri: "audio/media.m3u8".into(),
                channels: Some(2),
                default: true,
            }],
        );
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"main\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio/media.m3u8\"\n\
             #EXT-X-STREAM-INF:BANDWIDTH=2600000,AVERAGE-BANDWIDTH=2100000,CODECS=\"avc1.42e01f,mp4a.40.2\",RESOLUTION=1280x720,FRAME-RATE=30.000,AUDIO=\"audio\"\n\
             720p/media.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=700000,CODECS=\"avc1.42e01e,mp4a.40.2\",RESOLUTION=640x360,AUDIO=\"audio\"\n\
             360p/media.m3u8\n"
        );
    }
}
