//! Interop with WebRTC stacks that share no code with the server (str0m):
//! aiortc (Python) and GStreamer's webrtcbin + libnice.
//!
//! Each test starts the real `dionysia` binary, publishes into a room over
//! WHIP with one stack and watches it over WHEP with aiortc, which DECODES
//! what it receives: the assertions are on decoded frames, their size,
//! motion between them, decoded audio and its level, not on packet counts.
//!
//! Clients live in tests/interop/ and print one JSON line each:
//! - whip_publish.py (aiortc): a generated 640x360 moving picture + 440 Hz tone
//! - gst_whip_publish.py (GStreamer webrtcbin): videotestsrc + audiotestsrc
//!   (Debian's `whip-client` cannot run on Debian 12, see that file's doc)
//! - whep_view.py (aiortc): viewer; retries on 409 as told by Retry-After
//!
//! The viewer joins about two seconds after the publisher, so it starts in
//! the middle of a GOP: aiortc's encoders make a keyframe only at start and
//! on request (PLI), so a new viewer sees a picture only through the
//! server's fast start (cached GOP or keyframe request), and every frame the
//! server replays must decode.
//!
//! The aiortc venv comes from scripts/test.sh ($DIONYSIA_TEST_PYTHON). The
//! tests run one at a time: media encode + decode need both cores.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Media tests take the whole machine; run them one after the other.
static SERIAL: Mutex<()> = Mutex::new(());

const ROOM: &str = "interop";
const KEY: &str = "s3cret-key";
/// How long publishers send once connected, and how long the viewer watches.
const PUBLISH_SECS: &str = "6.5";
const VIEW_SECS: &str = "3";
/// How long after starting the publisher the viewer starts.
const JOIN_AFTER: Duration = Duration::from_millis(2000);

fn interop_dir() -> PathBuf {
    common::repo_root().join("tests").join("interop")
}

fn script(name: &str) -> String {
    interop_dir().join(name).to_string_lossy().into_owned()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_server() -> common::Server {
    common::Server::start(&["--room", &format!("{ROOM}:{KEY}")])
}

enum Publisher {
    Aiortc,
    Gstreamer,
}

/// Publishes `codec` with `who` in a background thread while an aiortc viewer
/// watches; returns (publisher JSON, viewer JSON).
fn publish_and_view(server: &common::Server, who: Publisher, codec: &str) -> (Value, Value) {
    let whip = server.url(&format!("/whip/{ROOM}"));
    let whep = server.url(&format!("/whep/{ROOM}"));
    let cwd = interop_dir();
    let (program, pub_script) = match who {
        Publisher::Aiortc => (common::aiortc_python(), script("whip_publish.py")),
        Publisher::Gstreamer => (common::gst_python(), script("gst_whip_publish.py")),
    };
    let viewer_python = common::aiortc_python();
    let mut pub_args: Vec<String> = vec![
        pub_script,
        "--url".into(),
        whip,
        "--key".into(),
        KEY.into(),
        "--seconds".into(),
        PUBLISH_SECS.into(),
        "--codec".into(),
        codec.into(),
    ];
    if let Publisher::Gstreamer = who {
        // GStreamer 1.22 makes an RSA DTLS certificate, which the server's
        // DTLS stack refuses (docs/api.md, "Client requirements"); use
        // a P-256 one, as browsers do, to test everything after DTLS.
        pub_args.extend(["--dtls-cert".into(), "ecdsa".into()]);
    }
    let pub_cwd = cwd.clone();
    let publisher = thread::spawn(move || {
        let args: Vec<&str> = pub_args.iter().map(String::as_str).collect();
        common::run_json(&program, &args, &pub_cwd, Duration::from_secs(30))
    });
    // Until the publisher is live the server answers 409 and the viewer
    // retries after Retry-After.
    thread::sleep(JOIN_AFTER);
    let (viewer_ok, viewer, viewer_err) = common::run_json_lenient(
        &viewer_python,
        &[
            &script("whep_view.py"),
            "--url",
            &whep,
            "--seconds",
            VIEW_SECS,
            "--wait-live",
            "15",
        ],
        &cwd,
        Duration::from_secs(30),
    );
    // Let the publisher finish (it stops on its own) before any verdict, so
    // that no client outlives a failed test.
    let publisher = match publisher.join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    };
    eprintln!("publisher: {publisher}\nviewer: {viewer}");
    assert!(
        viewer_ok,
        "WHEP viewer failed: {}\nviewer: {viewer}\nviewer stderr:\n{viewer_err}\npublisher: {publisher}",
        viewer["error"]
    );
    (publisher, viewer)
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(0.0)
}

