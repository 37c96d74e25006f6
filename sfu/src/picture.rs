//! The picture size a keyframe announces, read from its first RTP packet:
//! the H.264 SPS (RFC 6184 single NAL or STAP-A) or the VP8 keyframe header
//! (RFC 6386 §9.1). Used to rank simulcast layers and to honour a viewer's
//! maximum height. Never panics on any input.

use crate::codec::VideoCodec;

/// (width, height) if this packet carries it.
pub fn size(codec: VideoCodec, payload: &[u8]) -> Option<(u32, u32)> {
    match codec {
        VideoCodec::H264 => h264_size(payload),
        VideoCodec::Vp8 => vp8_size(payload),
        _ => None,
    }
}

fn h264_size(payload: &[u8]) -> Option<(u32, u32)> {
    let first = *payload.first()?;
    match first & 0x1f {
        7 => sps_size(payload),
        24 => {
            // STAP-A: 16-bit sizes, then NAL units.
            let mut at = 1;
            while at + 2 <= payload.len() {
                let len = u16::from_be_bytes([payload[at], payload[at + 1]]) as usize;
                let nal = payload.get(at + 2..at + 2 + len)?;
                if nal.first().is_some_and(|b| b & 0x1f == 7) {
                    return sps_size(nal);
                }
                at += 2 + len;
            }
            None
        }
        _ => None,
    }
}

/// Reads an SPS NAL unit (header byte included) far enough for its size.
fn sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    // Drop emulation-prevention bytes (00 00 03 → 00 00).
    let mut rbsp = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.get(1..)? {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits {
        data: &rbsp,
        pos: 0,
    };
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bits(1)?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            // seq_scaling_matrix_present_flag: skip the lists.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
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
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()? + 1;
    let height_units = r.ue()? + 1;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?; // mb_adaptive_frame_field_flag
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let width = width_mbs.checked_mul(16)?.checked_sub(sub_w * (cl + cr))?;
    let height = (2 - frame_mbs_only)
        .checked_mul(height_units)?
        .checked_mul(16)?
        .checked_sub(sub_h * (2 - frame_mbs_only) * (ct + cb))?;
    (width > 0 && height > 0 && width <= 16_384 && height <= 16_384).then_some((width, height))
}

fn vp8_size(payload: &[u8]) -> Option<(u32, u32)> {
    // Payload descriptor (RFC 7741 §4.2), then the VP8 frame.
    let b0 = *payload.first()?;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        at = 2;
        if x & 0x80 != 0 {
            at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    let frame = payload.get(at..)?;
    // Keyframe: P bit clear, then the start code 9d 01 2a, then 14-bit sizes.
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    (w > 0 && h > 0).then_some((w as u32, h as u32))
}

/// An Exp-Golomb bit reader.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b as u32)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + self.bits(zeros)? as u64).min(u32::MAX as u64) as u32)
    }

    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPSs written by Debian ffmpeg's libx264 (`-profile:v baseline|high|main`).
    const SPS_720P: [u8; 25] = [
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
    ];
    const SPS_360P_HIGH: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03,
        0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2d, 0x96,
    ];
    const SPS_180P_MAIN: [u8; 25] = [
        0x67, 0x4d, 0x40, 0x0d, 0xec, 0xa0, 0xa0, 0xcf, 0xcf, 0x80, 0x88, 0x00, 0x00, 0x03, 0x00,
        0x08, 0x00, 0x00, 0x03, 0x01, 0xe0, 0x78, 0xa1, 0x4c, 0xb0,
    ];

    #[test]
    fn h264_sizes_single_and_stap_a() {
        assert_eq!(size(VideoCodec::H264, &SPS_720P), Some((1280, 720)));
        assert_eq!(size(VideoCodec::H264, &SPS_360P_HIGH), Some((640, 360)));
        assert_eq!(size(VideoCodec::H264, &SPS_180P_MAIN), Some((320, 180)));
        let mut stap = vec![24u8, 0, 2, 0x68, 0xce]; // a PPS first
        stap.extend_from_slice(&(SPS_720P.len() as u16).to_be_bytes());
        stap.extend_from_slice(&SPS_720P);
        assert_eq!(size(VideoCodec::H264, &stap), Some((1280, 720)));
    }

    #[test]
    fn vp8_keyframe_size() {
        // Descriptor with a 15-bit picture id, then a keyframe header for 320x180.
        let p = [
            0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00,
        ];
        assert_eq!(size(VideoCodec::Vp8, &p), Some((320, 180)));
        // An interframe says nothing.
        let mut inter = p;
        inter[4] |= 1;
        assert_eq!(size(VideoCodec::Vp8, &inter), None);
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..SPS_360P_HIGH.len() {
            let _ = size(VideoCodec::H264, &SPS_360P_HIGH[..len]);
        }
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let data: Vec<u8> = (0..40)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = size(VideoCodec::H264, &data);
            let _ = size(VideoCodec::Vp8, &data);
            let mut sps = data.clone();
            sps[0] = 0x67;
            let _ = size(VideoCodec::H264, &sps);
        }
    }
}
