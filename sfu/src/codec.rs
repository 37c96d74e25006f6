//! What the forwarder needs to know about a video RTP payload, and no more:
//! whether a packet starts a keyframe (a viewer may start, or switch layer or
//! publisher, only there), and the VP8 payload descriptor, whose PictureID /
//! TL0PICIDX / KEYIDX must be rewritten to keep one continuous stream.
//!
//! ```text
//!  publisher RTP payload ─┬─► is_keyframe_start ───► Forwarder::forward(.., keyframe_start, ..)
//!                         └─► parse_vp8_descriptor ─► Forwarder::forward(.., Some(&desc))
//!                                                          │ Rewrite.vp8
//!  per-viewer payload copy ◄── rewrite_vp8_descriptor ◄────┘
//! ```
//!
//! Pure functions over byte slices: no IO, no allocation, no depacketizing
//! beyond the first bytes. Every payload came from the network, so every read
//! is bounds-checked, and a truncated or malformed payload answers `false` /
//! `None`: never a panic. A false "keyframe" would start a viewer on a picture
//! it cannot decode, so the checks lean strict.

/// The video codecs a track may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Vp8,
    Vp9,
    Av1,
    H265,
}

/// True when this RTP payload is the first packet of a keyframe, i.e. a
/// decoder can start here.
///
/// - H.264 (RFC 6184): an SPS, or the first slice of an IDR picture, alone,
///   in a STAP-A, or at the start of an FU-A.
/// - VP8 (RFC 7741): start of partition 0 of a frame whose header says key frame.
/// - VP9 (RFC 9628): start of a frame that is not inter-predicted, in the base
///   spatial layer.
/// - AV1 (AV1 RTP spec): the N bit, first packet of a coded video sequence.
/// - H.265 (RFC 7798): a VPS, or the first slice segment of an IRAP picture
///   (types 16–21), alone, in an AP, or at the start of an FU. Assumes
///   `sprop-max-don-diff` = 0 (no DONL fields), as WebRTC senders do.
///
/// For H.264/H.265 slices the first slice of the picture is told apart from
/// later ones (first_mb_in_slice = 0 / first_slice_segment_in_pic_flag): an
/// encoder that cuts an IDR into several slices puts each in its own packet,
/// and starting at the second one would lose the top of the picture.
pub fn is_keyframe_start(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => h264_keyframe_start(payload),
        VideoCodec::Vp8 => vp8_keyframe_start(payload),
        VideoCodec::Vp9 => vp9_keyframe_start(payload),
        VideoCodec::Av1 => av1_keyframe_start(payload),
        VideoCodec::H265 => h265_keyframe_start(payload),
    }
}

// ---------------------------------------------------------------- H.264

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

fn h264_keyframe_start(payload: &[u8]) -> bool {
    let Some((&header, rest)) = payload.split_first() else {
        return false;
    };
    if header & 0x80 != 0 {
        // forbidden_zero_bit: the NAL unit is known to be corrupt.
        return false;
    }
    match header & 0x1f {
        H264_STAP_A => any_aggregated(rest, h264_nal_starts_keyframe),
        H264_FU_A => match rest {
            // FU header S|E|R|type, then the first byte of the NAL payload.
            [fu, first, ..] => fu & 0x80 != 0 && h264_type_starts_keyframe(fu & 0x1f, *first),
            _ => false,
        },
        _ => h264_nal_starts_keyframe(payload),
    }
}

/// One complete (unfragmented) H.264 NAL unit.
fn h264_nal_starts_keyframe(nal: &[u8]) -> bool {
    match nal {
        [header, first, ..] if header & 0x80 == 0 => {
            h264_type_starts_keyframe(header & 0x1f, *first)
        }
        _ => false,
    }
}

/// `first` is the NAL unit's first payload byte: for a slice, its header
/// starts with first_mb_in_slice as ue(v), which is 0 exactly when the first
/// bit is 1.
fn h264_type_starts_keyframe(nal_type: u8, first: u8) -> bool {
    match nal_type {
        H264_SPS => true,
        H264_IDR => first & 0x80 != 0,
        _ => false,
    }
}

// ---------------------------------------------------------------- H.265

const H265_VPS: u8 = 32;
const H265_AP: u8 = 48;
const H265_FU: u8 = 49;

