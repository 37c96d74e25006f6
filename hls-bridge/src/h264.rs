//! H.264 over RTP (RFC 6184, packetization-mode 1) to access units.
//!
//! Handles single NAL unit packets, STAP-A aggregates and FU-A fragments —
//! what browsers, OBS and GStreamer send. STAP-B, MTAP and FU-B belong to the
//! interleaved mode nobody uses in WebRTC; they are treated as corrupt input.
//!
//! The rule that matters for HLS: a frame with a hole in it is never emitted.
//! After a loss (or any packet that does not fit), the depacketizer drops
//! everything up to the next IDR that comes with known SPS/PPS, so a segment
//! never starts with, or contains, a frame the decoder cannot reconstruct.
//!
//! SPS and PPS are taken out of the frames and kept aside: fMP4 `avc1` carries
//! them in the `avcC` box of the init segment.

use bytes::{BufMut, Bytes, BytesMut};

use crate::rtp::{Reordered, RtpPacket};

const NAL_SLICE_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// The parameter sets a decoder needs before the first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterSets {
    pub sps: Bytes,
    pub pps: Bytes,
    /// What the SPS says about the picture.
    pub info: SpsInfo,
}

/// The fields of an SPS the packager needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    /// The constraint flags byte (`profile_compatibility` in `avcC`).
    pub constraints: u8,
    pub level_idc: u8,
    /// 1 = 4:2:0 (what every streaming encoder sends).
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    pub width: u32,
    pub height: u32,
}

impl SpsInfo {
    /// The RFC 6381 codec string, `avc1.PPCCLL` in hex.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraints, self.level_idc
        )
    }
}

/// One complete picture: the NAL units sharing an RTP timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub rtp_timestamp: u32,
    /// Contains an IDR slice: decoding can start here.
    pub keyframe: bool,
    /// NAL units without start codes, SPS/PPS/AUD removed.
    pub nalus: Vec<Bytes>,
    /// The parameter sets in force; always set on keyframes.
    pub parameter_sets: Option<ParameterSets>,
}

impl AccessUnit {
    /// NAL units each prefixed with a 4-byte big-endian length (fMP4 samples).
    pub fn to_length_prefixed(&self) -> Bytes {
        let len = self.nalus.iter().map(|n| n.len() + 4).sum();
        let mut out = BytesMut::with_capacity(len);
        for nal in &self.nalus {
            out.put_u32(nal.len() as u32);
            out.put_slice(nal);
        }
        out.freeze()
    }

    /// Reads one access unit in Annex-B form (an encoder's output): SPS and
    /// PPS found in it become its `parameter_sets`. `None` if it holds no
    /// picture.
    pub fn from_annex_b(rtp_timestamp: u32, data: Bytes) -> Option<AccessUnit> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        let (mut sps, mut pps, mut nalus, mut keyframe) = (None, None, Vec::new(), false);
        for (k, &start) in starts.iter().enumerate() {
            let mut end = starts.get(k + 1).map_or(data.len(), |n| n - 3);
            // Trailing zeros belong to the next 4-byte start code.
            while end > start && data[end - 1] == 0 {
                end -= 1;
            }
            if end == start {
                continue;
            }
            let nal = data.slice(start..end);
            match nal[0] & 0x1f {
                NAL_SPS => sps = Some(nal),
                NAL_PPS => pps = Some(nal),
                NAL_AUD => {}
                t => {
                    keyframe |= t == NAL_SLICE_IDR;
                    nalus.push(nal);
                }
            }
        }
        if nalus.is_empty() {
            return None;
        }
        let parameter_sets = match (sps, pps) {
            (Some(sps), Some(pps)) => parse_sps(&sps).map(|info| ParameterSets { sps, pps, info }),
            _ => None,
        };
        Some(AccessUnit {
            rtp_timestamp,
            keyframe,
            nalus,
            parameter_sets,
        })
    }

    /// Annex-B byte stream (start codes), with SPS/PPS in front of keyframes
    /// so the result decodes on its own (what a transcoder wants).
    pub fn to_annex_b(&self) -> Bytes {
        let mut out = BytesMut::new();
        if let (true, Some(ps)) = (self.keyframe, &self.parameter_sets) {
            for nal in [&ps.sps, &ps.pps] {
                out.put_slice(&[0, 0, 0, 1]);
                out.put_slice(nal);
            }
        }
        for nal in &self.nalus {
            out.put_slice(&[0, 0, 0, 1]);
            out.put_slice(nal);
        }
        out.freeze()
    }
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DepacketizerStats {
    /// Frames completed and emitted.
    pub frames: u64,
    /// Frames thrown away: broken by loss, or waiting for a keyframe.
    pub dropped_frames: u64,
    /// Packets that did not parse.
    pub malformed_packets: u64,
    /// Times a loss put the depacketizer back to waiting for a keyframe.
    pub losses: u64,
}

