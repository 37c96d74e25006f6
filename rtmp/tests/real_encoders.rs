//! Real encoders publish to a tokio TCP server driving the sans-IO
//! [`rtmp::ServerSession`], then [`rtmp::VideoIngest`], [`rtmp::AudioIngest`]
//! and [`rtmp::H264Packetizer`], as the server will; the tests check what the
//! shim makes of it. Clients: Debian's ffmpeg (its own RTMP stack), and
//! GStreamer's `rtmpsink` (librtmp, the stack inside OBS) and `rtmp2sink`.
//!
//! The clients are real: `scripts/test.sh` installs ffmpeg and GStreamer; a
//! missing one fails the test (it never passes without having run).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rtmp::flv::AudioSpecificConfig;
use rtmp::h264::{nal_type, nal_unit_type, Reordering, Sps};
use rtmp::packetizer::DEFAULT_MAX_PAYLOAD;
use rtmp::{
    AudioEvent, AudioIngest, Event, H264Packetizer, PublishRejection, ServerSession, SessionConfig,
    VideoEvent, VideoIngest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const FFMPEG: &str = "/usr/bin/ffmpeg";
const REJECTION: &str = "Unknown stream key (test).";

#[derive(Default, Debug)]
struct Report {
    connected_app: Option<String>,
    requested_key: Option<String>,
    rejected: bool,
    metadata: bool,
    sps: Option<Sps>,
    aac: Option<AudioSpecificConfig>,
    video_dts: Vec<u32>,
    keyframes: usize,
    nonzero_cts: usize,
    audio_frames: usize,
    rtp_packets: usize,
    /// Access units whose RTP payloads start with SPS/PPS (in a STAP-A).
    idr_with_parameter_sets: usize,
    verdict: Option<Reordering>,
    b_frames_events: usize,
    finished: bool,
    error: Option<String>,
}

/// Serves one connection until the peer closes it or the session ends.
async fn serve(mut sock: TcpStream, valid_key: &str) -> Report {
    let mut session = ServerSession::new(SessionConfig::default());
    let mut packetizer = H264Packetizer::default();
    let mut video = VideoIngest::default();
    let mut audio = AudioIngest::default();
    let mut video_events = Vec::new();
    let mut report = Report::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut rtp = Vec::new();
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Err(e) = session.handle_input(&buf[..n]) {
            report.error = Some(e.to_string());
            break;
        }
        while let Some(event) = session.poll_event() {
            match event {
                Event::Connected { app, .. } => report.connected_app = Some(app),
                Event::PublishRequested { stream_key, .. } => {
                    if stream_key == valid_key {
                        session.accept_publish().unwrap();
                    } else {
                        session
                            .reject_publish(PublishRejection::BadName, REJECTION)
                            .unwrap();
                        report.rejected = true;
                    }
                    report.requested_key = Some(stream_key);
                }
                Event::Metadata(_) => report.metadata = true,
                Event::Video { timestamp, data } => {
                    video_events.clear();
                    video
                        .push(timestamp, &data, &mut video_events)
                        .expect("video tag");
                    for ev in video_events.drain(..) {
                        match ev {
                            VideoEvent::Config { config, sps } => {
                                packetizer.set_config(&config);
                                report.sps = Some(sps);
                            }
                            VideoEvent::BFramesDetected => report.b_frames_events += 1,
                            VideoEvent::Frame(f) => {
                                report.video_dts.push(f.dts_ms);
                                report.keyframes += f.keyframe as usize;
                                report.nonzero_cts += (f.pts_ms != f.dts_ms as i64) as usize;
                                rtp.clear();
                                let ts = f.rtp_timestamp;
                                packetizer.packetize(f.data, ts, &mut rtp).expect("AVCC");
                                assert!(rtp.iter().all(|p| p.payload.len() <= DEFAULT_MAX_PAYLOAD));
                                assert!(rtp.iter().all(|p| p.timestamp == ts));
                                assert_eq!(rtp.iter().filter(|p| p.marker).count(), 1);
                                assert!(rtp.last().unwrap().marker);
                                if f.keyframe {
                                    let first = &rtp[0].payload;
                                    // STAP-A whose first NAL (after the 2-byte size) is the SPS.
                                    if nal_unit_type(first) == 24
                                        && nal_unit_type(&first[3..]) == nal_type::SPS
                                    {
                                        report.idr_with_parameter_sets += 1;
                                    }
                                }
                                report.rtp_packets += rtp.len();
                            }
                            VideoEvent::Unsupported(c) => panic!("unsupported {c:?}"),
                        }
                    }
                }
                Event::Audio { timestamp, data } => {
                    match audio.push(timestamp, &data).expect("audio tag") {
                        Some(AudioEvent::Config(c)) => report.aac = Some(c),
                        Some(AudioEvent::Frame(_)) => report.audio_frames += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                Event::PublishFinished => report.finished = true,
            }
        }
        while let Some(out) = session.poll_transmit() {
            if sock.write_all(&out).await.is_err() {
                break;
            }
        }
        if session.is_closed() {
            break;
        }
    }
    report.verdict = Some(video.reordering());
    report
}

/// Runs ffmpeg against a fresh listener; returns the report, ffmpeg's success and stderr.
async fn publish(bframes: u32, key: &str, extra: &[&str]) -> Option<(Report, bool, String)> {
    if !Path::new(FFMPEG).exists() {
        panic!("{FFMPEG} is not installed: run scripts/test.sh");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        serve(sock, "KEY").await
    });
    let child = ffmpeg(port, bframes, key, extra);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ffmpeg finished within 60 s")
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server finished")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Some((report, output.status.success(), stderr))
}

/// ffmpeg publishing 3 s of test pattern and tone, as the issue describes.
fn ffmpeg(port: u16, bframes: u32, key: &str, extra: &[&str]) -> tokio::process::Child {
    let url = format!("rtmp://127.0.0.1:{port}/live/{key}");
    let bf = bframes.to_string();
    Command::new(FFMPEG)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine"])
        .args(["-t", "3", "-c:v", "libx264", "-preset", "veryfast"])
        .args(["-bf", &bf, "-g", "60", "-c:a", "aac"])
        .args(extra)
        .args(["-f", "flv", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ffmpeg")
}

fn assert_strictly_increasing_dts(r: &Report) {
    assert!(
        r.video_dts
            .windows(2)
            .all(|w| (w[1].wrapping_sub(w[0]) as i32) > 0),
        "DTS strictly increasing: {:?}",
        r.video_dts
    );
}

fn assert_common(r: &Report) {
    assert_eq!(r.error, None);
    assert_eq!(r.connected_app.as_deref(), Some("live"));
    assert_eq!(r.requested_key.as_deref(), Some("KEY"));
    assert!(!r.rejected);
    assert!(r.metadata, "onMetaData");
    let sps = r.sps.as_ref().expect("AVC sequence header");
    assert_eq!((sps.width, sps.height), (640, 360));
    let aac = r.aac.as_ref().expect("AAC sequence header");
    assert_eq!(aac.object_type, 2, "AAC-LC");
    assert_eq!(aac.sample_rate, 44100);
    // 3 s at 30 fps = 90 frames; leave room for a loaded machine.
    assert!(
        r.video_dts.len() >= 75,
        "video frames: {}",
        r.video_dts.len()
    );
    // Non-decreasing: GStreamer's flvmux with live sources may give the
    // first two frames the same DTS on a loaded machine.
    assert!(
        r.video_dts
            .windows(2)
            .all(|w| (w[1].wrapping_sub(w[0]) as i32) >= 0),
        "DTS non-decreasing: {:?}",
        r.video_dts
    );
    assert!(r.keyframes >= 2, "keyframes: {}", r.keyframes);
    assert_eq!(r.idr_with_parameter_sets, r.keyframes);
    // 44.1 kHz / 1024 samples per frame ≈ 43 frames a second.
    assert!(r.audio_frames >= 100, "audio frames: {}", r.audio_frames);
    assert!(r.rtp_packets > r.video_dts.len());
    assert!(r.finished, "FCUnpublish/deleteStream seen");
}

#[tokio::test]
async fn ffmpeg_publishes_h264_and_aac_without_b_frames() {
    let Some((r, ok, stderr)) = publish(0, "KEY", &[]).await else {
        return;
    };
    assert!(ok, "ffmpeg failed: {stderr}");
    assert_common(&r);
    assert_strictly_increasing_dts(&r);
    assert_eq!(r.nonzero_cts, 0);
    assert_eq!(r.verdict, Some(Reordering::None));
    assert_eq!(r.b_frames_events, 0);
}

#[tokio::test]
async fn ffmpeg_with_b_frames_is_detected() {
    let Some((r, ok, stderr)) = publish(2, "KEY", &[]).await else {
        return;
    };
    assert!(ok, "ffmpeg failed: {stderr}");
    assert_common(&r);
    assert_strictly_increasing_dts(&r);
    assert!(r.sps.as_ref().unwrap().max_num_reorder_frames.unwrap() > 0);
    assert!(r.nonzero_cts > 0);
    assert_eq!(r.verdict, Some(Reordering::Present));
    assert_eq!(r.b_frames_events, 1);
}

#[tokio::test]
async fn ffmpeg_timestamps_crossing_into_extended_timestamps() {
    // Start 0.5 s before 0xFFFFFF ms (4 h 39 min): chunk headers switch to
    // the 4-byte extended timestamp mid-stream.
    let Some((r, ok, stderr)) = publish(0, "KEY", &["-output_ts_offset", "16776.7"]).await else {
        return;
    };
    assert!(ok, "ffmpeg failed: {stderr}");
    assert_common(&r);
    assert_strictly_increasing_dts(&r);
    assert!(r.video_dts.first().is_some_and(|&t| t < 0xFF_FFFF));
    assert!(r.video_dts.last().is_some_and(|&t| t > 0xFF_FFFF));
}

#[tokio::test]
async fn ffmpeg_with_a_wrong_key_is_refused() {
    let Some((r, ok, stderr)) = publish(0, "WRONG", &[]).await else {
        return;
    };
    assert!(!ok, "ffmpeg must fail");
    assert!(r.rejected);
    assert_eq!(r.requested_key.as_deref(), Some("WRONG"));
    assert!(r.video_dts.is_empty() && r.audio_frames == 0 && r.sps.is_none());
    assert!(
        stderr.contains(REJECTION),
        "ffmpeg shows the reason: {stderr}"
    );
}

/// What a hostile or broken client sends; `None` = the server must close on us.
fn bad_client_bytes(kind: usize, round: usize) -> (Vec<u8>, bool) {
    let mut hello = vec![3u8];
    hello.extend(std::iter::repeat_n(round as u8, 2 * 1536));
    match kind {
        // Truncated handshake: the server waits; we give up and close.
        0 => (vec![3u8; 1 + round % 1000], false),
        // RTMPE / garbage version byte.
        1 => (vec![6u8; 1537], true),
        // Valid handshake, then pseudo-random chunks.
        2 => {
            let mut x = 0x9E37_79B9u32 ^ round as u32;
            hello.extend((0..4096).map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }));
            (hello, false)
        }
        // Set Chunk Size 2^31-1.
        3 => {
            hello.extend_from_slice(&[
                0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
            ]);
            (hello, true)
        }
        // A 16 MiB message announced.
        4 => {
            hello.extend_from_slice(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0]);
            hello.extend(std::iter::repeat_n(0u8, 128));
            (hello, true)
        }
        // connect with broken AMF (string longer than the message).
        _ => {
            hello.extend_from_slice(&[
                0x03, 0, 0, 0, 0, 0, 4, 20, 0, 0, 0, 0, 0x02, 0xff, 0xff, b'c',
            ]);
            (hello, true)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_do_not_disturb_a_good_publish() {
    if !Path::new(FFMPEG).exists() {
        panic!("{FFMPEG} is not installed: run scripts/test.sh");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(serve(sock, "KEY").await);
            });
        }
    });
    let good = ffmpeg(port, 0, "KEY", &[]);

    // Bounded hammering: 20 rounds of 6 kinds while ffmpeg publishes.
    let mut closed_by_server = 0;
    for round in 0..20 {
        for kind in 0..6 {
            let (bytes, server_must_close) = bad_client_bytes(kind, round);
            let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = sock.write_all(&bytes).await;
            if server_must_close {
                let mut sink = [0u8; 8192];
                let closed = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match sock.read(&mut sink).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                assert!(
                    closed.is_ok(),
                    "kind {kind}: server kept the connection open"
                );
                closed_by_server += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(closed_by_server, 20 * 4);

    let output = tokio::time::timeout(Duration::from_secs(60), good.wait_with_output())
        .await
        .expect("ffmpeg finished within 60 s")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let good_report = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = rx.recv().await.expect("reports");
            if r.requested_key.is_some() {
                return r;
            }
        }
    })
    .await
    .expect("the good publish was served");
    assert_common(&good_report);
    assert_strictly_increasing_dts(&good_report);
    acceptor.abort();
}