fn h265_nal_type(first_header_byte: u8) -> u8 {
    (first_header_byte >> 1) & 0x3f
}

fn h265_keyframe_start(payload: &[u8]) -> bool {
    let [h0, _h1, rest @ ..] = payload else {
        return false;
    };
    if h0 & 0x80 != 0 {
        return false; // forbidden_zero_bit
    }
    match h265_nal_type(*h0) {
        H265_AP => any_aggregated(rest, h265_nal_starts_keyframe),
        H265_FU => match rest {
            // FU header S|E|type, then the first byte of the NAL payload.
            [fu, first, ..] => fu & 0x80 != 0 && h265_type_starts_keyframe(fu & 0x3f, *first),
            _ => false,
        },
        _ => h265_nal_starts_keyframe(payload),
    }
}

/// One complete (unfragmented) H.265 NAL unit (2-byte header).
fn h265_nal_starts_keyframe(nal: &[u8]) -> bool {
    match nal {
        [h0, _h1, first, ..] if h0 & 0x80 == 0 => {
            h265_type_starts_keyframe(h265_nal_type(*h0), *first)
        }
        _ => false,
    }
}

/// `first` is the NAL unit's first payload byte: a slice segment header
/// starts with first_slice_segment_in_pic_flag.
fn h265_type_starts_keyframe(nal_type: u8, first: u8) -> bool {
    match nal_type {
        16..=21 => first & 0x80 != 0,
        H265_VPS => true,
        _ => false,
    }
}

/// Walks the `size (16 bit) | NAL unit` list of an H.264 STAP-A or H.265 AP
/// (after its own header). A list that does not parse to its end is corrupt
/// and answers false even if a keyframe NAL unit was seen before the damage.
fn any_aggregated(mut rest: &[u8], starts_keyframe: fn(&[u8]) -> bool) -> bool {
    let mut found = false;
    while !rest.is_empty() {
        let [hi, lo, tail @ ..] = rest else {
            return false;
        };
        let size = usize::from(u16::from_be_bytes([*hi, *lo]));
        if size == 0 || size > tail.len() {
            return false;
        }
        let (nal, next) = tail.split_at(size);
        found |= starts_keyframe(nal);
        rest = next;
    }
    found
}

// ---------------------------------------------------------------- VP8

/// The VP8 RTP payload descriptor (RFC 7741 §4.2), as sent by the publisher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// PictureID, 7 or 15 bits wide (see `picture_id_15bit`).
    pub picture_id: Option<u16>,
    /// The M bit: PictureID has 15 bits on the wire (else 7).
    pub picture_id_15bit: bool,
    pub tl0picidx: Option<u8>,
    /// Temporal layer index, present when the T bit is set.
    pub tid: Option<u8>,
    /// 5 bits, present when the K bit is set.
    pub keyidx: Option<u8>,
    /// The S bit: this packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// PID, 0..=7.
    pub partition_id: u8,
    /// Bytes of descriptor before the VP8 payload.
    pub header_len: usize,
}

/// Where the rewritable fields sit in a descriptor.
struct Vp8Layout {
    descriptor: Vp8Descriptor,
    picture_id_at: Option<usize>,
    tl0picidx_at: Option<usize>,
    tid_keyidx_at: Option<usize>,
}

fn vp8_layout(payload: &[u8]) -> Option<Vp8Layout> {
    let first = *payload.first()?;
    let mut layout = Vp8Layout {
        descriptor: Vp8Descriptor {
            start_of_partition: first & 0x10 != 0,
            partition_id: first & 0x07,
            header_len: 1,
            ..Vp8Descriptor::default()
        },
        picture_id_at: None,
        tl0picidx_at: None,
        tid_keyidx_at: None,
    };
    if first & 0x80 == 0 {
        return Some(layout); // no X: the one-byte descriptor
    }
    let ext = *payload.get(1)?;
    let d = &mut layout.descriptor;
    let mut at = 2;
    if ext & 0x80 != 0 {
        let hi = *payload.get(at)?;
        layout.picture_id_at = Some(at);
        if hi & 0x80 != 0 {
            let lo = *payload.get(at + 1)?;
            d.picture_id = Some(u16::from_be_bytes([hi & 0x7f, lo]));
            d.picture_id_15bit = true;
            at += 2;
        } else {
            d.picture_id = Some(u16::from(hi));
            at += 1;
        }
    }
    if ext & 0x40 != 0 {
        d.tl0picidx = Some(*payload.get(at)?);
        layout.tl0picidx_at = Some(at);
        at += 1;
    }
    let (has_tid, has_keyidx) = (ext & 0x20 != 0, ext & 0x10 != 0);
    if has_tid || has_keyidx {
        // One shared byte: TID (2) | Y (1) | KEYIDX (5).
        let b = *payload.get(at)?;
        d.tid = has_tid.then_some(b >> 6);
        d.keyidx = has_keyidx.then_some(b & 0x1f);
        layout.tid_keyidx_at = Some(at);
        at += 1;
    }
    d.header_len = at;
    Some(layout)
}