/// Turns in-order RTP packets into [`AccessUnit`]s.
#[derive(Debug)]
pub struct H264Depacketizer {
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    parameter_sets: Option<ParameterSets>,
    /// The access unit being assembled.
    current: Option<Building>,
    /// A FU-A fragmented NAL unit being reassembled.
    fragment: Option<BytesMut>,
    /// Drop everything until an IDR: at start and after any loss.
    waiting_for_keyframe: bool,
    /// Packets were lost right before the next frame's first packet.
    gap: bool,
    stats: DepacketizerStats,
}

#[derive(Debug)]
struct Building {
    rtp_timestamp: u32,
    nalus: Vec<Bytes>,
    keyframe: bool,
    broken: bool,
    /// Its first packet came right after a loss: the lost packets may have
    /// been its own beginning.
    after_gap: bool,
}

impl Default for H264Depacketizer {
    fn default() -> Self {
        Self::new()
    }
}

impl H264Depacketizer {
    pub fn new() -> Self {
        Self {
            sps: None,
            pps: None,
            parameter_sets: None,
            current: None,
            fragment: None,
            waiting_for_keyframe: true,
            gap: false,
            stats: DepacketizerStats::default(),
        }
    }

    /// The last complete SPS/PPS pair seen.
    pub fn parameter_sets(&self) -> Option<&ParameterSets> {
        self.parameter_sets.as_ref()
    }

    /// Frames are being dropped until the next IDR (start, or after a loss).
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    pub fn stats(&self) -> DepacketizerStats {
        self.stats
    }

    /// Feeds what the reorder window released; returns a frame when one
    /// completes. At most one frame completes per input.
    pub fn push(&mut self, item: Reordered) -> Option<AccessUnit> {
        match item {
            Reordered::Lost { .. } => {
                self.lose();
                None
            }
            Reordered::Packet(packet) => self.push_packet(packet),
        }
    }

    fn lose(&mut self) {
        self.stats.losses += 1;
        self.fragment = None;
        if let Some(cur) = self.current.take() {
            if !cur.nalus.is_empty() {
                self.stats.dropped_frames += 1;
            }
        }
        self.waiting_for_keyframe = true;
        self.gap = true;
    }

    fn push_packet(&mut self, packet: RtpPacket) -> Option<AccessUnit> {
        let mut done = None;
        // A new timestamp without a marker on the previous frame: the sender
        // does not set markers reliably, so the previous frame ends here.
        if let Some(cur) = &self.current {
            if cur.rtp_timestamp != packet.timestamp {
                if self.fragment.take().is_some() {
                    // Its last fragment never came.
                    if let Some(c) = self.current.as_mut() {
                        c.broken = true;
                    }
                }
                done = self.finish();
            }
        }
        let gap = &mut self.gap;
        let cur = self.current.get_or_insert_with(|| Building {
            rtp_timestamp: packet.timestamp,
            nalus: Vec::new(),
            keyframe: false,
            broken: false,
            after_gap: std::mem::take(gap),
        });
        if let Err(()) = Self::parse_payload(
            &packet.payload,
            cur,
            &mut self.fragment,
            &mut self.sps,
            &mut self.pps,
        ) {
            self.stats.malformed_packets += 1;
            cur.broken = true;
            self.fragment = None;
        }
        self.refresh_parameter_sets();
        if packet.marker {
            if self.fragment.take().is_some() {
                if let Some(c) = self.current.as_mut() {
                    c.broken = true;
                }
            }
            let finished = self.finish();
            // Two frames at once only if the sender skipped a marker and
            // the new frame is a single packet; keep the newer one.
            if done.is_some() && finished.is_some() {
                self.stats.dropped_frames += 1;
            }
            return finished.or(done);
        }
        done
    }

