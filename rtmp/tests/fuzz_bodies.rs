//! The fuzz targets' bodies (`rtmp::fuzzing`) on stable Rust: every test run
//! feeds each of them random bytes and mutations of real inputs (what
//! Debian's ffmpeg sent at the start of a publish, its FLV tags, AMF0
//! commands), so the parsers meet malformed input in CI even where
//! cargo-fuzz and a nightly toolchain are not installed. A panic fails the
//! test and prints the input that caused it.
//!
//! `RTMP_FUZZ_ITERATIONS` (default 20,000 mutations per seed, ≈ 1 s in all) runs longer.

use rtmp::amf0::Value;
use rtmp::{Event, ServerSession, SessionConfig};

const CAPTURE: &[u8] = include_bytes!("data/ffmpeg51_publish_start.bin");
/// C0 + C1 + C2 of the capture: the rest is the chunk stream.
const HANDSHAKE: usize = 1 + 2 * 1536;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed`: bit flips, interesting bytes, inserted or
/// removed runs, truncation, a splice with another seed, or random bytes.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0x00, 0xff, 0x7f, 0x80, 0x01, 0x03, 0x08, 0x12][rng.below(8)];
            }
            2 => {
                let run: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                v.splice(at..at, run);
            }
            3 if at < v.len() => {
                let end = (at + rng.below(64)).min(v.len());
                v.drain(at..end);
            }
            4 => v.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + rng.below(256)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            6 if v.len() >= 4 => {
                // A length or size field gone huge.
                let i = rng.below(v.len() - 3);
                v[i..i + 4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
            }
            _ => v = (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
        }
    }
    v
}

fn iterations() -> usize {
    std::env::var("RTMP_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Runs `body` on every seed and `iterations()` mutations of each.
fn run(name: &str, seeds: &[Vec<u8>], body: fn(&[u8]), seed: u64) {
    assert!(!seeds.is_empty());
    let mut rng = Rng(seed);
    let mut runs = 0;
    for s in seeds {
        body(s);
        runs += 1;
    }
    for _ in 0..iterations() {
        for (i, s) in seeds.iter().enumerate() {
            let other = &seeds[(i + 1) % seeds.len()];
            let input = mutate(&mut rng, s, other);
            let result = std::panic::catch_unwind(|| body(&input));
            assert!(
                result.is_ok(),
                "{name} panicked on {} bytes: {:02x?}",
                input.len(),
                &input[..input.len().min(512)]
            );
            runs += 1;
        }
    }
    eprintln!("{name}: {runs} inputs, no panic");
}

/// The capture's messages as the session reports them: FLV tag bodies.
fn capture_tags() -> Vec<Vec<u8>> {
    let mut s = ServerSession::new(SessionConfig::default());
    let mut tags = Vec::new();
    s.handle_input(CAPTURE).expect("the capture is valid");
    while let Some(e) = s.poll_event() {
        match e {
            Event::PublishRequested { .. } => s.accept_publish().unwrap(),
            Event::Video { data, .. } | Event::Audio { data, .. } => tags.push(data.to_vec()),
            _ => {}
        }
    }
    assert!(tags.len() >= 2, "the capture holds the AAC and AVC headers");
    tags
}

#[test]
fn session_body_survives_mutated_publishes() {
    let stream = &CAPTURE[HANDSHAKE..];
    let seeds: Vec<Vec<u8>> = [1u8, 7, 128, 255]
        .iter()
        .map(|step| {
            let mut v = vec![*step];
            v.extend_from_slice(stream);
            v
        })
        .collect();
    run("session", &seeds, rtmp::fuzzing::session, 0x5e55_1011);
}

#[test]
fn flv_body_survives_mutated_tags() {
    let mut seeds = capture_tags();
    // A small AVC frame (AVCC, 4-byte lengths) and a raw AAC frame.
    seeds.push(vec![
        0x27, 0x01, 0, 0, 0, 0, 0, 0, 5, 0x41, 0x9a, 0x02, 0x03, 0x04,
    ]);
    seeds.push(vec![0xaf, 0x01, 0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c]);
    run("flv", &seeds, rtmp::fuzzing::flv, 0xf1f0_2024);
}

#[test]
fn amf0_body_survives_mutated_values() {
    let command = vec![
        Value::String("connect".into()),
        Value::Number(1.0),
        Value::Object(vec![
            ("app".into(), Value::String("live".into())),
            ("tcUrl".into(), Value::String("rtmp://h/live".into())),
            ("fpad".into(), Value::Boolean(false)),
        ]),
    ];
    let meta = vec![
        Value::String("onMetaData".into()),
        Value::EcmaArray(vec![
            ("width".into(), Value::Number(640.0)),
            ("audiocodecid".into(), Value::Number(10.0)),
            ("encoder".into(), Value::Null),
        ]),
        Value::StrictArray(vec![Value::Undefined, Value::Number(2.0)]),
    ];
    let seeds = vec![
        rtmp::amf0::encode_all(&command),
        rtmp::amf0::encode_all(&meta),
    ];
    run("amf0", &seeds, rtmp::fuzzing::amf0, 0xa3f0_0001);
}
