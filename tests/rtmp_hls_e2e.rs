//! RTMP in, LL-HLS and WebRTC out, with real clients: Debian's ffmpeg
//! publishes over `rtmp://127.0.0.1:PORT/live/KEY` into the real binary;
//! ffprobe, ffmpeg and hls.js (headless Chromium) read the room's LL-HLS,
//! and Chromium watches it over WHEP.
//!
//! - The encoder's AAC reaches HLS untouched: the audio rendition has the
//!   encoder's sample rate and channels (44.1 kHz stereo, 32 kHz mono),
//!   where the Opus path (AAC → Opus → AAC) always gives 48 kHz.
//! - Audio-only (`-vn`) and video-only (`-an`) streams publish, play over
//!   WHEP, and give an LL-HLS stream ffprobe and hls.js play.
//! - A single-layer stream gets the openh264 ladder its room's `ladder`
//!   setting asks for.
//!
//! Needs ffmpeg/ffprobe, Chromium and `npm ci` in tests/browser, as
//! `scripts/test.sh` installs them.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One server at a time: a browser and an x264 encode take most of this machine.
static SERIAL: Mutex<()> = Mutex::new(());

const ROOM: &str = "stage";
const KEY: &str = "rtmp-hls-key";
const FFMPEG: &str = "/usr/bin/ffmpeg";
const FFPROBE: &str = "/usr/bin/ffprobe";
const WATCH_SECONDS: u64 = 6;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_server() -> (common::Server, u16) {
    common::Server::start_with_rtmp(&["--room", &format!("{ROOM}:{KEY}")])
}

/// What ffmpeg sends.
#[derive(Clone, Copy)]
enum Media {
    /// 640×360 x264 + AAC at this rate and channel count.
    Both { sample_rate: u32, channels: u8 },
    /// `-vn`: AAC only (44.1 kHz stereo).
    AudioOnly,
    /// `-an`: x264 only.
    VideoOnly,
}

