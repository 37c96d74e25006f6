//! LL-HLS end to end: headless Chromium publishes three H.264 simulcast
//! layers and Opus over WHIP; the server's HLS bridge serves the room under
//! `/hls/`. While hls.js (npm, `lowLatencyMode: true`) plays it in a second
//! page, this test reads every rendition with ffprobe and checks the HTTP
//! contract a CDN relies on (cache headers, CORS, blocking reload, the
//! preload-hinted part, problem responses). Then the publisher reconnects,
//! and the room's playlist must name a new session.
//!
//! Audio is checked as AAC-LC (transcoded from the publisher's Opus) that
//! decodes to the publisher's tone, not silence.
//!
//! Needs `/usr/bin/chromium`, Node, `npm ci` in `tests/browser` (hls.js and
//! playwright-core) and ffmpeg/ffprobe; `scripts/test.sh` installs them.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOM: &str = "hls";
const KEY: &str = "secret";
/// How long hls.js plays.
const PLAY_SECONDS: &str = "15";

/// One browser test at a time: each needs both cores.
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Runs ffprobe on `url` (at most 20 s) and returns its streams.
fn ffprobe_streams(url: &str) -> Vec<Value> {
    let mut child = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,width,height,channels,sample_rate",
            "-of",
            "json",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffprobe (apt-get install ffmpeg)");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ffprobe {url}: {e}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    json["streams"].as_array().cloned().unwrap_or_default()
}

/// Decodes 2 s of `url` with ffmpeg's volumedetect: the mean volume in dB.
fn mean_volume_db(url: &str) -> f64 {
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostats",
            "-i",
            url,
            "-t",
            "2",
            "-af",
            "volumedetect",
            "-f",
            "null",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find_map(|l| l.split("mean_volume: ").nth(1))
        .and_then(|v| v.trim_end_matches(" dB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no mean_volume from ffmpeg on {url}:\n{log}"))
}

/// The media playlist URIs of a multivariant playlist: (uri, resolution)
/// for video variants, (uri, None) for audio renditions.
fn renditions(multivariant: &str) -> Vec<(String, Option<(u64, u64)>)> {
    let mut out = Vec::new();
    let mut resolution = None;
    for line in multivariant.lines() {
        if line.starts_with("#EXT-X-MEDIA:") {
            let uri = line
                .split("URI=\"")
                .nth(1)
                .and_then(|s| s.split('"').next());
            out.push((uri.expect("EXT-X-MEDIA URI").to_owned(), None));
        } else if line.starts_with("#EXT-X-STREAM-INF:") {
            resolution = line
                .split("RESOLUTION=")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|r| r.split_once('x'))
                .map(|(w, h)| (w.parse().unwrap(), h.parse().unwrap()));
        } else if !line.starts_with('#') && !line.is_empty() {
            out.push((line.to_owned(), resolution.take()));
        }
    }
    out
}

fn header<'a>(r: &'a reqwest::blocking::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// (open segment msn, parts published in it, preload-hinted part URI)
fn live_edge(playlist: &str) -> (u64, u64, String) {
    let mut msn = 0u64;
    let mut parts_since_segment = 0;
    let mut hint = String::new();
    for line in playlist.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.parse().unwrap();
        } else if line.starts_with("#EXT-X-PART:") {
            parts_since_segment += 1;
        } else if line.starts_with("seg") {
            msn += 1;
            parts_since_segment = 0;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            hint = v
                .split("URI=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_owned();
        }
    }
    (msn, parts_since_segment, hint)
}

