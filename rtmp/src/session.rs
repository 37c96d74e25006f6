//! The sans-IO server side of one RTMP connection: bytes in, [`Event`]s and
//! bytes out.
//!
//! ```text
//! socket ─read─► handle_input(&[u8]) ─► handshake ─► ChunkDecoder ─► commands / media
//!                                                                       │
//!        ◄─write─ poll_transmit() ◄── ChunkEncoder ◄── replies          └─► poll_event()
//! ```
//!
//! The session never blocks, never reads a clock and never touches a socket.
//! The one decision it leaves to the caller is whether a stream key may
//! publish: it emits [`Event::PublishRequested`] and waits for
//! [`ServerSession::accept_publish`] or [`ServerSession::reject_publish`].

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::amf0::{self, Value};
use crate::chunk::{msg_type, ChunkDecoder, ChunkEncoder, ChunkLimits, Message};
use crate::Error;

/// Size of C1/C2/S1/S2.
const HANDSHAKE_SIZE: usize = 1536;
/// Chunk stream ids the server writes on (any id ≥ 2 is legal; these are the customary ones).
const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STATUS: u32 = 5;
/// Largest AMF command or data message accepted. Real ones are under 2 KiB;
/// decoded AMF takes up to ~50× its wire size, so the bound matters.
const MAX_AMF_MESSAGE: usize = 64 * 1024;
/// User control event types (spec §7.1.7).
const UC_STREAM_BEGIN: u16 = 0;
const UC_PING_REQUEST: u16 = 6;
const UC_PING_RESPONSE: u16 = 7;

/// Tunables of one session. The defaults run with ffmpeg and OBS as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub limits: ChunkLimits,
    /// Chunk size the server announces and writes with.
    pub out_chunk_size: u32,
    /// Window Acknowledgement Size announced to the peer.
    pub window_ack_size: u32,
    /// Set Peer Bandwidth announced to the peer.
    pub peer_bandwidth: u32,
    /// Application names that may publish (`rtmp://host/{app}/{key}`); empty = any.
    pub apps: Vec<String>,
    /// Seeds the S1 filler bytes, which need to be unpredictable only to
    /// defeat naive replay; a fixed default keeps tests deterministic.
    pub handshake_seed: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            limits: ChunkLimits::default(),
            out_chunk_size: 4096,
            window_ack_size: 2_500_000,
            peer_bandwidth: 2_500_000,
            apps: vec!["live".to_owned()],
            handshake_seed: 0x9E37_79B9,
        }
    }
}

/// What happened on the connection, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `connect` was answered with success.
    Connected { app: String, tc_url: Option<String> },
    /// The peer wants to publish; answer with `accept_publish` or `reject_publish`.
    /// `stream_key` is a secret: do not log it.
    PublishRequested { app: String, stream_key: String },
    /// `@setDataFrame`/`onMetaData` properties (width, height, framerate, encoder…).
    Metadata(Vec<(String, Value)>),
    /// An FLV audio tag body (parse with [`crate::flv::AudioTag::parse`]).
    Audio { timestamp: u32, data: Bytes },
    /// An FLV video tag body (parse with [`crate::flv::VideoTag::parse`]); the
    /// timestamp is the DTS in milliseconds.
    Video { timestamp: u32, data: Bytes },
    /// The peer ended an accepted publication (`FCUnpublish`/`deleteStream`).
    PublishFinished,
}

/// Why a publish request is refused; becomes the `onStatus` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRejection {
    /// Unknown stream key or application, or the key is already live.
    BadName,
    /// The key exists but may not publish now (disabled, expired token…).
    Unauthorized,
}

impl PublishRejection {
    pub fn code(self) -> &'static str {
        match self {
            PublishRejection::BadName => "NetStream.Publish.BadName",
            PublishRejection::Unauthorized => "NetStream.Publish.Unauthorized",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for C0+C1.
    Handshake0,
    /// S0+S1+S2 sent, waiting for C2.
    Handshake2,
    Chunks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    Idle,
    Pending { stream_id: u32 },
    Live,
}

/// One RTMP connection, server side.
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    phase: Phase,
    input: BytesMut,
    output: BytesMut,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    events: VecDeque<Event>,
    app: Option<String>,
    next_stream_id: u32,
    publish: Publish,
    closed: bool,
    received: u64,
    last_ack: u64,
    peer_window: Option<u32>,
}

impl ServerSession {
    pub fn new(config: SessionConfig) -> Self {
        ServerSession {
            decoder: ChunkDecoder::new(config.limits),
            config,
            phase: Phase::Handshake0,
            input: BytesMut::new(),
            output: BytesMut::new(),
            encoder: ChunkEncoder::default(),
            events: VecDeque::new(),
            app: None,
            next_stream_id: 1,
            publish: Publish::Idle,
            closed: false,
            received: 0,
            last_ack: 0,
            peer_window: None,
        }
    }

