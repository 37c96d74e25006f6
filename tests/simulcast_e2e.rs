//! Simulcast end to end with real Chromium: a publisher page sends three
//! H.264 layers (1280/640/320 wide); viewers get the layer they ask for or
//! the one their bandwidth carries, and keep one continuous stream when the
//! publisher leaves and comes back. The bandwidth test limits a viewer's link
//! with `tc` inside a network namespace this test makes (and removes).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{repo_root, run_json, Server};
use serde_json::Value;

const KEY: &str = "simulcast-key";

/// One browser scenario at a time: each takes most of a core.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn layers(server: &Server, mode: &str, extra: &[&str]) -> Value {
    let dir = repo_root().join("tests/browser");
    let room = "sim";
    let mut args = vec![
        "layers.mjs",
        "--base",
        &server.base,
        "--room",
        room,
        "--key",
        KEY,
        "--mode",
        mode,
    ];
    args.extend_from_slice(extra);
    let report = run_json("node", &args, &dir, Duration::from_secs(150));
    assert_eq!(
        report["ok"],
        true,
        "{mode}: {report:#}\nserver log:\n{}",
        server.log_text()
    );
    report
}

#[test]
fn viewers_get_the_layer_they_ask_for() {
    let _serial = serial();
    let server = Server::start(&["--room", &format!("sim:{KEY}")]);
    let r = layers(&server, "rid", &[]);
    let v = r["viewers"].as_array().expect("viewers");
    // Viewer 0 asked for rid l (a quarter of 1280), viewer 1 for rid h.
    assert_eq!(v[0]["layerStatus"], 200, "{r:#}");
    assert_eq!(v[0]["width"], 320, "rid l viewer: {r:#}");
    assert_eq!(v[1]["width"], 1280, "rid h viewer: {r:#}");
    assert!(v.iter().all(|x| x["frames"].as_u64() > Some(30)), "{r:#}");
}

#[test]
fn a_reconnecting_publisher_resumes_within_a_second() {
    let _serial = serial();
    let server = Server::start(&["--room", &format!("sim:{KEY}")]);
    let r = layers(&server, "reconnect", &[]);
    assert_eq!(
        r["after"]["connection"], "connected",
        "the viewer must not reconnect: {r:#}"
    );
    let resumed = r["resumedMs"].as_u64().unwrap_or(u64::MAX);
    assert!(
        resumed < 1000,
        "frames resumed {resumed} ms after the new publisher connected: {r:#}"
    );
    assert!(
        r["after"]["frames"].as_u64() > r["before"]["frames"].as_u64(),
        "{r:#}"
    );
    assert_eq!(r["after"]["width"], 1280, "{r:#}");
}

/// A veth pair into a fresh namespace; removed on drop.
struct Netns {
    name: String,
    host_dev: String,
}

impl Netns {
    fn create(tag: &str, host_ip: &str, ns_ip: &str) -> Netns {
        let name = format!("dion{tag}{}", std::process::id() % 10_000);
        let host_dev = format!("vh{tag}{}", std::process::id() % 10_000);
        let ns_dev = format!("vn{tag}{}", std::process::id() % 10_000);
        let ns = Netns { name, host_dev };
        let run = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2) must be installed");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &ns.name]);
        run(&[
            "link",
            "add",
            &ns.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            &ns_dev,
        ]);
        run(&["link", "set", &ns_dev, "netns", &ns.name]);
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &ns.host_dev]);
        run(&["link", "set", &ns.host_dev, "up"]);
        run(&[
            "netns",
            "exec",
            &ns.name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_dev,
        ]);
        run(&[
            "netns", "exec", &ns.name, "ip", "link", "set", &ns_dev, "up",
        ]);
        run(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a layers.mjs scenario whose viewer lives in a fresh network
/// namespace behind a veth link (`tag` keeps names and subnets apart).
fn in_namespace(tag: &str, subnet: u8, mode: &str) -> Value {
    let (host_ip, ns_ip) = (format!("10.77.{subnet}.1"), format!("10.77.{subnet}.2"));
    let ns = Netns::create(tag, &host_ip, &ns_ip);
    let room = format!("sim:{KEY}");
    let server = Server::start_bound("0.0.0.0", &["--room", &room, "--public-ip", &host_ip]);
    let viewer_base = format!("http://{host_ip}:{}", server.http_port);
    let r = layers(
        &server,
        mode,
        &[
            "--viewer-base",
            &viewer_base,
            "--netns",
            &ns.name,
            "--dev",
            &ns.host_dev,
        ],
    );
    if std::env::var_os("DEBUG_SERVER_LOG").is_some() {
        eprintln!("{}\nREPORT {r}", server.log_text());
    }
    r
}

#[test]
fn a_viewer_moves_down_under_a_bandwidth_limit_and_back_up() {
    let _serial = serial();
    let r = in_namespace("bw", 41, "bandwidth");
    assert!(
        r["start"].is_u64(),
        "the viewer never reached 1280 wide: {r:#}"
    );
    let down = r["downMs"].as_u64().unwrap_or(u64::MAX);
    let up = r["upMs"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "bandwidth: down after {down} ms, up after {up} ms, longest frame gap {} ms \
         (limited: {} ms, lifted: {} ms)",
        r["maxGapMs"], r["cutMaxGapMs"], r["liftedMaxGapMs"]
    );
    assert!(
        down <= 5_000,
        "moved down {down} ms after the 350 kbit/s limit: {r:#}"
    );
    assert!(
        up <= 15_000,
        "moved back up {up} ms after the limit was lifted: {r:#}"
    );
}

#[test]
fn lost_packets_are_retransmitted_to_viewers() {
    let _serial = serial();
    let r = in_namespace("ls", 42, "loss");
    let (b, a) = (&r["before"]["video"], &r["after"]["video"]);
    let delta = |k: &str| a[k].as_i64().unwrap_or(0) - b[k].as_i64().unwrap_or(0);
    eprintln!(
        "5% loss: {} packets, {} NACKs, {} retransmissions received, {} lost for good, {} frames decoded, {} freezes",
        delta("packetsReceived"),
        delta("nackCount"),
        delta("retransmittedPacketsReceived"),
        delta("packetsLost"),
        delta("framesDecoded"),
        delta("freezeCount")
    );
    assert!(
        delta("nackCount") > 10,
        "the viewer should NACK under 5% loss: {r:#}"
    );
    assert!(
        delta("retransmittedPacketsReceived") > 10,
        "the server should retransmit (RTX): {r:#}"
    );
    assert!(
        delta("framesDecoded") > 100,
        "decoding must go on under loss: {r:#}"
    );
}