/// Parses the VP8 payload descriptor; `None` when it is truncated.
pub fn parse_vp8_descriptor(payload: &[u8]) -> Option<Vp8Descriptor> {
    vp8_layout(payload).map(|l| l.descriptor)
}

/// Rewrites picture id / tl0picidx / keyidx in place when the fields exist
/// with the same width; returns false if it could not.
///
/// `None` leaves a field as it is. A `Some` for a field the descriptor lacks,
/// or a value wider than the field (PictureID over 0x7f in a 7-bit field,
/// over 0x7fff in a 15-bit one, KEYIDX over 0x1f), fails the whole call and
/// leaves the payload untouched: the descriptor cannot grow in place, so the
/// caller keeps the publisher's PictureID width.
#[allow(
    dead_code,
    reason = "the engine patches through str0m's Vp8Patch; this serves payloads we own"
)]
pub fn rewrite_vp8_descriptor(
    payload: &mut [u8],
    picture_id: Option<u16>,
    tl0picidx: Option<u8>,
    keyidx: Option<u8>,
) -> bool {
    let Some(layout) = vp8_layout(payload) else {
        return false;
    };
    let d = &layout.descriptor;
    let picture_id_max = if d.picture_id_15bit { 0x7fff } else { 0x7f };
    let fits = picture_id.is_none_or(|v| d.picture_id.is_some() && v <= picture_id_max)
        && tl0picidx.is_none_or(|_| d.tl0picidx.is_some())
        && keyidx.is_none_or(|v| d.keyidx.is_some() && v <= 0x1f);
    if !fits {
        return false;
    }
    // Every index below came from vp8_layout over this same payload.
    if let (Some(v), Some(at)) = (picture_id, layout.picture_id_at) {
        if d.picture_id_15bit {
            let [hi, lo] = v.to_be_bytes();
            payload[at] = 0x80 | hi;
            payload[at + 1] = lo;
        } else {
            payload[at] = v as u8; // v <= 0x7f, so the M bit stays 0
        }
    }
    if let (Some(v), Some(at)) = (tl0picidx, layout.tl0picidx_at) {
        payload[at] = v;
    }
    if let (Some(v), Some(at)) = (keyidx, layout.tid_keyidx_at) {
        payload[at] = (payload[at] & 0xe0) | v; // keep TID and Y
    }
    true
}

fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(d) = parse_vp8_descriptor(payload) else {
        return false;
    };
    // The VP8 payload header follows the descriptor at the start of
    // partition 0; its lowest bit is P, the *inverse* key frame flag.
    d.start_of_partition
        && d.partition_id == 0
        && payload.get(d.header_len).is_some_and(|h| h & 0x01 == 0)
}

// ---------------------------------------------------------------- VP9

fn vp9_keyframe_start(payload: &[u8]) -> bool {
    let Some(&flags) = payload.first() else {
        return false;
    };
    let has_picture_id = flags & 0x80 != 0; // I
    let inter_predicted = flags & 0x40 != 0; // P
    let has_layers = flags & 0x20 != 0; // L
    let flexible = flags & 0x10 != 0; // F
    let begins_frame = flags & 0x08 != 0; // B
    let has_ss = flags & 0x02 != 0; // V
    if !begins_frame || inter_predicted {
        return false;
    }
    let mut at = 1;
    if has_picture_id {
        let Some(&m) = payload.get(at) else {
            return false;
        };
        at += if m & 0x80 != 0 { 2 } else { 1 };
    }
    if has_layers {
        // TID (3) | U | SID (3) | D; non-flexible mode adds TL0PICIDX.
        let Some(&layer) = payload.get(at) else {
            return false;
        };
        if (layer >> 1) & 0x07 != 0 {
            return false; // an upper spatial layer cannot be decoded alone
        }
        at += if flexible { 1 } else { 2 };
    }
    // P = 0, so no P_DIFF list even in flexible mode.
    if has_ss {
        let Some(end) = vp9_ss_end(payload, at) else {
            return false;
        };
        at = end;
    }
    // The whole descriptor must be there, and some frame data after it.
    at < payload.len()
}

