//! The CMAF / fragmented MP4 writer: init segments and `moof`+`mdat` fragments.
//!
//! One track per file (CMAF tracks are never multiplexed), track ID 1, so a
//! rendition is an init segment followed by fragments, and a segment is just
//! the concatenation of its parts' fragments.
//!
//! # Why the boxes are written here and not with `mp4-atom`
//!
//! `mp4-atom` (suggested in ARCHITECTURE.md) is a complete ISO-BMFF codec:
//! typed structs for a hundred boxes, decode and encode. We evaluated it and
//! write the boxes ourselves because:
//! - we only *write*, and only ~25 boxes, all fixed-layout (≈ 300 lines here);
//! - its API changed with nearly every minor release (0.8 → 0.16 in about a
//!   year) and it pulls `derive_more`, `num`, `paste` and `tracing`, while this
//!   crate stays on `bytes` + `thiserror`;
//! - the fragment is on the per-part path: writing straight into one buffer
//!   with a known layout (data offset patched once) avoids building a tree of
//!   structs per part.
//!
//! Correctness is checked the way it matters: the tests run the output
//! through Debian's `ffprobe` and count decoded frames.

use bytes::{BufMut, Bytes, BytesMut};

use crate::h264::SpsInfo;

/// What the init segment declares about the track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecConfig {
    /// H.264 with parameter sets out of band (`avc1` + `avcC`).
    H264 {
        sps: Bytes,
        pps: Bytes,
        info: SpsInfo,
    },
    /// Opus in ISO-BMFF (`Opus` + `dOps`), 48 kHz timescale.
    Opus { channels: u8, pre_skip: u16 },
    /// AAC-LC (`mp4a` + `esds`, object type 2).
    AacLc { sample_rate: u32, channels: u8 },
}

/// AAC sampling frequency index table (ISO/IEC 14496-3 §1.6.3.4).
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl CodecConfig {
    /// Ticks per second of the track's media timeline.
    pub fn timescale(&self) -> u32 {
        match self {
            CodecConfig::H264 { .. } => 90_000,
            CodecConfig::Opus { .. } => 48_000,
            CodecConfig::AacLc { sample_rate, .. } => *sample_rate,
        }
    }

    /// The RFC 6381 string for `CODECS` in the multivariant playlist.
    pub fn codec_string(&self) -> String {
        match self {
            CodecConfig::H264 { info, .. } => info.codec_string(),
            CodecConfig::Opus { .. } => "opus".to_owned(),
            CodecConfig::AacLc { .. } => "mp4a.40.2".to_owned(),
        }
    }

    pub fn is_video(&self) -> bool {
        matches!(self, CodecConfig::H264 { .. })
    }

    /// Picture size for video.
    pub fn resolution(&self) -> Option<(u32, u32)> {
        match self {
            CodecConfig::H264 { info, .. } => Some((info.width, info.height)),
            _ => None,
        }
    }

    /// Channel count for audio.
    pub fn channels(&self) -> Option<u8> {
        match self {
            CodecConfig::Opus { channels, .. } | CodecConfig::AacLc { channels, .. } => {
                Some(*channels)
            }
            CodecConfig::H264 { .. } => None,
        }
    }

    /// The AAC AudioSpecificConfig (2 bytes for AAC-LC), `None` if the rate
    /// has no AAC index.
    pub fn aac_audio_specific_config(sample_rate: u32, channels: u8) -> Option<[u8; 2]> {
        let index = AAC_RATES.iter().position(|&r| r == sample_rate)? as u8;
        if channels == 0 || channels > 7 {
            return None;
        }
        Some([
            (2 << 3) | (index >> 1),
            ((index & 1) << 7) | (channels << 3),
        ])
    }
}

/// One sample (a video frame, an audio packet) of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Duration in the track timescale.
    pub duration: u32,
    /// A sync sample (IDR; every audio sample).
    pub keyframe: bool,
    /// For H.264: length-prefixed NAL units.
    pub data: Bytes,
}

