//! Publisher send times by payload, for the forwarding delay. The SFU
//! forwards payloads unchanged (it rewrites only headers), so a viewer that
//! decrypted a packet finds when the publisher sent those very bytes. Both
//! ends are in this process: one clock, no synchronization.
//!
//! The clip loops, so a payload recurs once per loop; the log keeps the
//! latest send, and a delay is only taken for sends after the viewer
//! connected (GOP replays carry older payloads and are left out).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct SendLog {
    sent: Mutex<HashMap<u64, Instant>>,
}

impl SendLog {
    pub fn record(&self, payload: &[u8], at: Instant) {
        let key = payload_hash(payload);
        if let Ok(mut m) = self.sent.lock() {
            m.insert(key, at);
        }
    }

    pub fn lookup(&self, payload: &[u8]) -> Option<Instant> {
        let key = payload_hash(payload);
        self.sent.lock().ok()?.get(&key).copied()
    }
}

/// FNV-1a over 8-byte words: cheap, and payloads of a compressed stream
/// differ early anyway.
pub fn payload_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ data.len() as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_recorded() {
        let log = SendLog::default();
        let t = Instant::now();
        log.record(b"abcdefghijk", t);
        assert_eq!(log.lookup(b"abcdefghijk"), Some(t));
        assert_eq!(log.lookup(b"abcdefghijl"), None);
    }
}
