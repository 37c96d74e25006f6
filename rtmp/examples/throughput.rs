//! How much CPU the passthrough path costs: a 720p30 FLV made by ffmpeg is
//! chunked as an encoder would send it, then run through session → ingest →
//! packetizer, timed. A benchmark: it prints figures and checks nothing.
//! Run with `cargo run --release -p rtmp --example throughput`.

use std::path::Path;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtmp::amf0::{self, Value};
use rtmp::chunk::{msg_type, ChunkEncoder};
use rtmp::{
    AudioIngest, Event, H264Packetizer, ServerSession, SessionConfig, VideoEvent, VideoIngest,
};

/// FLV tags as (type, timestamp, body).
fn flv_tags(file: &[u8]) -> Vec<(u8, u32, Bytes)> {
    let mut tags = Vec::new();
    let mut p = 9 + 4; // header + PreviousTagSize0
    while p + 11 <= file.len() {
        let ty = file[p];
        let size = u32::from_be_bytes([0, file[p + 1], file[p + 2], file[p + 3]]) as usize;
        let ts = u32::from_be_bytes([file[p + 7], file[p + 4], file[p + 5], file[p + 6]]);
        let body = Bytes::copy_from_slice(&file[p + 11..p + 11 + size]);
        tags.push((ty, ts, body));
        p += 11 + size + 4;
    }
    tags
}

fn command(enc: &mut ChunkEncoder, stream: u32, values: &[Value], out: &mut BytesMut) {
    let body = amf0::encode_all(values);
    enc.encode(3, 0, msg_type::COMMAND_AMF0, stream, &body, out);
}

fn main() {
    let flv = std::env::temp_dir().join("rtmp-throughput-720p.flv");
    if !Path::new(&flv).exists() {
        let status = std::process::Command::new("/usr/bin/ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi"])
            .args([
                "-i",
                "testsrc2=size=1280x720:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine",
            ])
            .args([
                "-t", "20", "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M",
            ])
            .args(["-bf", "0", "-g", "60", "-c:a", "aac", "-f", "flv"])
            .arg(&flv)
            .status()
            .expect("ffmpeg");
        assert!(status.success());
    }
    let tags = flv_tags(&std::fs::read(&flv).unwrap());

    // The wire as an encoder writes it: handshake, connect … publish, media at chunk size 4096.
    let mut enc = ChunkEncoder::default();
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&[3u8; 1 + 2 * 1536]);
    enc.encode(
        2,
        0,
        msg_type::SET_CHUNK_SIZE,
        0,
        &4096u32.to_be_bytes(),
        &mut wire,
    );
    enc.set_chunk_size(4096);
    let app = Value::object([("app", Value::String("live".into()))]);
    command(&mut enc, 0, &["connect".into(), 1.0.into(), app], &mut wire);
    command(
        &mut enc,
        0,
        &["createStream".into(), 2.0.into(), Value::Null],
        &mut wire,
    );
    let publish = ["publish".into(), 3.0.into(), Value::Null, "KEY".into()];
    command(&mut enc, 1, &publish, &mut wire);
    let media_start = wire.len();
    let mut frames = 0usize;
    for (ty, ts, body) in &tags {
        let csid = if *ty == msg_type::AUDIO { 4 } else { 6 };
        enc.encode(csid, *ts, *ty, 1, body, &mut wire);
        frames += (*ty == msg_type::VIDEO) as usize;
    }
    let media_bytes = wire.len() - media_start;

    let started = Instant::now();
    let mut session = ServerSession::new(SessionConfig::default());
    let mut video = VideoIngest::default();
    let mut audio = AudioIngest::default();
    let mut packetizer = H264Packetizer::default();
    let (mut events, mut rtp) = (Vec::new(), Vec::new());
    let mut packets = 0usize;
    for read in wire.chunks(16 * 1024) {
        session.handle_input(read).unwrap();
        while let Some(event) = session.poll_event() {
            match event {
                Event::PublishRequested { .. } => session.accept_publish().unwrap(),
                Event::Video { timestamp, data } => {
                    video.push(timestamp, &data, &mut events).unwrap();
                    for e in events.drain(..) {
                        match e {
                            VideoEvent::Config { config, .. } => packetizer.set_config(&config),
                            VideoEvent::Frame(f) => {
                                rtp.clear();
                                packetizer
                                    .packetize(f.data, f.rtp_timestamp, &mut rtp)
                                    .unwrap();
                                packets += rtp.len();
                            }
                            _ => {}
                        }
                    }
                }
                Event::Audio { timestamp, data } => {
                    audio.push(timestamp, &data).unwrap();
                }
                _ => {}
            }
        }
        while session.poll_transmit().is_some() {}
    }
    let elapsed = started.elapsed();
    let seconds_of_media = frames as f64 / 30.0;
    println!(
        "{frames} video frames ({seconds_of_media:.0} s of 720p30, {:.1} Mbit/s), {packets} RTP payloads: \
         {:.1} ms CPU, {:.1} µs per frame, {:.3}% of one core in real time",
        media_bytes as f64 * 8.0 / seconds_of_media / 1e6,
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / frames as f64,
        elapsed.as_secs_f64() / seconds_of_media * 100.0,
    );
}
