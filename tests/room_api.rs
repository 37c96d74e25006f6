//! The room API, access control, persistence, webhooks and the operator CLI,
//! driven against the real `dionysia` binary with a real SQLite file in a
//! temporary `--data-dir`.
//!
//! ```text
//!  reqwest ──/api/v1, /whip, /whep──► dionysia --data-dir TMP ──► TMP/dionysia.db
//!  dionysia room … (CLI) ───────────────────────────────────────┘
//!  webhook receiver (a TcpListener here) ◄── signed POSTs
//! ```
//!
//! WHIP and WHEP requests use the SDP fixtures: a WHIP POST with a valid
//! offer creates a publisher session (and the room's tracks) before ICE ever
//! connects, which is all WHEP needs to answer `201`. RTMP keys are checked
//! with Debian's ffmpeg (RTMP on through `DIONYSIA_RTMP_LISTEN`, the env form of `--rtmp-listen`).
//! Two tests need the venv scripts/test.sh builds (`$DIONYSIA_TEST_PYTHON`):
//! the aiortc publisher for `room.started`/`room.stopped`, and schemathesis.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{dionysia_cli, repo_root, Server, TempDir};
use hmac::{Hmac, Mac};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};
use sha2::Sha256;

const ADMIN: &str = "test-admin-token-0123456789";
const SDP: &str = "application/sdp";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--admin-token", ADMIN];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn admin(r: RequestBuilder) -> RequestBuilder {
    r.bearer_auth(ADMIN)
}

fn fixture(name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures").join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    text.lines().map(|l| format!("{l}\r\n")).collect()
}

fn json_of(r: Response) -> Value {
    r.json().expect("a JSON body")
}

/// Asserts an RFC 9457 problem with this status; returns its body.
fn assert_problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(ct, "application/problem+json", "problem content type");
    let body = json_of(r);
    assert_eq!(body["status"], status, "problem status: {body}");
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

fn create_room(s: &Server, body: Value) -> Value {
    let r = admin(client().post(s.url("/api/v1/rooms")))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "create {body}");
    json_of(r)
}

fn whip_post(s: &Server, room: &str, key: Option<&str>) -> Response {
    let mut r = client()
        .post(s.url(&format!("/whip/{room}")))
        .header("content-type", SDP)
        .body(fixture("chromium_sendonly_offer.sdp"));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().unwrap()
}

