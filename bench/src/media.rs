//! The publisher's media, made once at startup: three H.264 simulcast
//! layers encoded with openh264 from a synthetic moving pattern and cut into
//! RTP payloads (STAP-A for SPS+PPS, single NAL units, FU-A fragments), and
//! a stream of silent Opus frames. The publisher loops these payloads with
//! rewritten sequence numbers and timestamps, so sending costs no encoding.
//!
//! ```text
//!  pattern(w, h, t) ─► openh264 (one encoder per layer) ─► NAL units
//!      ─► RTP payloads (Arc<[u8]>, shared) ─► Clip { layers: [h, m, l] }
//! ```

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange, RateControlMode,
    UsageType,
};
use openh264::formats::YUVBuffer;
use openh264::OpenH264API;

/// Video frames per second of every layer.
pub const FPS: u32 = 30;
/// RTP clock of H.264.
pub const VIDEO_CLOCK: u32 = 90_000;
/// Opus frame duration and RTP clock.
pub const AUDIO_FRAME_MS: u64 = 20;
pub const AUDIO_CLOCK: u32 = 48_000;
/// Largest RTP payload we make: leaves room for the header, extensions and
/// the SRTP tag under a 1,200-byte datagram, as browsers do.
pub const MAX_PAYLOAD: usize = 1_100;
/// Lowest QP the encoder may use.
const QP_MIN: u8 = 22;

/// A silent 20 ms Opus frame (TOC 0xf8: CELT fullband, 20 ms, mono, one
/// frame), a valid packet every decoder accepts.
pub const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// One simulcast layer's definition.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    pub rid: &'static str,
    pub width: usize,
    pub height: usize,
    pub bitrate: u32,
}

/// h/m/l at 720p/360p/180p, about 2.5 Mbps together (the run prints the
/// rates the encoder actually made).
pub const LAYERS: [LayerSpec; 3] = [
    LayerSpec {
        rid: "h",
        width: 1280,
        height: 720,
        bitrate: 1_700_000,
    },
    LayerSpec {
        rid: "m",
        width: 640,
        height: 360,
        bitrate: 600_000,
    },
    LayerSpec {
        rid: "l",
        width: 320,
        height: 180,
        bitrate: 200_000,
    },
];

/// One encoded frame as RTP payloads; the last one carries the marker bit.
#[derive(Debug, Clone)]
pub struct Frame {
    pub payloads: Vec<Arc<[u8]>>,
    pub keyframe: bool,
}

/// One layer's looped clip.
#[derive(Debug, Clone)]
pub struct LayerClip {
    pub spec: LayerSpec,
    pub frames: Vec<Frame>,
    pub bytes: usize,
}

impl LayerClip {
    /// Average payload bitrate over the loop.
    pub fn bitrate(&self) -> f64 {
        self.bytes as f64 * 8.0 * FPS as f64 / self.frames.len().max(1) as f64
    }

    pub fn packets(&self) -> usize {
        self.frames.iter().map(|f| f.payloads.len()).sum()
    }
}

/// The whole pre-encoded stream.
#[derive(Debug, Clone)]
pub struct Clip {
    pub layers: Vec<LayerClip>,
}

/// Encodes `seconds` of the pattern for every layer, with a keyframe every
/// `gop_frames` frames (and on the first, so the loop starts on one).
pub fn encode_clip(seconds: u32, gop_frames: u32) -> Result<Clip> {
    let frames = (seconds * FPS).max(gop_frames);
    let layers = LAYERS
        .iter()
        .map(|spec| encode_layer(*spec, frames, gop_frames))
        .collect::<Result<Vec<_>>>()?;
    Ok(Clip { layers })
}

