//! Instant start from a publisher that ignores keyframe requests, with real
//! clients: Debian's ffmpeg publishes over RTMP (which cannot carry a
//! keyframe request) with a keyframe every 2 s, and headless Chromium
//! viewers join at different points of the GOP. Each must show its first
//! frame within 500 ms of its WHEP POST, and then settle at the live edge
//! (the server replays the cached GOP squeezed, with a zero playout-delay
//! hint while the viewer catches up).
//!
//! The picture carries the wall-clock time in the stamp band of
//! `tests/rtmp_e2e.rs` (same code), so each viewer measures how far behind
//! live it is. Needs ffmpeg, Chromium and `npm ci` in tests/browser.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const ROOM: &str = "late";
const KEY: &str = "instant-start-key";
const FFMPEG: &str = "/usr/bin/ffmpeg";
/// Viewers, joining `STAGGER_MS` apart: 3 × 700 ms covers a 2 s GOP.
const VIEWERS: u32 = 3;
const STAGGER_MS: u32 = 700;
const WATCH_SECONDS: u64 = 8;
/// Latency samples this long after a viewer's first frame count as settled.
const SETTLE_MS: u64 = 3000;
/// The bounds of issue 3.
const FIRST_FRAME_BOUND_MS: f64 = 500.0;
const SETTLED_LATENCY_BOUND_MS: f64 = 300.0;
/// No stall while the replayed GOP is decoded, and live soon after.
const MAX_GAP_MS: f64 = 500.0;
const LIVE_WITHIN_MS: f64 = 1500.0;

