//! H.264 bitstream pieces the shim needs: the AVCDecoderConfigurationRecord
//! an RTMP sequence header carries, AVCC (length-prefixed) NAL unit
//! iteration, a small SPS parser, and B-frame (reordering) detection.
//!
//! Why reordering matters: WebRTC receivers assume decode order = display
//! order; a stream with B-frames stutters or shows frames out of order in
//! browsers. The shim must find out early (from the SPS, before the first
//! frame) or at worst from the first non-zero composition time.

use bytes::Bytes;

use crate::Error;

/// NAL unit types used here (ITU-T H.264 Table 7-1).
pub mod nal_type {
    pub const NON_IDR: u8 = 1;
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
    pub const FILLER: u8 = 12;
}

/// Type of a NAL unit from its first byte.
pub fn nal_unit_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Reads bits MSB first; every read is bounds-checked.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    pub(crate) fn bit(&mut self) -> Result<u32, Error> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(Error::truncated("bitstream"))?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(b as u32)
    }

    /// Up to 32 bits.
    pub(crate) fn bits(&mut self, n: u32) -> Result<u32, Error> {
        let mut v: u64 = 0;
        for _ in 0..n.min(32) {
            v = (v << 1) | self.bit()? as u64;
        }
        Ok(v as u32)
    }

    pub(crate) fn flag(&mut self) -> Result<bool, Error> {
        Ok(self.bit()? == 1)
    }

    /// Exp-Golomb unsigned; values above 2^32 − 2 are malformed here.
    pub(crate) fn ue(&mut self) -> Result<u32, Error> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(Error::malformed(
                    "Exp-Golomb code",
                    "more than 31 leading zeros",
                ));
            }
        }
        let rest = self.bits(zeros)? as u64;
        let v = (1u64 << zeros) - 1 + rest;
        u32::try_from(v).map_err(|_| Error::malformed("Exp-Golomb code", "out of range"))
    }

    pub(crate) fn se(&mut self) -> Result<i32, Error> {
        let k = self.ue()? as i64;
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        Ok(v as i32)
    }
}

/// Removes emulation prevention bytes (00 00 03 → 00 00), giving the RBSP.
pub fn nal_to_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Whether a stream may output frames in an order other than decode order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reordering {
    /// Proven absent (VUI max_num_reorder_frames = 0, Baseline profile, or POC type 2).
    None,
    /// Proven present (VUI max_num_reorder_frames > 0).
    Present,
    /// The SPS does not say; watch composition times.
    Unknown,
}

/// The SPS fields the shim uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    /// constraint_set0..5 flags as in the second byte.
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub chroma_format_idc: u32,
    pub pic_order_cnt_type: u32,
    pub max_num_ref_frames: u32,
    pub frame_mbs_only: bool,
    /// Luma/chroma sample bit depth (8 unless a High 10/4:2:2/4:4:4 profile says more).
    pub bit_depth_luma: u32,
    pub bit_depth_chroma: u32,
    /// Display size after cropping.
    pub width: u32,
    pub height: u32,
    /// VUI timing (num_units_in_tick, time_scale), if present.
    pub timing: Option<(u32, u32)>,
    /// VUI bitstream_restriction: max_num_reorder_frames, if present.
    pub max_num_reorder_frames: Option<u32>,
    /// VUI bitstream_restriction: max_dec_frame_buffering, if present.
    pub max_dec_frame_buffering: Option<u32>,
}