fn encode_layer(spec: LayerSpec, frames: u32, gop_frames: u32) -> Result<LayerClip> {
    // With openh264's default QP range its rate control overshoots the
    // target by a third on this content; an explicit range lets it hit it.
    let config = EncoderConfig::new()
        .qp(QpRange::new(QP_MIN, 51))
        .bitrate(BitRate::from_bps(spec.bitrate))
        .max_frame_rate(FrameRate::from_hz(FPS as f32))
        .rate_control_mode(RateControlMode::Bitrate)
        .usage_type(UsageType::CameraVideoRealTime)
        .skip_frames(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(gop_frames));
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .context("starting openh264")?;
    let noise = Noise::new();
    let mut out = Vec::with_capacity(frames as usize);
    let mut bytes = 0;
    let mut yuv = vec![0u8; spec.width * spec.height * 3 / 2];
    for t in 0..frames {
        draw(&noise, &mut yuv, spec.width, spec.height, t);
        if t % gop_frames == 0 {
            encoder.force_intra_frame();
        }
        let buffer = YUVBuffer::from_vec(yuv.clone(), spec.width, spec.height);
        let stream = encoder
            .encode(&buffer)
            .map_err(|e| anyhow!("openh264 encode: {e}"))?;
        let mut nals: Vec<Vec<u8>> = Vec::new();
        for l in 0..stream.num_layers() {
            let Some(layer) = stream.layer(l) else {
                continue;
            };
            for n in 0..layer.nal_count() {
                if let Some(nal) = layer.nal_unit(n) {
                    nals.push(strip_start_code(nal).to_vec());
                }
            }
        }
        let keyframe = nals
            .iter()
            .any(|n| n.first().is_some_and(|h| h & 0x1f == 5));
        let payloads = packetize(&nals);
        bytes += payloads.iter().map(|p| p.len()).sum::<usize>();
        out.push(Frame { payloads, keyframe });
    }
    if !out.first().is_some_and(|f| f.keyframe) {
        return Err(anyhow!(
            "openh264 did not start layer {} on a keyframe",
            spec.rid
        ));
    }
    Ok(LayerClip {
        spec,
        frames: out,
        bytes,
    })
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    if let Some(rest) = nal.strip_prefix(&[0, 0, 0, 1]) {
        rest
    } else if let Some(rest) = nal.strip_prefix(&[0, 0, 1]) {
        rest
    } else {
        nal
    }
}

/// RFC 6184 packetization mode 1: parameter sets aggregated in one STAP-A
/// (so a keyframe starts with SPS, as the SFU's keyframe detection and
/// layer-height parsing expect), small NAL units alone, large ones in FU-A.
pub fn packetize(nals: &[Vec<u8>]) -> Vec<Arc<[u8]>> {
    let mut out: Vec<Arc<[u8]>> = Vec::new();
    let (params, others): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) = nals
        .iter()
        .filter(|n| !n.is_empty())
        .partition(|n| matches!(n[0] & 0x1f, 7 | 8));
    if !params.is_empty() {
        let nri = params.iter().map(|n| n[0] & 0x60).max().unwrap_or(0x60);
        let mut stap = vec![nri | 24];
        for n in &params {
            stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
            stap.extend_from_slice(n);
        }
        out.push(stap.into());
    }
    for nal in others {
        if nal.len() <= MAX_PAYLOAD {
            out.push(nal.as_slice().into());
            continue;
        }
        let header = nal[0];
        let body = &nal[1..];
        let chunks: Vec<&[u8]> = body.chunks(MAX_PAYLOAD - 2).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut fu = Vec::with_capacity(chunk.len() + 2);
            fu.push((header & 0xe0) | 28);
            let start = if i == 0 { 0x80 } else { 0 };
            let end = if i == last { 0x40 } else { 0 };
            fu.push(start | end | (header & 0x1f));
            fu.extend_from_slice(chunk);
            out.push(fu.into());
        }
    }
    out
}