    /// Feeds bytes read from the socket. On `Err` the connection is broken:
    /// send what [`poll_transmit`](Self::poll_transmit) still has, then close.
    /// Input after the session closed is ignored.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        self.received += data.len() as u64;
        self.input.extend_from_slice(data);
        let r = self.process();
        if r.is_err() {
            self.closed = true;
        }
        r?;
        self.acknowledge();
        Ok(())
    }

    /// The next event, if any. Drain after every `handle_input`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to write to the socket, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.output.is_empty() {
            None
        } else {
            Some(self.output.split().freeze())
        }
    }

    /// True once the session wants the connection closed (after a rejected
    /// publish or an error); flush `poll_transmit` first.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True while an accepted publication is running.
    pub fn is_publishing(&self) -> bool {
        self.publish == Publish::Live
    }

    /// Accepts the pending [`Event::PublishRequested`]: the peer is told
    /// `NetStream.Publish.Start` and media events follow. Input that arrived
    /// while the decision was pending is processed now, so drain
    /// [`poll_event`](Self::poll_event) again; an `Err` here means that input
    /// was malformed and the connection must be closed.
    pub fn accept_publish(&mut self) -> Result<(), Error> {
        let Publish::Pending { stream_id } = self.publish else {
            return Err(Error::InvalidCall(
                "accept_publish without a pending publish",
            ));
        };
        let mut uc = Vec::with_capacity(6);
        uc.extend_from_slice(&UC_STREAM_BEGIN.to_be_bytes());
        uc.extend_from_slice(&stream_id.to_be_bytes());
        self.send(CSID_CONTROL, msg_type::USER_CONTROL, 0, &uc);
        self.send_status(
            stream_id,
            "status",
            "NetStream.Publish.Start",
            "Publishing started.",
        );
        self.publish = Publish::Live;
        // Input that arrived while the decision was pending.
        let r = self.process();
        if r.is_err() {
            self.closed = true;
        }
        r
    }

    /// Refuses the pending publish with a status the encoder shows its user,
    /// then closes the session.
    pub fn reject_publish(
        &mut self,
        reason: PublishRejection,
        description: &str,
    ) -> Result<(), Error> {
        let Publish::Pending { stream_id } = self.publish else {
            return Err(Error::InvalidCall(
                "reject_publish without a pending publish",
            ));
        };
        self.refuse(stream_id, reason, description);
        Ok(())
    }

    fn refuse(&mut self, stream_id: u32, reason: PublishRejection, description: &str) {
        self.send_status(stream_id, "error", reason.code(), description);
        self.publish = Publish::Idle;
        self.closed = true;
    }

    fn process(&mut self) -> Result<(), Error> {
        loop {
            match self.phase {
                Phase::Handshake0 => {
                    let Some(&version) = self.input.first() else {
                        return Ok(());
                    };
                    if version != 3 {
                        return Err(Error::UnsupportedVersion(version));
                    }
                    if self.input.len() < 1 + HANDSHAKE_SIZE {
                        return Ok(());
                    }
                    self.input.advance(1);
                    let c1 = self.input.split_to(HANDSHAKE_SIZE);
                    self.write_handshake(&c1);
                    self.phase = Phase::Handshake2;
                }
                Phase::Handshake2 => {
                    // C2 echoes S1; clients that do the digest handshake put
                    // other bytes there, and nothing is gained by checking.
                    if self.input.len() < HANDSHAKE_SIZE {
                        return Ok(());
                    }
                    self.input.advance(HANDSHAKE_SIZE);
                    self.phase = Phase::Chunks;
                }
                Phase::Chunks => {
                    while !self.closed {
                        if let Publish::Pending { .. } = self.publish {
                            // Hold the rest of the input until the caller
                            // decides: what follows depends on the answer.
                            let limit = self.config.limits.max_buffered;
                            if self.input.len() > limit {
                                return Err(Error::BufferLimit { limit });
                            }
                            return Ok(());
                        }
                        match self.decoder.decode(&mut self.input)? {
                            Some(m) => self.on_message(m)?,
                            None => return Ok(()),
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    fn write_handshake(&mut self, c1: &[u8]) {
        // S0, S1 = time 0, zero version, filler; S2 = echo of C1: the simple
        // handshake. ffmpeg and GStreamer publish with it; librtmp (inside
        // OBS) starts the FP9 digest handshake but falls back to the simple
        // one when S1's version bytes are zero, as here.
        self.output.reserve(1 + 2 * HANDSHAKE_SIZE);
        self.output.extend_from_slice(&[3]);
        self.output.extend_from_slice(&[0; 8]);
        let mut x = self.config.handshake_seed | 1;
        for _ in 0..(HANDSHAKE_SIZE - 8) / 4 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.output.extend_from_slice(&x.to_be_bytes());
        }
        self.output.extend_from_slice(c1);
    }

    fn acknowledge(&mut self) {
        if let Some(window) = self.peer_window {
            if self.received - self.last_ack >= window as u64 {
                self.last_ack = self.received;
                // The sequence number is the byte count, wrapping at 2^32.
                let seq = (self.received as u32).to_be_bytes();
                self.send(CSID_CONTROL, msg_type::ACKNOWLEDGEMENT, 0, &seq);
            }
        }
    }

    fn send(&mut self, csid: u32, type_id: u8, stream_id: u32, payload: &[u8]) {
        self.encoder
            .encode(csid, 0, type_id, stream_id, payload, &mut self.output);
    }

    fn send_command(&mut self, csid: u32, stream_id: u32, values: &[Value]) {
        let body = amf0::encode_all(values);
        self.send(csid, msg_type::COMMAND_AMF0, stream_id, &body);
    }

    fn send_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.send_command(
            CSID_STATUS,
            stream_id,
            &[
                Value::String("onStatus".into()),
                Value::Number(0.0),
                Value::Null,
                Value::object([
                    ("level", Value::String(level.into())),
                    ("code", Value::String(code.into())),
                    ("description", Value::String(description.into())),
                ]),
            ],
        );
    }

    fn send_result(&mut self, txn: f64, values: Vec<Value>) {
        if txn == 0.0 {
            return; // the peer expects no answer
        }
        let mut all = vec![Value::String("_result".into()), Value::Number(txn)];
        all.extend(values);
        self.send_command(CSID_COMMAND, 0, &all);
    }

    fn on_message(&mut self, m: Message) -> Result<(), Error> {
        let command = matches!(m.type_id, msg_type::COMMAND_AMF0 | msg_type::COMMAND_AMF3);
        if command && m.payload.len() > MAX_AMF_MESSAGE {
            return Err(Error::MessageTooLarge {
                size: m.payload.len() as u32,
                limit: MAX_AMF_MESSAGE as u32,
            });
        }
        match m.type_id {
            msg_type::WINDOW_ACK_SIZE => {
                let b = m
                    .payload
                    .get(0..4)
                    .ok_or(Error::truncated("Window Ack Size"))?;
                let w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                self.peer_window = (w > 0).then_some(w);
            }
            msg_type::USER_CONTROL
                if m.payload.len() >= 6
                    && u16::from_be_bytes([m.payload[0], m.payload[1]]) == UC_PING_REQUEST =>
            {
                let mut pong = UC_PING_RESPONSE.to_be_bytes().to_vec();
                pong.extend_from_slice(&m.payload[2..6]);
                self.send(CSID_CONTROL, msg_type::USER_CONTROL, 0, &pong);
            }
            msg_type::AUDIO | msg_type::VIDEO | msg_type::DATA_AMF0 => {
                self.on_media(m.type_id, m.timestamp, m.payload);
            }
            msg_type::DATA_AMF3 => {
                // AMF3 data messages carry a format byte (0) before AMF0 values.
                let p = if m.payload.first() == Some(&0) {
                    m.payload.slice(1..)
                } else {
                    m.payload
                };
                self.on_media(msg_type::DATA_AMF0, m.timestamp, p);
            }
            msg_type::AGGREGATE => self.on_aggregate(&m)?,
            msg_type::COMMAND_AMF0 => self.on_command(&m.payload, m.stream_id)?,
            msg_type::COMMAND_AMF3 => {
                let p = m.payload.get(1..).unwrap_or(&[]);
                self.on_command(p, m.stream_id)?
            }
            // Set Chunk Size and Abort were applied by the decoder; acks,
            // peer bandwidth and unknown types need nothing from a publisher's server.
            _ => {}
        }
        Ok(())
    }

    /// Media outside an accepted publication is dropped: a rejected key must
    /// publish nothing. (Input after a publish request is held, not dropped,
    /// until the caller answers.)
    fn on_media(&mut self, type_id: u8, timestamp: u32, data: Bytes) {
        if self.publish != Publish::Live {
            return;
        }
        match type_id {
            msg_type::AUDIO => self.events.push_back(Event::Audio { timestamp, data }),
            msg_type::VIDEO => self.events.push_back(Event::Video { timestamp, data }),
            _ => {
                // Metadata is informative: a malformed or oversized one is
                // ignored, never fatal.
                if data.len() > MAX_AMF_MESSAGE {
                    return;
                }
                if let Ok(values) = amf0::decode_all(&data) {
                    let mut it = values.into_iter().peekable();
                    if it.peek().and_then(Value::as_str) == Some("@setDataFrame") {
                        it.next();
                    }
                    if it.next().as_ref().and_then(Value::as_str) == Some("onMetaData") {
                        if let Some(props) = it.next().as_ref().and_then(Value::properties) {
                            self.events.push_back(Event::Metadata(props.to_vec()));
                        }
                    }
                }
            }
        }
    }

    /// Aggregate messages hold FLV tags back to back (type, size, timestamp,
    /// stream id, body, previous tag size); timestamps are relative to the first.
    fn on_aggregate(&mut self, m: &Message) -> Result<(), Error> {
        let mut p = &m.payload[..];
        let mut first_ts = None;
        while !p.is_empty() {
            if p.len() < 11 {
                return Err(Error::truncated("aggregate message"));
            }
            let type_id = p[0];
            let size = ((p[1] as usize) << 16) | ((p[2] as usize) << 8) | p[3] as usize;
            let ts =
                ((p[7] as u32) << 24) | ((p[4] as u32) << 16) | ((p[5] as u32) << 8) | p[6] as u32;
            let end = 11 + size;
            if p.len() < end + 4 {
                return Err(Error::truncated("aggregate message"));
            }
            let base = *first_ts.get_or_insert(ts);
            let timestamp = m.timestamp.wrapping_add(ts.wrapping_sub(base));
            let offset = m.payload.len() - p.len();
            let body = m.payload.slice(offset + 11..offset + end);
            if matches!(
                type_id,
                msg_type::AUDIO | msg_type::VIDEO | msg_type::DATA_AMF0
            ) {
                self.on_media(type_id, timestamp, body);
            }
            p = &p[end + 4..];
        }
        Ok(())
    }

    fn on_command(&mut self, payload: &[u8], stream_id: u32) -> Result<(), Error> {
        let values = amf0::decode_all(payload)?;
        let mut it = values.into_iter();
        let name = match it.next() {
            Some(Value::String(s)) => s,
            _ => return Err(Error::malformed("command", "name is not a string")),
        };
        let txn = it.next().and_then(|v| v.as_number()).unwrap_or(0.0);
        let args: Vec<Value> = it.collect();

        if name == "connect" {
            return self.on_connect(txn, args.first());
        }
        if self.app.is_none() {
            return Err(Error::Protocol("command before connect"));
        }
        match name.as_str() {
            "releaseStream" | "FCPublish" | "_checkbw" => {
                self.send_result(txn, vec![Value::Null, Value::Undefined])
            }
            "createStream" => {
                let id = self.next_stream_id;
                self.next_stream_id = self.next_stream_id.saturating_add(1);
                self.send_result(txn, vec![Value::Null, Value::Number(id as f64)]);
            }
            "publish" => {
                // publish(txn, null, name, type): the name is the stream key.
                let name = args.get(1).and_then(Value::as_str).unwrap_or("");
                self.on_publish(name.to_owned(), stream_id)?;
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => {
                if self.publish == Publish::Live {
                    self.events.push_back(Event::PublishFinished);
                }
                self.publish = Publish::Idle;
                if name == "FCUnpublish" {
                    self.send_result(txn, vec![Value::Null, Value::Undefined]);
                }
            }
            "_result" | "_error" | "onBWDone" | "onStatus" => {}
            _ => {
                if txn != 0.0 {
                    self.send_command(
                        CSID_COMMAND,
                        0,
                        &[
                            Value::String("_error".into()),
                            Value::Number(txn),
                            Value::Null,
                            Value::object([
                                ("level", Value::String("error".into())),
                                ("code", Value::String("NetConnection.Call.Failed".into())),
                                (
                                    "description",
                                    Value::String(
                                        "Unsupported command: this server only accepts publishing."
                                            .into(),
                                    ),
                                ),
                            ]),
                        ],
                    );
                }
            }
        }
        Ok(())
    }

    fn on_connect(&mut self, txn: f64, command_object: Option<&Value>) -> Result<(), Error> {
        if self.app.is_some() {
            return Err(Error::Protocol("second connect"));
        }
        let obj = command_object.ok_or(Error::malformed("connect", "no command object"))?;
        let app = obj
            .get("app")
            .and_then(Value::as_str)
            .ok_or(Error::malformed("connect", "no app"))?
            .to_owned();
        let tc_url = obj.get("tcUrl").and_then(Value::as_str).map(str::to_owned);
        let encoding = obj
            .get("objectEncoding")
            .and_then(Value::as_number)
            .unwrap_or(0.0);

        let (window, bandwidth, chunk) = (
            self.config.window_ack_size,
            self.config.peer_bandwidth,
            self.config.out_chunk_size.clamp(128, 0x7FFF_FFFF),
        );
        self.send(
            CSID_CONTROL,
            msg_type::WINDOW_ACK_SIZE,
            0,
            &window.to_be_bytes(),
        );
        let mut bw = bandwidth.to_be_bytes().to_vec();
        bw.push(2); // dynamic limit
        self.send(CSID_CONTROL, msg_type::SET_PEER_BANDWIDTH, 0, &bw);
        self.send(
            CSID_CONTROL,
            msg_type::SET_CHUNK_SIZE,
            0,
            &chunk.to_be_bytes(),
        );
        self.encoder.set_chunk_size(chunk);
        let result = vec![
            Value::object([
                ("fmsVer", Value::String("FMS/3,0,1,123".into())),
                ("capabilities", Value::Number(31.0)),
            ]),
            Value::object([
                ("level", Value::String("status".into())),
                (
                    "code",
                    Value::String("NetConnection.Connect.Success".into()),
                ),
                ("description", Value::String("Connection succeeded.".into())),
                ("objectEncoding", Value::Number(encoding)),
            ]),
        ];
        self.send_result(txn.max(1.0), result);
        self.events.push_back(Event::Connected {
            app: app.clone(),
            tc_url,
        });
        self.app = Some(app);
        Ok(())
    }

    fn on_publish(&mut self, name: String, stream_id: u32) -> Result<(), Error> {
        if self.publish != Publish::Idle {
            return Err(Error::Protocol(
                "publish while a publication is pending or live",
            ));
        }
        let (app, key) = split_stream_key(self.app.as_deref().unwrap_or(""), &name);
        let allowed = self.config.apps.is_empty() || self.config.apps.contains(&app);
        if !allowed {
            let d =
                format!("Unknown application '{app}': publish to rtmp://<host>/live/<stream key>.");
            self.refuse(stream_id, PublishRejection::BadName, &d);
            return Ok(());
        }
        if key.is_empty() {
            self.refuse(
                stream_id,
                PublishRejection::BadName,
                "Missing stream key: publish to rtmp://<host>/live/<stream key>.",
            );
            return Ok(());
        }
        self.publish = Publish::Pending { stream_id };
        self.events.push_back(Event::PublishRequested {
            app,
            stream_key: key,
        });
        Ok(())
    }
}

/// `(app, key)` from the connect app and the publish name. Handles
/// `rtmp://host/live/KEY` (app `live`, name `KEY`), OBS's "Server" +
/// "Stream Key" (the same, sometimes with a trailing slash on the app), and a
/// key put in the server URL with an empty stream name (app `live/KEY`).
/// Query strings (`KEY?token=…`) are not part of the key.
fn split_stream_key(app: &str, name: &str) -> (String, String) {
    let app = app.split('?').next().unwrap_or("").trim_matches('/');
    let name = name.split('?').next().unwrap_or("").trim_matches('/');
    match app.split_once('/') {
        Some((first, rest)) if name.is_empty() => (first.to_owned(), rest.to_owned()),
        _ => (app.to_owned(), name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted client: writes what ffmpeg writes, reads the server's replies.
    struct Client {
        enc: ChunkEncoder,
        dec: ChunkDecoder,
        inbox: BytesMut,
        handshake_left: usize,
        /// Messages read but not yet looked at by the test.
        leftover: Vec<Message>,
    }

    impl Client {
        fn new() -> Self {
            Client {
                enc: ChunkEncoder::default(),
                dec: ChunkDecoder::new(ChunkLimits::default()),
                inbox: BytesMut::new(),
                handshake_left: 1 + 2 * HANDSHAKE_SIZE,
                leftover: Vec::new(),
            }
        }

        fn hello() -> Vec<u8> {
            let mut v = vec![3u8];
            v.extend((0..HANDSHAKE_SIZE).map(|i| i as u8));
            v.extend(vec![0u8; HANDSHAKE_SIZE]); // C2
            v
        }

        fn command(&mut self, stream_id: u32, values: &[Value]) -> Vec<u8> {
            let mut out = BytesMut::new();
            let body = amf0::encode_all(values);
            self.enc
                .encode(3, 0, msg_type::COMMAND_AMF0, stream_id, &body, &mut out);
            out.to_vec()
        }

        fn media(&mut self, type_id: u8, ts: u32, body: &[u8]) -> Vec<u8> {
            let mut out = BytesMut::new();
            let csid = if type_id == msg_type::AUDIO { 4 } else { 6 };
            self.enc.encode(csid, ts, type_id, 1, body, &mut out);
            out.to_vec()
        }

        /// Reads all server output; returns the decoded messages.
        fn read(&mut self, s: &mut ServerSession) -> Vec<Message> {
            while let Some(b) = s.poll_transmit() {
                self.inbox.extend_from_slice(&b);
            }
            let skip = self.handshake_left.min(self.inbox.len());
            self.inbox.advance(skip);
            self.handshake_left -= skip;
            let mut msgs = std::mem::take(&mut self.leftover);
            while let Some(m) = self.dec.decode(&mut self.inbox).unwrap() {
                msgs.push(m);
            }
            msgs
        }
    }

    fn events(s: &mut ServerSession) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn cmd_name(m: &Message) -> (String, Vec<Value>) {
        let v = amf0::decode_all(&m.payload).unwrap();
        (v[0].as_str().unwrap().to_owned(), v)
    }

    fn connect(c: &mut Client, s: &mut ServerSession, app: &str) {
        s.handle_input(&Client::hello()).unwrap();
        let conn = c.command(
            0,
            &[
                Value::String("connect".into()),
                Value::Number(1.0),
                Value::object([
                    ("app", Value::String(app.into())),
                    ("tcUrl", Value::String(format!("rtmp://127.0.0.1/{app}"))),
                ]),
            ],
        );
        s.handle_input(&conn).unwrap();
        let msgs = c.read(s);
        let types: Vec<u8> = msgs.iter().map(|m| m.type_id).collect();
        assert_eq!(types, vec![5, 6, 1, 20]);
        let (name, v) = cmd_name(&msgs[3]);
        assert_eq!(name, "_result");
        assert_eq!(
            v[3].get("code").and_then(Value::as_str),
            Some("NetConnection.Connect.Success")
        );
        assert_eq!(c.dec.chunk_size(), 4096);
    }

    fn publish(c: &mut Client, s: &mut ServerSession, key: &str) -> Vec<Event> {
        let mut wire = Vec::new();
        for (i, name) in ["releaseStream", "FCPublish"].iter().enumerate() {
            wire.extend(c.command(
                0,
                &[
                    Value::String((*name).into()),
                    Value::Number(2.0 + i as f64),
                    Value::Null,
                    Value::String(key.into()),
                ],
            ));
        }
        wire.extend(c.command(
            0,
            &[
                Value::String("createStream".into()),
                Value::Number(4.0),
                Value::Null,
            ],
        ));
        wire.extend(c.command(
            1,
            &[
                Value::String("publish".into()),
                Value::Number(5.0),
                Value::Null,
                Value::String(key.into()),
                Value::String("live".into()),
            ],
        ));
        s.handle_input(&wire).unwrap();
        let mut msgs = c.read(s);
        c.leftover = msgs.split_off(3);
        let replies: Vec<_> = msgs.iter().map(cmd_name).collect();
        assert!(replies.iter().all(|r| r.0 == "_result"));
        assert_eq!(replies[2].1[1], Value::Number(4.0));
        assert_eq!(
            replies[2].1[3],
            Value::Number(1.0),
            "createStream → stream id 1"
        );
        events(s)
    }

    #[test]
    fn ffmpeg_like_publish_flow() {
        let mut s = ServerSession::new(SessionConfig::default());
        let mut c = Client::new();
        connect(&mut c, &mut s, "live");
        let ev = publish(&mut c, &mut s, "KEY");
        assert_eq!(
            ev,
            vec![
                Event::Connected {
                    app: "live".into(),
                    tc_url: Some("rtmp://127.0.0.1/live".into())
                },
                Event::PublishRequested {
                    app: "live".into(),
                    stream_key: "KEY".into()
                }
            ]
        );
        // Input before the answer waits for it.
        s.handle_input(&c.media(msg_type::VIDEO, 0, &[0x17, 0, 0, 0, 0]))
            .unwrap();
        assert!(events(&mut s).is_empty());

        s.accept_publish().unwrap();
        assert!(matches!(&events(&mut s)[..], [Event::Video { .. }]));
        let msgs = c.read(&mut s);
        assert_eq!(msgs[0].type_id, msg_type::USER_CONTROL);
        let (name, v) = cmd_name(&msgs[1]);
        assert_eq!(name, "onStatus");
        assert_eq!(msgs[1].stream_id, 1);
        assert_eq!(
            v[3].get("code").and_then(Value::as_str),
            Some("NetStream.Publish.Start")
        );
        assert!(s.is_publishing());

        // Metadata, then audio and video; a big video frame spans chunks.
        let mut wire = Vec::new();
        let meta = amf0::encode_all(&[
            Value::String("@setDataFrame".into()),
            Value::String("onMetaData".into()),
            Value::EcmaArray(vec![("width".into(), Value::Number(640.0))]),
        ]);
        let mut out = BytesMut::new();
        c.enc.encode(4, 0, msg_type::DATA_AMF0, 1, &meta, &mut out);
        wire.extend_from_slice(&out);
        wire.extend(c.media(msg_type::AUDIO, 0, &[0xAF, 0, 0x12, 0x10]));
        let frame = vec![0x27u8; 1000];
        wire.extend(c.media(msg_type::VIDEO, 33, &frame));
        // Feed one byte at a time: the session must not care how reads split.
        for b in &wire {
            s.handle_input(std::slice::from_ref(b)).unwrap();
        }
        let ev = events(&mut s);
        assert_eq!(
            ev[0],
            Event::Metadata(vec![("width".into(), Value::Number(640.0))])
        );
        assert!(matches!(&ev[1], Event::Audio { timestamp: 0, data } if data.len() == 4));
        assert!(matches!(&ev[2], Event::Video { timestamp: 33, data } if data.len() == 1000));

        // FCUnpublish + deleteStream end it.
        let end = c.command(
            0,
            &[
                Value::String("deleteStream".into()),
                Value::Number(0.0),
                Value::Null,
                Value::Number(1.0),
            ],
        );
        s.handle_input(&end).unwrap();
        assert_eq!(events(&mut s), vec![Event::PublishFinished]);
        assert!(!s.is_closed());
    }

    /// What Debian's ffmpeg 5.1 sent, from C0 to its AAC and AVC sequence
    /// headers (`-c:v libx264 -bf 2 -c:a aac -f flv rtmp://…/live/KEY`, 160x90).
    const FFMPEG_CAPTURE: &[u8] = include_bytes!("../tests/data/ffmpeg51_publish_start.bin");

    /// Replays the capture in `step`-byte reads, accepting the publish.
    fn replay(data: &[u8], step: usize) -> (Vec<Event>, Result<(), Error>) {
        let mut s = ServerSession::new(SessionConfig::default());
        let mut ev = Vec::new();
        for piece in data.chunks(step) {
            if let Err(e) = s.handle_input(piece) {
                return (ev, Err(e));
            }
            while let Some(e) = s.poll_event() {
                let requested = matches!(e, Event::PublishRequested { .. });
                ev.push(e);
                if requested {
                    if let Err(e) = s.accept_publish() {
                        return (ev, Err(e));
                    }
                }
            }
            while s.poll_transmit().is_some() {}
        }
        (ev, Ok(()))
    }

    #[test]
    fn replays_a_captured_ffmpeg_publish() {
        use crate::flv::{AudioPacket, AudioTag, VideoPacket, VideoTag};
        use crate::h264::{AvcDecoderConfig, Reordering};
        for step in [FFMPEG_CAPTURE.len(), 1, 7, 1000] {
            let (ev, r) = replay(FFMPEG_CAPTURE, step);
            r.unwrap();
            assert_eq!(
                ev[..2],
                [
                    Event::Connected {
                        app: "live".into(),
                        tc_url: ev_tc_url(&ev[0]),
                    },
                    Event::PublishRequested {
                        app: "live".into(),
                        stream_key: "KEY".into()
                    }
                ]
            );
            let meta = ev.iter().find_map(|e| match e {
                Event::Metadata(m) => Some(m.clone()),
                _ => None,
            });
            let meta = Value::EcmaArray(meta.expect("onMetaData"));
            assert_eq!(meta.get("width"), Some(&Value::Number(160.0)));
            let video = ev.iter().find_map(|e| match e {
                Event::Video { data, .. } => Some(VideoTag::parse(data).unwrap()),
                _ => None,
            });
            let VideoPacket::SequenceHeader(body) = video.unwrap().packet else {
                panic!("first video tag is the sequence header");
            };
            let sps = AvcDecoderConfig::parse(&body).unwrap().parse_sps().unwrap();
            assert_eq!((sps.width, sps.height), (160, 90));
            assert_eq!(sps.reordering(), Reordering::Present);
            let audio = ev.iter().find_map(|e| match e {
                Event::Audio { data, .. } => Some(AudioTag::parse(data).unwrap()),
                _ => None,
            });
            let AudioPacket::AacSequenceHeader(asc) = audio.unwrap().packet else {
                panic!("first audio tag is the sequence header");
            };
            assert_eq!((asc.sample_rate, asc.channels()), (44100, Some(1)));
        }
    }

    fn ev_tc_url(e: &Event) -> Option<String> {
        match e {
            Event::Connected { tc_url, .. } => tc_url.clone(),
            _ => None,
        }
    }

    #[test]
    fn every_prefix_of_the_capture_is_fine_and_every_corruption_is_a_value() {
        for cut in (0..FFMPEG_CAPTURE.len()).step_by(3) {
            replay(&FFMPEG_CAPTURE[..cut], usize::MAX).1.unwrap();
        }
        // Corrupt each byte after the handshake: errors are fine, panics are not.
        for i in 1 + 2 * HANDSHAKE_SIZE..FFMPEG_CAPTURE.len() {
            for v in [0x00, 0xff, 0x3f, 0xc3] {
                let mut bad = FFMPEG_CAPTURE.to_vec();
                bad[i] = v;
                let _ = replay(&bad, bad.len());
            }
        }
    }

    #[test]
    fn input_held_for_a_pending_publish_is_bounded() {
        let config = SessionConfig {
            limits: ChunkLimits {
                max_buffered: 10_000,
                ..ChunkLimits::default()
            },
            ..SessionConfig::default()
        };
        let mut s = ServerSession::new(config);
        let mut c = Client::new();
        connect(&mut c, &mut s, "live");
        publish(&mut c, &mut s, "KEY");
        let frame = vec![0x27u8; 4000];
        s.handle_input(&c.media(msg_type::VIDEO, 0, &frame))
            .unwrap();
        s.handle_input(&c.media(msg_type::VIDEO, 33, &frame))
            .unwrap();
        let r = s.handle_input(&c.media(msg_type::VIDEO, 66, &frame));
        assert_eq!(r, Err(Error::BufferLimit { limit: 10_000 }));
        assert!(s.is_closed());
    }

    #[test]
    fn rejected_key_gets_a_clear_status_and_closes() {
        let mut s = ServerSession::new(SessionConfig::default());
        let mut c = Client::new();
        connect(&mut c, &mut s, "live/");
        let ev = publish(&mut c, &mut s, "WRONG?token=x");
        assert_eq!(
            ev[1],
            Event::PublishRequested {
                app: "live".into(),
                stream_key: "WRONG".into()
            }
        );
        s.reject_publish(PublishRejection::BadName, "Unknown stream key.")
            .unwrap();
        let msgs = c.read(&mut s);
        let (_, v) = cmd_name(&msgs[0]);
        assert_eq!(
            v[3].get("code").and_then(Value::as_str),
            Some("NetStream.Publish.BadName")
        );
        assert_eq!(
            v[3].get("description").and_then(Value::as_str),
            Some("Unknown stream key.")
        );
        assert!(s.is_closed());
        assert!(s.accept_publish().is_err());
        // Media after close produces nothing.
        s.handle_input(&c.media(msg_type::VIDEO, 0, &[0x17]))
            .unwrap();
        assert!(events(&mut s).is_empty());
    }

    #[test]
    fn unknown_app_and_missing_key_are_refused_by_the_session() {
        for (app, key, text) in [
            ("other", "KEY", "Unknown application"),
            ("live", "", "Missing stream key"),
        ] {
            let mut s = ServerSession::new(SessionConfig::default());
            let mut c = Client::new();
            connect(&mut c, &mut s, app);
            let ev = publish(&mut c, &mut s, key);
            assert_eq!(ev.len(), 1, "no PublishRequested");
            let msgs = c.read(&mut s);
            let (_, v) = cmd_name(&msgs[0]);
            let d = v[3].get("description").and_then(Value::as_str).unwrap();
            assert!(d.contains(text), "{d}");
            assert!(s.is_closed());
        }
    }

    #[test]
    fn key_in_the_app_path_is_accepted() {
        assert_eq!(
            split_stream_key("live/KEY", ""),
            ("live".into(), "KEY".into())
        );
        assert_eq!(
            split_stream_key("live", "KEY"),
            ("live".into(), "KEY".into())
        );
        assert_eq!(
            split_stream_key("live?x=1", "/KEY?t=2"),
            ("live".into(), "KEY".into())
        );
    }

    #[test]
    fn pings_and_window_acks_are_answered() {
        let mut s = ServerSession::new(SessionConfig::default());
        let mut c = Client::new();
        connect(&mut c, &mut s, "live");
        let mut out = BytesMut::new();
        c.enc.encode(
            2,
            0,
            msg_type::WINDOW_ACK_SIZE,
            0,
            &100u32.to_be_bytes(),
            &mut out,
        );
        c.enc.encode(
            2,
            0,
            msg_type::USER_CONTROL,
            0,
            &[0, 6, 0, 0, 0x12, 0x34],
            &mut out,
        );
        s.handle_input(&out).unwrap();
        let msgs = c.read(&mut s);
        assert_eq!(msgs[0].type_id, msg_type::USER_CONTROL);
        assert_eq!(&msgs[0].payload[..], &[0, 7, 0, 0, 0x12, 0x34]);
        assert_eq!(msgs[1].type_id, msg_type::ACKNOWLEDGEMENT);
        let seq = u32::from_be_bytes(msgs[1].payload[..4].try_into().unwrap());
        assert!(seq >= 100);
    }

    #[test]
    fn aggregate_messages_are_split() {
        let mut s = ServerSession::new(SessionConfig::default());
        let mut c = Client::new();
        connect(&mut c, &mut s, "live");
        publish(&mut c, &mut s, "KEY");
        s.accept_publish().unwrap();
        let mut agg = Vec::new();
        for (ty, ts, body) in [(9u8, 100u32, &[0x17u8, 1][..]), (8, 120, &[0xAF, 1, 5][..])] {
            agg.push(ty);
            agg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            agg.extend_from_slice(&ts.to_be_bytes()[1..]);
            agg.push((ts >> 24) as u8);
            agg.extend_from_slice(&[0, 0, 0]);
            agg.extend_from_slice(body);
            agg.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        }
        let mut out = BytesMut::new();
        c.enc
            .encode(6, 1000, msg_type::AGGREGATE, 1, &agg, &mut out);
        s.handle_input(&out).unwrap();
        let ev = events(&mut s);
        assert!(matches!(
            &ev[0],
            Event::Video {
                timestamp: 1000,
                ..
            }
        ));
        assert!(matches!(
            &ev[1],
            Event::Audio {
                timestamp: 1020,
                ..
            }
        ));
        // A truncated aggregate is an error.
        let mut out = BytesMut::new();
        c.enc
            .encode(6, 1000, msg_type::AGGREGATE, 1, &agg[..15], &mut out);
        assert!(s.handle_input(&out).is_err());
    }

    #[test]
    fn handshake_is_the_simple_one() {
        let mut s = ServerSession::new(SessionConfig::default());
        let hello = Client::hello();
        // C0+C1 split anywhere: S0+S1+S2 once C1 is complete, nothing before.
        s.handle_input(&hello[..700]).unwrap();
        assert!(s.poll_transmit().is_none());
        s.handle_input(&hello[700..1 + HANDSHAKE_SIZE]).unwrap();
        let out = s.poll_transmit().unwrap();
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(out[0], 3);
        assert_eq!(&out[1..9], &[0; 8], "S1: time 0, zero version");
        assert_eq!(
            &out[1 + HANDSHAKE_SIZE..],
            &hello[1..1 + HANDSHAKE_SIZE],
            "S2 echoes C1"
        );
        s.handle_input(&hello[1 + HANDSHAKE_SIZE..]).unwrap();
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn malformed_sessions_fail_with_values() {
        // Wrong version.
        let mut s = ServerSession::new(SessionConfig::default());
        assert_eq!(s.handle_input(&[6]), Err(Error::UnsupportedVersion(6)));
        assert!(s.is_closed());
        // Truncated handshake: just waits.
        let mut s = ServerSession::new(SessionConfig::default());
        s.handle_input(&[3, 0, 0]).unwrap();
        assert!(s.poll_transmit().is_none());
        // Command before connect.
        let mut s = ServerSession::new(SessionConfig::default());
        let mut c = Client::new();
        s.handle_input(&Client::hello()).unwrap();
        let w = c.command(0, &[Value::String("publish".into()), Value::Number(1.0)]);
        assert!(matches!(s.handle_input(&w), Err(Error::Protocol(_))));
        // An oversized command.
        let mut s = ServerSession::new(SessionConfig::default());
        s.handle_input(&Client::hello()).unwrap();
        let mut out = BytesMut::new();
        ChunkEncoder::default().encode(3, 0, 20, 0, &vec![5u8; 70_000], &mut out);
        assert!(matches!(
            s.handle_input(&out),
            Err(Error::MessageTooLarge { size: 70_000, .. })
        ));
        // Bad AMF in a command.
        let mut s = ServerSession::new(SessionConfig::default());
        s.handle_input(&Client::hello()).unwrap();
        let mut out = BytesMut::new();
        ChunkEncoder::default().encode(3, 0, 20, 0, &[0x02, 0xff, 0xff, 1], &mut out);
        assert!(s.handle_input(&out).is_err());
        // Garbage after the handshake, in many shapes: never a panic.
        let mut x: u32 = 7;
        for _ in 0..300 {
            let mut s = ServerSession::new(SessionConfig::default());
            let _ = s.handle_input(&Client::hello());
            let mut data = Vec::new();
            for _ in 0..(x % 3000) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data.push(x as u8);
            }
            let _ = s.handle_input(&data);
        }
    }
}
