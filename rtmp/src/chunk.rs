//! The RTMP chunk stream (spec §5.3): messages cut into chunks, interleaved
//! across chunk stream ids, headers compressed against the previous chunk of
//! the same stream.
//!
//! [`ChunkDecoder`] only consumes input once a whole chunk (header and its
//! payload piece) is buffered, so a partial read never leaves it half-updated.
//! It enforces [`ChunkLimits`] and applies Set Chunk Size and Abort itself,
//! because both change how the very next chunk is read.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

use crate::Error;

/// Chunk size every RTMP peer starts with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest timestamp that fits the 3-byte header field; above it, 4 extra bytes follow.
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;

/// Message type ids (spec §5.4, §7.1).
pub mod msg_type {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// Bounds on what a peer may make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest chunk size a peer may set (OBS and ffmpeg use 4096).
    pub max_chunk_size: u32,
    /// Largest message (a video access unit is the largest thing sent).
    pub max_message_size: u32,
    /// Distinct chunk stream ids (encoders use fewer than 10).
    pub max_chunk_streams: usize,
    /// Bytes of unfinished messages held across all chunk streams.
    pub max_buffered: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_chunk_size: 1 << 20,
            max_message_size: 8 << 20,
            max_chunk_streams: 64,
            max_buffered: 16 << 20,
        }
    }
}

/// One reassembled RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    /// Milliseconds, wrapping at 2^32.
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

/// What the last chunk on a chunk stream left behind for header compression.
#[derive(Debug, Clone, Default)]
struct StreamState {
    timestamp: u32,
    /// The raw timestamp field of the last fmt 0/1/2 header (absolute for fmt 0,
    /// a delta otherwise); a fmt 3 header that starts a message adds it again.
    ts_field: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    partial: Option<BytesMut>,
}

impl StreamState {
    /// The header fields alone; the partial payload is never cloned (cost).
    fn header(&self) -> StreamState {
        StreamState {
            partial: None,
            ..*self
        }
    }
}

/// Reassembles messages from chunks.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    limits: ChunkLimits,
    streams: HashMap<u32, StreamState>,
    buffered: usize,
}