/// Writes boxes into one buffer, patching sizes when each box closes.
struct Writer {
    buf: BytesMut,
}

impl Writer {
    fn new(capacity: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(capacity),
        }
    }

    fn open(&mut self, kind: &[u8; 4]) -> usize {
        let at = self.buf.len();
        self.buf.put_u32(0);
        self.buf.put_slice(kind);
        at
    }

    fn open_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) -> usize {
        let at = self.open(kind);
        self.buf
            .put_u32(((version as u32) << 24) | (flags & 0x00ff_ffff));
        at
    }

    fn close(&mut self, at: usize) {
        let size = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }

    fn zeros(&mut self, n: usize) {
        self.buf.put_bytes(0, n);
    }

    fn matrix(&mut self) {
        for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
            self.buf.put_u32(v);
        }
    }
}

/// The init segment (`ftyp` + `moov`) of a single-track CMAF rendition.
pub fn init_segment(config: &CodecConfig) -> Bytes {
    let mut w = Writer::new(1024);
    let ftyp = w.open(b"ftyp");
    w.buf.put_slice(b"iso6");
    w.buf.put_u32(0);
    for brand in [b"iso6", b"cmfc", b"mp41"] {
        w.buf.put_slice(brand);
    }
    w.close(ftyp);

    let moov = w.open(b"moov");
    let mvhd = w.open_full(b"mvhd", 0, 0);
    w.zeros(8); // creation, modification time
    w.buf.put_u32(1000);
    w.buf.put_u32(0); // duration: unknown, fragmented
    w.buf.put_u32(0x0001_0000); // rate 1.0
    w.buf.put_u16(0x0100); // volume 1.0
    w.zeros(10);
    w.matrix();
    w.zeros(24); // pre_defined
    w.buf.put_u32(2); // next_track_ID
    w.close(mvhd);

    let trak = w.open(b"trak");
    let tkhd = w.open_full(b"tkhd", 0, 0x3); // enabled, in movie
    w.zeros(8);
    w.buf.put_u32(1); // track_ID
    w.zeros(4);
    w.buf.put_u32(0); // duration
    w.zeros(8);
    w.buf.put_u16(0); // layer
    w.buf.put_u16(0); // alternate_group
    w.buf.put_u16(if config.is_video() { 0 } else { 0x0100 });
    w.zeros(2);
    w.matrix();
    let (width, height) = config.resolution().unwrap_or((0, 0));
    w.buf.put_u32(width << 16);
    w.buf.put_u32(height << 16);
    w.close(tkhd);

    let mdia = w.open(b"mdia");
    let mdhd = w.open_full(b"mdhd", 0, 0);
    w.zeros(8);
    w.buf.put_u32(config.timescale());
    w.buf.put_u32(0);
    w.buf.put_u16(0x55c4); // "und"
    w.buf.put_u16(0);
    w.close(mdhd);

    let hdlr = w.open_full(b"hdlr", 0, 0);
    w.buf.put_u32(0);
    let (handler, name): (&[u8; 4], &[u8]) = if config.is_video() {
        (b"vide", b"Dionysia video\0")
    } else {
        (b"soun", b"Dionysia audio\0")
    };
    w.buf.put_slice(handler);
    w.zeros(12);
    w.buf.put_slice(name);
    w.close(hdlr);

    let minf = w.open(b"minf");
    if config.is_video() {
        let vmhd = w.open_full(b"vmhd", 0, 1);
        w.zeros(8); // graphicsmode, opcolor
        w.close(vmhd);
    } else {
        let smhd = w.open_full(b"smhd", 0, 0);
        w.zeros(4); // balance, reserved
        w.close(smhd);
    }
    let dinf = w.open(b"dinf");
    let dref = w.open_full(b"dref", 0, 0);
    w.buf.put_u32(1);
    let url = w.open_full(b"url ", 0, 1); // media in the same file
    w.close(url);
    w.close(dref);
    w.close(dinf);

    let stbl = w.open(b"stbl");
    let stsd = w.open_full(b"stsd", 0, 0);
    w.buf.put_u32(1);
    sample_entry(&mut w, config);
    w.close(stsd);
    for kind in [b"stts", b"stsc", b"stco"] {
        let b = w.open_full(kind, 0, 0);
        w.buf.put_u32(0);
        w.close(b);
    }
    let stsz = w.open_full(b"stsz", 0, 0);
    w.zeros(8); // sample_size, sample_count
    w.close(stsz);
    w.close(stbl);
    w.close(minf);
    w.close(mdia);
    w.close(trak);

    let mvex = w.open(b"mvex");
    let trex = w.open_full(b"trex", 0, 0);
    w.buf.put_u32(1); // track_ID
    w.buf.put_u32(1); // default_sample_description_index
    w.zeros(12);
    w.close(trex);
    w.close(mvex);
    w.close(moov);
    w.buf.freeze()
}