fn whep_post(s: &Server, room: &str, token: Option<&str>) -> Response {
    let mut r = client()
        .post(s.url(&format!("/whep/{room}")))
        .header("content-type", SDP)
        .body(fixture("chromium_recvonly_whep_offer.sdp"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().unwrap()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `within`.
fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > within {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A line of CLI output that starts with `prefix` (after spaces): the rest.
fn field<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {prefix:?} in output:\n{out}"))
}

// ---------------------------------------------------------------------------

#[test]
fn rooms_crud_with_validation_and_problem_bodies() {
    let s = start(&["--room", "seeded:seeded-key-1234"]);
    let c = client();

    // The OpenAPI document is public; everything else needs the admin token.
    let doc = json_of(c.get(s.url("/api/v1/openapi.json")).send().unwrap());
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let r = c.get(s.url("/api/v1/rooms")).send().unwrap();
    assert!(r.headers().contains_key("www-authenticate"));
    assert_problem(r, 401);
    assert_problem(
        c.get(s.url("/api/v1/rooms"))
            .bearer_auth("not-the-admin-token-at-all")
            .send()
            .unwrap(),
        401,
    );
    // Without a token nothing tells whether a room exists.
    assert_problem(c.get(s.url("/api/v1/rooms/seeded")).send().unwrap(), 401);
    assert_problem(c.get(s.url("/api/v1/rooms/nope")).send().unwrap(), 401);

    // The config room was seeded into the database; no demo room beside it.
    let list = json_of(admin(c.get(s.url("/api/v1/rooms"))).send().unwrap());
    let names: Vec<&str> = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["seeded"]);
    assert_eq!(list["rooms"][0]["stream_key"], "seeded-key-1234");

    // Create.
    let r = admin(c.post(s.url("/api/v1/rooms")))
        .json(&json!({"name": "show", "max_viewers": 50, "ladder": [720, 360]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let room = json_of(r);
    let id = room["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/rooms/{id}"));
    assert_eq!(room["name"], "show");
    let key = room["stream_key"].as_str().unwrap();
    assert!(key.len() >= 20, "a long random key: {key}");
    assert_eq!(room["settings"]["private"], false);
    assert_eq!(room["settings"]["max_viewers"], 50);
    assert_eq!(room["settings"]["ladder"], json!([720, 360]));
    assert_eq!(room["urls"]["whip"], s.url("/whip/show"));
    assert_eq!(room["urls"]["whep"], s.url("/whep/show"));
    assert_eq!(room["urls"]["hls"], s.url("/hls/show/index.m3u8"));
    assert_eq!(room["urls"]["rtmp"], format!("rtmp://127.0.0.1/live/{key}"));
    assert_eq!(room["live"]["live"], false);

    // Read, by id and by name.
    let by_id = json_of(admin(c.get(s.url(&location))).send().unwrap());
    let by_name = json_of(admin(c.get(s.url("/api/v1/rooms/show"))).send().unwrap());
    assert_eq!(by_id["id"], by_name["id"]);
    assert_eq!(by_id["stream_key"], key);

    // Live state appears once someone publishes (ICE need not connect).
    assert_eq!(whip_post(&s, "show", Some(key)).status().as_u16(), 201);
    let live = json_of(admin(c.get(s.url(&location))).send().unwrap());
    assert_eq!(live["live"]["publisher"]["ingest"], "whip");
    assert!(!live["live"]["tracks"].as_array().unwrap().is_empty());
    assert_eq!(whep_post(&s, "show", None).status().as_u16(), 201);
    let viewers = json_of(
        admin(c.get(s.url("/api/v1/rooms/show/viewers")))
            .send()
            .unwrap(),
    );
    let viewers = viewers["viewers"].as_array().unwrap().clone();
    assert_eq!(viewers.len(), 1);
    let viewer = viewers[0]["session"].as_str().unwrap();
    // Kick the viewer, then the publisher.
    let r = admin(c.delete(s.url(&format!("/api/v1/rooms/show/viewers/{viewer}"))))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_problem(
        admin(c.delete(s.url(&format!("/api/v1/rooms/show/viewers/{viewer}"))))
            .send()
            .unwrap(),
        404,
    );
    let r = admin(c.delete(s.url("/api/v1/rooms/show/publisher")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_problem(
        admin(c.delete(s.url("/api/v1/rooms/show/publisher")))
            .send()
            .unwrap(),
        404,
    );

    // Update.
    let r = admin(c.patch(s.url(&location)))
        .json(&json!({"hls": false, "max_viewers": 0, "gop_cache": false}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let updated = json_of(r);
    assert_eq!(updated["settings"]["hls"], false);
    assert_eq!(updated["settings"]["gop_cache"], false);
    assert_eq!(updated["settings"]["max_viewers"], Value::Null);
    assert_eq!(updated["settings"]["ladder"], json!([720, 360]));

    // Validation: names, sizes, counts, shapes, media types.
    for bad in [
        json!({"name": ""}),
        json!({"name": "has space"}),
        json!({"name": "a".repeat(65)}),
        json!({"name": "x/y"}),
        json!({"name": "ok", "max_viewers": 0}),
        json!({"name": "ok", "max_viewers": 100001}),
        json!({"name": "ok", "ladder": [100]}),
        json!({"name": "ok", "ladder": [720, 720, 720, 720, 720, 720, 720, 720, 720]}),
        json!({"name": 5}),
        json!({}),
        json!([]),
    ] {
        let r = admin(c.post(s.url("/api/v1/rooms")))
            .json(&bad)
            .send()
            .unwrap();
        assert_problem(r, 422);
    }
    assert_problem(
        admin(c.post(s.url("/api/v1/rooms")))
            .json(&json!({"name": "show"}))
            .send()
            .unwrap(),
        409,
    );
    assert_problem(
        admin(c.post(s.url("/api/v1/rooms")))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .unwrap(),
        400,
    );
    assert_problem(
        admin(c.post(s.url("/api/v1/rooms")))
            .header("content-type", "text/plain")
            .body(r#"{"name":"x"}"#)
            .send()
            .unwrap(),
        415,
    );
    assert_problem(
        admin(c.post(s.url("/api/v1/rooms")))
            .header("content-type", "application/json")
            .body(format!(r#"{{"name":"{}"}}"#, "a".repeat(70_000)))
            .send()
            .unwrap(),
        413,
    );
    assert_problem(
        admin(c.get(s.url("/api/v1/nothing-here"))).send().unwrap(),
        404,
    );
    assert_problem(admin(c.put(s.url(&location))).send().unwrap(), 405);

    // Delete ends the room's sessions and the room.
    assert_eq!(whip_post(&s, "show", Some(key)).status().as_u16(), 201);
    let r = admin(c.delete(s.url(&location))).send().unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_problem(admin(c.get(s.url(&location))).send().unwrap(), 404);
    assert_problem(admin(c.delete(s.url(&location))).send().unwrap(), 404);
    assert_problem(whip_post(&s, "show", Some(key)), 404);
    assert_problem(whep_post(&s, "show", None), 404);
}

/// The old key is refused on WHIP at once and the live publish ends; the
/// new key works. (RTMP is not wired into the binary yet.)
#[test]
fn rotating_a_key_refuses_the_old_one_and_ends_the_publish() {
    let s = start(&[]);
    let c = client();
    let room = create_room(&s, json!({"name": "studio"}));
    let old = room["stream_key"].as_str().unwrap().to_string();
    assert_eq!(whip_post(&s, "studio", Some(&old)).status().as_u16(), 201);
    let get = || json_of(admin(c.get(s.url("/api/v1/rooms/studio"))).send().unwrap());
    assert!(get()["live"]["publisher"].is_object());

    let r = admin(c.post(s.url("/api/v1/rooms/studio/rotate-key")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rotated = json_of(r);
    let new = rotated["stream_key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(rotated["id"], room["id"]);
    assert!(
        rotated["live"]["publisher"].is_null(),
        "the publisher was kicked"
    );

    let r = whip_post(&s, "studio", Some(&old));
    assert!(r.headers().contains_key("www-authenticate"));
    assert_problem(r, 401);
    assert_eq!(whip_post(&s, "studio", Some(&new)).status().as_u16(), 201);
}

/// A server with RTMP on (`DIONYSIA_RTMP_LISTEN`, the env form of
/// `--rtmp-listen`) on a free port, once that port accepts.
fn start_with_rtmp() -> (Server, u16) {
    let rtmp_port = common::free_tcp_port();
    let listen = format!("127.0.0.1:{rtmp_port}");
    let s = Server::start_with_env(
        &["--admin-token", ADMIN],
        &[("DIONYSIA_RTMP_LISTEN", &listen)],
    );
    eventually(Duration::from_secs(5), "the RTMP port", || {
        std::net::TcpStream::connect(("127.0.0.1", rtmp_port)).ok()
    });
    (s, rtmp_port)
}

/// ffmpeg publishing a small test picture over RTMP for `seconds`.
fn rtmp_publish(port: u16, key: &str, seconds: u32) -> std::process::Child {
    std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size=320x240:rate=30:duration={seconds}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "30",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "flv",
        ])
        .arg(format!("rtmp://127.0.0.1:{port}/live/{key}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ffmpeg (scripts/test.sh installs it)")
}

/// Waits for ffmpeg to end (killing it after `within`): whether it
/// succeeded, and its stderr.
fn rtmp_finish(mut child: std::process::Child, within: Duration) -> (bool, String) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same over RTMP (`DIONYSIA_RTMP_LISTEN`, the env form of `--rtmp-listen`): the
/// old key is refused, the new one publishes, and rotating again ends that
/// publish.
#[test]
fn rotating_a_key_refuses_the_old_one_on_rtmp() {
    let (s, rtmp_port) = start_with_rtmp();
    let c = client();
    let room = create_room(&s, json!({"name": "encoder"}));
    let old = room["stream_key"].as_str().unwrap().to_string();
    let rotate = || {
        let r = admin(c.post(s.url("/api/v1/rooms/encoder/rotate-key")))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        json_of(r)["stream_key"].as_str().unwrap().to_string()
    };
    let new = rotate();

    let (ok, stderr) = rtmp_finish(rtmp_publish(rtmp_port, &old, 2), Duration::from_secs(20));
    assert!(
        !ok,
        "the old key must be refused on RTMP; ffmpeg said:\n{stderr}"
    );

    let publisher = rtmp_publish(rtmp_port, &new, 20);
    let get = || json_of(admin(c.get(s.url("/api/v1/rooms/encoder"))).send().unwrap());
    eventually(Duration::from_secs(15), "the RTMP publish to show", || {
        (get()["live"]["publisher"]["ingest"] == "rtmp").then_some(())
    });
    rotate();
    eventually(
        Duration::from_secs(5),
        "the RTMP publisher to be kicked",
        || get()["live"]["publisher"].is_null().then_some(()),
    );
    let (ok, _) = rtmp_finish(publisher, Duration::from_secs(30));
    assert!(!ok, "ffmpeg's publish was ended before its 20 s");
}

/// A room's settings rule its edges: `webrtc: false` makes WHEP answer `503`
/// `hls-only` with a link to the playlist (after the token check of a private
/// room), `hls: false` closes `/hls/{room}/…` with `404`, and the sources
/// fetching its playlists are counted as HLS viewers.
#[test]
fn room_settings_rule_webrtc_and_hls_and_hls_viewers_are_counted() {
    let (s, rtmp_port) = start_with_rtmp();
    let c = client();
    let room = create_room(&s, json!({"name": "hall", "webrtc": false}));
    assert_eq!(room["settings"]["webrtc"], false);
    assert_eq!(room["settings"]["hls"], true);
    let key = room["stream_key"].as_str().unwrap().to_string();
    let publisher = rtmp_publish(rtmp_port, &key, 40);

    // HLS-only: WHEP says so and where to go instead.
    let r = whep_post(&s, "hall", None);
    let link = r
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = assert_problem(r, 503);
    assert!(
        body["type"].as_str().unwrap().ends_with("hls-only"),
        "{body}"
    );
    assert!(
        link.contains("</hls/hall/index.m3u8>") && link.contains("rel=\"alternate\""),
        "Link: {link}"
    );

    // Two players (different User-Agents) fetch the playlist: two HLS viewers.
    let playlist = s.url("/hls/hall/index.m3u8");
    for agent in ["player-one/1.0", "player-two/1.0"] {
        eventually(Duration::from_secs(20), "the HLS playlist", || {
            let r = c.get(&playlist).header("user-agent", agent).send().ok()?;
            (r.status().as_u16() == 200).then_some(())
        });
    }
    let get = || json_of(admin(c.get(s.url("/api/v1/rooms/hall"))).send().unwrap());
    let live = get()["live"].clone();
    assert_eq!(live["viewers"]["hls"], 2, "{live}");
    assert_eq!(live["viewers"]["webrtc"], 0, "{live}");
    let listed = json_of(admin(c.get(s.url("/api/v1/rooms"))).send().unwrap());
    let listed = listed["rooms"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "hall").cloned())
        .unwrap_or_else(|| panic!("hall listed: {listed}"));
    assert_eq!(listed["live"]["viewers"]["hls"], 2, "{listed}");

    // The same figures for Prometheus, behind the admin token.
    assert_problem(c.get(s.url("/metrics")).send().unwrap(), 401);
    let r = admin(c.get(s.url("/metrics"))).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().unwrap();
    for line in [
        "dionysia_room_live{room=\"hall\"} 1",
        "dionysia_room_viewers{room=\"hall\",protocol=\"hls\"} 2",
        "dionysia_viewers{protocol=\"hls\"} 2",
        "dionysia_rooms_live 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.lines().any(|l| l
            .starts_with("dionysia_room_publisher_uptime_seconds{room=\"hall\",ingest=\"rtmp\"}")),
        "{text}"
    );
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");

    // HLS off: the room's playlists are gone at once, even while it is live.
    let r = admin(c.patch(s.url("/api/v1/rooms/hall")))
        .json(&json!({"hls": false, "webrtc": true}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = assert_problem(c.get(&playlist).send().unwrap(), 404);
    assert!(body["detail"].as_str().unwrap().contains("HLS"), "{body}");
    // WebRTC on again: WHEP answers.
    assert_eq!(whep_post(&s, "hall", None).status().as_u16(), 201);
    // And off again: the WebRTC viewer it had is gone too.
    let r = admin(c.patch(s.url("/api/v1/rooms/hall")))
        .json(&json!({"webrtc": false}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(json_of(r)["live"]["viewers"]["webrtc"], 0);

    // A private HLS-only room asks for the token first, then says HLS-only.
    let r = admin(c.patch(s.url("/api/v1/rooms/hall")))
        .json(&json!({"private": true, "webrtc": false, "hls": true}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_problem(whep_post(&s, "hall", None), 401);
    let minted = json_of(
        admin(c.post(s.url("/api/v1/rooms/hall/viewer-tokens")))
            .send()
            .unwrap(),
    );
    let token = minted["token"].as_str().unwrap();
    assert_problem(whep_post(&s, "hall", Some(token)), 503);
    let _ = rtmp_finish(publisher, Duration::from_secs(1));
}

/// An aiortc WHEP viewer (tests/interop/whep_view.py) watching `room` for
/// two seconds once it is live; its report.
fn aiortc_view(s: &Server, room: &str) -> Value {
    let interop = repo_root().join("tests/interop");
    let url = s.url(&format!("/whep/{room}"));
    let (ok, report, stderr) = common::run_json_lenient(
        &common::aiortc_python(),
        &[
            interop.join("whep_view.py").to_str().unwrap(),
            "--url",
            &url,
            "--seconds",
            "2",
            "--wait-live",
            "15",
        ],
        &interop,
        Duration::from_secs(40),
    );
    assert!(ok, "aiortc viewer failed: {report}\n{stderr}");
    report
}

/// The `gop_cache` setting decides how a new viewer starts when the
/// publisher cannot be asked for a keyframe (RTMP): from the cached GOP when
/// on, from the publisher's next keyframe when off. Either way it plays.
#[test]
fn gop_cache_setting_decides_whether_viewers_start_from_the_cache() {
    let (s, rtmp_port) = start_with_rtmp();
    let c = client();
    let room = create_room(&s, json!({"name": "gop"}));
    let key = room["stream_key"].as_str().unwrap().to_string();
    let publisher = rtmp_publish(rtmp_port, &key, 40);
    let get = || json_of(admin(c.get(s.url("/api/v1/rooms/gop"))).send().unwrap());
    eventually(
        Duration::from_secs(15),
        "the RTMP publish to be live",
        || (get()["live"]["live"] == true).then_some(()),
    );
    // Past the first keyframe, so there is a GOP to replay.
    std::thread::sleep(Duration::from_millis(1500));
    let replays = || s.log_text().matches("replaying the cached GOP").count();

    let first = aiortc_view(&s, "gop");
    assert!(first["video_frames"].as_u64().unwrap_or(0) > 0, "{first}");
    assert_eq!(
        replays(),
        1,
        "gop_cache on: the viewer starts from the cache"
    );

    let r = admin(c.patch(s.url("/api/v1/rooms/gop")))
        .json(&json!({"gop_cache": false}))
        .send()
        .unwrap();
    assert_eq!(json_of(r)["settings"]["gop_cache"], false);
    let second = aiortc_view(&s, "gop");
    assert!(second["video_frames"].as_u64().unwrap_or(0) > 0, "{second}");
    assert_eq!(replays(), 1, "gop_cache off: no replay");
    assert!(s.log_text().contains("gop_cache is off in this room"));
    let _ = rtmp_finish(publisher, Duration::from_secs(1));
}

/// Signs a viewer token with the server's key (read from its database), for
/// the cases the API cannot mint: expired ones.
fn forge_viewer_token(data_dir: &TempDir, claims: Value) -> String {
    let db = rusqlite::Connection::open(data_dir.path.join("dionysia.db")).unwrap();
    let key: Vec<u8> = db
        .query_row(
            "SELECT value FROM secrets WHERE name = 'viewer_token_key'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[test]
fn private_rooms_need_a_valid_viewer_token_on_whep() {
    let data = TempDir::new("private");
    let s = start(&["--data-dir", data.path_str()]);
    let c = client();
    let room = create_room(&s, json!({"name": "vip", "private": true}));
    let id = room["id"].as_str().unwrap().to_string();
    let key = room["stream_key"].as_str().unwrap();
    create_room(&s, json!({"name": "open", "private": true}));
    assert_eq!(whip_post(&s, "vip", Some(key)).status().as_u16(), 201);

    // No token, a garbage token: 401 with WWW-Authenticate.
    let r = whep_post(&s, "vip", None);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_problem(r, 401);
    assert_problem(whep_post(&s, "vip", Some("garbage")), 401);

    // Minted tokens: a bad lifetime is refused; a good one works.
    assert_problem(
        admin(c.post(s.url("/api/v1/rooms/vip/viewer-tokens")))
            .json(&json!({"ttl_secs": 5}))
            .send()
            .unwrap(),
        422,
    );
    let r = admin(c.post(s.url(&format!("/api/v1/rooms/{id}/viewer-tokens"))))
        .json(&json!({"ttl_secs": 120}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let minted = json_of(r);
    let token = minted["token"].as_str().unwrap().to_string();
    assert_eq!(minted["room"], "vip");
    assert_eq!(minted["whep_url"], s.url("/whep/vip"));
    assert!(minted["hls_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/hls/vip/index.m3u8?token={token}")));
    let now = minted["expires_at"].as_i64().unwrap() - 120;

    // Expired (signed by the server's own key): 401.
    let expired = forge_viewer_token(
        &data,
        json!({"room": "vip", "room_id": id, "iat": now - 600, "exp": now - 1}),
    );
    assert_problem(whep_post(&s, "vip", Some(&expired)), 401);
    // A valid token of another room: 401 here.
    let other = json_of(
        admin(c.post(s.url("/api/v1/rooms/open/viewer-tokens")))
            .send()
            .unwrap(),
    );
    assert_problem(
        whep_post(&s, "vip", Some(other["token"].as_str().unwrap())),
        401,
    );
    // Tampered: 401.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_problem(whep_post(&s, "vip", Some(&tampered)), 401);

    // Valid: 201.
    assert_eq!(whep_post(&s, "vip", Some(&token)).status().as_u16(), 201);

    // LL-HLS of a private room: `?token=` (or a bearer) on every request.
    let hls = |path: &str| c.get(s.url(path)).send().unwrap();
    assert_problem(hls("/hls/vip/index.m3u8"), 401);
    assert_problem(hls(&format!("/hls/vip/index.m3u8?token={expired}")), 401);
    assert_problem(hls("/hls/vip/720p/part1.m4s?token=garbage"), 401);
    let with_token = hls(&format!("/hls/vip/index.m3u8?token={token}"));
    assert_ne!(with_token.status().as_u16(), 401, "a valid token passes");
    let bearer = c
        .get(s.url("/hls/vip/index.m3u8"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_ne!(bearer.status().as_u16(), 401);

    // A deleted and re-created room of the same name does not honour old tokens.
    assert_eq!(
        admin(c.delete(s.url("/api/v1/rooms/vip")))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    let again = create_room(&s, json!({"name": "vip", "private": true}));
    assert_eq!(
        whip_post(&s, "vip", Some(again["stream_key"].as_str().unwrap()))
            .status()
            .as_u16(),
        201
    );
    assert_problem(whep_post(&s, "vip", Some(&token)), 401);

    assert_ne!(hls("/hls/capped-not-yet/index.m3u8").status().as_u16(), 401);

    // Public rooms need no token; max_viewers caps WebRTC viewers.
    let capped = create_room(&s, json!({"name": "capped", "max_viewers": 1}));
    let ckey = capped["stream_key"].as_str().unwrap();
    assert_eq!(whip_post(&s, "capped", Some(ckey)).status().as_u16(), 201);
    assert_eq!(whep_post(&s, "capped", None).status().as_u16(), 201);
    let r = whep_post(&s, "capped", None);
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, 503);

    // Making a room private ends the sessions of the viewers it had.
    let r = admin(c.patch(s.url("/api/v1/rooms/capped")))
        .json(&json!({"private": true}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(json_of(r)["live"]["viewers"]["webrtc"], 0);
    assert_problem(whep_post(&s, "capped", None), 401);
}

#[test]
fn rooms_keys_and_the_admin_token_survive_a_restart() {
    let data = TempDir::new("restart");
    let dir = data.path_str();
    // First start: no admin token configured, so one is generated and printed.
    let s = Server::start(&["--data-dir", dir]);
    let log = s.log_text();
    let token = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("dadm_"))
        .map(|rest| format!("dadm_{rest}"))
        .unwrap_or_else(|| panic!("no admin token printed:\n{log}"));
    assert!(
        log.contains("Room \"demo\""),
        "a demo room when none exists:\n{log}"
    );
    let c = client();
    let r = c
        .post(s.url("/api/v1/rooms"))
        .bearer_auth(&token)
        .json(&json!({"name": "keep", "private": true, "ladder": [480]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let created = json_of(r);
    drop(s);
    assert!(data.path.join("dionysia.db").exists());

    // Second start on the same directory: same rooms, keys, settings, token.
    let s = Server::start(&["--data-dir", dir]);
    assert!(
        !s.log_text().contains("dadm_"),
        "the token is printed only once"
    );
    let room = json_of(
        c.get(s.url("/api/v1/rooms/keep"))
            .bearer_auth(&token)
            .send()
            .unwrap(),
    );
    assert_eq!(room["id"], created["id"]);
    assert_eq!(room["stream_key"], created["stream_key"]);
    assert_eq!(room["settings"]["private"], true);
    assert_eq!(room["settings"]["ladder"], json!([480]));
    let list = json_of(
        c.get(s.url("/api/v1/rooms"))
            .bearer_auth(&token)
            .send()
            .unwrap(),
    );
    assert_eq!(list["rooms"].as_array().unwrap().len(), 2, "demo and keep");
    assert_eq!(
        whip_post(&s, "keep", room["stream_key"].as_str())
            .status()
            .as_u16(),
        201
    );
}

#[test]
fn cli_creates_lists_rotates_and_deletes_rooms() {
    let data = TempDir::new("cli");
    let dir = data.path_str();
    let (ok, out, err) = dionysia_cli(&["--data-dir", dir, "room", "create", "stage"]);
    assert!(ok, "create failed: {out}\n{err}");
    let old_key = field(&out, "Stream key:").to_string();
    assert!(field(&out, "WHIP (publish):").ends_with("/whip/stage"));
    let (ok, out, _) = dionysia_cli(&["room", "create", "stage", "--data-dir", dir]);
    assert!(!ok, "a duplicate name is refused: {out}");
    let (ok, _, _) = dionysia_cli(&["--data-dir", dir, "room", "create", "bad name"]);
    assert!(!ok, "an invalid name is refused");
    let (ok, out, _) =
        dionysia_cli(&["--data-dir", dir, "room", "create", "backroom", "--private"]);
    assert!(ok, "{out}");

    let (ok, out, _) = dionysia_cli(&["--data-dir", dir, "room", "list"]);
    assert!(ok);
    assert!(out.contains("stage") && out.contains("backroom"), "{out}");
    assert!(!out.contains(&old_key), "keys only with --show-keys");
    let (_, out, _) = dionysia_cli(&["--data-dir", dir, "room", "list", "--show-keys"]);
    assert!(out.contains(&old_key), "{out}");

    let s = start(&["--data-dir", dir]);
    // The CLI's rooms are the server's; no demo room beside them.
    let list = json_of(admin(client().get(s.url("/api/v1/rooms"))).send().unwrap());
    assert_eq!(list["rooms"].as_array().unwrap().len(), 2);
    assert_eq!(
        whip_post(&s, "stage", Some(&old_key)).status().as_u16(),
        201
    );

    // Rotating while the server runs: the old key stops at once, and the
    // server ends the live publish within about a second.
    let (ok, out, err) = dionysia_cli(&["--data-dir", dir, "room", "rotate-key", "stage"]);
    assert!(ok, "{out}\n{err}");
    let new_key = field(&out, "Room \"stage\": new stream key").to_string();
    assert_ne!(new_key, old_key);
    assert_problem(whip_post(&s, "stage", Some(&old_key)), 401);
    eventually(Duration::from_secs(5), "the old publish to end", || {
        let r = json_of(
            admin(client().get(s.url("/api/v1/rooms/stage")))
                .send()
                .unwrap(),
        );
        r["live"]["publisher"].is_null().then_some(())
    });
    assert_eq!(
        whip_post(&s, "stage", Some(&new_key)).status().as_u16(),
        201
    );

    let (ok, _, _) = dionysia_cli(&["--data-dir", dir, "room", "rotate-key", "nope"]);
    assert!(!ok, "rotating an unknown room fails");
    let (ok, _, _) = dionysia_cli(&["--data-dir", dir, "room", "delete", "backroom"]);
    assert!(ok);
    assert_problem(whep_post(&s, "backroom", None), 404);

    // A new admin token from the CLI works at once.
    let (ok, out, _) = dionysia_cli(&["--data-dir", dir, "admin-token", "create"]);
    assert!(ok);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("dadm_"))
        .expect("a token")
        .to_string();
    let r = client()
        .get(s.url("/api/v1/rooms"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// `times` requests with a wrong admin token, each answered 401.
fn fail_admin_auth(s: &Server, times: usize) {
    for _ in 0..times {
        let r = client()
            .get(s.url("/api/v1/rooms"))
            .bearer_auth("wrong")
            .send()
            .unwrap();
        assert_problem(r, 401);
    }
}

#[test]
fn failed_authentications_are_rate_limited_per_source() {
    let s = start(&["--auth-failure-limit", "3", "--room", "r1:room-key-1234"]);
    let c = client();
    fail_admin_auth(&s, 2);
    assert_problem(whip_post(&s, "r1", Some("wrong-key")), 401);
    // Past the limit even good credentials wait: guessing gains nothing.
    let r = admin(c.get(s.url("/api/v1/rooms"))).send().unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_problem(r, 429);
    assert_problem(whip_post(&s, "r1", Some("room-key-1234")), 429);
    // Pages and health are not guarded.
    assert_eq!(
        c.get(s.url("/healthz")).send().unwrap().status().as_u16(),
        200
    );
}

/// An address past the limit of failed authentications cannot go on
/// guessing keys over RTMP either: its connections are closed at accept,
/// before the handshake, while other addresses still connect.
#[test]
fn an_address_past_the_failure_limit_is_refused_on_rtmp_too() {
    use std::io::{Read, Write};
    let rtmp_port = common::free_tcp_port();
    let listen = format!("127.0.0.1:{rtmp_port}");
    let s = Server::start_with_env(
        &["--admin-token", ADMIN, "--auth-failure-limit", "2"],
        &[("DIONYSIA_RTMP_LISTEN", &listen)],
    );
    // The RTMP handshake's first answer (S0+S1) to a C0+C1, or nothing.
    let handshake = |from: &str| -> usize {
        let local = std::net::SocketAddr::new(from.parse().unwrap(), 0);
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&local.into()).unwrap();
        let remote = std::net::SocketAddr::from(([127, 0, 0, 1], rtmp_port));
        sock.connect(&remote.into()).unwrap();
        let mut tcp: std::net::TcpStream = sock.into();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut c0c1 = vec![3u8];
        c0c1.extend(std::iter::repeat_n(0u8, 1536));
        if tcp.write_all(&c0c1).is_err() {
            return 0;
        }
        let mut got = vec![0u8; 1537];
        let mut n = 0;
        while n < got.len() {
            match tcp.read(&mut got[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    };
    eventually(Duration::from_secs(5), "the RTMP port", || {
        (handshake("127.0.0.1") == 1537).then_some(())
    });
    let c = client();
    fail_admin_auth(&s, 2);
    assert_problem(admin(c.get(s.url("/api/v1/rooms"))).send().unwrap(), 429);
    assert_eq!(
        handshake("127.0.0.1"),
        0,
        "a blocked address got an RTMP handshake"
    );
    // Another source address (loopback is a /8) is not blocked.
    assert_eq!(handshake("127.0.0.2"), 1537);
}

// ---------------------------------------------------------------- webhooks

struct Hook {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A minimal HTTP receiver: answers each request with the next status of
/// `statuses` (then 200) and passes what it got to the returned channel.
fn webhook_receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Hook>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = HashMap::new();
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let status = statuses.next().unwrap_or(200);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tx.send(Hook { headers, body });
        }
    });
    (url, rx)
}

const HOOK_SECRET: &str = "webhook-secret-0123456789";

/// Checks `Dionysia-Signature: t=..,v1=HMAC-SHA256(secret, "t.body")`.
fn assert_signed(hook: &Hook) {
    let sig = hook
        .headers
        .get("dionysia-signature")
        .expect("a signature header");
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (t, v1) = (t.expect("t="), v1.expect("v1="));
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&hook.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "signature");
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - t.parse::<i64>().unwrap();
    assert!(age.abs() < 60, "timestamp {t} is now");
}

#[test]
fn webhooks_are_signed_retried_and_their_deliveries_listed() {
    // The receiver fails the first attempt: the server retries.
    let (url, hooks) = webhook_receiver(vec![500]);
    let s = start(&[
        "--webhook",
        &url,
        "--webhook-secret",
        HOOK_SECRET,
        "--room",
        "gig:gig-key-12345",
    ]);
    assert_problem(whip_post(&s, "gig", Some("not-the-key")), 401);
    let first = hooks
        .recv_timeout(Duration::from_secs(10))
        .expect("a webhook");
    let second = hooks
        .recv_timeout(Duration::from_secs(10))
        .expect("a retry");
    for h in [&first, &second] {
        assert_signed(h);
        assert_eq!(h.headers["content-type"], "application/json");
        assert_eq!(h.headers["dionysia-event"], "publisher.rejected");
    }
    assert_eq!(first.body, second.body, "a retry sends the same event");
    let event: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(event["type"], "publisher.rejected");
    assert_eq!(event["room"], "gig");
    assert_eq!(event["data"]["reason"], "unauthorized");
    assert_eq!(event["data"]["ingest"], "whip");
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));

    let deliveries = eventually(Duration::from_secs(5), "two recorded attempts", || {
        let d = json_of(
            admin(client().get(s.url("/api/v1/webhooks/deliveries")))
                .send()
                .unwrap(),
        );
        (d["deliveries"].as_array().unwrap().len() >= 2).then_some(d)
    });
    let d = deliveries["deliveries"].as_array().unwrap();
    // Newest first: the retry delivered, the first try failed with 500.
    assert_eq!(d[0]["attempt"], 2);
    assert_eq!(d[0]["delivered"], true);
    assert_eq!(d[0]["status"], 200);
    assert_eq!(d[1]["attempt"], 1);
    assert_eq!(d[1]["delivered"], false);
    assert_eq!(d[1]["status"], 500);
    assert_eq!(d[0]["event_id"], event["id"]);
    assert_eq!(d[0]["url"], url);
    assert_problem(
        admin(client().get(s.url("/api/v1/webhooks/deliveries?limit=0")))
            .send()
            .unwrap(),
        422,
    );
}

/// `room.started` and `room.stopped` need a publisher whose media really
/// connects: the aiortc publisher of the interop tests (scripts/test.sh
/// installs it and sets `$DIONYSIA_TEST_PYTHON`).
#[test]
fn room_started_and_stopped_webhooks_follow_a_real_publish() {
    let python = common::aiortc_python();
    let (url, hooks) = webhook_receiver(vec![]);
    let s = start(&[
        "--webhook",
        &url,
        "--webhook-secret",
        HOOK_SECRET,
        "--room",
        "live1:live1-key-12345",
    ]);
    let script = repo_root().join("tests/interop/whip_publish.py");
    common::run_json(
        &python,
        &[
            script.to_str().unwrap(),
            "--url",
            &s.url("/whip/live1"),
            "--key",
            "live1-key-12345",
            "--seconds",
            "3",
            "--codec",
            "VP8",
        ],
        &repo_root().join("tests/interop"),
        Duration::from_secs(60),
    );
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let h = hooks
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("webhooks so far: {kinds:?}"));
        assert_signed(&h);
        let e: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(e["room"], "live1");
        if e["type"] == "room.started" {
            assert_eq!(e["data"]["ingest"], "whip");
        }
        kinds.push(e["type"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, vec!["room.started", "room.stopped"]);
}

/// Schemathesis (PyPI, in the venv scripts/test.sh builds) against the
/// served OpenAPI document: no 5xx, every status, content type, header and
/// body as documented, schema-valid requests accepted and invalid ones refused.
#[test]
fn openapi_document_holds_under_schemathesis() {
    let python = common::aiortc_python();
    let schemathesis = std::path::Path::new(&python)
        .parent()
        .unwrap()
        .join("schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/test.sh (tests/api/requirements.txt)",
        schemathesis.display()
    );
    // Every request carries the admin token; the failure limit is off so
    // that the requests schemathesis sends without one leave the rest testable.
    let s = start(&["--auth-failure-limit", "0"]);
    // Schemathesis may leave files (crash reports) in its working directory.
    let work = TempDir::new("schemathesis");
    let out = std::process::Command::new(&schemathesis)
        .current_dir(&work.path)
        .args([
            "run",
            &s.url("/api/v1/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {ADMIN}"),
            "--checks",
            "all",
            // A kick needs a live session, which the schema cannot create.
            "--exclude-checks",
            "ensure_resource_availability,use_after_free",
            "--max-examples",
            "40",
            "--workers",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !s.log_text().contains("panicked"),
        "the server panicked:\n{}",
        s.log_text()
    );
}