/// What every publish → view combination must show.
fn assert_watchable(publisher: &Value, viewer: &Value, codec: &str, width: u64, height: u64) {
    let ctx = format!("\npublisher: {publisher}\nviewer: {viewer}");
    assert_eq!(
        publisher["connection_state"], "connected",
        "publisher never connected{ctx}"
    );
    assert!(
        num(publisher, &["video", "packets_sent"]) > 0.0,
        "publisher sent no video{ctx}"
    );
    assert_eq!(viewer["http_status"], 201, "WHEP POST not accepted{ctx}");
    assert_eq!(
        viewer["connection_state"], "connected",
        "viewer never connected{ctx}"
    );

    // The answer forwards the publisher's codec.
    let vcodecs = viewer["answer_codecs"]["video"].to_string().to_uppercase();
    assert!(
        vcodecs.contains(codec),
        "WHEP answer does not offer {codec}: {vcodecs}{ctx}"
    );

    // Decoded video of the published size, and it moves.
    let frames = viewer["video_frames"].as_u64().unwrap_or(0);
    assert!(
        frames >= 30,
        "viewer decoded only {frames} video frames in {VIEW_SECS} s{ctx}"
    );
    assert_eq!(viewer["width"].as_u64(), Some(width), "decoded width{ctx}");
    assert_eq!(
        viewer["height"].as_u64(),
        Some(height),
        "decoded height{ctx}"
    );
    let distinct = viewer["distinct_sampled_frames"].as_u64().unwrap_or(0);
    assert!(
        distinct >= 5,
        "picture does not move: {distinct} distinct sampled frames{ctx}"
    );
    // Fast start: a keyframe reaches a new viewer soon after it connects.
    let ttff = viewer["time_to_first_frame_ms"]
        .as_f64()
        .unwrap_or(f64::INFINITY);
    assert!(ttff < 2000.0, "first decoded frame after {ttff} ms{ctx}");
    // On a loss-free loopback every frame the server sends a new viewer,
    // replayed or live, must decode: errors mean it started the viewer on
    // something that is not a decodable keyframe (e.g. an IDR without its
    // SPS/PPS).
    let errors = viewer["decode_errors"].as_u64().unwrap_or(0);
    assert_eq!(
        errors, 0,
        "aiortc could not decode {errors} video frames the server sent{ctx}"
    );

    // Decoded audio, and it is the tone, not silence.
    let audio = viewer["audio_frames"].as_u64().unwrap_or(0);
    assert!(audio >= 50, "viewer decoded only {audio} audio frames{ctx}");
    let rms = viewer["audio_rms"].as_f64().unwrap_or(0.0);
    assert!(rms > 300.0, "decoded audio is silent (rms {rms}){ctx}");
}

#[test]
fn aiortc_h264_publish_aiortc_view() {
    let _g = serial();
    let server = start_server();
    let (p, v) = publish_and_view(&server, Publisher::Aiortc, "H264");
    assert_watchable(&p, &v, "H264", 640, 360);
}

/// aiortc's VP8 encoder makes a keyframe only every 3000 frames: a viewer
/// joining after the first one sees a picture only if the server gets it a
/// keyframe (PLI/FIR to the publisher, or a cached GOP).
#[test]
fn aiortc_vp8_publish_aiortc_view() {
    let _g = serial();
    let server = start_server();
    let (p, v) = publish_and_view(&server, Publisher::Aiortc, "VP8");
    assert_watchable(&p, &v, "VP8", 640, 360);
}

#[test]
fn gstreamer_h264_publish_aiortc_view() {
    let _g = serial();
    let server = start_server();
    let (p, v) = publish_and_view(&server, Publisher::Gstreamer, "H264");
    assert_watchable(&p, &v, "H264", 640, 360);
}

#[test]
fn gstreamer_vp8_publish_aiortc_view() {
    let _g = serial();
    let server = start_server();
    let (p, v) = publish_and_view(&server, Publisher::Gstreamer, "VP8");
    assert_watchable(&p, &v, "VP8", 640, 360);
}

/// The answers a real client gets before any media: a wrong stream key is
/// refused, and a viewer of a room with no publisher gets 409 + Retry-After.
#[test]
fn aiortc_refused_key_and_not_live() {
    let _g = serial();
    let server = start_server();
    let py = common::aiortc_python();
    let cwd = interop_dir();

    let whep = server.url(&format!("/whep/{ROOM}"));
    let (ok, v, err) = common::run_json_lenient(
        &py,
        &[
            &script("whep_view.py"),
            "--url",
            &whep,
            "--seconds",
            "1",
            "--wait-live",
            "0",
        ],
        &cwd,
        Duration::from_secs(20),
    );
    assert!(!ok, "viewer of an empty room succeeded: {v}\n{err}");
    assert_eq!(v["http_status"], 409, "empty room: {v}\n{err}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("Retry-After")
            && !v["error"].as_str().unwrap().contains("Retry-After None"),
        "409 without Retry-After: {v}"
    );

    let whip = server.url(&format!("/whip/{ROOM}"));
    let (ok, v, err) = common::run_json_lenient(
        &py,
        &[
            &script("whip_publish.py"),
            "--url",
            &whip,
            "--key",
            "wrong-key",
            "--seconds",
            "1",
        ],
        &cwd,
        Duration::from_secs(20),
    );
    assert!(!ok, "publish with a wrong key succeeded: {v}\n{err}");
    let status = v["http_status"].as_u64().unwrap_or(0);
    assert!(
        status == 401 || status == 403,
        "wrong key answered {status}: {v}\n{err}"
    );
}