fn audio_sample_entry_header(w: &mut Writer, channels: u8, sample_rate: u32) {
    w.zeros(6);
    w.buf.put_u16(1); // data_reference_index
    w.zeros(8);
    w.buf.put_u16(channels as u16);
    w.buf.put_u16(16); // samplesize
    w.zeros(4);
    // 16.16 fixed point; rates above 65535 do not fit (none used here).
    w.buf.put_u32((sample_rate.min(65535)) << 16);
}

fn sample_entry(w: &mut Writer, config: &CodecConfig) {
    match config {
        CodecConfig::H264 { sps, pps, info } => {
            let avc1 = w.open(b"avc1");
            w.zeros(6);
            w.buf.put_u16(1); // data_reference_index
            w.zeros(16);
            w.buf.put_u16(info.width as u16);
            w.buf.put_u16(info.height as u16);
            w.buf.put_u32(0x0048_0000); // 72 dpi
            w.buf.put_u32(0x0048_0000);
            w.zeros(4);
            w.buf.put_u16(1); // frame_count
            w.zeros(32); // compressorname
            w.buf.put_u16(0x0018); // depth
            w.buf.put_u16(0xffff); // pre_defined = -1
            let avcc = w.open(b"avcC");
            w.buf.put_u8(1);
            w.buf.put_u8(info.profile_idc);
            w.buf.put_u8(info.constraints);
            w.buf.put_u8(info.level_idc);
            w.buf.put_u8(0xff); // 4-byte NAL lengths
            w.buf.put_u8(0xe1); // one SPS
            w.buf.put_u16(sps.len() as u16);
            w.buf.put_slice(sps);
            w.buf.put_u8(1); // one PPS
            w.buf.put_u16(pps.len() as u16);
            w.buf.put_slice(pps);
            if matches!(info.profile_idc, 100 | 110 | 122 | 144) {
                // ISO/IEC 14496-15 §5.3.3.1.2: the high profiles carry
                // chroma format and bit depths, and no SPS extensions.
                w.buf.put_u8(0xfc | info.chroma_format_idc);
                w.buf.put_u8(0xf8 | info.bit_depth_luma.saturating_sub(8));
                w.buf.put_u8(0xf8 | info.bit_depth_chroma.saturating_sub(8));
                w.buf.put_u8(0);
            }
            w.close(avcc);
            w.close(avc1);
        }
        CodecConfig::Opus { channels, pre_skip } => {
            let opus = w.open(b"Opus");
            audio_sample_entry_header(w, *channels, 48_000);
            // dOps (Opus in ISO-BMFF §4.3.2), not a full box.
            let dops = w.open(b"dOps");
            w.buf.put_u8(0); // version
            w.buf.put_u8(*channels);
            w.buf.put_u16(*pre_skip);
            w.buf.put_u32(48_000); // input sample rate
            w.buf.put_i16(0); // output gain
            w.buf.put_u8(0); // channel mapping family 0: mono/stereo
            w.close(dops);
            w.close(opus);
        }
        CodecConfig::AacLc {
            sample_rate,
            channels,
        } => {
            let asc = CodecConfig::aac_audio_specific_config(*sample_rate, *channels)
                .unwrap_or([0x11, 0x90]); // 48 kHz stereo if impossible
            let mp4a = w.open(b"mp4a");
            audio_sample_entry_header(w, *channels, *sample_rate);
            let esds = w.open_full(b"esds", 0, 0);
            // ES_Descriptor: ES_ID, flags, then the decoder config.
            let dsi_len = asc.len() as u8;
            let dcd_len = 13 + 2 + dsi_len;
            let es_len = 3 + 2 + dcd_len + 3;
            w.buf.put_slice(&[0x03, es_len, 0x00, 0x01, 0x00]);
            w.buf.put_slice(&[0x04, dcd_len, 0x40, 0x15]); // MPEG-4 audio, audio stream
            w.buf.put_slice(&[0, 0, 0]); // bufferSizeDB
            w.buf.put_u32(0); // maxBitrate (unknown)
            w.buf.put_u32(0); // avgBitrate
            w.buf.put_slice(&[0x05, dsi_len]);
            w.buf.put_slice(&asc);
            w.buf.put_slice(&[0x06, 0x01, 0x02]); // SLConfig: predefined MP4
            w.close(esds);
            w.close(mp4a);
        }
    }
}

