//! Instant start from a publisher that ignores keyframe requests, with real
//! clients: Debian's ffmpeg publishes over RTMP (which cannot carry a
//! keyframe request) with a keyframe every 2 s, and headless Chromium
//! viewers join at different points of the GOP. Each must show its first
//! frame within 500 ms of its WHEP POST, and then settle at the live edge
//! (the server replays the cached GOP squeezed, with a zero playout-delay
//! hint while the viewer catches up).
//!
//! The picture carries the wall-clock time in the stamp band of
//! `tests/rtmp_e2e.rs` (tests/common/stamp.rs), so each viewer measures how far behind
//! live it is. Needs ffmpeg, Chromium and `npm ci` in tests/browser.

mod common;

use std::time::Duration;

use common::stamp::{Encoder, Publisher};
use serde_json::Value;

const ROOM: &str = "late";
const KEY: &str = "instant-start-key";
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

/// ffmpeg: the stamped 720p30 picture (tests/common/stamp.rs), no
/// B-frames, a keyframe every 60 frames (2 s) exactly, + AAC over RTMP.
fn publish(port: u16, seconds: u64) -> Publisher {
    let encoder = Encoder {
        fixed_gop: true,
        ..Encoder::default()
    };
    common::stamp::publish(port, KEY, encoder, seconds)
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
    let (server, port) = common::Server::start_with_rtmp(&["--room", &format!("{ROOM}:{KEY}")]);
    let _publisher = publish(port, WATCH_SECONDS + 12);
    assert!(
        server.wait_for_log("RTMP publication started", Duration::from_secs(10)),
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
        .filter(|l| {
            [
                "replaying the cached GOP",
                "no cached GOP to replay",
                "keyframe probe",
                "fresh keyframe",
            ]
            .iter()
            .any(|m| l.contains(m))
        })
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
        // ffmpeg over RTMP cannot be asked for a keyframe: the server's
        // probe must find that out (else viewers wait for one in vain).
        let probed = replays
            .iter()
            .any(|l| l.contains("keyframe probe resolved") && l.contains("Ignored"));
        let verdict = check(&viewers).and_then(|()| {
            probed.then_some(()).ok_or_else(|| {
                "the keyframe probe did not find that RTMP ignores requests".to_string()
            })
        });
        match verdict {
            Ok(()) => return,
            Err(e) => {
                eprintln!("attempt {attempt} failed: {e}; load {}", loadavg());
                failure = Some(e);
            }
        }
    }
    panic!("{}", failure.unwrap_or_default());
}