/// Whether an H.264 RTP payload starts a keyframe (IDR slice or SPS first).
pub fn h264_keyframe_start(payload: &[u8]) -> bool {
    match payload {
        [h, _, _, n, ..] if h & 0x1f == 24 => matches!(n & 0x1f, 5 | 7),
        [h, fu, ..] if h & 0x1f == 28 => fu & 0x80 != 0 && fu & 0x1f == 5,
        [h, ..] => matches!(h & 0x1f, 5 | 7),
        [] => false,
    }
}

/// A fixed field of block noise: gives the encoder texture to spend its
/// bitrate on, as a camera does, so the stream's rate is the target's.
struct Noise {
    cells: Vec<u8>,
}

const NOISE_SIDE: usize = 256;
/// Noise cell size in 1280×720 pixels, and its amplitude divisor: tuned so
/// openh264 lands near each layer's target rate.
const NOISE_BLOCK: usize = 24;
const NOISE_DIVISOR: usize = 10;

impl Noise {
    fn new() -> Noise {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        Noise {
            cells: (0..NOISE_SIDE * NOISE_SIDE).map(|_| rng.u8(..)).collect(),
        }
    }

    fn at(&self, x: usize, y: usize) -> u8 {
        self.cells[(y % NOISE_SIDE) * NOISE_SIDE + (x % NOISE_SIDE)]
    }
}

/// Frame `t` of the pattern in I420 at `w`×`h`: scrolling block noise, a
/// gradient and a moving box. Coordinates are in 1280×720 space so the
/// layers show the same picture.
fn draw(noise: &Noise, yuv: &mut [u8], w: usize, h: usize, t: u32) {
    let scale = 1280 / w;
    let t = t as usize;
    let (bx, by) = ((t * 12) % 1100, (t * 5) % 560);
    for y in 0..h {
        let fy = y * scale;
        for x in 0..w {
            let fx = x * scale;
            let n = noise.at((fx + t * 8) / NOISE_BLOCK, (fy + t * 2) / NOISE_BLOCK) as usize;
            let gradient = (fx + fy + t * 4) / 8;
            let in_box = fx >= bx && fx < bx + 180 && fy >= by && fy < by + 160;
            let v = if in_box {
                235
            } else {
                (n / NOISE_DIVISOR + gradient) % 200 + 16
            };
            yuv[y * w + x] = v as u8;
        }
    }
    let (cw, ch) = (w / 2, h / 2);
    let (u, v) = yuv[w * h..].split_at_mut(cw * ch);
    for y in 0..ch {
        for x in 0..cw {
            u[y * cw + x] = ((x * scale + t * 3) % 160 + 48) as u8;
            v[y * cw + x] = ((y * scale + t * 2) % 160 + 48) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packetizes_parameter_sets_and_fragments() {
        let sps = vec![0x67, 0x42, 0xc0, 0x1f];
        let pps = vec![0x68, 0xce, 0x3c, 0x80];
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..3000).map(|i| i as u8))
            .collect();
        let p = packetize(&[sps, pps, idr.clone()]);
        assert_eq!(p[0][0] & 0x1f, 24);
        assert!(h264_keyframe_start(&p[0]));
        assert!(h264_keyframe_start(&p[1]));
        assert!(!h264_keyframe_start(&p[2]));
        assert!(p.iter().all(|x| x.len() <= MAX_PAYLOAD));
        let body: Vec<u8> = p[1..].iter().flat_map(|f| f[2..].to_vec()).collect();
        assert_eq!(body, idr[1..]);
        assert_eq!(p.last().unwrap()[1] & 0x40, 0x40);
    }

    #[test]
    fn encodes_a_short_clip_at_about_the_target_rate() {
        let clip = encode_clip(1, 30).unwrap();
        assert_eq!(clip.layers.len(), 3);
        for l in &clip.layers {
            assert!(l.frames[0].keyframe);
            assert!(h264_keyframe_start(&l.frames[0].payloads[0]));
            assert!(
                l.bitrate() > l.spec.bitrate as f64 * 0.3,
                "{} {}",
                l.spec.rid,
                l.bitrate()
            );
        }
    }
}
