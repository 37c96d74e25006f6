//! Handshake + chunk stream + commands: a valid handshake prefix, then the
//! fuzzer's bytes, fed in reads whose sizes come from the first input byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtmp::{Event, ServerSession, SessionConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let mut s = ServerSession::new(SessionConfig::default());
    let mut hello = vec![3u8];
    hello.extend_from_slice(&[0u8; 2 * 1536]);
    if s.handle_input(&hello).is_err() {
        return;
    }
    for piece in data.chunks(step.max(1) as usize) {
        if s.handle_input(piece).is_err() {
            return;
        }
        while let Some(e) = s.poll_event() {
            if let Event::PublishRequested { .. } = e {
                if s.accept_publish().is_err() {
                    return;
                }
            }
        }
        while s.poll_transmit().is_some() {}
    }
});
