//! The RTMP shim: lets legacy encoders (ffmpeg, OBS before WHIP, hardware
//! encoders, mobile apps) publish into a room as `rtmp://host/live/{stream key}`.
//!
//! This crate is the sans-IO core: it owns no socket, no thread, no clock.
//! The server side reads bytes from a TCP connection, feeds them to a
//! [`ServerSession`], writes back what [`ServerSession::poll_transmit`]
//! returns, and acts on the [`Event`]s: it decides whether a stream key may
//! publish, and turns FLV tags into RTP for the SFU.
//!
//! ```text
//!  TCP bytes ──► ServerSession ─┬─► Event::PublishRequested ──► caller: accept / reject
//!   ▲            (handshake,    ├─► Event::Video { dts, FLV body } ──► VideoIngest (flv, h264)
//!   │             chunks, AMF0) │        ├─ Config { avcC, SPS }   (size, profile)
//!   │                           │        ├─ BFramesDetected ──► caller: re-encode, log hint
//!   │                           │        └─ Frame { AVCC, DTS, PTS } ─► H264Packetizer
//!   │                           │                 ─► RTP payloads (90 kHz from PTS) ─► sfu
//!   │                           └─► Event::Audio { dts, FLV body } ──► AudioIngest
//!   └──── poll_transmit() ◄── replies (_result,        (AAC config, raw AAC frames)
//!                              onStatus, acks)
//! ```
//!
//! A server loop, in outline (the tokio version is `serve` in
//! `tests/real_encoders.rs`):
//!
//! ```no_run
//! # fn read() -> Vec<u8> { vec![] }
//! # fn write(_: &[u8]) {}
//! # fn key_is_valid(_: &str) -> bool { true }
//! # fn send_to_room(_: &[rtmp::RtpPayload]) {}
//! use rtmp::{Event, H264Packetizer, PublishRejection, ServerSession, SessionConfig};
//! use rtmp::{VideoEvent, VideoIngest};
//! let mut session = ServerSession::new(SessionConfig::default());
//! let mut video = VideoIngest::default();
//! let mut packetizer = H264Packetizer::default();
//! let (mut video_events, mut rtp) = (Vec::new(), Vec::new());
//! loop {
//!     let data = read();
//!     if data.is_empty() {
//!         break; // peer closed
//!     }
//!     // Every `Err` below also closes the session (`is_closed`): log it, no more.
//!     let _ = session.handle_input(&data);
//!     while let Some(event) = session.poll_event() {
//!         match event {
//!             Event::PublishRequested { stream_key, .. } => {
//!                 let _ = if key_is_valid(&stream_key) {
//!                     session.accept_publish()
//!                 } else {
//!                     session.reject_publish(PublishRejection::BadName, "Unknown stream key.")
//!                 };
//!             }
//!             Event::Video { timestamp, data } => {
//!                 if video.push(timestamp, &data, &mut video_events).is_err() {
//!                     continue; // a bad tag: drop it (or the connection)
//!                 }
//!                 for event in video_events.drain(..) {
//!                     match event {
//!                         VideoEvent::Config { config, .. } => packetizer.set_config(&config),
//!                         VideoEvent::Frame(frame) => {
//!                             rtp.clear();
//!                             if packetizer.packetize(frame.data, frame.rtp_timestamp, &mut rtp).is_ok() {
//!                                 send_to_room(&rtp);
//!                             }
//!                         }
//!                         _ => {}
//!                     }
//!                 }
//!             }
//!             _ => {}
//!         }
//!     }
//!     while let Some(bytes) = session.poll_transmit() {
//!         write(&bytes);
//!     }
//!     if session.is_closed() {
//!         break;
//!     }
//! }
//! ```
//!
//! # What it must never do
//!
//! - Panic on, or allocate without bound for, anything a peer sends: every
//!   malformed handshake, chunk, AMF value, FLV tag, SPS or AVCC length is an
//!   [`Error`] value; the caller drops that one connection. Limits
//!   ([`ChunkLimits`]) bound chunk size, message size, chunk stream count and
//!   buffered bytes.
//! - Touch sockets, threads, clocks or the SFU: those live in the server
//!   that wires it, so everything here is tested deterministically.
//! - Log or echo stream keys: they are secrets.
//!
//! # Why our own RTMP implementation rather than `rml_rtmp`
//!
//! `rml_rtmp` 0.8.0 (the protocol half of rust-media-libs; last commit May
//! 2023, chunk deserializer unchanged since 2021) is proven with OBS and
//! ffmpeg, and its server session is sans-IO too. Read against this
//! project's needs:
//!
//! - its chunk deserializer keeps one in-progress payload buffer for all
//!   chunk streams, so messages interleaved across chunk streams (legal, and
//!   what muxers do with audio and video) get mixed, and its
//!   `length - current_payload_length` then underflows (a panic with
//!   overflow checks, garbage without);
//! - the extended-timestamp delta `timestamp - 0xFFFFFF` underflows the same
//!   way when a peer sends a small extended value;
//! - it accepts chunk sizes up to 2^31 and reserves whatever message length
//!   a header announces (up to 16 MiB), with no bound on chunk streams or on
//!   memory per connection;
//! - it knows nothing of Enhanced RTMP, and is rarely maintained.
//!
//! The parts we need (simple handshake, chunk codec, AMF0 with AMF3
//! tolerance, the publish command flow) came to about 2,500 lines with their
//! tests, so we own them: per-stream reassembly, explicit [`ChunkLimits`],
//! bounded AMF decoding, errors as values, zero-copy `Bytes` payloads, and
//! Enhanced RTMP FourCC parsing in [`flv`]. The RTMP complex (digest)
//! handshake is not implemented: ffmpeg, OBS/librtmp and GStreamer publish
//! with the simple one; only Flash-era *players* insisted on the digest.
//!
//! # Modules
//!
//! - [`session`]: the per-connection state machine and its events.
//! - [`chunk`]: chunk stream decoder/encoder with limits.
//! - [`amf0`]: AMF0 values (with AMF3-in-AMF0 tolerance).
//! - [`flv`]: audio/video tag bodies, AAC AudioSpecificConfig, Enhanced RTMP.
//! - [`h264`]: AVCDecoderConfigurationRecord, AVCC and Annex B NAL units,
//!   SPS (size, profile, VUI reordering), B-frame detection.
//! - [`ingest`]: one stream's tags → decoder config, timed access units,
//!   B-frame verdict, AAC frames (the layer the server wires to the room).
//! - [`packetizer`]: H.264 → RTP payloads (single NAL, STAP-A, FU-A).
//! - [`server`]: the live half: the tokio TCP server (timeouts, connection
//!   limit, stream key → room) that publishes into the SFU.
//! - [`transcode`]: AAC → Opus, and the openh264 re-encode of B-frame streams
//!   on its own thread.
//! - `fuzzing`: the bodies of the fuzz targets in `rtmp/fuzz` (`cargo +nightly
//!   fuzz run session|flv|amf0`, needs cargo-fuzz), also run on stable by
//!   `tests/fuzz_bodies.rs` over random and mutated real inputs.

pub mod amf0;
pub mod chunk;
mod error;
pub mod flv;
#[doc(hidden)]
pub mod fuzzing;
pub mod h264;
pub mod ingest;
pub mod packetizer;
pub mod server;
pub mod session;
pub mod transcode;

pub use chunk::{ChunkLimits, Message};
pub use error::Error;
pub use ingest::{
    AacFrame, AudioEvent, AudioIngest, VideoEvent, VideoFrame, VideoIngest, B_FRAMES_HINT,
};
pub use packetizer::{rtp_timestamp, H264Packetizer, RtpPayload};
pub use server::{
    serve, serve_with, source_key, AdmissionHook, Rejection, RejectionHook, ServerConfig,
    StreamKeys,
};
pub use session::{Event, PublishRejection, ServerSession, SessionConfig};