impl ChunkDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        ChunkDecoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            limits,
            streams: HashMap::new(),
            buffered: 0,
        }
    }

    /// The peer's current chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Reads chunks from the front of `buf` until one completes a message.
    /// `Ok(None)`: more bytes needed; what was consumed is remembered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Error> {
        loop {
            match self.decode_chunk(buf)? {
                Step::NeedMore => return Ok(None),
                Step::Partial => continue,
                Step::Complete(m) => {
                    self.apply_control(&m)?;
                    return Ok(Some(m));
                }
            }
        }
    }

    fn apply_control(&mut self, m: &Message) -> Result<(), Error> {
        match m.type_id {
            msg_type::SET_CHUNK_SIZE => {
                let size = read_u32(&m.payload, "Set Chunk Size")? & 0x7FFF_FFFF;
                if size == 0 || size > self.limits.max_chunk_size {
                    return Err(Error::InvalidChunkSize {
                        size,
                        max: self.limits.max_chunk_size,
                    });
                }
                self.chunk_size = size;
            }
            msg_type::ABORT => {
                let csid = read_u32(&m.payload, "Abort")?;
                if let Some(p) = self.streams.get_mut(&csid).and_then(|s| s.partial.take()) {
                    self.buffered -= p.len();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn decode_chunk(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        let b = &buf[..];
        let Some(&first) = b.first() else {
            return Ok(Step::NeedMore);
        };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 => match b.get(1) {
                Some(&x) => (64 + x as u32, 2),
                None => return Ok(Step::NeedMore),
            },
            1 => match (b.get(1), b.get(2)) {
                (Some(&lo), Some(&hi)) => (64 + lo as u32 + ((hi as u32) << 8), 3),
                _ => return Ok(Step::NeedMore),
            },
            n => (n as u32, 1),
        };
        let header_len = [11, 7, 3, 0][fmt as usize];
        if b.len() < pos + header_len {
            return Ok(Step::NeedMore);
        }
        let h = &b[pos..pos + header_len];
        pos += header_len;

        let prev = self.streams.get(&csid);
        if prev.is_none() {
            if fmt != 0 {
                return Err(Error::NoPreviousHeader { csid, fmt });
            }
            if self.streams.len() >= self.limits.max_chunk_streams {
                return Err(Error::TooManyChunkStreams {
                    limit: self.limits.max_chunk_streams,
                });
            }
        }
        let mut next = prev.map_or_else(StreamState::default, StreamState::header);
        let field = if fmt < 3 {
            u24(&h[0..3])
        } else {
            next.ts_field
        };
        match fmt {
            0 => {
                next.length = u24(&h[3..6]);
                next.type_id = h[6];
                next.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
            }
            1 => {
                next.length = u24(&h[3..6]);
                next.type_id = h[6];
            }
            _ => {}
        }
        next.extended = if fmt < 3 {
            field == EXTENDED_TIMESTAMP
        } else {
            next.extended
        };
        next.ts_field = field;
        if next.extended {
            let Some(ext) = b.get(pos..pos + 4) else {
                return Ok(Step::NeedMore);
            };
            next.ts_field = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]);
            pos += 4;
        }
        if next.length > self.limits.max_message_size {
            return Err(Error::MessageTooLarge {
                size: next.length,
                limit: self.limits.max_message_size,
            });
        }

        // A fmt 0/1/2 header in the middle of a message starts a new one: the
        // old partial is dropped (tolerance for encoders that abort silently).
        let partial_len = match prev.and_then(|p| p.partial.as_ref()) {
            Some(p) if fmt == 3 => p.len(),
            _ => 0,
        };
        let continuing = fmt == 3 && prev.is_some_and(|p| p.partial.is_some());
        let remaining = (next.length as usize).saturating_sub(partial_len);
        let piece = remaining.min(self.chunk_size as usize);
        if b.len() < pos + piece {
            return Ok(Step::NeedMore);
        }

        // The chunk is whole: commit.
        if !continuing {
            next.timestamp = if fmt == 0 {
                next.ts_field
            } else {
                next.timestamp.wrapping_add(next.ts_field)
            };
        }
        let state = self.streams.entry(csid).or_default();
        let old_partial = if continuing {
            state.partial.take()
        } else {
            let dropped = state.partial.take();
            if let Some(d) = dropped {
                self.buffered -= d.len();
            }
            None
        };
        *state = StreamState {
            partial: None,
            ..next
        };
        buf.advance(pos);
        let data = buf.split_to(piece);

        if old_partial.is_none() && piece == state.length as usize {
            // Common case for small messages: zero-copy.
            return Ok(Step::Complete(Message {
                csid,
                timestamp: state.timestamp,
                type_id: state.type_id,
                stream_id: state.stream_id,
                payload: data.freeze(),
            }));
        }
        if self.buffered + piece > self.limits.max_buffered {
            return Err(Error::BufferLimit {
                limit: self.limits.max_buffered,
            });
        }
        let mut partial = old_partial.unwrap_or_default();
        // Its old length was counted while it sat in the map.
        self.buffered -= partial.len();
        partial.extend_from_slice(&data);
        if partial.len() == state.length as usize {
            return Ok(Step::Complete(Message {
                csid,
                timestamp: state.timestamp,
                type_id: state.type_id,
                stream_id: state.stream_id,
                payload: partial.freeze(),
            }));
        }
        self.buffered += partial.len();
        state.partial = Some(partial);
        Ok(Step::Partial)
    }
}

enum Step {
    NeedMore,
    Partial,
    Complete(Message),
}

fn u24(b: &[u8]) -> u32 {
    ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32
}

fn read_u32(p: &[u8], what: &'static str) -> Result<u32, Error> {
    match p.get(0..4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(Error::truncated(what)),
    }
}

/// What the last message written on a chunk stream left for compression.
#[derive(Debug, Clone, Copy)]
struct EncState {
    timestamp: u32,
    ts_field: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Cuts messages into chunks, choosing the most compact header fmt (0–3)
/// the receiver can reconstruct.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    streams: HashMap<u32, EncState>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        ChunkEncoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
        }
    }
}

