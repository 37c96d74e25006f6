#![no_main]
use libfuzzer_sys::fuzz_target;

// The body lives in the crate (rtmp::fuzzing) so that a stable test runs it too.
fuzz_target!(|data: &[u8]| rtmp::fuzzing::flv(data));
