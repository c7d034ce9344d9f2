//! The frame header decoder: never panics, and whatever it accepts re-encodes to the very bytes
//! it read (lengths must be minimal, so the encoding is unique).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringside_proto::frame::{decode_header, encode_header, DecodeRules};

fuzz_target!(|data: &[u8]| {
    for expect_masked in [true, false] {
        for max_frame_size in [0, 125, 1 << 16, u64::MAX] {
            let rules = DecodeRules { expect_masked, max_frame_size };
            match decode_header(data, rules) {
                Ok(Some((h, n))) => {
                    assert!(n <= data.len() && n <= 14);
                    assert!(h.len <= max_frame_size);
                    assert_eq!(h.mask.is_some(), expect_masked);
                    let again = encode_header(h.fin, h.opcode, h.mask, h.len);
                    assert_eq!(again.as_bytes(), &data[..n]);
                }
                Ok(None) => assert!(data.len() < 14),
                Err(e) => assert!(e.close_code().is_some()),
            }
        }
    }
});
