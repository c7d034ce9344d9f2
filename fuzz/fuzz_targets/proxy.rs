//! The PROXY protocol parser (v1 and v2): never panics, every prefix of the input gets an answer
//! that agrees with the whole (more bytes wanted, then the same header or the same error, as if
//! the header arrived one byte per read), and whatever parses re-encodes to a header that parses
//! to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringside_proto::edge::proxy::{self, V1_MAX_LEN, V2_MAX_LEN};

fuzz_target!(|data: &[u8]| {
    let whole = proxy::parse(data);
    if let Ok(Some((h, n))) = whole {
        assert!(n <= data.len() && n <= V1_MAX_LEN.max(V2_MAX_LEN));
        assert_eq!(h.source.is_some(), h.destination.is_some());
        let mut again = Vec::new();
        h.encode(&mut again);
        assert_eq!(proxy::parse(&again), Ok(Some((h, again.len()))));
    }
    let mut errored = false;
    for k in 0..data.len() {
        let r = proxy::parse(&data[..k]);
        match whole {
            Ok(Some((_, n))) if k < n => assert_eq!(r, Ok(None), "at {k}"),
            Ok(Some(_)) => assert_eq!(r, whole, "at {k}"),
            Ok(None) => assert_eq!(r, Ok(None), "at {k}"),
            Err(e) => match r {
                Ok(None) => assert!(!errored, "error, then more bytes wanted, at {k}"),
                Err(got) => {
                    assert_eq!(got, e, "at {k}");
                    errored = true;
                }
                Ok(Some(h)) => panic!("header {h:?} at {k}, error {e:?} at the end"),
            },
        }
    }
});