impl ChunkEncoder {
    /// Changes the outgoing chunk size; call right after encoding the Set
    /// Chunk Size message that announces it. `size` is clamped to 1..=2^31-1.
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size.clamp(1, 0x7FFF_FFFF);
    }

    /// Appends the chunks of one message to `out`. `csid` must be 2..=65599
    /// and the payload shorter than 2^24 (the server's own messages are).
    pub fn encode(
        &mut self,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) {
        let length = payload.len().min(0xFF_FFFF) as u32;
        let payload = &payload[..length as usize];
        let prev = self.streams.get(&csid).copied();
        let (fmt, field) = match prev {
            Some(p) if p.stream_id == stream_id && timestamp >= p.timestamp => {
                let delta = timestamp - p.timestamp;
                if p.length != length || p.type_id != type_id {
                    (1, delta)
                } else if p.ts_field != delta {
                    (2, delta)
                } else {
                    (3, delta)
                }
            }
            _ => (0, timestamp),
        };
        let extended = field >= EXTENDED_TIMESTAMP;
        let field3 = field.min(EXTENDED_TIMESTAMP);
        put_basic_header(fmt, csid, out);
        if fmt < 3 {
            out.extend_from_slice(&field3.to_be_bytes()[1..]);
        }
        if fmt < 2 {
            out.extend_from_slice(&length.to_be_bytes()[1..]);
            out.extend_from_slice(&[type_id]);
        }
        if fmt == 0 {
            out.extend_from_slice(&stream_id.to_le_bytes());
        }
        // fmt 3 is only chosen when the delta equals the last field, so it
        // carries the extended field exactly when that header did.
        let ext = extended;
        if ext {
            out.extend_from_slice(&field.to_be_bytes());
        }
        let mut chunks = payload.chunks(self.chunk_size as usize);
        out.extend_from_slice(chunks.next().unwrap_or(&[]));
        for c in chunks {
            put_basic_header(3, csid, out);
            if ext {
                out.extend_from_slice(&field.to_be_bytes());
            }
            out.extend_from_slice(c);
        }
        self.streams.insert(
            csid,
            EncState {
                timestamp,
                ts_field: field,
                length,
                type_id,
                stream_id,
            },
        );
    }
}

