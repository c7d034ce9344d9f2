//! The opening-handshake parser and validator (server side) and the response parser (client
//! side): never panic, every rejection has an HTTP answer, and a request fed in two pieces
//! parses as it does whole, by `parse_request` and by `parse_request_incremental` (whose
//! `head_end` finds the end of every head the parser completes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringside_proto::deflate::DeflateConfig;
use ringside_proto::handshake::{self, HandshakeConfig};

fuzz_target!(|data: &[u8]| {
    let cfg = HandshakeConfig {
        max_head_bytes: 4096,
        allowed_origins: Some(vec!["https://ok.example".into()]),
        require_origin: data.first().is_some_and(|b| b & 1 == 1),
        subprotocols: vec!["chat".into(), "superchat".into()],
        deflate: data.first().is_some_and(|b| b & 2 == 2).then(DeflateConfig::shared),
    };
    let whole = handshake::parse_request(data, &cfg);
    match &whole {
        Ok(Some(req)) => {
            assert!(req.head_len() <= data.len());
            let _ = (req.method(), req.path(), req.query(), req.target());
            let _ = req.headers().count() + req.cookies().count();
            let _ = req.header("sec-websocket-protocol");
            match handshake::validate(req, &cfg) {
                Ok(accept) => {
                    if let Some(p) = accept.protocol {
                        assert!(cfg.subprotocols.iter().any(|s| s == p));
                    }
                    let mut out = Vec::new();
                    accept.write_response(None, &mut out);
                    assert!(out.starts_with(b"HTTP/1.1 101 "));
                }
                Err(e) => assert!(e.http_response().is_some(), "{e:?}"),
            }
        }
        Ok(None) => assert!(data.len() < cfg.max_head_bytes),
        Err(e) => assert!(e.http_response().is_some(), "{e:?}"),
    }
    // Arriving in pieces changes nothing once the whole head is there.
    let cut = data.len() / 2;
    if let Ok(Some(req)) = &whole {
        if cut < req.head_len() {
            assert!(matches!(handshake::parse_request(&data[..cut], &cfg), Ok(None)));
        }
        assert_eq!(handshake::head_end(data, 0), Some(req.head_len()));
    }
    // The incremental parse: the whole parse once the head's end is there, else waiting (or
    // 431 at the limit); in two pieces as in one.
    let incremental = |buf: &[u8], scanned: usize| {
        let got = handshake::parse_request_incremental(buf, scanned, &cfg);
        if handshake::head_end(buf, 0).is_some() {
            assert_eq!(got, handshake::parse_request(buf, &cfg));
        } else if buf.len() >= cfg.max_head_bytes {
            assert_eq!(got, Err(ringside_proto::Error::HeadersTooLarge));
        } else {
            assert_eq!(got, Ok(None));
        }
        got == Ok(None)
    };
    if incremental(&data[..cut], 0) {
        incremental(data, cut);
    }
    let key = *b"dGhlIHNhbXBsZSBub25jZQ==";
    let _ = handshake::parse_response(data, &key, &["chat"]);
});
