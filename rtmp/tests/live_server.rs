//! The live server with a real SFU: Debian's ffmpeg publishes over RTMP to
//! [`rtmp::serve_with`], and an SFU tap (an in-process subscriber, as the HLS
//! bridge is) records what the room carries. Checks what no browser test
//! sees directly: the Opus really holds the tone, re-encoded B-frame streams
//! come out in presentation order, bad connections and stalled handshakes
//! are closed without touching the good stream.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmp::{ServerConfig, StreamKeys};
use sfu::{Sfu, SfuConfig, TapCodec, TapEvent, TapPacket, TapTrack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const FFMPEG: &str = "/usr/bin/ffmpeg";
const ROOM: &str = "studio";
const KEY: &str = "s3cret-key";

async fn start(config: ServerConfig) -> (Sfu, u16) {
    let sfu = Sfu::start(SfuConfig {
        udp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..SfuConfig::default()
    })
    .expect("sfu");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let keys: StreamKeys = Arc::new(|key: &str| (key == KEY).then(|| ROOM.to_string()));
    tokio::spawn(rtmp::serve_with(listener, sfu.clone(), keys, config));
    (sfu, port)
}

fn ffmpeg(port: u16, bframes: u32, key: &str, seconds: u32) -> tokio::process::Child {
    ffmpeg_gop(port, bframes, key, seconds, 60)
}

fn ffmpeg_gop(port: u16, bframes: u32, key: &str, seconds: u32, gop: u32) -> tokio::process::Child {
    assert!(
        Path::new(FFMPEG).exists(),
        "{FFMPEG} is not installed: run scripts/test.sh"
    );
    let url = format!("rtmp://127.0.0.1:{port}/live/{key}");
    Command::new(FFMPEG)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
        ])
        .args([
            "-bf",
            &bframes.to_string(),
            "-g",
            &gop.to_string(),
            "-c:a",
            "aac",
        ])
        .args(["-f", "flv", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ffmpeg")
}

#[derive(Default)]
struct Recording {
    tracks: Vec<TapTrack>,
    packets: Vec<TapPacket>,
    ended: bool,
}

impl Recording {
    fn track(&self, video: bool) -> Option<&TapTrack> {
        self.tracks.iter().find(|t| t.video == video)
    }

    fn of(&self, video: bool) -> Vec<&TapPacket> {
        let Some(t) = self.track(video) else {
            return Vec::new();
        };
        self.packets.iter().filter(|p| p.track == t.index).collect()
    }

    /// RTP timestamps of the video frames, in the order they were sent.
    fn frame_timestamps(&self) -> Vec<u32> {
        self.of(true)
            .iter()
            .filter(|p| p.marker)
            .map(|p| p.timestamp)
            .collect()
    }

    /// Longest pause between two video packets, after the first.
    fn max_video_gap(&self) -> Duration {
        self.of(true)
            .windows(2)
            .map(|w| w[1].arrival.duration_since(w[0].arrival))
            .max()
            .unwrap_or_default()
    }
}

/// Records the room until the publisher ends or `within` passes.
async fn record(sfu: &Sfu, within: Duration) -> Recording {
    let mut tap = sfu.tap(ROOM);
    let mut rec = Recording::default();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, tap.events.recv()).await {
        match ev {
            TapEvent::Live { tracks, .. } => rec.tracks = tracks,
            TapEvent::Packet(p) => rec.packets.push(p),
            TapEvent::Ended => {
                rec.ended = true;
                break;
            }
        }
    }
    rec
}