/// `sample_flags` for a sync sample: depends on nothing.
const SYNC_SAMPLE: u32 = 0x0200_0000;
/// `sample_flags` for a non-sync sample: depends on others.
const NON_SYNC_SAMPLE: u32 = 0x0101_0000;

/// One `moof` + `mdat` holding `samples`, starting at `base_decode_time`.
pub fn fragment(sequence_number: u32, base_decode_time: u64, samples: &[Sample]) -> Bytes {
    let payload: usize = samples.iter().map(|s| s.data.len()).sum();
    let mut w = Writer::new(128 + samples.len() * 12 + payload);
    let moof = w.open(b"moof");
    let mfhd = w.open_full(b"mfhd", 0, 0);
    w.buf.put_u32(sequence_number);
    w.close(mfhd);
    let traf = w.open(b"traf");
    let tfhd = w.open_full(b"tfhd", 0, 0x02_0000); // default-base-is-moof
    w.buf.put_u32(1);
    w.close(tfhd);
    let tfdt = w.open_full(b"tfdt", 1, 0);
    w.buf.put_u64(base_decode_time);
    w.close(tfdt);
    // data-offset, sample-duration, sample-size, sample-flags present.
    let trun = w.open_full(b"trun", 0, 0x0000_0701);
    w.buf.put_u32(samples.len() as u32);
    let data_offset_at = w.buf.len();
    w.buf.put_u32(0);
    for s in samples {
        w.buf.put_u32(s.duration);
        w.buf.put_u32(s.data.len() as u32);
        w.buf.put_u32(if s.keyframe {
            SYNC_SAMPLE
        } else {
            NON_SYNC_SAMPLE
        });
    }
    w.close(trun);
    w.close(traf);
    w.close(moof);
    let data_offset = (w.buf.len() - moof + 8) as u32;
    w.buf[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    let mdat = w.open(b"mdat");
    for s in samples {
        w.buf.put_slice(&s.data);
    }
    w.close(mdat);
    w.buf.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::h264::tests::{access_units, fixture_access_units};
    use crate::h264::{parse_sps, AccessUnit};
    use std::path::PathBuf;
    use std::process::Command;

    pub(crate) const AAC_FIXTURE: &[u8] = include_bytes!("../testdata/aac_lc_48k_stereo.adts");

    /// Raw AAC frames out of an ADTS stream.
    pub(crate) fn adts_frames(mut data: &[u8]) -> Vec<Bytes> {
        let mut out = Vec::new();
        while data.len() >= 7 && data[0] == 0xff && data[1] & 0xf0 == 0xf0 {
            let header = if data[1] & 0x01 == 1 { 7 } else { 9 };
            let len = (((data[3] & 0x03) as usize) << 11)
                | ((data[4] as usize) << 3)
                | ((data[5] as usize) >> 5);
            if len < header || len > data.len() {
                break;
            }
            out.push(Bytes::copy_from_slice(&data[header..len]));
            data = &data[len..];
        }
        out
    }

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hls-bridge-{}-{}", name, std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs ffprobe; `None` (and the test passes with a note) only when it is
    /// not installed at all.
    pub(crate) fn ffprobe(args: &[&str], file: &std::path::Path) -> Option<String> {
        let out = match Command::new("ffprobe")
            .args(["-v", "error"])
            .args(args)
            .arg(file)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("ffprobe not runnable ({e}); skipping the external check");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "ffprobe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).unwrap())
    }

    const HIGH_FIXTURE: &[u8] = include_bytes!("../testdata/high_320x180_30fps.h264");

    fn h264_config() -> (CodecConfig, Vec<Vec<Bytes>>) {
        config_of(fixture_access_units())
    }

    fn config_of(aus: Vec<Vec<Bytes>>) -> (CodecConfig, Vec<Vec<Bytes>>) {
        let sps = aus[0].iter().find(|n| n[0] & 0x1f == 7).unwrap().clone();
        let pps = aus[0].iter().find(|n| n[0] & 0x1f == 8).unwrap().clone();
        let info = parse_sps(&sps).unwrap();
        (CodecConfig::H264 { sps, pps, info }, aus)
    }

    #[test]
    fn box_sizes_add_up() {
        let (config, _) = h264_config();
        let init = init_segment(&config);
        // Walk the top level: ftyp + moov exactly.
        let ftyp = u32::from_be_bytes(init[0..4].try_into().unwrap()) as usize;
        assert_eq!(&init[4..8], b"ftyp");
        let moov = u32::from_be_bytes(init[ftyp..ftyp + 4].try_into().unwrap()) as usize;
        assert_eq!(&init[ftyp + 4..ftyp + 8], b"moov");
        assert_eq!(ftyp + moov, init.len());

        let frag = fragment(
            7,
            1234,
            &[Sample {
                duration: 3000,
                keyframe: true,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
            }],
        );
        let moof = u32::from_be_bytes(frag[0..4].try_into().unwrap()) as usize;
        assert_eq!(&frag[moof + 4..moof + 8], b"mdat");
        assert_eq!(&frag[frag.len() - 5..], &[0, 0, 0, 1, 0x65]);
    }

    #[test]
    fn aac_audio_specific_config() {
        assert_eq!(
            CodecConfig::aac_audio_specific_config(48000, 2),
            Some([0x11, 0x90])
        );
        assert_eq!(
            CodecConfig::aac_audio_specific_config(44100, 2),
            Some([0x12, 0x10])
        );
        assert_eq!(CodecConfig::aac_audio_specific_config(12345, 2), None);
    }

    #[test]
    fn h264_output_is_read_by_ffprobe() {
        let (config, aus) = h264_config();
        probe_h264(config, aus, "Constrained Baseline", 90);
    }

    #[test]
    fn high_profile_output_is_read_by_ffprobe() {
        let (config, aus) = config_of(access_units(HIGH_FIXTURE));
        assert_eq!(config.codec_string(), "avc1.64001f");
        probe_h264(config, aus, "High", 30);
    }

    fn probe_h264(config: CodecConfig, aus: Vec<Vec<Bytes>>, profile: &str, frames: usize) {
        let mut file = init_segment(&config).to_vec();
        // Three fragments of 30 frames, as three segments would be.
        for (k, chunk) in aus.chunks(30).enumerate() {
            let samples: Vec<Sample> = chunk
                .iter()
                .map(|au| {
                    let nalus: Vec<Bytes> = au
                        .iter()
                        .filter(|n| n[0] & 0x1f != 7 && n[0] & 0x1f != 8)
                        .cloned()
                        .collect();
                    let keyframe = nalus.iter().any(|n| n[0] & 0x1f == 5);
                    let au = AccessUnit {
                        rtp_timestamp: 0,
                        keyframe,
                        nalus,
                        parameter_sets: None,
                    };
                    Sample {
                        duration: 3000,
                        keyframe,
                        data: au.to_length_prefixed(),
                    }
                })
                .collect();
            file.extend_from_slice(&fragment(k as u32 + 1, k as u64 * 90_000, &samples));
        }
        let dir = temp_dir(&format!("fmp4-h264-{frames}"));
        let path = dir.join("video.mp4");
        std::fs::write(&path, &file).unwrap();
        let Some(out) = ffprobe(
            &[
                "-count_frames",
                "-show_entries",
                "stream=codec_name,profile,width,height,nb_read_frames:format=duration",
                "-of",
                "default=noprint_wrappers=1",
            ],
            &path,
        ) else {
            return;
        };
        assert!(out.contains("codec_name=h264"), "{out}");
        assert!(out.contains(&format!("profile={profile}\n")), "{out}");
        assert!(
            out.contains("width=320") && out.contains("height=180"),
            "{out}"
        );
        assert!(out.contains(&format!("nb_read_frames={frames}")), "{out}");
        let duration = format!("duration={}.0", frames / 30);
        assert!(out.contains(&duration), "{out}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn aac_output_is_read_by_ffprobe() {
        let frames = adts_frames(AAC_FIXTURE);
        assert!(frames.len() > 100);
        let config = CodecConfig::AacLc {
            sample_rate: 48_000,
            channels: 2,
        };
        let mut file = init_segment(&config).to_vec();
        let mut t = 0u64;
        for (k, chunk) in frames.chunks(10).enumerate() {
            let samples: Vec<Sample> = chunk
                .iter()
                .map(|f| Sample {
                    duration: 1024,
                    keyframe: true,
                    data: f.clone(),
                })
                .collect();
            file.extend_from_slice(&fragment(k as u32 + 1, t, &samples));
            t += 1024 * chunk.len() as u64;
        }
        let dir = temp_dir("fmp4-aac");
        let path = dir.join("audio.mp4");
        std::fs::write(&path, &file).unwrap();
        let Some(out) = ffprobe(
            &[
                "-count_frames",
                "-show_entries",
                "stream=codec_name,profile,sample_rate,channels,nb_read_frames",
                "-of",
                "default=noprint_wrappers=1",
            ],
            &path,
        ) else {
            return;
        };
        assert!(out.contains("codec_name=aac"), "{out}");
        assert!(out.contains("profile=LC"), "{out}");
        assert!(out.contains("sample_rate=48000"), "{out}");
        assert!(out.contains("channels=2"), "{out}");
        assert!(
            out.contains(&format!("nb_read_frames={}", frames.len())),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn opus_output_is_read_by_ffprobe() {
        let config = CodecConfig::Opus {
            channels: 2,
            pre_skip: 312,
        };
        let mut file = init_segment(&config).to_vec();
        for k in 0..10u32 {
            let samples: Vec<Sample> = (0..10)
                .map(|_| Sample {
                    duration: 960,
                    keyframe: true,
                    data: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
                })
                .collect();
            file.extend_from_slice(&fragment(k + 1, k as u64 * 9600, &samples));
        }
        let dir = temp_dir("fmp4-opus");
        let path = dir.join("audio.mp4");
        std::fs::write(&path, &file).unwrap();
        let Some(out) = ffprobe(
            &[
                "-count_frames",
                "-show_entries",
                "stream=codec_name,sample_rate,channels,nb_read_frames:format=duration",
                "-of",
                "default=noprint_wrappers=1",
            ],
            &path,
        ) else {
            return;
        };
        assert!(out.contains("codec_name=opus"), "{out}");
        assert!(out.contains("sample_rate=48000"), "{out}");
        assert!(out.contains("channels=2"), "{out}");
        assert!(out.contains("nb_read_frames=100"), "{out}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