struct Publisher {
    child: Child,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BITS: usize = 24;
const BLOCK_W: usize = 26;
const BAND_H: usize = 40;
const X0: usize = 16;

/// The stamp of in-page.mjs `drawStamp`, as a 1280×40 grey frame.
fn draw_stamp(frame: &mut [u8], value: u32) {
    frame.fill(128);
    for i in 0..BITS * 2 {
        let bit = if i < BITS {
            (value >> (BITS - 1 - i)) & 1
        } else {
            ((value >> (2 * BITS - 1 - i)) & 1) ^ 1
        };
        let y_value = if bit == 1 { 235 } else { 16 };
        for row in frame.chunks_mut(1280).take(BAND_H) {
            row[X0 + i * BLOCK_W..X0 + (i + 1) * BLOCK_W].fill(y_value);
        }
    }
}

/// ffmpeg: 720p30 x264 (no B-frames, keyframe every 60 frames = 2 s,
/// 2.5 Mbit/s) + AAC over RTMP, with the stamp overlaid.
fn publish(port: u16, seconds: u64) -> Publisher {
    assert!(
        std::path::Path::new(FFMPEG).exists(),
        "{FFMPEG} is not installed: run scripts/test.sh"
    );
    let url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
    let mut child = Command::new(FFMPEG)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args([
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-video_size",
            "1280x40",
        ])
        .args(["-framerate", "30", "-i", "pipe:0"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-filter_complex",
            "[0:v][1:v]overlay=0:0:shortest=1,format=yuv420p[v]",
        ])
        .args(["-map", "[v]", "-map", "2:a", "-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-bf",
            "0",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-sc_threshold",
            "0",
        ])
        .args([
            "-b:v", "2500k", "-c:a", "aac", "-b:a", "128k", "-f", "flv", &url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let mut frame = vec![0u8; 1280 * BAND_H];
        let start = Instant::now();
        for n in 0..(seconds * 30 + 60) {
            let due = start + Duration::from_micros(n * 1_000_000 / 30);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u32;
            draw_stamp(&mut frame, now_ms & ((1 << BITS) - 1));
            if stdin.write_all(&frame).is_err() {
                return;
            }
        }
    });
    Publisher { child }
}

fn wait_for_log(server: &common::Server, needle: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if server.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A number in the report below `bound` (a missing one is not).
fn below(v: &Value, bound: f64) -> bool {
    v.as_f64().is_some_and(|x| x < bound)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

/// One run: a fresh server, ffmpeg, and the late joiners. Returns the
/// viewers' reports and the server's replay log lines.
fn run() -> (Vec<Value>, Vec<String>) {
    let port = common::free_tcp_port();
    let rtmp = format!("127.0.0.1:{port}");
    let server =
        common::Server::start(&["--room", &format!("{ROOM}:{KEY}"), "--rtmp-listen", &rtmp]);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "RTMP port not open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _publisher = publish(port, WATCH_SECONDS + 12);
    assert!(
        wait_for_log(&server, "RTMP publication started", Duration::from_secs(10)),
        "no publication; log:\n{}",
        server.log_text()
    );
    // Let the first GOP age, so that viewers join mid-GOP.
    std::thread::sleep(Duration::from_millis(2300));
    let dir = common::repo_root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh"
    );
    let (viewers, stagger, seconds, settle) = (
        VIEWERS.to_string(),
        STAGGER_MS.to_string(),
        WATCH_SECONDS.to_string(),
        SETTLE_MS.to_string(),
    );
    let args = [
        "late-join.mjs",
        "--base",
        &server.base,
        "--room",
        ROOM,
        "--viewers",
        &viewers,
        "--stagger-ms",
        &stagger,
        "--seconds",
        &seconds,
        "--settle-ms",
        &settle,
    ];
    let report = common::run_json("node", &args, &dir, Duration::from_secs(90));
    assert!(
        report["ok"] == true,
        "viewers failed: {}\nreport: {report:#}\nserver log:\n{}",
        report["error"],
        server.log_text()
    );
    let replays = server
        .log_text()
        .lines()
        .filter(|l| l.contains("replaying the cached GOP") || l.contains("no cached GOP to replay"))
        .map(str::to_string)
        .collect();
    let viewers = report["viewers"].as_array().cloned().unwrap_or_default();
    (viewers, replays)
}

fn summary(v: &Value) -> String {
    format!(
        "first frame {} ms (age {} ms), live after {} ms, settled p50 {} / max {} ms ({} samples), \
         {} fps, max gap {} ms at {} ms, freezes {}, {}x{}",
        v["timeToFirstFrameMs"],
        v["latencyMs"]["firstFrame"],
        v["latencyMs"]["liveAfterMs"],
        v["settled"]["p50"],
        v["settled"]["max"],
        v["settled"]["samples"],
        v["fps"],
        v["maxFrameGapMs"],
        v["maxFrameGapAtMs"],
        v["stats"]["video"]["freezeCount"],
        v["videoWidth"],
        v["videoHeight"],
    )
}

fn check(viewers: &[Value]) -> Result<(), String> {
    if viewers.len() != VIEWERS as usize {
        return Err(format!("{} viewers reported", viewers.len()));
    }
    for v in viewers {
        let what = if !v["error"].is_null() {
            Some("an error")
        } else if !below(&v["timeToFirstFrameMs"], FIRST_FRAME_BOUND_MS) {
            Some("first frame later than 500 ms")
        } else if !below(&v["maxFrameGapMs"], MAX_GAP_MS) {
            Some("a stall of 500 ms or more (decoding the replayed GOP?)")
        } else if !below(&v["latencyMs"]["liveAfterMs"], LIVE_WITHIN_MS) {
            Some("not live (< 250 ms behind) within 1.5 s of the first frame")
        } else if !v["settled"]["samples"].as_f64().is_some_and(|n| n >= 10.0) {
            Some("too few latency samples once settled")
        } else if !below(&v["settled"]["p50"], SETTLED_LATENCY_BOUND_MS) {
            Some("not at the live edge once settled (p50 >= 300 ms)")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(format!("viewer {}: {what}: {}", v["index"], summary(v)));
        }
    }
    Ok(())
}

/// Viewers joining a 2 s-GOP publisher that ignores keyframe requests see
/// a picture within 500 ms and settle at the live edge.
#[test]
fn late_joiners_start_within_500_ms_and_settle_at_live() {
    let mut failure = None;
    // A starved machine (2 shared cores, other builds and browsers) makes
    // figures lie: one more try on a fresh server, as the other browser
    // tests do.
    for attempt in 1..=2 {
        let (viewers, replays) = run();
        for line in &replays {
            eprintln!(
                "server: {}",
                line.split("sfu::engine:").last().unwrap_or(line)
            );
        }
        for v in &viewers {
            eprintln!("instant start viewer {}: {}", v["index"], summary(v));
        }
        match check(&viewers) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("attempt {attempt} failed: {e}; load {}", loadavg());
                failure = Some(e);
            }
        }
    }
    panic!("{}", failure.unwrap_or_default());
}
