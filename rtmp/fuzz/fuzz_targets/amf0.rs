#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = rtmp::amf0::decode_all(data) {
        // What decodes must re-encode and decode again.
        let bytes = rtmp::amf0::encode_all(&values);
        let _ = rtmp::amf0::decode_all(&bytes);
    }
});
