//! ffmpeg publishing a 1280×720 test picture over RTMP with the wall-clock
//! stamp of `tests/browser/lib/in-page.mjs` (`drawStamp`) in its top band,
//! so that a viewer reads back when each frame was made (glass-to-glass
//! latency). The band comes from a thread of ours through ffmpeg's stdin,
//! which also paces the whole pipeline at 30 fps of wall-clock time.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FFMPEG: &str = "/usr/bin/ffmpeg";
const BITS: usize = 24;
const BLOCK_W: usize = 26;
const BAND_H: usize = 40;
const X0: usize = 16;

/// The encoder's settings that the tests vary.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    /// x264 B-frames (`-bf`).
    pub b_frames: u32,
    /// Frames between keyframes (`-g`).
    pub gop: u32,
    /// Keyframes exactly every `gop` frames (no scene-cut or early ones).
    pub fixed_gop: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            b_frames: 0,
            gop: 60,
            fixed_gop: false,
        }
    }
}

/// The running ffmpeg; killed on drop.
pub struct Publisher {
    pub child: Child,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stamp as a 1280×40 grey frame: 24 bits, then their complement.
pub fn draw_stamp(frame: &mut [u8], value: u32) {
    frame.fill(128);
    for i in 0..BITS * 2 {
        let bit = if i < BITS {
            (value >> (BITS - 1 - i)) & 1
        } else {
            ((value >> (2 * BITS - 1 - i)) & 1) ^ 1
        };
        let y_value = if bit == 1 { 235 } else { 16 };
        for row in frame.chunks_mut(1280).take(BAND_H) {
            row[X0 + i * BLOCK_W..X0 + (i + 1) * BLOCK_W].fill(y_value);
        }
    }
}

/// 720p30 x264 (`veryfast`, `zerolatency`, 2.5 Mbit/s, x264's default High
/// profile) + 440 Hz AAC to `rtmp://127.0.0.1:{port}/live/{key}` for
/// `seconds`. ffmpeg's stderr is piped (read it after the end).
pub fn publish(port: u16, key: &str, encoder: Encoder, seconds: u64) -> Publisher {
    assert!(
        std::path::Path::new(FFMPEG).exists(),
        "{FFMPEG} is not installed: run scripts/test.sh"
    );
    let url = format!("rtmp://127.0.0.1:{port}/live/{key}");
    let gop = encoder.gop.to_string();
    let mut x264 = vec![
        "-bf".to_string(),
        encoder.b_frames.to_string(),
        "-g".into(),
        gop.clone(),
    ];
    if encoder.fixed_gop {
        x264.extend([
            "-keyint_min".into(),
            gop,
            "-sc_threshold".into(),
            "0".into(),
        ]);
    }
    let mut child = Command::new(FFMPEG)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args([
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-video_size",
            "1280x40",
        ])
        .args(["-framerate", "30", "-i", "pipe:0"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-filter_complex",
            "[0:v][1:v]overlay=0:0:shortest=1,format=yuv420p[v]",
        ])
        .args(["-map", "[v]", "-map", "2:a", "-t", &seconds.to_string()])
        // zerolatency: no lookahead, as a live encoder should be set.
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
        ])
        .args(&x264)
        .args([
            "-b:v", "2500k", "-c:a", "aac", "-b:a", "128k", "-f", "flv", &url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let mut frame = vec![0u8; 1280 * BAND_H];
        let start = Instant::now();
        for n in 0..(seconds * 30 + 60) {
            let due = start + Duration::from_micros(n * 1_000_000 / 30);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u32;
            draw_stamp(&mut frame, now_ms & ((1 << BITS) - 1));
            if stdin.write_all(&frame).is_err() {
                return; // ffmpeg is done
            }
        }
    });
    Publisher { child }
}