    fn refresh_parameter_sets(&mut self) {
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
            return;
        };
        let same = self
            .parameter_sets
            .as_ref()
            .is_some_and(|ps| ps.sps == *sps && ps.pps == *pps);
        if same {
            return;
        }
        if let Some(info) = parse_sps(sps) {
            self.parameter_sets = Some(ParameterSets {
                sps: sps.clone(),
                pps: pps.clone(),
                info,
            });
        }
    }

    fn finish(&mut self) -> Option<AccessUnit> {
        let cur = self.current.take()?;
        // After a loss, the frame is whole only if its first slice is there
        // (first_mb_in_slice == 0, a leading 1 bit in ue(v)): what may be
        // missing then is an SEI or AUD, never picture data.
        let starts_picture = cur
            .nalus
            .iter()
            .find(|n| matches!(n[0] & 0x1f, 1..=5))
            .is_some_and(|n| n.get(1).is_some_and(|b| b & 0x80 != 0));
        if cur.broken || (cur.after_gap && !starts_picture) {
            self.stats.dropped_frames += 1;
            self.waiting_for_keyframe = true;
            return None;
        }
        if cur.nalus.is_empty() {
            // Only parameter sets: not a frame.
            return None;
        }
        if self.waiting_for_keyframe {
            if !cur.keyframe || self.parameter_sets.is_none() {
                self.stats.dropped_frames += 1;
                return None;
            }
            self.waiting_for_keyframe = false;
        }
        self.stats.frames += 1;
        Some(AccessUnit {
            rtp_timestamp: cur.rtp_timestamp,
            keyframe: cur.keyframe,
            nalus: cur.nalus,
            parameter_sets: if cur.keyframe {
                self.parameter_sets.clone()
            } else {
                None
            },
        })
    }

    fn parse_payload(
        payload: &Bytes,
        cur: &mut Building,
        fragment: &mut Option<BytesMut>,
        sps: &mut Option<Bytes>,
        pps: &mut Option<Bytes>,
    ) -> Result<(), ()> {
        let &header = payload.first().ok_or(())?;
        if header & 0x80 != 0 {
            // forbidden_zero_bit
            return Err(());
        }
        match header & 0x1f {
            1..=23 => {
                Self::add_nal(payload.clone(), cur, sps, pps);
                Ok(())
            }
            NAL_STAP_A => {
                let mut rest = payload.slice(1..);
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(());
                    }
                    let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    if size == 0 || rest.len() < 2 + size {
                        return Err(());
                    }
                    let nal = rest.slice(2..2 + size);
                    rest = rest.slice(2 + size..);
                    if nal[0] & 0x1f == 0 || nal[0] & 0x1f > 23 {
                        return Err(());
                    }
                    Self::add_nal(nal, cur, sps, pps);
                }
                Ok(())
            }
            NAL_FU_A => {
                if payload.len() < 3 {
                    return Err(());
                }
                let fu = payload[1];
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                if start {
                    if fragment.is_some() {
                        // The previous fragmented NAL never ended.
                        return Err(());
                    }
                    let mut buf = BytesMut::with_capacity(payload.len() * 8);
                    buf.put_u8((header & 0xe0) | (fu & 0x1f));
                    buf.put_slice(&payload[2..]);
                    *fragment = Some(buf);
                } else {
                    let buf = fragment.as_mut().ok_or(())?;
                    buf.put_slice(&payload[2..]);
                }
                if end {
                    let nal = fragment.take().ok_or(())?.freeze();
                    Self::add_nal(nal, cur, sps, pps);
                }
                Ok(())
            }
            // STAP-B, MTAP16/24, FU-B: interleaved mode only; type 0 and
            // 30/31 are reserved.
            _ => Err(()),
        }
    }

    fn add_nal(nal: Bytes, cur: &mut Building, sps: &mut Option<Bytes>, pps: &mut Option<Bytes>) {
        match nal[0] & 0x1f {
            NAL_SPS => *sps = Some(nal),
            NAL_PPS => *pps = Some(nal),
            NAL_AUD => {}
            t => {
                if t == NAL_SLICE_IDR {
                    cur.keyframe = true;
                }
                cur.nalus.push(nal);
            }
        }
    }
}