fn assert_opus_carries_the_tone(rec: &Recording) {
    let audio = rec.track(false).expect("an audio track");
    assert_eq!((audio.codec, audio.clock_rate), (TapCodec::Opus, 48_000));
    let packets = rec.of(false);
    // 20 ms packets over ~4 s, some lost at the start before the publication.
    assert!(packets.len() >= 150, "{} Opus packets", packets.len());
    let ts: Vec<u32> = packets.iter().map(|p| p.timestamp).collect();
    assert!(
        ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 960),
        "Opus timestamps advance by 960 per packet"
    );
    // SDP says 2 channels (RFC 7587); the packets' TOC says what they hold.
    assert_eq!(audio.channels, Some(2));
    let channels = if packets[0].payload[0] & 0x04 != 0 {
        2
    } else {
        1
    };
    let mut decoder = opus_rs::OpusDecoder::new(48_000, channels).unwrap();
    let mut pcm = vec![0f32; 960 * channels];
    let (mut energy, mut n) = (0f64, 0usize);
    for p in packets.iter().skip(10) {
        let got = decoder
            .decode(&p.payload, 960, &mut pcm)
            .expect("Opus decodes");
        energy += pcm[..got * channels]
            .iter()
            .map(|s| (*s as f64).powi(2))
            .sum::<f64>();
        n += got * channels;
    }
    let rms = (energy / n as f64).sqrt();
    // ffmpeg's sine source is at 1/8 full scale: RMS ≈ 0.088.
    assert!((0.05..0.2).contains(&rms), "tone RMS {rms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_video_and_aac_to_opus() {
    let (sfu, port) = start(ServerConfig::default()).await;
    let recording = tokio::spawn({
        let sfu = sfu.clone();
        async move { record(&sfu, Duration::from_secs(20)).await }
    });
    let out = ffmpeg(port, 0, KEY, 4).wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = recording.await.unwrap();
    assert!(rec.ended, "the publication ends with the stream");
    let video = rec.track(true).expect("a video track");
    assert_eq!(video.codec, TapCodec::H264);
    let frames = rec.frame_timestamps();
    assert!(frames.len() >= 100, "{} frames", frames.len());
    // Passthrough keeps the encoder's 30 fps timing: 33 or 34 ms (FLV
    // timestamps are whole milliseconds) × 90 ticks per frame.
    assert!(
        frames
            .windows(2)
            .all(|w| (2970..=3060).contains(&w[1].wrapping_sub(w[0]))),
        "{frames:?}"
    );
    let first = rec.of(true)[0];
    assert!(
        first.keyframe_start,
        "the first video packet starts a keyframe"
    );
    assert!(rec.max_video_gap() < Duration::from_millis(300));
    assert_opus_carries_the_tone(&rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_frames_are_reencoded_in_presentation_order() {
    let (sfu, port) = start(ServerConfig::default()).await;
    let recording = tokio::spawn({
        let sfu = sfu.clone();
        async move { record(&sfu, Duration::from_secs(20)).await }
    });
    let out = ffmpeg(port, 2, KEY, 4).wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = recording.await.unwrap();
    let frames = rec.frame_timestamps();
    // The decoder holds back a couple of frames; the rest all come out.
    assert!(frames.len() >= 100, "{} frames", frames.len());
    assert!(
        frames.windows(2).all(|w| {
            let d = w[1].wrapping_sub(w[0]);
            d > 0 && d < 90_000
        }),
        "re-encoded frames are sent in presentation order: {frames:?}"
    );
    let first = rec.of(true)[0];
    assert!(first.keyframe_start);
    // openh264 writes constrained baseline: its SPS rides in the first STAP-A.
    assert_eq!(first.payload[0] & 0x1f, 24, "STAP-A");
    assert_eq!(first.payload[3] & 0x1f, 7, "SPS first");
    assert_eq!(first.payload[4], 66, "baseline profile_idc");
    assert_opus_carries_the_tone(&rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_nothing_is_published() {
    let (sfu, port) = start(ServerConfig::default()).await;
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        ffmpeg(port, 0, "not-the-key", 2).wait_with_output(),
    )
    .await
    .expect("ffmpeg gives up")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Unknown stream key"), "{stderr}");
    assert!(!sfu.is_live(ROOM).await);
    assert!(sfu.rooms_status().await.iter().all(|r| !r.live));
}

/// Bytes of a complete client handshake (C0, C1, C2) with `round` as filler.
fn handshake(round: u8) -> Vec<u8> {
    let mut v = vec![3u8];
    v.extend(std::iter::repeat_n(round, 2 * 1536));
    v
}

/// Reads until the server closes; the time it took, or None past `within`.
async fn closed_within(sock: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = [0u8; 8192];
    tokio::time::timeout(within, async {
        loop {
            match sock.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_do_not_disturb_a_live_room() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let (sfu, port) = start(config).await;
    let recording = tokio::spawn({
        let sfu = sfu.clone();
        async move { record(&sfu, Duration::from_secs(25)).await }
    });
    let good = ffmpeg(port, 0, KEY, 5);
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Truncated handshakes and a peer that connects and then says nothing:
    // the server closes them at the handshake timeout.
    let mut stalled = Vec::new();
    for cut in [0usize, 1, 700, 1537, 3000] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&handshake(9)[..cut]).await.unwrap();
        stalled.push(s);
    }
    for round in 0..10u8 {
        // Garbage version byte, garbage chunks, a huge chunk size, a 16 MiB
        // message, a wrong key under a valid handshake.
        let mut huge_chunk = handshake(round);
        huge_chunk.extend_from_slice(&[
            0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
        ]);
        let mut huge_message = handshake(round);
        huge_message.extend_from_slice(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0]);
        huge_message.extend(std::iter::repeat_n(0u8, 128));
        let mut garbage = handshake(round);
        let mut x = 0x9E37_79B9u32 ^ round as u32;
        garbage.extend((0..4096).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        for bytes in [vec![6u8; 1537], huge_chunk, huge_message, garbage] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let closed = closed_within(&mut s, Duration::from_secs(3)).await;
            assert!(closed.is_some(), "the server closes a bad connection");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut s in stalled {
        let closed = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(
            closed.is_some(),
            "a stalled handshake is closed at the timeout"
        );
    }

    let out = good.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = recording.await.unwrap();
    let frames = rec.frame_timestamps();
    assert!(frames.len() >= 130, "{} frames", frames.len());
    assert!(
        rec.max_video_gap() < Duration::from_millis(300),
        "video gap {:?}",
        rec.max_video_gap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let config = ServerConfig {
        max_connections: 2,
        handshake_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    };
    let (_sfu, port) = start(config).await;
    let _a = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _b = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = c.write_all(&handshake(1)).await;
    let closed = closed_within(&mut c, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the third connection is refused");
    drop((_a, _b));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    d.write_all(&handshake(1)[..1537]).await.unwrap();
    let mut s0s1 = [0u8; 1537];
    tokio::time::timeout(Duration::from_secs(2), d.read_exact(&mut s0s1))
        .await
        .expect("a slot is free again")
        .unwrap();
    assert_eq!(s0s1[0], 3);
}

/// A connection from `ip` (any 127.x.y.z is loopback on Linux).
async fn connect_from(ip: [u8; 4], port: u16) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((ip, 0))).unwrap();
    sock.connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Does the server answer C0+C1 with S0 within 2 s (an accepted connection)?
async fn served(sock: &mut TcpStream) -> bool {
    if sock.write_all(&handshake(1)[..1537]).await.is_err() {
        return false;
    }
    let mut s0s1 = [0u8; 1537];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), sock.read_exact(&mut s0s1)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_more_than_its_share_of_connections() {
    let config = ServerConfig {
        max_connections_per_ip: 2,
        handshake_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    };
    let (_sfu, port) = start(config).await;
    let mut a = connect_from([127, 0, 0, 1], port).await;
    let mut b = connect_from([127, 0, 0, 1], port).await;
    assert!(served(&mut a).await && served(&mut b).await);
    let mut c = connect_from([127, 0, 0, 1], port).await;
    let _ = c.write_all(&handshake(1)).await;
    let closed = closed_within(&mut c, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "a third connection from 127.0.0.1 is refused"
    );
    // Another address is still served, and so is 127.0.0.1 once one closes.
    let mut other = connect_from([127, 0, 0, 2], port).await;
    assert!(served(&mut other).await, "127.0.0.2 has its own share");
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = connect_from([127, 0, 0, 1], port).await;
    assert!(served(&mut d).await, "a slot of 127.0.0.1 is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_requests_make_the_reencoder_emit_an_idr() {
    let (sfu, port) = start(ServerConfig::default()).await;
    let mut tap = sfu.tap(ROOM);
    // One keyframe in 20 s from the encoder: any later one is ours.
    let child = ffmpeg_gop(port, 2, KEY, 4, 600);
    let mut keyframes = Vec::new();
    let mut requested = false;
    let start = tokio::time::Instant::now();
    while let Ok(Some(ev)) =
        tokio::time::timeout_at(start + Duration::from_secs(20), tap.events.recv()).await
    {
        match ev {
            TapEvent::Packet(p) if p.keyframe_start => keyframes.push(start.elapsed()),
            TapEvent::Packet(p)
                if p.track == 0 && !requested && start.elapsed() > Duration::from_secs(2) =>
            {
                tap.request_keyframe(p.track, 0);
                requested = true;
            }
            TapEvent::Ended => break,
            _ => {}
        }
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(requested);
    assert!(
        keyframes.len() >= 2,
        "the first IDR and the requested one: {keyframes:?}"
    );
}
