//! Every handshake rejection, table-driven: real request bytes in, the status and the headers
//! the client must see out. The request is also fed in two pieces at every split point, so the
//! answer cannot depend on how the bytes arrived.

use ringside_proto::handshake::{self, HandshakeConfig};

const GOOD: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: https://app.example.com\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// GOOD with one line replaced (`from` -> `to`; `to` may be empty to drop the line).
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

fn config() -> HandshakeConfig {
    HandshakeConfig {
        allowed_origins: Some(vec!["https://app.example.com".into()]),
        ..HandshakeConfig::default()
    }
}

/// The full answer to `request`: 101 and the response, or the rejection status and response.
fn answer(request: &[u8], cfg: &HandshakeConfig) -> Option<(u16, String)> {
    let parsed = match handshake::parse_request(request, cfg) {
        Ok(None) => return None,
        Ok(Some(req)) => handshake::validate(&req, cfg).map(|accept| {
            let mut out = Vec::new();
            accept.write_response(None, &mut out);
            out
        }),
        Err(e) => Err(e),
    };
    Some(match parsed {
        Ok(out) => (101, String::from_utf8(out).unwrap()),
        Err(e) => {
            (e.http_status().unwrap(), String::from_utf8(e.http_response().unwrap()).unwrap())
        }
    })
}

#[test]
fn every_rejection_has_its_status_and_headers() {
    let long_header = format!("X-Pad: {}\r\n", "a".repeat(9000));
    let many_headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, String, u16, &[&str])> = vec![
        ("accepted", GOOD.into(), 101, &["Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]),
        (
            "keep-alive, Upgrade",
            edit("Connection: Upgrade", "Connection: keep-alive, Upgrade"),
            101,
            &[],
        ),
        ("case-insensitive", edit("Upgrade: websocket", "upgrade: WebSocket"), 101, &[]),
        ("POST", edit("GET ", "POST "), 405, &["Allow: GET"]),
        ("PUT", edit("GET ", "PUT "), 405, &["Allow: GET"]),
        ("HTTP/1.0", edit("HTTP/1.1\r\n", "HTTP/1.0\r\n"), 400, &[]),
        ("garbage request line", edit("GET /chat HTTP/1.1", "GET/chat"), 400, &[]),
        ("bad header syntax", edit("Host: ", "Host : "), 400, &[]),
        ("no Host", edit("Host: server.example.com\r\n", ""), 400, &[]),
        ("two Hosts", edit("Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n"), 400, &[]),
        (
            "no Upgrade (plain HTTP)",
            edit("Upgrade: websocket\r\n", ""),
            426,
            &["Upgrade: websocket"],
        ),
        ("Upgrade: h2c", edit("Upgrade: websocket", "Upgrade: h2c"), 400, &[]),
        ("no Connection", edit("Connection: Upgrade\r\n", ""), 400, &[]),
        ("Connection: keep-alive", edit("Connection: Upgrade", "Connection: keep-alive"), 400, &[]),
        ("no key", edit("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400, &[]),
        ("key of 15 bytes", edit("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j"), 400, &[]),
        ("key of 17 bytes", edit("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZSE="), 400, &[]),
        ("key not base64", edit("dGhlIHNhbXBsZSBub25jZQ==", "not base64 at all!!!!!!!"), 400, &[]),
        (
            "two keys",
            edit(
                "Sec-WebSocket-Key: ",
                "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Key: ",
            ),
            400,
            &[],
        ),
        (
            "no version",
            edit("Sec-WebSocket-Version: 13\r\n", ""),
            400,
            &["Sec-WebSocket-Version: 13"],
        ),
        ("version 8", edit("Version: 13", "Version: 8"), 426, &["Sec-WebSocket-Version: 13"]),
        ("version 14", edit("Version: 13", "Version: 14"), 426, &["Sec-WebSocket-Version: 13"]),
        ("bad extensions", edit("Origin", "Sec-WebSocket-Extensions: ;bad\r\nOrigin"), 400, &[]),
        ("head over 8 KiB", edit("Origin", &format!("{long_header}Origin")), 431, &[]),
        ("over 64 headers", edit("Origin", &format!("{many_headers}Origin")), 431, &[]),
        ("origin refused", edit("https://app.example.com", "https://evil.example"), 403, &[]),
        ("asterisk target", edit("GET /chat ", "GET * "), 400, &[]),
        ("OPTIONS *", edit("GET /chat ", "OPTIONS * "), 405, &["Allow: GET"]),
        ("authority-form target", edit("GET /chat ", "GET server.example.com:80 "), 400, &[]),
        ("target without a slash", edit("GET /chat ", "GET chat "), 400, &[]),
        ("ws: absolute target", edit("GET /chat ", "GET ws://server.example.com/chat "), 400, &[]),
        ("userinfo in the target", edit("GET /chat ", "GET http://u:p@a.example/chat "), 400, &[]),
        (
            "absolute-form target",
            edit("GET /chat ", "GET http://server.example.com/chat "),
            101,
            &["Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="],
        ),
        ("absolute-form without a path", edit("GET /chat ", "GET https://a.example "), 101, &[]),
        ("Content-Length: 5", edit("Origin", "Content-Length: 5\r\nOrigin"), 400, &[]),
        ("Content-Length: 0", edit("Origin", "Content-Length: 0\r\nOrigin"), 101, &[]),
        ("Content-Length: junk", edit("Origin", "Content-Length: x\r\nOrigin"), 400, &[]),
        ("chunked", edit("Origin", "Transfer-Encoding: chunked\r\nOrigin"), 400, &[]),
        (
            "chunked and Content-Length: 0",
            edit("Origin", "Content-Length: 0\r\nTransfer-Encoding: chunked\r\nOrigin"),
            400,
            &[],
        ),
    ];
    let cfg = config();
    for (name, request, status, headers) in &cases {
        let (got, response) =
            answer(request.as_bytes(), &cfg).unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!(got, *status, "{name}: {response}");
        let status_line = response.lines().next().unwrap();
        assert!(status_line.starts_with(&format!("HTTP/1.1 {status} ")), "{name}: {status_line}");
        for h in *headers {
            assert!(
                response.contains(&format!("\r\n{h}\r\n")),
                "{name}: missing {h} in {response}"
            );
        }
        if *status != 101 {
            assert!(
                response.contains("\r\nConnection: close\r\n")
                    || response.contains("\r\nConnection: Upgrade, close\r\n"),
                "{name}"
            );
        }
        // In two pieces: nothing until complete, then the same answer. (431 can come early.)
        let bytes = request.as_bytes();
        for cut in (0..bytes.len()).step_by(7) {
            match answer(&bytes[..cut], &cfg) {
                None => {}
                Some((early, _)) => {
                    assert_eq!(early, 431, "{name}: answered {early} at byte {cut}")
                }
            }
        }
    }
}

#[test]
fn pipelined_frames_stay_after_the_head() {
    let mut bytes = GOOD.as_bytes().to_vec();
    bytes.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4]);
    let req = handshake::parse_request(&bytes, &config()).unwrap().unwrap();
    assert_eq!(req.head_len(), GOOD.len());
    assert_eq!(&bytes[req.head_len()..], &[0x81, 0x85, 1, 2, 3, 4]);
}