/// Reads the fields of an SPS the packager needs (ITU-T H.264 §7.3.2.1.1).
/// Returns `None` for anything it cannot read rather than guessing.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    if nal.len() < 4 || nal[0] & 0x1f != NAL_SPS {
        return None;
    }
    let rbsp = unescape(&nal[1..]);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.bits(8)? as u8;
    let constraints = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    let _sps_id = r.ue()?;
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    let (mut bit_depth_luma, mut bit_depth_chroma) = (8, 8);
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()?;
        }
        bit_depth_luma = r.ue()?.checked_add(8).filter(|&d| d <= 14)?;
        bit_depth_chroma = r.ue()?.checked_add(8).filter(|&d| d <= 14)?;
        let _qpprime_y_zero_transform_bypass = r.bit()?;
        if r.bit()? {
            // seq_scaling_matrix_present_flag: skip the lists.
            let count = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..count {
                if r.bit()? {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    let _log2_max_frame_num = r.ue()?;
    match r.ue()? {
        0 => {
            let _log2_max_poc_lsb = r.ue()?;
        }
        1 => {
            let _delta_pic_order_always_zero = r.bit()?;
            let _offset_for_non_ref_pic = r.se()?;
            let _offset_for_top_to_bottom = r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    let _max_num_ref_frames = r.ue()?;
    let _gaps_allowed = r.bit()?;
    let width_mbs = r.ue()? as u64 + 1;
    let height_map_units = r.ue()? as u64 + 1;
    let frame_mbs_only = r.bit()?;
    if !frame_mbs_only {
        let _mb_adaptive_frame_field = r.bit()?;
    }
    let _direct_8x8_inference = r.bit()?;
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? {
        crop_l = r.ue()? as u64;
        crop_r = r.ue()? as u64;
        crop_t = r.ue()? as u64;
        crop_b = r.ue()? as u64;
    }
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let (crop_x, crop_y) = match (chroma_format_idc, separate_colour_plane) {
        (0, _) | (3, true) => (1, field_factor),
        (1, _) => (2, 2 * field_factor),
        (2, _) => (2, field_factor),
        _ => (1, field_factor),
    };
    let width = (width_mbs * 16).checked_sub(crop_x * (crop_l + crop_r))?;
    let height = (field_factor * height_map_units * 16).checked_sub(crop_y * (crop_t + crop_b))?;
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return None;
    }
    Some(SpsInfo {
        profile_idc,
        constraints,
        level_idc,
        chroma_format_idc: chroma_format_idc.min(3) as u8,
        bit_depth_luma: bit_depth_luma as u8,
        bit_depth_chroma: bit_depth_chroma as u8,
        width: width as u32,
        height: height as u32,
    })
}

/// Removes emulation prevention bytes (`00 00 03` → `00 00`).
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// An MSB-first bit reader with Exp-Golomb codes.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<bool> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(bit == 1)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()? as u32;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + self.bits(zeros)? as u64) as u32)
    }

    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rtp::{ReorderBuffer, ReorderConfig};
    use std::time::Duration;

    /// A real x264 stream: 320x180 constrained baseline, 30 fps, IDR every
    /// 30 frames, SPS/PPS before each IDR (see testdata/README.md).
    pub(crate) const FIXTURE: &[u8] = include_bytes!("../testdata/baseline_320x180_30fps.h264");

    /// Splits an Annex-B stream into access units (by slice boundaries: this
    /// fixture has one slice per picture).
    pub(crate) fn fixture_access_units() -> Vec<Vec<Bytes>> {
        access_units(FIXTURE)
    }

    /// The same split for any one-slice-per-picture Annex-B stream.
    pub(crate) fn access_units(stream: &'static [u8]) -> Vec<Vec<Bytes>> {
        let data = Bytes::from_static(stream);
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        let mut nals = Vec::new();
        for (k, &s) in starts.iter().enumerate() {
            let mut e = starts.get(k + 1).map_or(data.len(), |n| n - 3);
            while e > s && data[e - 1] == 0 {
                e -= 1;
            }
            nals.push(data.slice(s..e));
        }
        let mut aus: Vec<Vec<Bytes>> = Vec::new();
        let mut cur = Vec::new();
        for nal in nals {
            let t = nal[0] & 0x1f;
            cur.push(nal);
            if t == 1 || t == 5 {
                aus.push(std::mem::take(&mut cur));
            }
        }
        aus
    }

    /// Packetizes like a browser: SPS+PPS (and any small NALs) in a STAP-A,
    /// small slices as single NAL packets, large ones as FU-A with `mtu`.
    pub(crate) fn packetize(aus: &[Vec<Bytes>], mtu: usize, first_seq: u64) -> Vec<RtpPacket> {
        let mut out = Vec::new();
        let mut seq = first_seq;
        for (i, au) in aus.iter().enumerate() {
            let ts = 90_000u32.wrapping_add(i as u32 * 3000);
            let mut payloads: Vec<Bytes> = Vec::new();
            let (small, big): (Vec<_>, Vec<_>) = au
                .iter()
                .partition(|n| n[0] & 0x1f == 7 || n[0] & 0x1f == 8);
            if !small.is_empty() {
                let mut stap = BytesMut::new();
                stap.put_u8(0x78); // F=0 NRI=3 type=24
                for n in small {
                    stap.put_u16(n.len() as u16);
                    stap.put_slice(n);
                }
                payloads.push(stap.freeze());
            }
            for nal in big {
                if nal.len() <= mtu {
                    payloads.push(nal.clone());
                    continue;
                }
                let body = &nal[1..];
                let chunks: Vec<&[u8]> = body.chunks(mtu - 2).collect();
                for (k, chunk) in chunks.iter().enumerate() {
                    let mut p = BytesMut::new();
                    p.put_u8((nal[0] & 0xe0) | NAL_FU_A);
                    let mut fu = nal[0] & 0x1f;
                    if k == 0 {
                        fu |= 0x80;
                    }
                    if k == chunks.len() - 1 {
                        fu |= 0x40;
                    }
                    p.put_u8(fu);
                    p.put_slice(chunk);
                    payloads.push(p.freeze());
                }
            }
            let n = payloads.len();
            for (k, payload) in payloads.into_iter().enumerate() {
                out.push(RtpPacket {
                    seq,
                    timestamp: ts,
                    marker: k == n - 1,
                    payload,
                });
                seq += 1;
            }
        }
        out
    }

    fn run(packets: Vec<RtpPacket>) -> (Vec<AccessUnit>, DepacketizerStats) {
        let mut rb = ReorderBuffer::new(ReorderConfig::default());
        let mut d = H264Depacketizer::new();
        let mut released = Vec::new();
        let mut frames = Vec::new();
        for (i, p) in packets.into_iter().enumerate() {
            rb.push(p, Duration::from_millis(i as u64), &mut released);
            for r in released.drain(..) {
                frames.extend(d.push(r));
            }
        }
        (frames, d.stats())
    }

    #[test]
    fn parses_the_fixture_sps() {
        let aus = fixture_access_units();
        let sps = aus[0].iter().find(|n| n[0] & 0x1f == 7).unwrap();
        let info = parse_sps(sps).unwrap();
        assert_eq!((info.width, info.height), (320, 180));
        assert_eq!(info.profile_idc, 66);
        assert_eq!(info.level_idc, 31);
        assert_eq!(info.codec_string(), "avc1.42c01f");
    }

    #[test]
    fn parses_a_high_profile_1080p_sps() {
        // x264 High@4.0 1920x1080 (crop 8 lines), as OBS sends it.
        let sps = [
            0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00,
            0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
        ];
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_eq!(info.codec_string(), "avc1.640028");
        assert_eq!(
            (
                info.chroma_format_idc,
                info.bit_depth_luma,
                info.bit_depth_chroma
            ),
            (1, 8, 8)
        );
    }

    #[test]
    fn rejects_garbage_sps_without_panicking() {
        assert_eq!(parse_sps(&[0x67]), None);
        assert_eq!(parse_sps(&[0x67, 0x42, 0, 0x1f, 0, 0, 0]), None);
        assert_eq!(parse_sps(&[0x68, 1, 2, 3, 4]), None);
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x67) as u8).collect();
            let _ = parse_sps(&junk);
        }
    }

    #[test]
    fn reassembles_every_frame_of_a_clean_stream() {
        let aus = fixture_access_units();
        assert_eq!(aus.len(), 90);
        let packets = packetize(&aus, 300, 1000);
        assert!(packets.len() > 90, "FU-A must be exercised");
        let (frames, stats) = run(packets);
        assert_eq!(frames.len(), 90);
        assert_eq!(stats.dropped_frames, 0);
        assert!(frames[0].keyframe && frames[30].keyframe && frames[60].keyframe);
        assert!(!frames[1].keyframe);
        // Slices survive byte for byte, parameter sets are taken out.
        for (frame, au) in frames.iter().zip(&aus) {
            let slices: Vec<&Bytes> = au
                .iter()
                .filter(|n| n[0] & 0x1f != 7 && n[0] & 0x1f != 8)
                .collect();
            assert_eq!(frame.nalus.iter().collect::<Vec<_>>(), slices);
        }
        let ps = frames[0].parameter_sets.as_ref().unwrap();
        assert_eq!((ps.info.width, ps.info.height), (320, 180));
        assert_eq!(frames[1].parameter_sets, None);
    }

    #[test]
    fn reordered_packets_give_the_same_frames() {
        let aus = fixture_access_units();
        let mut packets = packetize(&aus, 300, 5);
        // Swap neighbours all along the stream, as a multipath network would.
        for i in (3..packets.len() - 1).step_by(7) {
            packets.swap(i, i + 1);
        }
        let (frames, stats) = run(packets);
        assert_eq!(frames.len(), 90);
        assert_eq!(stats.dropped_frames, 0);
    }

    #[test]
    fn a_lost_fragment_drops_frames_until_the_next_keyframe() {
        let aus = fixture_access_units();
        let packets = packetize(&aus, 40, 0);
        // Lose the first fragment of frame 10.
        let ts10 = 90_000 + 10 * 3000;
        let frag: Vec<usize> = (0..packets.len())
            .filter(|&i| packets[i].timestamp == ts10)
            .collect();
        assert!(frag.len() >= 2, "frame 10 must be fragmented");
        let lost = frag[0];
        let packets: Vec<RtpPacket> = packets
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != lost)
            .map(|(_, p)| p)
            .collect();
        let (frames, stats) = run(packets);
        // Frames 0..=9 survive, 10..=29 are dropped, 30.. resume at the IDR.
        assert_eq!(frames.len(), 10 + 60);
        assert!(frames[10].keyframe);
        assert_eq!(frames[10].rtp_timestamp, 90_000 + 30 * 3000);
        assert_eq!(stats.losses, 1);
        assert_eq!(stats.dropped_frames, 20);
    }

    #[test]
    fn a_stream_joined_mid_gop_starts_at_the_first_keyframe() {
        let aus = fixture_access_units();
        let packets = packetize(&aus, 1200, 0);
        let start = packets
            .iter()
            .position(|p| p.timestamp == 90_000 + 12 * 3000)
            .unwrap();
        let (frames, _) = run(packets[start..].to_vec());
        assert_eq!(frames.len(), 60);
        assert!(frames[0].keyframe);
    }

    #[test]
    fn malformed_payloads_never_panic_and_break_only_their_frame() {
        let mut d = H264Depacketizer::new();
        let junk: [&[u8]; 7] = [
            &[],
            &[0x80],
            &[0x78, 0x00],
            &[0x78, 0x00, 0x09, 0x67],
            &[0x7c],
            &[0x7c, 0x05],
            &[0x79, 1, 2, 3],
        ];
        for (i, p) in junk.iter().enumerate() {
            let out = d.push(Reordered::Packet(RtpPacket {
                seq: i as u64,
                timestamp: i as u32,
                marker: true,
                payload: Bytes::copy_from_slice(p),
            }));
            assert_eq!(out, None);
        }
        assert!(d.stats().malformed_packets >= 5);
    }

    #[test]
    fn random_loss_and_reordering_never_yield_a_corrupt_frame() {
        let aus = fixture_access_units();
        let mut loops = Vec::new();
        for _ in 0..4 {
            loops.extend(aus.iter().cloned());
        }
        let clean = packetize(&loops, 120, 0);
        // The slices the publisher sent, by timestamp: what must come back
        // byte for byte (an SEI lost just before a frame is harmless).
        let slices = |au: &[Bytes]| -> Vec<Bytes> {
            au.iter()
                .filter(|n| matches!(n[0] & 0x1f, 1..=5))
                .cloned()
                .collect()
        };
        let originals: std::collections::HashMap<u32, Vec<Bytes>> = loops
            .iter()
            .enumerate()
            .map(|(i, au)| (90_000 + i as u32 * 3000, slices(au)))
            .collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _round in 0..20 {
            let mut packets = clean.clone();
            // 2 % loss, 5 % swapped with a neighbour up to 3 places away.
            packets.retain(|_| rand() % 100 >= 2);
            for i in 0..packets.len() {
                if rand() % 100 < 5 {
                    let j = (i + 1 + (rand() % 3) as usize).min(packets.len() - 1);
                    packets.swap(i, j);
                }
            }
            let (frames, stats) = run(packets);
            assert!(stats.losses > 0);
            let mut after_gap = true;
            let mut last_ts = 0;
            for f in &frames {
                let got = slices(&f.nalus);
                assert_eq!(Some(&got), originals.get(&f.rtp_timestamp), "corrupt frame");
                // A frame following a hole in the sequence must be an IDR.
                let skipped = f.rtp_timestamp != last_ts + 3000;
                if after_gap || skipped {
                    assert!(f.keyframe, "decoding resumed without a keyframe");
                }
                after_gap = false;
                last_ts = f.rtp_timestamp;
            }
        }
    }

    #[test]
    fn output_forms() {
        let au = AccessUnit {
            rtp_timestamp: 0,
            keyframe: true,
            nalus: vec![Bytes::from_static(&[0x65, 1, 2])],
            parameter_sets: Some(ParameterSets {
                sps: Bytes::from_static(&[0x67, 9]),
                pps: Bytes::from_static(&[0x68, 8]),
                info: SpsInfo {
                    profile_idc: 66,
                    constraints: 0xc0,
                    level_idc: 31,
                    chroma_format_idc: 1,
                    bit_depth_luma: 8,
                    bit_depth_chroma: 8,
                    width: 16,
                    height: 16,
                },
            }),
        };
        assert_eq!(&au.to_length_prefixed()[..], &[0, 0, 0, 3, 0x65, 1, 2]);
        // Annex-B back in: the parameter sets come out again (the SPS here
        // is too short to parse, so none are attached), the slice survives.
        let back = AccessUnit::from_annex_b(0, au.to_annex_b()).unwrap();
        assert_eq!(back.nalus, au.nalus);
        assert!(back.keyframe);
        assert_eq!(
            AccessUnit::from_annex_b(0, Bytes::from_static(&[0, 0, 1, 0x67])),
            None
        );
        let aus = fixture_access_units();
        let mut stream = Vec::new();
        for nal in &aus[0] {
            stream.extend_from_slice(&[0, 0, 1]);
            stream.extend_from_slice(nal);
        }
        let first = AccessUnit::from_annex_b(7, Bytes::from(stream)).unwrap();
        assert_eq!(first.parameter_sets.unwrap().info.width, 320);
        assert_eq!(
            &au.to_annex_b()[..],
            &[0, 0, 0, 1, 0x67, 9, 0, 0, 0, 1, 0x68, 8, 0, 0, 0, 1, 0x65, 1, 2]
        );
    }
}
