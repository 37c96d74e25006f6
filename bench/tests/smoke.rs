//! A short run of the load benchmark against the real server: 20 viewers
//! for a few seconds. A correctness check, not a timing threshold: every
//! viewer connects (ICE, DTLS), receives video and audio, loses nothing,
//! starts on a keyframe, and gets the publisher's payloads unchanged.
//!
//! Needs `<workspace>/target/release/dionysia` (`cargo build --release -p
//! dionysia`; scripts/test.sh builds it first).

use std::path::PathBuf;

fn server_binary() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ lives in the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let path = target.join("release").join("dionysia");
    assert!(
        path.is_file(),
        "{} is missing: build the server first with `cargo build --release -p dionysia`",
        path.display()
    );
    path
}

#[test]
fn twenty_viewers_get_every_packet() {
    let opts = bench::Options {
        spawn_server: Some(server_binary()),
        viewers: 20,
        seconds: 4.0,
        warmup: 0.5,
        ramp_per_sec: 100.0,
        // Every viewer decrypts and checks every packet.
        full_every: 1,
        clip_seconds: 2,
        // Two media threads whatever the machine: viewers spread over both,
        // those on the room's other shard served through its mirror.
        media_threads: Some(2),
        ..bench::Options::default()
    };
    let report = bench::run(&opts).expect("benchmark run");
    eprintln!("{}", report.table());
    assert_eq!(report.viewers_connected, 20, "errors: {:?}", report.errors);
    assert_eq!(report.viewers_failed, 0, "errors: {:?}", report.errors);
    for v in &report.per_viewer {
        assert!(v.video_packets > 0, "viewer {} got no video", v.index);
        assert!(v.audio_packets > 0, "viewer {} got no audio", v.index);
        assert_eq!(
            v.lost, 0,
            "viewer {} lost packets: {:?}",
            v.index, report.gap_samples
        );
    }
    assert_eq!(report.per_viewer.len(), 20);
    assert_eq!(report.packets_lost, 0, "gaps: {:?}", report.gap_samples);
    assert_eq!(
        report.first_frame_keyframes, 20,
        "every viewer's video must start on a keyframe"
    );
    assert!(
        report.payloads_matched > 0,
        "viewers must receive the publisher's payloads unchanged"
    );
    assert!(report.delivered_pps > 0.0);
    for shard in ["sfu-0", "sfu-1"] {
        assert!(
            report
                .server_threads_cpu
                .get(shard)
                .is_some_and(|c| *c > 0.0),
            "media thread {shard} must carry viewers: {:?}",
            report.server_threads_cpu
        );
    }
}