/// The HTTP contract: headers, blocking reload, hinted part, errors.
fn check_http(base: &str, multivariant_url: &str, media_url: &str) {
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let r = http.get(multivariant_url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), "*");
    assert_eq!(header(&r, "content-type"), "application/vnd.apple.mpegurl");
    assert_eq!(header(&r, "cache-control"), "public, max-age=1");

    let playlist = http.get(media_url).send().unwrap().text().unwrap();
    assert!(playlist.contains("CAN-BLOCK-RELOAD=YES"), "{playlist}");
    let map = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .and_then(|s| s.split('"').next())
        .expect("EXT-X-MAP");
    let dir = media_url.rsplit_once('/').unwrap().0;
    let init = http.get(format!("{dir}/{map}")).send().unwrap();
    assert_eq!(init.status(), 200);
    assert_eq!(
        header(&init, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&init, "access-control-allow-origin"), "*");

    // Blocking reload: ask for the next part; it is held until written.
    let (msn, parts, _) = live_edge(&playlist);
    let start = Instant::now();
    let r = http
        .get(format!("{media_url}?_HLS_msn={msn}&_HLS_part={parts}"))
        .send()
        .unwrap();
    let held = start.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "cache-control"), "public, max-age=3");
    let text = r.text().unwrap();
    let (new_msn, new_parts, hint) = live_edge(&text);
    assert!(
        (new_msn, new_parts) > (msn, parts),
        "blocked response must contain part {msn}.{parts}: now {new_msn}.{new_parts}"
    );
    assert!(held < Duration::from_secs(2), "held {held:?}");
    eprintln!("blocking reload for {msn}.{parts} held {held:?}");

    // Too far ahead: 400, as a problem document that is never cached.
    let r = http
        .get(format!("{media_url}?_HLS_msn={}", msn + 5))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let r = http.get(format!("{media_url}?_HLS_part=1")).send().unwrap();
    assert_eq!(r.status(), 400);

    // The part hinted by that fresh playlist, streamed while it is written.
    assert!(hint.starts_with("part"), "preload hint {hint:?}");
    let start = Instant::now();
    let r = http.get(format!("{dir}/{hint}")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let body = r.bytes().unwrap();
    assert!(body.windows(4).any(|w| w == b"moof"), "part without moof");
    assert!(body.windows(4).any(|w| w == b"mdat"), "part without mdat");
    eprintln!(
        "preload-hinted part {hint}: {} bytes in {:?}",
        body.len(),
        start.elapsed()
    );

    // Without the session: a redirect to the current one.
    let rendition = dir.rsplit('/').next().unwrap();
    let r = http
        .get(format!(
            "{base}/hls/{ROOM}/{rendition}/media.m3u8?_HLS_msn=1"
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = header(&r, "location");
    assert!(
        location.ends_with(&format!("/{rendition}/media.m3u8?_HLS_msn=1")),
        "{location}"
    );

    // Unknown room and old session: 404 problems.
    let r = http
        .get(format!("{base}/hls/no-such-room/index.m3u8"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    assert_eq!(header(&r, "access-control-allow-origin"), "*");
    let r = http
        .get(format!("{base}/hls/{ROOM}/0/{rendition}/media.m3u8"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// One rendition as ffprobe read it.
struct Probed {
    /// As the multivariant playlist names it (below the session).
    uri: String,
    url: String,
    /// The playlist's RESOLUTION; None for audio.
    resolution: Option<(u64, u64)>,
    /// Its one stream.
    stream: Value,
}

/// Reads the room's multivariant playlist and ffprobes every rendition:
/// one stream each, and video as H.264 at the RESOLUTION the playlist says.
fn probe_renditions(multivariant_url: &str) -> Vec<Probed> {
    let multivariant = reqwest::blocking::get(multivariant_url)
        .unwrap()
        .text()
        .unwrap();
    let base = multivariant_url.rsplit_once('/').unwrap().0;
    let mut out = Vec::new();
    for (uri, resolution) in renditions(&multivariant) {
        let url = format!("{base}/{uri}");
        let streams = ffprobe_streams(&url);
        eprintln!("ffprobe {uri}: {}", Value::Array(streams.clone()));
        assert_eq!(streams.len(), 1, "{uri}: {streams:?}");
        let stream = streams.into_iter().next().unwrap();
        if let Some((w, h)) = resolution {
            assert_eq!(stream["codec_name"], "h264", "{uri}");
            let size = (stream["width"].as_u64(), stream["height"].as_u64());
            assert_eq!(size, (Some(w), Some(h)), "{uri}");
        }
        out.push(Probed {
            uri,
            url,
            resolution,
            stream,
        });
    }
    out
}

/// Runs `hls.mjs` (a Chromium publisher and hls.js) against `server` on a
/// thread, and returns once it has written `ready_file` (the room's HLS is
/// up) or ended. Join the handle for its report.
fn hls_js(
    server: &common::Server,
    ready_file: &Path,
    extra: &[&str],
) -> std::thread::JoinHandle<Value> {
    let dir = common::repo_root().join("tests/browser");
    assert!(
        dir.join("node_modules/hls.js").is_dir()
            && dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh \
         (or `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci` in tests/browser)"
    );
    let ready = ready_file.to_str().unwrap().to_owned();
    let mut args: Vec<String> = [
        "hls.mjs",
        "--base",
        &server.base,
        "--room",
        ROOM,
        "--key",
        KEY,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--ready-file".to_owned(), ready]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let browser = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_json("node", &args, &dir, Duration::from_secs(90))
    });
    let start = Instant::now();
    while !ready_file.exists() && !browser.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    browser
}

/// hls.js played for about `seconds`: no fatal error, `currentTime` went
/// on with the wall clock, no stall over 1 s, audio decoded.
fn assert_played(v: &Value, seconds: f64) {
    let fatal: Vec<&Value> = v["errors"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["fatal"] == true).collect())
        .unwrap_or_default();
    assert!(fatal.is_empty(), "fatal hls.js errors: {fatal:?}");
    let played = num(&v["playedSeconds"]);
    assert!(played >= seconds - 6.0, "played only {played} s: {v:#}");
    let advanced = num(&v["currentTime"]) - num(&v["firstCurrentTime"]);
    assert!(
        advanced >= played - 2.0,
        "currentTime advanced {advanced} s in {played} s"
    );
    assert!(num(&v["maxStallMs"]) <= 1000.0, "stall: {v:#}");
    assert!(
        num(&v["audioDecodedBytes"]) > 0.0,
        "no audio decoded: {v:#}"
    );
    assert!(num(&v["frames"]) > 0.0 && v["paused"] == false, "{v:#}");
}

#[test]
fn chromium_simulcast_publish_plays_in_hls_js_and_every_rendition_probes() {
    let _one_at_a_time = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::Server::start(&["--room", &format!("{ROOM}:{KEY}")]);
    let scratch = common::TempDir::new("hls");
    let ready_file = scratch.path.join("ready");
    let browser = hls_js(
        &server,
        &ready_file,
        &["--seconds", PLAY_SECONDS, "--republish", "1"],
    );

    // While hls.js plays: ffprobe every rendition, and the HTTP contract.
    let multivariant_url = server.url(&format!("/hls/{ROOM}/index.m3u8"));
    let mut probed = Vec::new();
    if Path::new(&ready_file).exists() {
        let list = probe_renditions(&multivariant_url);
        for r in list.iter().filter(|r| r.resolution.is_none()) {
            let (uri, s) = (&r.uri, &r.stream);
            assert_eq!(s["codec_type"], "audio", "{uri}");
            assert_eq!(s["codec_name"], "aac", "{uri}");
            assert_eq!(s["channels"], 2, "{uri}");
            assert_eq!(s["sample_rate"], "48000", "{uri}");
            // Real sound, not silence: the publisher's 440 Hz tone at 0.3
            // amplitude is about -13 dB RMS.
            let mean = mean_volume_db(&r.url);
            eprintln!("{uri}: mean volume {mean} dB");
            assert!(mean > -30.0, "{uri}: mean volume {mean} dB");
        }
        probed = list.iter().map(|r| r.uri.clone()).collect();
        let video = list.iter().find(|r| r.resolution.is_some()).unwrap();
        check_http(&server.base, &multivariant_url, &video.url);
    }

    let report = browser.join().expect("hls.mjs failed");
    assert!(
        report["ok"] == true,
        "hls.mjs: {}\n{report:#}",
        report["error"]
    );
    let v = &report["viewer"];
    eprintln!(
        "hls.js: first playing after {} ms, played {} s, max stall {} ms, max frame gap {} ms, \
         hls.js latency p50 {} s (target {} s), glass-to-glass p50 {} ms p90 {} ms, \
         audio {} bytes decoded, load {}",
        v["firstPlayingMs"],
        v["playedSeconds"],
        v["maxStallMs"],
        v["maxFrameGapMs"],
        v["hlsLatencyS"]["p50"],
        v["targetLatencyS"],
        v["glassToGlassMs"]["p50"],
        v["glassToGlassMs"]["p90"],
        v["audioDecodedBytes"],
        report["loadavg"]
    );
    assert_eq!(report["variants"], 3, "{}", report["multivariant"]);
    let multivariant = report["multivariant"].as_str().unwrap_or("");
    assert_eq!(
        multivariant.matches(",mp4a.40.2\"").count(),
        3,
        "{multivariant}"
    );
    assert_eq!(probed.len(), 4, "3 video renditions and audio: {probed:?}");
    assert_eq!(v["levels"].as_array().map(Vec::len), Some(3), "{v:#}");
    assert_eq!(v["audioTracks"].as_array().map(Vec::len), Some(1), "{v:#}");
    assert_eq!(v["levels"][0]["audioCodec"], "mp4a.40.2", "{v:#}");
    assert_played(v, PLAY_SECONDS.parse().unwrap());

    // A republish is a new session: new URLs, so nothing a CDN cached of the
    // first publish (whose file names also started at seg0) is reused.
    let sessions = &report["sessions"];
    eprintln!("republish: {sessions}");
    let (before, after) = (
        sessions["before"].as_str().unwrap_or(""),
        sessions["after"].as_str().unwrap_or(""),
    );
    assert!(
        !before.is_empty() && !after.is_empty() && before != after,
        "{report:#}"
    );
    let again = report["multivariantAfterRepublish"].as_str().unwrap_or("");
    assert_eq!(again.matches("#EXT-X-STREAM-INF").count(), 3, "{again}");
    let old =
        reqwest::blocking::get(server.url(&format!("/hls/{ROOM}/{before}/video-h/media.m3u8")))
            .unwrap();
    assert_eq!(old.status(), 404);
    assert!(
        report["pageErrors"].as_array().is_none_or(Vec::is_empty),
        "{report:#}"
    );
}

/// A single-layer VP8 publish (Chromium's default codec) cannot go into HLS
/// as it is: with the `vp8` feature the bridge decodes it (libvpx) and
/// encodes every rendition with openh264, the source's size included. hls.js
/// plays it, and ffprobe reads H.264 at both sizes and the AAC audio.
#[cfg(feature = "vp8")]
#[test]
fn chromium_vp8_publish_is_transcoded_for_hls_js() {
    let _one_at_a_time = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::Server::start(&["--room", &format!("{ROOM}:{KEY}")]);
    let scratch = common::TempDir::new("hls-vp8");
    let ready_file = scratch.path.join("ready");
    let browser = hls_js(
        &server,
        &ready_file,
        &[
            "--seconds",
            "10",
            "--codec",
            "video/VP8",
            "--layers",
            "1",
            "--variants",
            "2",
            "--width",
            "640",
            "--height",
            "360",
        ],
    );
    let multivariant_url = server.url(&format!("/hls/{ROOM}/index.m3u8"));
    let mut sizes = Vec::new();
    if Path::new(&ready_file).exists() {
        for r in probe_renditions(&multivariant_url) {
            match r.resolution {
                Some(size) => sizes.push(size),
                None => assert_eq!(r.stream["codec_name"], "aac", "{}", r.uri),
            }
        }
    }
    let report = browser.join().expect("hls.mjs failed");
    assert!(
        report["ok"] == true,
        "hls.mjs: {}\n{report:#}",
        report["error"]
    );
    let log = server.log_text();
    assert_eq!(
        sizes,
        [(640, 360), (426, 240)],
        "{}\nserver log:\n{log}",
        report["multivariant"]
    );
    let v = &report["viewer"];
    eprintln!(
        "hls.js (VP8 publish): first playing after {} ms, played {} s, max stall {} ms, \
         glass-to-glass p50 {} ms, load {}",
        v["firstPlayingMs"],
        v["playedSeconds"],
        v["maxStallMs"],
        v["glassToGlassMs"]["p50"],
        report["loadavg"]
    );
    assert_eq!(v["levels"].as_array().map(Vec::len), Some(2), "{v:#}");
    assert_played(v, 10.0);
}