struct Publisher(Child);

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn publish(port: u16, media: Media, seconds: u64) -> Publisher {
    assert!(
        std::path::Path::new(FFMPEG).exists(),
        "{FFMPEG} is not installed: run scripts/test.sh"
    );
    let url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
    let (rate, channels) = match media {
        Media::Both {
            sample_rate,
            channels,
        } => (sample_rate, channels),
        _ => (44_100, 2),
    };
    let mut cmd = Command::new(FFMPEG);
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"]);
    if !matches!(media, Media::AudioOnly) {
        cmd.args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"]);
    }
    if !matches!(media, Media::VideoOnly) {
        cmd.args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:sample_rate={rate}"),
        ]);
    }
    cmd.args(["-t", &seconds.to_string()]);
    match media {
        Media::AudioOnly => {
            cmd.arg("-vn");
        }
        _ => {
            cmd.args(["-c:v", "libx264", "-preset", "veryfast", "-tune"])
                .args(["zerolatency", "-bf", "0", "-g", "30", "-b:v", "800k"]);
        }
    }
    match media {
        Media::VideoOnly => {
            cmd.arg("-an");
        }
        _ => {
            cmd.args(["-c:a", "aac", "-b:a", "128k", "-ar", &rate.to_string()])
                .args(["-ac", &channels.to_string()]);
        }
    }
    let child = cmd
        .args(["-f", "flv", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg");
    Publisher(child)
}

/// The multivariant playlist once it lists what `ready` wants.
fn multivariant(server: &common::Server, ready: impl Fn(&str) -> bool) -> String {
    let url = server.url(&format!("/hls/{ROOM}/index.m3u8"));
    let client = reqwest::blocking::Client::new();
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = client.get(&url).send() {
            if r.status().is_success() {
                last = r.text().unwrap_or_default();
                if ready(&last) {
                    return last;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "no complete multivariant playlist; last: {last}\nlog:\n{}",
        server.log_text()
    );
}

/// The URL of `rendition`'s media playlist as the multivariant `text` lists it.
fn media_uri(server: &common::Server, text: &str, rendition: &str) -> String {
    let needle = format!("/{rendition}/media.m3u8");
    let uri = text
        .split(['"', '\n'])
        .find(|t| t.ends_with(&needle) && !t.contains(['=', ',', '#']))
        .unwrap_or_else(|| panic!("no {rendition} rendition in:\n{text}"));
    server.url(&format!("/hls/{ROOM}/{uri}"))
}

/// ffprobe's streams of `url`.
fn probe(url: &str) -> Vec<Value> {
    let out = Command::new(FFPROBE)
        .args(["-v", "error", "-show_entries"])
        .args(["stream=codec_type,codec_name,profile,sample_rate,channels,width,height"])
        .args(["-of", "json", url])
        .output()
        .expect("run ffprobe");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "ffprobe printed no JSON for {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    json["streams"].as_array().cloned().unwrap_or_default()
}

/// Mean volume (dB) of 2 s of the audio ffmpeg decodes from `url`.
fn mean_volume(url: &str) -> f64 {
    let out = Command::new(FFMPEG)
        .args(["-hide_banner", "-nostdin", "-i", url, "-map", "0:a:0"])
        .args(["-t", "2", "-af", "volumedetect", "-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find_map(|l| l.split("mean_volume:").nth(1))
        .and_then(|v| v.trim().trim_end_matches(" dB").parse().ok())
        .unwrap_or_else(|| panic!("no volume for {url}:\n{log}"))
}

fn browser_dir() -> PathBuf {
    let dir = common::repo_root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh"
    );
    dir
}

/// hls.js plays the room's LL-HLS for a few seconds.
fn hls_js(server: &common::Server) -> Value {
    let seconds = WATCH_SECONDS.to_string();
    let args = [
        "hls-watch.mjs",
        "--base",
        &server.base,
        "--room",
        ROOM,
        "--seconds",
        &seconds,
    ];
    let report = common::run_json("node", &args, &browser_dir(), Duration::from_secs(80));
    assert!(
        report["ok"] == true,
        "hls.js failed: {report:#}\nlog:\n{}",
        server.log_text()
    );
    report["viewer"].clone()
}

/// One WHEP viewer in Chromium.
fn whep(server: &common::Server) -> Value {
    let seconds = WATCH_SECONDS.to_string();
    let args = [
        "rtmp-viewers.mjs",
        "--base",
        &server.base,
        "--room",
        ROOM,
        "--seconds",
        &seconds,
    ];
    let report = common::run_json("node", &args, &browser_dir(), Duration::from_secs(80));
    assert!(
        report["ok"] == true,
        "WHEP viewer failed: {report:#}\nlog:\n{}",
        server.log_text()
    );
    report["viewers"][0].clone()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn stream<'a>(streams: &'a [Value], kind: &str) -> Option<&'a Value> {
    streams.iter().find(|s| s["codec_type"] == kind)
}

/// The checks an hls.js report must pass to count as playing.
fn assert_hls_js_plays(viewer: &Value, video: bool, audio: bool, log: &str) {
    let fails: Vec<&str> = [
        (viewer["supported"] == true, "MSE supported"),
        (
            num(&viewer["currentTimeAdvance"]) >= WATCH_SECONDS as f64 - 3.0,
            "currentTime advances",
        ),
        (num(&viewer["maxStallMs"]) < 1500.0, "no stall over 1.5 s"),
        (
            !audio || num(&viewer["audioDecodedBytes"]) > 0.0,
            "audio decoded",
        ),
        (
            !video || num(&viewer["videoDecodedBytes"]) > 0.0,
            "video decoded",
        ),
        (
            viewer["errors"]
                .as_array()
                .is_none_or(|e| e.iter().all(|e| e["fatal"] != true)),
            "no fatal hls.js error",
        ),
    ]
    .iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| *what)
    .collect();
    assert!(
        fails.is_empty(),
        "hls.js: {fails:?}\n{viewer:#}\nlog:\n{log}"
    );
}

/// The encoder's AAC, not AAC → Opus → AAC: the HLS audio has the encoder's
/// sample rate and channels (the transcoded path always says 48000 Hz),
/// holds the tone, and hls.js plays it with the video.
#[test]
fn rtmp_aac_reaches_hls_as_the_encoder_sent_it() {
    let _serial = serial();
    for (sample_rate, channels, play) in [(44_100u32, 2u8, true), (32_000, 1, false)] {
        let (server, port) = start_server();
        let _publisher = publish(
            port,
            Media::Both {
                sample_rate,
                channels,
            },
            60,
        );
        assert!(
            server.wait_for_log("RTMP publication started", Duration::from_secs(10)),
            "no publication; log:\n{}",
            server.log_text()
        );
        let text = multivariant(&server, |t| t.contains("TYPE=AUDIO") && t.contains("avc1"));
        assert!(text.contains(&format!("CHANNELS=\"{channels}\"")), "{text}");
        let audio_url = media_uri(&server, &text, "audio");
        let streams = probe(&audio_url);
        let audio = stream(&streams, "audio").unwrap_or_else(|| panic!("{streams:?}"));
        assert_eq!(audio["codec_name"], "aac", "{audio}");
        assert_eq!(audio["profile"], "LC", "{audio}");
        assert_eq!(
            audio["sample_rate"],
            sample_rate.to_string(),
            "the encoder's rate, not 48000: {audio}"
        );
        assert_eq!(audio["channels"], channels as u64, "{audio}");
        let volume = mean_volume(&audio_url);
        assert!(volume > -40.0, "the tone, not silence: {volume} dB");
        let log = server.log_text();
        assert!(
            log.contains(&format!(
                "SourceAac {{ sample_rate: {sample_rate}, channels: {channels} }}"
            )),
            "the bridge took the source AAC:\n{log}"
        );
        if play {
            let viewer = hls_js(&server);
            assert_hls_js_plays(&viewer, true, true, &server.log_text());
            eprintln!(
                "RTMP AAC {sample_rate} Hz x{channels} → HLS: mean volume {volume} dB; hls.js advanced {} s, max stall {} ms, audio {} bytes decoded",
                viewer["currentTimeAdvance"], viewer["maxStallMs"], viewer["audioDecodedBytes"]
            );
        } else {
            eprintln!("RTMP AAC {sample_rate} Hz x{channels} → HLS: mean volume {volume} dB");
        }
    }
}

/// `ffmpeg -vn`: the room goes live with audio only; Chromium hears it over
/// WHEP, and the LL-HLS stream is one audio-only variant that ffprobe reads
/// and hls.js plays.
#[test]
fn rtmp_audio_only_plays_over_whep_and_hls() {
    let _serial = serial();
    let (server, port) = start_server();
    let _publisher = publish(port, Media::AudioOnly, 60);
    assert!(
        server.wait_for_log("RTMP publication started", Duration::from_secs(10)),
        "no publication; log:\n{}",
        server.log_text()
    );
    let text = multivariant(&server, |t| t.contains("#EXT-X-STREAM-INF"));
    assert!(text.contains("CODECS=\"mp4a.40.2\""), "{text}");
    assert!(
        !text.contains("RESOLUTION") && !text.contains("avc1"),
        "{text}"
    );
    let streams = probe(&server.url(&format!("/hls/{ROOM}/index.m3u8")));
    assert!(stream(&streams, "video").is_none(), "{streams:?}");
    let audio = stream(&streams, "audio").unwrap_or_else(|| panic!("{streams:?}"));
    assert_eq!(audio["sample_rate"], "44100", "{audio}");
    let volume = mean_volume(&media_uri(&server, &text, "audio"));
    assert!(volume > -40.0, "the tone, not silence: {volume} dB");

    // The real player's WhepViewer (it offers audio and video) into an
    // <audio> element: Opus flows, decodes, and holds the tone.
    let seconds = WATCH_SECONDS.to_string();
    let args = [
        "whep-audio.mjs",
        "--base",
        &server.base,
        "--room",
        ROOM,
        "--seconds",
        &seconds,
    ];
    let report = common::run_json("node", &args, &browser_dir(), Duration::from_secs(80));
    let a = &report["viewer"]["audio"];
    assert!(
        report["ok"] == true
            && report["viewer"]["error"].is_null()
            && a["codec"].as_str().unwrap_or("").contains("opus")
            && num(&a["packetsReceived"]) >= 40.0 * (WATCH_SECONDS as f64 - 2.0)
            && num(&a["concealedSamples"]) < 0.1 * num(&a["totalSamplesReceived"])
            && num(&a["totalAudioEnergy"]) > 0.0,
        "WHEP audio: {report:#}\nlog:\n{}",
        server.log_text()
    );
    let hls = hls_js(&server);
    assert_hls_js_plays(&hls, false, true, &server.log_text());
    assert_eq!(hls["levels"].as_array().map(Vec::len), Some(1), "{hls}");
    eprintln!(
        "RTMP audio only: WHEP {} Opus packets, energy {}; HLS mean volume {volume} dB, hls.js advanced {} s, max stall {} ms",
        a["packetsReceived"], a["totalAudioEnergy"], hls["currentTimeAdvance"], hls["maxStallMs"]
    );
}

/// `ffmpeg -an`: video only, over WHEP and LL-HLS (no audio group).
#[test]
fn rtmp_video_only_plays_over_whep_and_hls() {
    let _serial = serial();
    let (server, port) = start_server();
    let _publisher = publish(port, Media::VideoOnly, 60);
    assert!(
        server.wait_for_log("RTMP publication started", Duration::from_secs(10)),
        "no publication; log:\n{}",
        server.log_text()
    );
    let text = multivariant(&server, |t| t.contains("#EXT-X-STREAM-INF"));
    assert!(
        !text.contains("TYPE=AUDIO") && !text.contains("mp4a"),
        "{text}"
    );
    let streams = probe(&server.url(&format!("/hls/{ROOM}/index.m3u8")));
    assert!(stream(&streams, "audio").is_none(), "{streams:?}");
    let video = stream(&streams, "video").unwrap_or_else(|| panic!("{streams:?}"));
    assert_eq!(
        (&video["width"], &video["height"]),
        (&640.into(), &360.into())
    );

    let viewer = whep(&server);
    assert!(
        viewer["error"].is_null()
            && viewer["videoWidth"] == 640
            && num(&viewer["stats"]["video"]["framesDecoded"])
                >= 15.0 * (WATCH_SECONDS as f64 - 2.0),
        "WHEP video: {viewer:#}\nlog:\n{}",
        server.log_text()
    );
    let hls = hls_js(&server);
    assert_hls_js_plays(&hls, true, false, &server.log_text());
    assert!(
        hls["audioTracks"].as_array().is_none_or(Vec::is_empty),
        "{hls}"
    );
    eprintln!(
        "RTMP video only: WHEP {} fps, {} frames decoded; hls.js advanced {} s, max stall {} ms",
        viewer["fps"],
        viewer["stats"]["video"]["framesDecoded"],
        hls["currentTimeAdvance"],
        hls["maxStallMs"]
    );
}

/// A single-layer 1280×720 RTMP stream gets the ladder: 854×480 and
/// 426×240 renditions made with openh264, listed beside the source, which
/// ffprobe reads at those sizes and hls.js plays.
#[test]
fn a_single_layer_stream_gets_ladder_renditions() {
    let _serial = serial();
    let (server, port) = start_server();
    let _publisher = publish_720p(port, 60);
    assert!(
        server.wait_for_log("RTMP publication started", Duration::from_secs(10)),
        "no publication; log:\n{}",
        server.log_text()
    );
    let text = multivariant(&server, |t| {
        t.contains("RESOLUTION=1280x720")
            && t.contains("RESOLUTION=854x480")
            && t.contains("RESOLUTION=426x240")
    });
    for (rendition, size) in [("video-480p", (854, 480)), ("video-240p", (426, 240))] {
        let streams = probe(&media_uri(&server, &text, rendition));
        let video = stream(&streams, "video").unwrap_or_else(|| panic!("{streams:?}"));
        assert_eq!(video["codec_name"], "h264", "{video}");
        assert_eq!(
            (video["width"].as_u64(), video["height"].as_u64()),
            (Some(size.0), Some(size.1)),
            "{video}"
        );
    }
    let viewer = hls_js(&server);
    assert_hls_js_plays(&viewer, true, true, &server.log_text());
    assert_eq!(
        viewer["levels"].as_array().map(Vec::len),
        Some(3),
        "{viewer}"
    );
    eprintln!(
        "ladder: {} variants; hls.js advanced {} s, max stall {} ms; load {}",
        text.matches("#EXT-X-STREAM-INF").count(),
        viewer["currentTimeAdvance"],
        viewer["maxStallMs"],
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// The room's `ladder` setting picks the rungs: `[240]` gives the source
/// and 426×240 only; `[]` (after a republish) the source alone.
#[test]
fn a_rooms_ladder_setting_picks_its_renditions() {
    let _serial = serial();
    let (server, port) = common::Server::start_with_rtmp(&[
        "--room",
        &format!("{ROOM}:{KEY}"),
        "--admin-token",
        "ladder-admin-token-0123456789",
    ]);
    let set_ladder = |ladder: Value| {
        let r = reqwest::blocking::Client::new()
            .patch(server.url(&format!("/api/v1/rooms/{ROOM}")))
            .bearer_auth("ladder-admin-token-0123456789")
            .json(&serde_json::json!({ "ladder": ladder }))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    };
    set_ladder(serde_json::json!([240]));
    let publisher = publish_720p(port, 60);
    let text = multivariant(&server, |t| {
        t.contains("RESOLUTION=1280x720") && t.contains("RESOLUTION=426x240")
    });
    assert!(!text.contains("RESOLUTION=854x480"), "{text}");
    assert_eq!(text.matches("#EXT-X-STREAM-INF").count(), 2, "{text}");
    drop(publisher);

    set_ladder(serde_json::json!([]));
    let _publisher = publish_720p(port, 60);
    // The new publish is a new HLS session: wait for its playlist.
    let text = multivariant(&server, |t| {
        t.contains("RESOLUTION=1280x720") && !t.contains("RESOLUTION=426x240")
    });
    assert_eq!(text.matches("#EXT-X-STREAM-INF").count(), 1, "{text}");
    // Rungs join once the first keyframe tells the size: none may come.
    std::thread::sleep(Duration::from_secs(3));
    let text = multivariant(&server, |_| true);
    assert_eq!(text.matches("#EXT-X-STREAM-INF").count(), 1, "{text}");
}

/// 1280×720 x264 + AAC, for the ladder test.
fn publish_720p(port: u16, seconds: u64) -> Publisher {
    let url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
    let child = Command::new(FFMPEG)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string(), "-c:v", "libx264", "-preset"])
        .args(["veryfast", "-tune", "zerolatency", "-bf", "0", "-g", "30"])
        .args(["-b:v", "2000k", "-c:a", "aac", "-f", "flv", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg");
    Publisher(child)
}
