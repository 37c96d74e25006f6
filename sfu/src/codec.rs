//! TEMPORARY stub until the real codec module lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Vp8,
    Vp9,
    Av1,
    H265,
}
pub struct Vp8Descriptor;
pub fn parse_vp8_descriptor(_p: &[u8]) -> Option<Vp8Descriptor> {
    None
}
pub fn is_keyframe_start(codec: VideoCodec, p: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => {
            let Some(&b) = p.first() else { return false };
            match b & 0x1f {
                5 | 7 => true,
                24 => {
                    let mut i = 1;
                    while i + 2 < p.len() {
                        let n = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                        if matches!(p[i + 2] & 0x1f, 5 | 7) {
                            return true;
                        }
                        i += 2 + n;
                    }
                    false
                }
                28 => p.len() > 1 && p[1] & 0x80 != 0 && matches!(p[1] & 0x1f, 5 | 7),
                _ => false,
            }
        }
        VideoCodec::Vp8 => {
            let Some(&b) = p.first() else { return false };
            if b & 0x10 == 0 || b & 0x0f != 0 {
                return false;
            }
            let mut i = 1;
            if b & 0x80 != 0 {
                let Some(&x) = p.get(1) else { return false };
                i = 2;
                if x & 0x80 != 0 {
                    let Some(&pid) = p.get(i) else { return false };
                    i += if pid & 0x80 != 0 { 2 } else { 1 };
                }
                if x & 0x40 != 0 {
                    i += 1;
                }
                if x & 0x30 != 0 {
                    i += 1;
                }
            }
            p.get(i).is_some_and(|h| h & 1 == 0)
        }
        _ => p.first().is_some(),
    }
}