impl Sps {
    /// Parses an SPS NAL unit (header byte included).
    pub fn parse(nal: &[u8]) -> Result<Sps, Error> {
        if nal_unit_type(nal) != nal_type::SPS {
            return Err(Error::malformed("SPS", "not an SPS NAL unit"));
        }
        let rbsp = nal_to_rbsp(&nal[1..]);
        let mut r = BitReader::new(&rbsp);
        let profile_idc = r.bits(8)? as u8;
        let constraint_flags = r.bits(8)? as u8;
        let level_idc = r.bits(8)? as u8;
        let _sps_id = r.ue()?;
        let mut chroma_format_idc = 1;
        let mut separate_colour_plane = false;
        let mut bit_depth_luma = 8;
        let mut bit_depth_chroma = 8;
        if matches!(
            profile_idc,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        ) {
            chroma_format_idc = r.ue()?;
            if chroma_format_idc > 3 {
                return Err(Error::malformed("SPS", "chroma_format_idc > 3"));
            }
            if chroma_format_idc == 3 {
                separate_colour_plane = r.flag()?;
            }
            bit_depth_luma = r.ue()?.saturating_add(8);
            bit_depth_chroma = r.ue()?.saturating_add(8);
            let _qpprime_bypass = r.flag()?;
            if r.flag()? {
                // seq_scaling_matrix_present: skip the lists, they only matter to a decoder.
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.flag()? {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        let _log2_max_frame_num = r.ue()?;
        let pic_order_cnt_type = r.ue()?;
        match pic_order_cnt_type {
            0 => {
                let _log2_max_poc_lsb = r.ue()?;
            }
            1 => {
                let _delta_always_zero = r.flag()?;
                let _offset_non_ref = r.se()?;
                let _offset_top_bottom = r.se()?;
                let cycle = r.ue()?;
                if cycle > 255 {
                    return Err(Error::malformed(
                        "SPS",
                        "num_ref_frames_in_pic_order_cnt_cycle > 255",
                    ));
                }
                for _ in 0..cycle {
                    r.se()?;
                }
            }
            2 => {}
            _ => return Err(Error::malformed("SPS", "pic_order_cnt_type > 2")),
        }
        let max_num_ref_frames = r.ue()?;
        let _gaps = r.flag()?;
        let width_mbs = r.ue()? as u64 + 1;
        let height_map_units = r.ue()? as u64 + 1;
        let frame_mbs_only = r.flag()?;
        if !frame_mbs_only {
            let _mb_adaptive = r.flag()?;
        }
        let _direct_8x8 = r.flag()?;
        let mut crop = [0u64; 4];
        if r.flag()? {
            for c in &mut crop {
                *c = r.ue()? as u64;
            }
        }
        let (crop_x, crop_y) = match (chroma_format_idc, separate_colour_plane) {
            (0, _) | (3, true) => (1, 2 - frame_mbs_only as u64),
            (1, _) => (2, 2 * (2 - frame_mbs_only as u64)),
            (2, _) => (2, 2 - frame_mbs_only as u64),
            _ => (1, 2 - frame_mbs_only as u64),
        };
        let coded_w = width_mbs * 16;
        let coded_h = (2 - frame_mbs_only as u64) * height_map_units * 16;
        let width = coded_w.checked_sub(crop_x * (crop[0] + crop[1]));
        let height = coded_h.checked_sub(crop_y * (crop[2] + crop[3]));
        let (Some(width), Some(height)) = (width, height) else {
            return Err(Error::malformed("SPS", "cropping larger than the picture"));
        };
        if width == 0 || height == 0 || width > 16384 || height > 16384 {
            return Err(Error::malformed("SPS", "picture size out of range"));
        }

        let mut sps = Sps {
            profile_idc,
            constraint_flags,
            level_idc,
            chroma_format_idc,
            pic_order_cnt_type,
            max_num_ref_frames,
            frame_mbs_only,
            bit_depth_luma,
            bit_depth_chroma,
            width: width as u32,
            height: height as u32,
            timing: None,
            max_num_reorder_frames: None,
            max_dec_frame_buffering: None,
        };
        if r.flag()? {
            // A truncated VUI (seen from some hardware encoders) keeps what was read.
            let _ = parse_vui(&mut r, &mut sps);
        }
        Ok(sps)
    }

    /// What the SPS alone says about frame reordering (B-frames).
    pub fn reordering(&self) -> Reordering {
        match self.max_num_reorder_frames {
            Some(0) => Reordering::None,
            Some(_) => Reordering::Present,
            // Baseline (without constraint_set1, i.e. not Main-compatible)
            // has no B slices; POC type 2 forces output order = decode order.
            None if self.profile_idc == 66 || self.pic_order_cnt_type == 2 => Reordering::None,
            None => Reordering::Unknown,
        }
    }

    /// Why browsers' WebRTC H.264 decoders would fail on this stream, if
    /// they would: they decode 8-bit 4:2:0 progressive only. Such streams
    /// need the re-encode path like B-frame streams. (Seen in the wild:
    /// GStreamer's x264enc picks High 4:4:4 when fed 4:4:4 raw video.)
    pub fn webrtc_incompatibility(&self) -> Option<&'static str> {
        if self.chroma_format_idc != 1 {
            Some("chroma format is not 4:2:0")
        } else if self.bit_depth_luma != 8 || self.bit_depth_chroma != 8 {
            Some("bit depth is not 8")
        } else if !self.frame_mbs_only {
            Some("interlaced coding")
        } else {
            None
        }
    }

    /// `profile-level-id` for SDP (`42e01f` style).
    pub fn profile_level_id(&self) -> String {
        format!(
            "{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }
}

fn skip_scaling_list(r: &mut BitReader, size: usize) -> Result<(), Error> {
    let mut last = 8i32;
    let mut next = 8i32;
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

fn skip_hrd(r: &mut BitReader) -> Result<(), Error> {
    let cpb_cnt = r.ue()? + 1;
    if cpb_cnt > 32 {
        return Err(Error::malformed("HRD parameters", "cpb_cnt_minus1 > 31"));
    }
    r.bits(8)?; // bit_rate_scale, cpb_size_scale
    for _ in 0..cpb_cnt {
        r.ue()?;
        r.ue()?;
        r.flag()?;
    }
    r.bits(20)?; // four 5-bit length fields
    Ok(())
}

fn parse_vui(r: &mut BitReader, sps: &mut Sps) -> Result<(), Error> {
    if r.flag()? {
        // aspect_ratio_info
        if r.bits(8)? == 255 {
            r.bits(32)?; // sar_width, sar_height
        }
    }
    if r.flag()? {
        r.flag()?; // overscan_appropriate
    }
    if r.flag()? {
        r.bits(4)?; // video_format, full_range
        if r.flag()? {
            r.bits(24)?; // colour primaries, transfer, matrix
        }
    }
    if r.flag()? {
        r.ue()?;
        r.ue()?;
    }
    if r.flag()? {
        let units = r.bits(32)?;
        let scale = r.bits(32)?;
        r.flag()?; // fixed_frame_rate
        sps.timing = Some((units, scale));
    }
    let nal_hrd = r.flag()?;
    if nal_hrd {
        skip_hrd(r)?;
    }
    let vcl_hrd = r.flag()?;
    if vcl_hrd {
        skip_hrd(r)?;
    }
    if nal_hrd || vcl_hrd {
        r.flag()?; // low_delay_hrd
    }
    r.flag()?; // pic_struct_present
    if r.flag()? {
        r.flag()?; // motion_vectors_over_pic_boundaries
        r.ue()?; // max_bytes_per_pic_denom
        r.ue()?; // max_bits_per_mb_denom
        r.ue()?; // log2_max_mv_length_horizontal
        r.ue()?; // log2_max_mv_length_vertical
        let reorder = r.ue()?;
        let buffering = r.ue()?;
        sps.max_num_reorder_frames = Some(reorder);
        sps.max_dec_frame_buffering = Some(buffering);
    }
    Ok(())
}

/// AVCDecoderConfigurationRecord (ISO 14496-15 §5.3.3.1), the body of an
/// RTMP AVC sequence header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcDecoderConfig {
    pub profile_indication: u8,
    pub profile_compatibility: u8,
    pub level_indication: u8,
    /// Bytes of the length prefix before each NAL unit in frames (1, 2 or 4).
    pub nalu_length_size: u8,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl AvcDecoderConfig {
    pub fn parse(data: &Bytes) -> Result<Self, Error> {
        let what = "AVCDecoderConfigurationRecord";
        if data.len() < 7 {
            return Err(Error::truncated(what));
        }
        if data[0] != 1 {
            return Err(Error::malformed(what, "configurationVersion is not 1"));
        }
        let nalu_length_size = (data[4] & 0x03) + 1;
        if nalu_length_size == 3 {
            return Err(Error::malformed(what, "NAL length size 3"));
        }
        let mut pos = 5;
        let read_sets = |count: usize, pos: &mut usize| -> Result<Vec<Bytes>, Error> {
            let mut sets = Vec::with_capacity(count);
            for _ in 0..count {
                let len = data
                    .get(*pos..*pos + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                    .ok_or(Error::truncated(what))?;
                let start = *pos + 2;
                if len == 0 || start + len > data.len() {
                    return Err(Error::truncated(what));
                }
                sets.push(data.slice(start..start + len));
                *pos = start + len;
            }
            Ok(sets)
        };
        let num_sps = (data[pos] & 0x1f) as usize;
        pos += 1;
        let sps = read_sets(num_sps, &mut pos)?;
        let &num_pps = data.get(pos).ok_or(Error::truncated(what))?;
        pos += 1;
        let pps = read_sets(num_pps as usize, &mut pos)?;
        if sps.is_empty() || pps.is_empty() {
            return Err(Error::malformed(what, "no SPS or no PPS"));
        }
        // High-profile trailing fields (chroma format, bit depths, SPS ext) are not needed.
        Ok(AvcDecoderConfig {
            profile_indication: data[1],
            profile_compatibility: data[2],
            level_indication: data[3],
            nalu_length_size,
            sps,
            pps,
        })
    }

    /// The first SPS, parsed.
    pub fn parse_sps(&self) -> Result<Sps, Error> {
        Sps::parse(&self.sps[0])
    }
}

/// Iterates over the NAL units of an AVCC access unit (zero-copy slices).
/// Yields an error and stops if a length runs past the end.
pub struct AvccNalus {
    data: Bytes,
    pos: usize,
    length_size: usize,
    failed: bool,
}

impl AvccNalus {
    pub fn new(data: Bytes, nalu_length_size: u8) -> Self {
        AvccNalus {
            data,
            pos: 0,
            length_size: nalu_length_size.clamp(1, 4) as usize,
            failed: false,
        }
    }
}

impl Iterator for AvccNalus {
    type Item = Result<Bytes, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let Some(prefix) = self.data.get(self.pos..self.pos + self.length_size) else {
            self.failed = true;
            return Some(Err(Error::truncated("AVCC NAL length")));
        };
        let len = prefix.iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        let start = self.pos + self.length_size;
        if len == 0 || len > self.data.len() - start {
            self.failed = true;
            return Some(Err(Error::malformed(
                "AVCC access unit",
                "NAL length out of bounds",
            )));
        }
        self.pos = start + len;
        Some(Ok(self.data.slice(start..start + len)))
    }
}

/// Iterates over the NAL units of an Annex B byte stream (start codes
/// `00 00 01` / `00 00 00 01`), as openh264 and other encoders emit them.
/// Zero-copy; bytes before the first start code are skipped.
pub struct AnnexBNalus {
    data: Bytes,
    pos: usize,
}

impl AnnexBNalus {
    pub fn new(data: Bytes) -> Self {
        let pos = find_start_code(&data, 0).map_or(data.len(), |(_, end)| end);
        AnnexBNalus { data, pos }
    }
}

/// (start, end) of the first start code at or after `from`.
fn find_start_code(d: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= d.len() {
        if d[i] == 0 && d[i + 1] == 0 {
            if d[i + 2] == 1 {
                return Some((i, i + 3));
            }
            if d[i + 2] == 0 && d.get(i + 3) == Some(&1) {
                return Some((i, i + 4));
            }
        }
        i += 1;
    }
    None
}

impl Iterator for AnnexBNalus {
    type Item = Result<Bytes, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.data.len() {
            let (end, next) =
                find_start_code(&self.data, self.pos).unwrap_or((self.data.len(), self.data.len()));
            // Trailing zeros belong to the next start code (zero_byte), not the NAL.
            let mut last = end;
            while last > self.pos && self.data[last - 1] == 0 {
                last -= 1;
            }
            let start = self.pos;
            self.pos = next;
            if last > start {
                return Some(Ok(self.data.slice(start..last)));
            }
        }
        None
    }
}

/// Writes an AVCC access unit as Annex B (4-byte start codes) for decoders
/// that want a byte stream (openh264). With `parameter_sets`, its SPS and
/// PPS go first: pass it for keyframes.
pub fn avcc_to_annex_b(
    access_unit: &Bytes,
    nalu_length_size: u8,
    parameter_sets: Option<&AvcDecoderConfig>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    const START: [u8; 4] = [0, 0, 0, 1];
    let start_len = out.len();
    if let Some(c) = parameter_sets {
        for nal in c.sps.iter().chain(&c.pps) {
            out.extend_from_slice(&START);
            out.extend_from_slice(nal);
        }
    }
    for nal in AvccNalus::new(access_unit.clone(), nalu_length_size) {
        match nal {
            Ok(nal) => {
                out.extend_from_slice(&START);
                out.extend_from_slice(&nal);
            }
            Err(e) => {
                out.truncate(start_len);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Decides whether a stream has B-frames: from the SPS when it says so, and
/// from composition times otherwise (a non-zero offset means PTS ≠ DTS, which
/// only reordering produces).
#[derive(Debug, Clone, Default)]
pub struct BFrameDetector {
    sps: Option<Reordering>,
    nonzero_cts: bool,
}

impl BFrameDetector {
    pub fn observe_sps(&mut self, sps: &Sps) {
        self.sps = Some(sps.reordering());
    }

    pub fn observe_frame(&mut self, composition_time: i32) {
        self.nonzero_cts |= composition_time != 0;
    }

    /// `Present` as soon as either source proves it; `None` when the SPS
    /// proves absence and no frame contradicts it.
    pub fn verdict(&self) -> Reordering {
        if self.nonzero_cts || self.sps == Some(Reordering::Present) {
            Reordering::Present
        } else {
            self.sps.unwrap_or(Reordering::Unknown)
        }
    }

    pub fn has_b_frames(&self) -> bool {
        self.verdict() == Reordering::Present
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Captured from Debian's ffmpeg 5.1 / libx264, testsrc2 640x360 at 30 fps.
    const SPS_BF0: &str = "6764001eacb201405ff2e022000003000200000300781e2c5c90";
    const SPS_BF2: &str = "6764001eacd940a02ff970110000030001000003003c0f162d96";
    // libx264 -profile:v baseline, 1920x1080 (1088 coded, cropped).
    const SPS_BASELINE_1080: &str = "6742c028d900780227e5c044000003000400000300f03c60c920";
    const PPS_BF0: &str = "68ebc3cb22c0";

    #[test]
    fn parses_x264_sps_without_b_frames() {
        let sps = Sps::parse(&hex(SPS_BF0)).unwrap();
        assert_eq!((sps.profile_idc, sps.level_idc), (100, 30));
        assert_eq!((sps.width, sps.height), (640, 360));
        assert_eq!(sps.max_num_reorder_frames, Some(0));
        assert_eq!(sps.timing, Some((1, 60)));
        assert_eq!(sps.reordering(), Reordering::None);
        assert_eq!(sps.profile_level_id(), "64001e");
    }

    #[test]
    fn parses_x264_sps_with_b_frames() {
        let sps = Sps::parse(&hex(SPS_BF2)).unwrap();
        assert_eq!((sps.width, sps.height), (640, 360));
        assert!(sps.max_num_reorder_frames.unwrap() > 0);
        assert_eq!(sps.reordering(), Reordering::Present);
    }

    #[test]
    fn parses_baseline_with_cropping() {
        let sps = Sps::parse(&hex(SPS_BASELINE_1080)).unwrap();
        assert_eq!(sps.profile_idc, 66);
        assert_eq!((sps.width, sps.height), (1920, 1080));
        assert_eq!(sps.reordering(), Reordering::None);
    }

    #[test]
    fn malformed_sps_is_an_error() {
        let good = hex(SPS_BF0);
        assert!(Sps::parse(&[]).is_err());
        assert!(Sps::parse(&hex(PPS_BF0)).is_err());
        // Cut before the VUI (a truncated VUI is tolerated: it keeps what was read).
        for cut in 1..11 {
            assert!(Sps::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        // 40 zero bits: Exp-Golomb overflow.
        assert!(Sps::parse(&[0x67, 0x64, 0, 0x1e, 0, 0, 0, 0, 0, 0]).is_err());
        // Every truncation and every single-byte corruption: no panic.
        for i in 1..good.len() {
            for v in [0x00, 0xff, 0x80, 0x01] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = Sps::parse(&bad);
            }
        }
    }

    #[test]
    fn emulation_prevention_is_removed() {
        assert_eq!(
            nal_to_rbsp(&[0, 0, 3, 1, 0, 0, 3, 0, 3]),
            vec![0, 0, 1, 0, 0, 0, 3]
        );
    }

    fn avcc_record() -> Vec<u8> {
        let sps = hex(SPS_BF0);
        let pps = hex(PPS_BF0);
        let mut r = vec![1, 0x64, 0, 0x1e, 0xff, 0xe1];
        r.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        r.extend_from_slice(&sps);
        r.push(1);
        r.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        r.extend_from_slice(&pps);
        r
    }

    #[test]
    fn parses_avc_decoder_configuration_record() {
        let c = AvcDecoderConfig::parse(&Bytes::from(avcc_record())).unwrap();
        assert_eq!(c.nalu_length_size, 4);
        assert_eq!(c.sps.len(), 1);
        assert_eq!(&c.pps[0][..], &hex(PPS_BF0)[..]);
        assert_eq!(c.parse_sps().unwrap().width, 640);
        let rec = avcc_record();
        for cut in 0..rec.len() {
            assert!(
                AvcDecoderConfig::parse(&Bytes::copy_from_slice(&rec[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = rec.clone();
        bad[0] = 0;
        assert!(AvcDecoderConfig::parse(&Bytes::from(bad)).is_err());
        let mut bad = rec;
        bad[4] = 0xfe; // length size 3
        assert!(AvcDecoderConfig::parse(&Bytes::from(bad)).is_err());
    }

    #[test]
    fn splits_avcc_access_units() {
        let au = Bytes::from_static(&[0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 3, 0x65, 1, 2]);
        let nalus: Vec<_> = AvccNalus::new(au, 4).map(Result::unwrap).collect();
        assert_eq!(
            nalus,
            vec![
                Bytes::from_static(&[9, 0xf0]),
                Bytes::from_static(&[0x65, 1, 2])
            ]
        );
        let au = Bytes::from_static(&[0, 2, 0x41, 7]);
        assert_eq!(AvccNalus::new(au, 2).count(), 1);
        // Length past the end, zero length, and a cut prefix.
        for bad in [&[0, 0, 0, 9, 0x65][..], &[0, 0, 0, 0], &[0, 0]] {
            let r: Vec<_> = AvccNalus::new(Bytes::copy_from_slice(bad), 4).collect();
            assert_eq!(r.len(), 1);
            assert!(r[0].is_err());
        }
    }

    #[test]
    fn splits_annex_b_and_converts_from_avcc() {
        let stream = Bytes::from_static(&[
            0xff, 0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 0, 0, 1, 0x65, 0, 3, 0, 0,
        ]);
        let nalus: Vec<_> = AnnexBNalus::new(stream).map(Result::unwrap).collect();
        assert_eq!(
            nalus,
            vec![
                Bytes::from_static(&[0x67, 1]),
                Bytes::from_static(&[0x68, 2]),
                Bytes::from_static(&[0x65, 0, 3]),
            ]
        );
        assert_eq!(AnnexBNalus::new(Bytes::from_static(&[1, 2, 3])).count(), 0);
        assert_eq!(AnnexBNalus::new(Bytes::from_static(&[0, 0, 1])).count(), 0);

        let config = AvcDecoderConfig::parse(&Bytes::from(avcc_record())).unwrap();
        let au = Bytes::from_static(&[0, 0, 0, 2, 0x65, 7]);
        let mut out = Vec::new();
        avcc_to_annex_b(&au, 4, Some(&config), &mut out).unwrap();
        let back: Vec<_> = AnnexBNalus::new(Bytes::from(out))
            .map(Result::unwrap)
            .collect();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], config.sps[0]);
        assert_eq!(&back[2][..], &[0x65, 7]);
        let mut out = vec![9];
        assert!(avcc_to_annex_b(&Bytes::from_static(&[0, 0, 0, 5, 1]), 4, None, &mut out).is_err());
        assert_eq!(out, vec![9], "nothing written on error");
    }

    #[test]
    fn webrtc_incompatible_streams_are_named() {
        let sps = Sps::parse(&hex(SPS_BF0)).unwrap();
        assert_eq!((sps.bit_depth_luma, sps.bit_depth_chroma), (8, 8));
        assert_eq!(sps.webrtc_incompatibility(), None);
        // libx264 -pix_fmt yuv444p: High 4:4:4 Predictive.
        let sps = Sps::parse(&hex(
            "67f4001e919b281405ff138088000003000800000301e078b16cb0",
        ))
        .unwrap();
        assert_eq!((sps.profile_idc, sps.chroma_format_idc), (244, 3));
        assert_eq!((sps.width, sps.height), (640, 360));
        assert_eq!(
            sps.webrtc_incompatibility(),
            Some("chroma format is not 4:2:0")
        );
        // libx264 -pix_fmt yuv420p10le: High 10.
        let sps = Sps::parse(&hex(
            "676e001ea6cd940a02ff970110000003001000000303c0f162d960",
        ))
        .unwrap();
        assert_eq!((sps.profile_idc, sps.bit_depth_luma), (110, 10));
        assert_eq!((sps.width, sps.height), (640, 360));
        assert_eq!(sps.webrtc_incompatibility(), Some("bit depth is not 8"));
        // libx264 interlaced=1, 720x576 (PAL).
        let sps = Sps::parse(&hex("6764001eacd940b424d8088000000300800000190f8a14cb")).unwrap();
        assert!(!sps.frame_mbs_only);
        assert_eq!((sps.width, sps.height), (720, 576));
        assert_eq!(sps.webrtc_incompatibility(), Some("interlaced coding"));
    }

    #[test]
    fn b_frame_detector() {
        let mut d = BFrameDetector::default();
        assert_eq!(d.verdict(), Reordering::Unknown);
        d.observe_sps(&Sps::parse(&hex(SPS_BF0)).unwrap());
        d.observe_frame(0);
        assert_eq!(d.verdict(), Reordering::None);
        d.observe_frame(66);
        assert!(d.has_b_frames());

        let mut d = BFrameDetector::default();
        d.observe_sps(&Sps::parse(&hex(SPS_BF2)).unwrap());
        assert!(d.has_b_frames(), "known from the SPS before any frame");
    }
}