/// End of the scalability structure starting at `at`, if it is all there.
fn vp9_ss_end(payload: &[u8], mut at: usize) -> Option<usize> {
    // N_S (3) | Y | G | reserved (3)
    let head = *payload.get(at)?;
    at += 1;
    if head & 0x10 != 0 {
        let spatial_layers = usize::from(head >> 5) + 1;
        at += 4 * spatial_layers; // WIDTH, HEIGHT: 16 bits each
    }
    if head & 0x08 != 0 {
        let groups = *payload.get(at)?;
        at += 1;
        for _ in 0..groups {
            // TID (3) | U | R (2) | reserved (2), then R P_DIFF bytes.
            let picture = *payload.get(at)?;
            at += 1 + usize::from((picture >> 2) & 0x03);
        }
    }
    (at <= payload.len()).then_some(at)
}

// ---------------------------------------------------------------- AV1

fn av1_keyframe_start(payload: &[u8]) -> bool {
    // Aggregation header Z | Y | W (2) | N | reserved (3). The first packet of
    // a coded video sequence cannot continue an OBU from an earlier packet.
    match payload {
        [aggregation, _, ..] => aggregation & 0x08 != 0 && aggregation & 0x80 == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [VideoCodec; 5] = [
        VideoCodec::H264,
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::Av1,
        VideoCodec::H265,
    ];

    fn h264(p: &[u8]) -> bool {
        is_keyframe_start(VideoCodec::H264, p)
    }

    fn h265(p: &[u8]) -> bool {
        is_keyframe_start(VideoCodec::H265, p)
    }

    fn vp8(p: &[u8]) -> bool {
        is_keyframe_start(VideoCodec::Vp8, p)
    }

    fn vp9(p: &[u8]) -> bool {
        is_keyframe_start(VideoCodec::Vp9, p)
    }

    fn av1(p: &[u8]) -> bool {
        is_keyframe_start(VideoCodec::Av1, p)
    }

    /// True for a minimal keyframe-start payload, false for each of its proper
    /// prefixes: a truncated keyframe packet must never pass.
    fn keyframe_and_every_prefix_not(codec: VideoCodec, payload: &[u8]) {
        assert!(
            is_keyframe_start(codec, payload),
            "{codec:?} {payload:02x?}"
        );
        for len in 0..payload.len() {
            let prefix = &payload[..len];
            assert!(
                !is_keyframe_start(codec, prefix),
                "{codec:?} prefix {prefix:02x?}"
            );
        }
    }

    // H.264 NAL headers with nal_ref_idc = 3.
    const SPS: u8 = 0x67;
    const PPS: u8 = 0x68;
    const IDR: u8 = 0x65;
    const NON_IDR: u8 = 0x41;
    const SEI: u8 = 0x06;
    const STAP_A: u8 = 0x78;
    const FU_A: u8 = 0x7c;

    #[test]
    fn h264_single_nal_units() {
        keyframe_and_every_prefix_not(VideoCodec::H264, &[SPS, 0x42]);
        assert!(h264(&[SPS, 0x42, 0xe0, 0x1f]));
        // IDR, first_mb_in_slice = 0 (first bit 1).
        keyframe_and_every_prefix_not(VideoCodec::H264, &[IDR, 0x88]);
        assert!(h264(&[IDR, 0x88, 0x84]));
        // IDR, a later slice of the picture (first_mb_in_slice = 1: "010").
        assert!(!h264(&[IDR, 0x40, 0x84]));
        assert!(!h264(&[NON_IDR, 0x9a, 0x00]));
        assert!(!h264(&[PPS, 0xce, 0x3c, 0x80]));
        assert!(!h264(&[SEI, 0x05, 0xff]));
        // forbidden_zero_bit set.
        assert!(!h264(&[0x80 | SPS, 0x42, 0xe0]));
    }

    #[test]
    fn h264_stap_a() {
        let sps_pps = [STAP_A, 0, 3, SPS, 0x42, 0xe0, 0, 2, PPS, 0xce];
        assert!(h264(&sps_pps));
        // The keyframe unit last, so that every prefix is cut inside it.
        keyframe_and_every_prefix_not(
            VideoCodec::H264,
            &[STAP_A, 0, 2, SEI, 0x05, 0, 2, SPS, 0x42],
        );
        let with_idr = [STAP_A, 0, 2, SEI, 0x05, 0, 3, IDR, 0x88, 0x84];
        assert!(h264(&with_idr));
        assert!(!h264(&[STAP_A, 0, 2, SEI, 0x05, 0, 2, PPS, 0xce]));
        assert!(!h264(&[STAP_A, 0, 3, NON_IDR, 0x9a, 0, 0, 2, PPS, 0xce]));
        // A size that overruns the packet, or a zero size: corrupt.
        assert!(!h264(&[STAP_A, 0, 3, SPS, 0x42, 0xe0, 0, 9, PPS, 0xce]));
        assert!(!h264(&[STAP_A, 0, 3, SPS, 0x42, 0xe0, 0, 0]));
        assert!(!h264(&[STAP_A, 0, 3, SPS, 0x42, 0xe0, 0]));
        assert!(!h264(&[STAP_A]));
    }

    #[test]
    fn h264_fu_a() {
        keyframe_and_every_prefix_not(VideoCodec::H264, &[FU_A, 0x80 | 5, 0x88]);
        assert!(h264(&[FU_A, 0x80 | 7, 0x42, 0xe0]));
        // Not the first fragment, or the end fragment.
        assert!(!h264(&[FU_A, 5, 0x88, 0x84]));
        assert!(!h264(&[FU_A, 0x40 | 5, 0x88, 0x84]));
        // First fragment of a non-IDR slice, and of a later IDR slice.
        assert!(!h264(&[FU_A, 0x80 | 1, 0x9a, 0x00]));
        assert!(!h264(&[FU_A, 0x80 | 5, 0x40, 0x84]));
    }

    // H.265 two-byte NAL headers (layer 0, TID 1).
    fn h265_header(nal_type: u8) -> [u8; 2] {
        [nal_type << 1, 0x01]
    }

    #[test]
    fn h265_single_nal_units() {
        for irap in 16..=21 {
            let [a, b] = h265_header(irap);
            keyframe_and_every_prefix_not(VideoCodec::H265, &[a, b, 0xaf]);
            // Not the first slice segment of the picture.
            assert!(!h265(&[a, b, 0x2f, 0x08]), "type {irap}");
        }
        let [a, b] = h265_header(32);
        keyframe_and_every_prefix_not(VideoCodec::H265, &[a, b, 0x0c]);
        for other in [0u8, 1, 15, 22, 33, 34, 39] {
            let [a, b] = h265_header(other);
            assert!(!h265(&[a, b, 0xaf, 0x08]), "type {other}");
        }
        let [a, b] = h265_header(19);
        assert!(!h265(&[0x80 | a, b, 0xaf, 0x08]), "forbidden bit");
    }

    #[test]
    fn h265_aggregation_and_fragmentation() {
        let [ap0, ap1] = h265_header(48);
        let [v0, v1] = h265_header(32);
        let [s0, s1] = h265_header(33);
        let [p0, p1] = h265_header(34);
        let vps_sps_pps = [
            ap0, ap1, 0, 3, v0, v1, 0x0c, 0, 3, s0, s1, 0x01, 0, 3, p0, p1, 0xc1,
        ];
        assert!(h265(&vps_sps_pps));
        keyframe_and_every_prefix_not(
            VideoCodec::H265,
            &[ap0, ap1, 0, 3, s0, s1, 0x01, 0, 3, v0, v1, 0x0c],
        );
        assert!(!h265(&[ap0, ap1, 0, 3, s0, s1, 0x01, 0, 3, p0, p1, 0xc1]));
        assert!(!h265(&[ap0, ap1, 0, 7, v0, v1, 0x0c]), "overrun");

        let [f0, f1] = h265_header(49);
        keyframe_and_every_prefix_not(VideoCodec::H265, &[f0, f1, 0x80 | 19, 0xaf]);
        assert!(h265(&[f0, f1, 0x80 | 21, 0xaf]));
        assert!(!h265(&[f0, f1, 19, 0xaf]), "middle fragment");
        assert!(!h265(&[f0, f1, 0x80 | 1, 0xaf]), "non-IRAP");
        assert!(!h265(&[f0, f1, 0x80 | 19, 0x2f]), "later slice segment");
    }

    #[test]
    fn vp8_keyframes() {
        // Minimal descriptor: S = 1, PID = 0; payload header with P = 0.
        keyframe_and_every_prefix_not(VideoCodec::Vp8, &[0x10, 0x50]);
        // X with 15-bit PictureID, TL0PICIDX, TID/KEYIDX.
        keyframe_and_every_prefix_not(VideoCodec::Vp8, &[0x90, 0xf0, 0x81, 0x23, 0x07, 0x45, 0x50]);
        // 7-bit PictureID only.
        keyframe_and_every_prefix_not(VideoCodec::Vp8, &[0x90, 0x80, 0x12, 0x50]);
        // Inter frame (P = 1), not a partition start, partition 1.
        assert!(!vp8(&[0x10, 0x51, 0x01, 0x00]));
        assert!(!vp8(&[0x00, 0x50, 0x01, 0x00]));
        assert!(!vp8(&[0x11, 0x50, 0x01, 0x00]));
    }

    #[test]
    fn vp8_descriptor_fields() {
        let full = [0x90, 0xf0, 0x81, 0x23, 0x07, 0x45, 0x50];
        let d = parse_vp8_descriptor(&full).expect("parses");
        assert_eq!(
            d,
            Vp8Descriptor {
                picture_id: Some(0x0123),
                picture_id_15bit: true,
                tl0picidx: Some(7),
                tid: Some(1),
                keyidx: Some(5),
                start_of_partition: true,
                partition_id: 0,
                header_len: 6,
            }
        );
        // K without T: TID is not meaningful.
        let d = parse_vp8_descriptor(&[0x83, 0x10, 0xc7]).expect("parses");
        assert_eq!((d.tid, d.keyidx, d.partition_id), (None, Some(7), 3));
        assert!(!d.start_of_partition);
        // T without K.
        let d = parse_vp8_descriptor(&[0x80, 0x20, 0x47]).expect("parses");
        assert_eq!((d.tid, d.keyidx, d.header_len), (Some(1), None, 3));
        let d = parse_vp8_descriptor(&[0x10]).expect("parses");
        assert_eq!((d.picture_id, d.header_len), (None, 1));
        for len in 0..6 {
            assert_eq!(parse_vp8_descriptor(&full[..len]), None, "prefix {len}");
        }
    }

    #[test]
    fn vp8_rewrite_in_place() {
        let mut p = [0x90, 0xf0, 0x81, 0x23, 0x07, 0x65, 0x50];
        assert!(rewrite_vp8_descriptor(
            &mut p,
            Some(0x7abc),
            Some(0xfe),
            Some(0x1f)
        ));
        let d = parse_vp8_descriptor(&p).expect("parses");
        assert_eq!(
            (d.picture_id, d.tl0picidx, d.keyidx),
            (Some(0x7abc), Some(0xfe), Some(0x1f))
        );
        assert_eq!((d.tid, p[5] & 0x20), (Some(1), 0x20), "TID and Y kept");
        assert_eq!(p[6], 0x50, "payload untouched");

        // None leaves a field as it is.
        assert!(rewrite_vp8_descriptor(&mut p, None, Some(3), None));
        let d = parse_vp8_descriptor(&p).expect("parses");
        assert_eq!(
            (d.picture_id, d.tl0picidx, d.keyidx),
            (Some(0x7abc), Some(3), Some(0x1f))
        );

        // A 7-bit field takes 7-bit values only; failures change nothing.
        let mut short = [0x90, 0xc0, 0x12, 0x07, 0x50];
        let before = short;
        assert!(!rewrite_vp8_descriptor(
            &mut short,
            Some(0x80),
            Some(1),
            None
        ));
        assert_eq!(short, before);
        assert!(
            !rewrite_vp8_descriptor(&mut short, Some(1), None, Some(1)),
            "no KEYIDX"
        );
        assert_eq!(short, before);
        assert!(rewrite_vp8_descriptor(
            &mut short,
            Some(0x7f),
            Some(9),
            None
        ));
        assert_eq!(short, [0x90, 0xc0, 0x7f, 0x09, 0x50]);

        let mut p = [0x90, 0xf0, 0x81, 0x23, 0x07, 0x65, 0x50];
        assert!(!rewrite_vp8_descriptor(&mut p, Some(0x8000), None, None));
        assert!(!rewrite_vp8_descriptor(&mut p, None, None, Some(0x20)));
        assert!(!rewrite_vp8_descriptor(
            &mut [0x10, 0x50],
            Some(1),
            None,
            None
        ));
        assert!(
            !rewrite_vp8_descriptor(&mut [0x90, 0x80], Some(1), None, None),
            "truncated"
        );
        assert!(!rewrite_vp8_descriptor(&mut [], None, None, None));
    }

    #[test]
    fn vp9_keyframes() {
        // B = 1, P = 0, no optional fields, then frame data.
        keyframe_and_every_prefix_not(VideoCodec::Vp9, &[0x08, 0x82]);
        // I (15-bit id), L with SID 0, non-flexible (TL0PICIDX), B, E.
        keyframe_and_every_prefix_not(VideoCodec::Vp9, &[0xac, 0x81, 0x02, 0x00, 0x05, 0x82]);
        // Flexible mode: L without TL0PICIDX.
        keyframe_and_every_prefix_not(VideoCodec::Vp9, &[0xb8, 0x12, 0x00, 0x82]);
        // Scalability structure: N_S = 1 with sizes, N_G = 2 with P_DIFFs.
        let ss = [
            0x8a, 0x01, // I, B, V; 7-bit picture id
            0x38, // N_S = 1, Y, G
            0x02, 0x80, 0x01, 0x68, 0x05, 0x00, 0x02, 0xd0, // 640x360, 1280x720
            0x02, // N_G = 2
            0x04, 0x01, // TID 0, R = 1, P_DIFF 1
            0x28, 0x01, 0x02, // TID 1, R = 2, P_DIFFs 1 2
            0x82, // frame data
        ];
        keyframe_and_every_prefix_not(VideoCodec::Vp9, &ss);

        assert!(!vp9(&[0x48, 0x82]), "P = 1");
        assert!(!vp9(&[0x00, 0x82]), "B = 0");
        assert!(!vp9(&[0x28, 0x02, 0x00, 0x82]), "SID 1");
        assert!(!vp9(&[0x38, 0x02, 0x82]), "flexible, SID 1");
    }

    #[test]
    fn av1_keyframes() {
        // N = 1, W = 1; OBU header of a sequence header.
        keyframe_and_every_prefix_not(VideoCodec::Av1, &[0x18, 0x0a]);
        assert!(!av1(&[0x10, 0x0a, 0x0b]), "N = 0");
        assert!(!av1(&[0x88, 0x0a, 0x0b]), "Z = 1 continues an OBU");
    }

    /// Small deterministic generator (xorshift) for garbage payloads.
    struct Garbage(u64);

    impl Garbage {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_never_panics() {
        for codec in ALL {
            for len in 0..=2usize {
                for n in 0..(1u32 << (8 * len)) {
                    let bytes = n.to_le_bytes();
                    let _ = is_keyframe_start(codec, &bytes[..len]);
                }
            }
        }
        let mut rng = Garbage(0x9e37_79b9_7f4a_7c15);
        let mut buf = [0u8; 48];
        for _ in 0..200_000 {
            let len = (rng.next() % 48) as usize;
            for b in buf.iter_mut().take(len) {
                *b = rng.next() as u8;
            }
            let payload = &mut buf[..len];
            for codec in ALL {
                let _ = is_keyframe_start(codec, payload);
            }
            if let Some(d) = parse_vp8_descriptor(payload) {
                assert!(d.header_len <= len);
            }
            let v = rng.next();
            let _ = rewrite_vp8_descriptor(
                payload,
                Some(v as u16),
                Some((v >> 16) as u8),
                Some((v >> 24) as u8 & 0x1f),
            );
        }
    }
}