const GST: &str = "/usr/bin/gst-launch-1.0";

/// GStreamer publishing 90 frames + AAC through `sink` (`rtmpsink` is
/// librtmp, the RTMP stack inside OBS; `rtmp2sink` is GStreamer's own).
async fn gstreamer_publish(sink: &str) -> Option<(Report, bool, String)> {
    if !Path::new(GST).exists() {
        panic!("{GST} is not installed: run scripts/test.sh");
    }
    for element in ["x264enc", "voaacenc", "flvmux", sink] {
        let found = Command::new("gst-inspect-1.0")
            .arg(element)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !found {
            panic!("GStreamer element {element} is not installed: run scripts/test.sh");
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        serve(sock, "KEY").await
    });
    let pipeline = format!(
        "videotestsrc num-buffers=90 is-live=true ! video/x-raw,format=I420,width=640,height=360,framerate=30/1 \
         ! x264enc bframes=0 key-int-max=60 speed-preset=veryfast ! h264parse \
         ! flvmux streamable=true name=m ! {sink} location=rtmp://127.0.0.1:{port}/live/KEY \
         audiotestsrc num-buffers=130 is-live=true ! voaacenc ! aacparse ! m."
    );
    let child = Command::new(GST)
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gst-launch");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("gst-launch finished within 60 s")
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server finished")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    Some((report, output.status.success(), text))
}

#[tokio::test]
async fn gstreamer_librtmp_publishes() {
    let Some((r, ok, log)) = gstreamer_publish("rtmpsink").await else {
        return;
    };
    assert!(ok, "gst-launch failed: {log}");
    assert_common(&r);
    assert_eq!(r.sps.as_ref().unwrap().chroma_format_idc, 1);
    assert_eq!(r.verdict, Some(Reordering::None));
}

#[tokio::test]
async fn gstreamer_rtmp2_publishes() {
    let Some((r, ok, log)) = gstreamer_publish("rtmp2sink").await else {
        return;
    };
    assert!(ok, "gst-launch failed: {log}");
    assert_common(&r);
    assert_eq!(r.verdict, Some(Reordering::None));
}