fn put_basic_header(fmt: u8, csid: u32, out: &mut BytesMut) {
    let f = fmt << 6;
    match csid {
        0..=63 => out.extend_from_slice(&[f | csid as u8]),
        64..=319 => out.extend_from_slice(&[f, (csid - 64) as u8]),
        _ => {
            let c = (csid.min(65599) - 64) as u16;
            out.extend_from_slice(&[f | 1, c as u8, (c >> 8) as u8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut ChunkDecoder, bytes: &[u8]) -> Result<Vec<Message>, Error> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = dec.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn decodes_a_hand_built_fmt0_chunk() {
        let bytes = [
            0x03, // fmt 0, csid 3
            0x00, 0x00, 0x10, // ts 16
            0x00, 0x00, 0x03, // length 3
            0x14, // command
            0x01, 0x00, 0x00, 0x00, // stream id 1 (LE)
            0xAA, 0xBB, 0xCC,
        ];
        let msgs = decode_all(&mut ChunkDecoder::new(ChunkLimits::default()), &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![Message {
                csid: 3,
                timestamp: 16,
                type_id: 20,
                stream_id: 1,
                payload: Bytes::from_static(&[0xAA, 0xBB, 0xCC]),
            }]
        );
    }

    #[test]
    fn all_header_formats_round_trip_byte_by_byte() {
        let mut enc = ChunkEncoder::default();
        let mut out = BytesMut::new();
        let big = vec![7u8; 300]; // spans 3 chunks at 128
                                  // fmt 0, then fmt 1 (length changes), fmt 2 (delta changes), fmt 3 (same delta).
        let msgs = [
            (4u32, 1000u32, 9u8, &big[..]),
            (4, 1033, 9, &[1u8, 2][..]),
            (4, 1066, 9, &[3u8, 4][..]),
            (4, 1099, 9, &[5u8, 6][..]),
            (4, 1132, 9, &[5u8, 6][..]),
            (500, 5, 8, &[1u8][..]),       // 2-byte basic header
            (70000, 5, 8, &[1u8][..]),     // clamped to 65599: 3-byte header
            (6, 0x0100_0000, 9, &big[..]), // extended timestamp across chunks
            (6, 0x0200_0000, 9, &big[..]), // fmt 3 candidate with extended delta
        ];
        for (csid, ts, ty, p) in msgs {
            enc.encode(csid, ts, ty, 1, p, &mut out);
        }
        // Header formats actually used on csid 4.
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        for b in out.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), msgs.len());
        for (m, (csid, ts, ty, p)) in got.iter().zip(msgs) {
            assert_eq!(m.csid, csid.min(65599));
            assert_eq!(m.timestamp, ts);
            assert_eq!(m.type_id, ty);
            assert_eq!(&m.payload[..], p);
        }
    }

    #[test]
    fn interleaved_chunk_streams_reassemble_separately() {
        let mut enc_a = ChunkEncoder::default();
        let mut enc_b = ChunkEncoder::default();
        let a = vec![0xAAu8; 200];
        let b = vec![0xBBu8; 200];
        let mut ca = BytesMut::new();
        let mut cb = BytesMut::new();
        enc_a.encode(6, 10, 9, 1, &a, &mut ca);
        enc_b.encode(4, 20, 8, 1, &b, &mut cb);
        // Split each into its first chunk and the continuation, then interleave.
        let a1 = ca.split_to(12 + 128);
        let b1 = cb.split_to(12 + 128);
        let mut wire = Vec::new();
        wire.extend_from_slice(&a1);
        wire.extend_from_slice(&b1);
        wire.extend_from_slice(&ca);
        wire.extend_from_slice(&cb);
        let msgs = decode_all(&mut ChunkDecoder::new(ChunkLimits::default()), &wire).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(&msgs[0].payload[..], &a[..]);
        assert_eq!(&msgs[1].payload[..], &b[..]);
    }

    #[test]
    fn set_chunk_size_applies_to_the_next_chunk() {
        let mut enc = ChunkEncoder::default();
        let mut out = BytesMut::new();
        enc.encode(
            2,
            0,
            msg_type::SET_CHUNK_SIZE,
            0,
            &4096u32.to_be_bytes(),
            &mut out,
        );
        enc.set_chunk_size(4096);
        let big = vec![1u8; 4000];
        enc.encode(6, 0, 9, 1, &big, &mut out);
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let msgs = decode_all(&mut dec, &out).unwrap();
        assert_eq!(dec.chunk_size(), 4096);
        assert_eq!(msgs[1].payload.len(), 4000);
    }

    #[test]
    fn abort_drops_the_partial_message() {
        let mut enc = ChunkEncoder::default();
        let mut wire = BytesMut::new();
        enc.encode(6, 0, 9, 1, &[9u8; 200], &mut wire);
        let mut first = wire.split_to(12 + 128);
        enc.encode(2, 0, msg_type::ABORT, 0, &6u32.to_be_bytes(), &mut first);
        // A new complete message on csid 6 after the abort.
        enc.encode(6, 40, 9, 1, &[1u8, 2, 3], &mut first);
        let mut dec = ChunkDecoder::new(ChunkLimits::default());
        let msgs = decode_all(&mut dec, &first).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].type_id, msg_type::ABORT);
        assert_eq!(&msgs[1].payload[..], &[1, 2, 3]);
        assert_eq!(dec.buffered, 0);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let limits = ChunkLimits {
            max_chunk_size: 65536,
            max_message_size: 1000,
            max_chunk_streams: 2,
            max_buffered: 150,
        };
        // fmt 1 on a fresh stream.
        let e = decode_all(&mut ChunkDecoder::new(limits), &[0x43, 0, 0, 0, 0, 0, 1, 9]);
        assert_eq!(e, Err(Error::NoPreviousHeader { csid: 3, fmt: 1 }));
        // Message too large.
        let e = decode_all(
            &mut ChunkDecoder::new(limits),
            &[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0],
        );
        assert!(matches!(e, Err(Error::MessageTooLarge { .. })));
        // Chunk size 0 and huge.
        for size in [0u32, 0x7FFF_FFFF] {
            let mut wire = BytesMut::new();
            ChunkEncoder::default().encode(2, 0, 1, 0, &size.to_be_bytes(), &mut wire);
            let e = decode_all(&mut ChunkDecoder::new(limits), &wire);
            assert!(matches!(e, Err(Error::InvalidChunkSize { .. })), "{size}");
        }
        // Truncated Set Chunk Size payload.
        let mut wire = BytesMut::new();
        ChunkEncoder::default().encode(2, 0, 1, 0, &[0, 1], &mut wire);
        assert!(decode_all(&mut ChunkDecoder::new(limits), &wire).is_err());
        // Too many chunk streams.
        let mut wire = BytesMut::new();
        let mut enc = ChunkEncoder::default();
        for csid in 3..6 {
            enc.encode(csid, 0, 9, 1, &[0], &mut wire);
        }
        assert!(matches!(
            decode_all(&mut ChunkDecoder::new(limits), &wire),
            Err(Error::TooManyChunkStreams { limit: 2 })
        ));
        // Partial messages beyond the buffer limit.
        let mut wire = BytesMut::new();
        let mut enc = ChunkEncoder::default();
        enc.encode(3, 0, 9, 1, &[0; 900], &mut wire);
        assert!(matches!(
            decode_all(&mut ChunkDecoder::new(limits), &wire),
            Err(Error::BufferLimit { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: pseudo-random bytes, fed in odd slices.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200 {
            let mut data = Vec::new();
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data.push(x as u8);
            }
            let mut dec = ChunkDecoder::new(ChunkLimits::default());
            let mut buf = BytesMut::new();
            for piece in data.chunks(37) {
                buf.extend_from_slice(piece);
                match dec.decode(&mut buf) {
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
