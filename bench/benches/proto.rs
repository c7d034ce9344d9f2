//! Criterion micro-benchmarks of the protocol core, one group per component.
//!
//! Run with `cargo bench -p ringside-bench --bench proto -- <group>`; ids are
//! `<group>/<variant>/<input size>`, e.g. `unmask/avx2/65536`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringside_bench::pseudo_random_bytes;
use ringside_proto::deflate::{DeflateParams, Deflater};
use ringside_proto::frame::{self, DecodeRules, OpCode};
use ringside_proto::handshake::{self, HandshakeConfig};
use ringside_proto::mask::{self, Path};
use ringside_proto::{utf8, Config, Connection, Role};

/// Payload sizes: a typical small chat/ping frame, a 1 KiB message, a 64 KiB bulk frame.
const UNMASK_SIZES: [usize; 3] = [20, 1024, 64 * 1024];

/// Every unmask path this CPU has, then `apply` (the dispatching entry point the connection
/// calls), on a preallocated buffer that stays hot in cache, so the figure is the path's own
/// throughput (not allocation or memory bandwidth).
fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    let key = [0x37, 0xfa, 0x21, 0x3d];
    for path in Path::available() {
        for size in UNMASK_SIZES {
            let mut buf = pseudo_random_bytes(size, 0x5eed);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new(path.name(), size), |b| {
                b.iter(|| {
                    mask::apply_with(path, black_box(&mut buf), black_box(key), black_box(0));
                });
            });
        }
    }
    for size in UNMASK_SIZES {
        let mut buf = pseudo_random_bytes(size, 0x5eed);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("apply", size), |b| {
            b.iter(|| mask::apply(black_box(&mut buf), black_box(key), black_box(0)));
        });
    }
    group.finish();
}

/// UTF-8 validation of ASCII and of mixed multi-byte text: the whole-slice path a message that
/// arrived in one read takes, and the incremental validator fed in 1 KiB pieces.
fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    let mixed = "ascii text, κόσμε, 中文字符, emoji 😀 and more; ".repeat(2048);
    for size in [20usize, 1024, 64 * 1024] {
        let ascii: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        // Cut the mixed text on a char boundary at about `size` bytes.
        let mut end = size.min(mixed.len());
        while !mixed.is_char_boundary(end) {
            end -= 1;
        }
        let multibyte = mixed.as_bytes()[..end].to_vec();
        for (name, text) in [("ascii", &ascii), ("multibyte", &multibyte)] {
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_function(BenchmarkId::new(format!("whole/{name}"), size), |b| {
                b.iter(|| utf8::validate(black_box(text)).is_ok())
            });
            group.bench_function(BenchmarkId::new(format!("incremental/{name}"), size), |b| {
                b.iter(|| {
                    let mut v = utf8::Validator::new();
                    for piece in black_box(text).chunks(1024) {
                        v.feed(piece).unwrap();
                    }
                    v.finish().is_ok()
                })
            });
        }
    }
    group.finish();
}

/// Frame work per small message: decoding one client header, and a server connection reading
/// one whole 20-byte masked text frame (header, unmask in place, UTF-8, borrowed event).
fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    let mut wire = Vec::new();
    frame::write_frame(&mut wire, true, OpCode::Text, Some([1, 2, 3, 4]), &[b'x'; 20]);
    let rules = DecodeRules { expect_masked: true, max_frame_size: 16 << 20 };
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_header/20", |b| {
        b.iter(|| frame::decode_header(black_box(&wire), rules).unwrap())
    });
    let mut conn = Connection::new(Role::Server, Config::default());
    let mut buf = wire.clone();
    group.bench_function("read_message/20", |b| {
        b.iter(|| {
            // The read unmasks in place: put the masked wire bytes back first.
            buf.copy_from_slice(&wire);
            let (n, ev) = conn.read(black_box(&mut buf)).unwrap();
            black_box(ev);
            n
        })
    });
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend_from_slice(&wire);
    }
    let mut buf = batch.clone();
    group.throughput(Throughput::Elements(64));
    group.bench_function("read_batch_of_64/20", |b| {
        b.iter(|| {
            buf.copy_from_slice(&batch);
            let mut pos = 0;
            while let (n, Some(ev)) = conn.read(&mut buf[pos..]).unwrap() {
                pos += n;
                black_box(ev);
            }
            pos
        })
    });
    group.finish();
}

/// Parsing and validating a typical browser upgrade request, and writing the 101.
fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let request = b"GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\n\
        Connection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36\r\n\
        Upgrade: websocket\r\nOrigin: https://app.example.com\r\nSec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
        Cookie: session=abc123; theme=dark\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let cfg = HandshakeConfig::default();
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| handshake::parse_request(black_box(request), &cfg).unwrap().unwrap().head_len())
    });
    let mut out = Vec::with_capacity(256);
    group.bench_function("parse_validate_respond", |b| {
        b.iter(|| {
            let req = handshake::parse_request(black_box(request), &cfg).unwrap().unwrap();
            let accept = handshake::validate(&req, &cfg).unwrap();
            out.clear();
            accept.write_response(None, &mut out);
            out.len()
        })
    });
    group.finish();
}

/// A JSON text of about `len` bytes (market ticks, the fan-out case compression is for); `seed`
/// varies the values so consecutive messages differ as real ones do.
fn json(len: usize, seed: u32) -> Vec<u8> {
    let mut s = String::new();
    let mut i = seed.wrapping_mul(2_654_435_761) | 1;
    while s.len() < len {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
        s.push_str(&format!(
            "{{\"type\":\"tick\",\"sym\":\"AB{}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"size\":{}}}",
            i % 40,
            100 + i % 50,
            i % 100,
            101 + i % 50,
            (i >> 8) % 100,
            (i >> 16) % 1000
        ));
    }
    s.truncate(len);
    s.into_bytes()
}

/// permessage-deflate: compressing one message (150-byte tick, 16 KiB batch) with a fresh
/// context each time (a shared compressor, `no_context_takeover`: zlib resets its state per
/// message) and with context kept (dedicated), at zlib levels 1 and 6 and windows 15 and 9; 64
/// distinct messages in turn, so context takeover sees realistic history, not one repeat. And a
/// server connection reading one compressed message (unmask, inflate, UTF-8).
fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    for len in [150, 16 << 10] {
        let payloads: Vec<Vec<u8>> = (0..64).map(|seed| json(len, seed)).collect();
        let mut out = Vec::with_capacity(len + 64);
        group.throughput(Throughput::Bytes(len as u64));
        for (name, bits, no_takeover, level) in [
            ("fresh_l1", 15, true, 1),
            ("fresh_l1_w9", 9, true, 1),
            ("fresh_l6", 15, true, 6),
            ("takeover_l1", 15, false, 1),
            ("takeover_l6", 15, false, 6),
        ] {
            let mut d = Deflater::new(bits, no_takeover, level);
            let mut total = 0;
            for p in &payloads {
                out.clear();
                d.compress(p, &mut out);
                total += out.len();
            }
            eprintln!("deflate/{name}/{len}: {len} -> {} bytes on average", total / payloads.len());
            let mut next = 0;
            group.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| {
                    next = (next + 1) % payloads.len();
                    out.clear();
                    d.compress(black_box(&payloads[next]), &mut out);
                    out.len()
                })
            });
        }
    }
    // Reading: without client context takeover the inflate state is made and freed per
    // message; with it, kept (fed the same message each time, so the history grows, as it
    // would on a live connection).
    for len in [150, 16 << 10] {
        let payload = json(len, 0);
        for (name, no_takeover) in [("read_inflate_fresh", true), ("read_inflate_takeover", false)]
        {
            let params =
                DeflateParams { client_no_context_takeover: no_takeover, ..DeflateParams::DEFAULT };
            let mut conn = Connection::new(Role::Server, Config::default());
            conn.enable_deflate(params, None);
            let mut client = Deflater::new(15, true, 6);
            let mut wire = Vec::new();
            client.write_frame(OpCode::Text, Some([1, 2, 3, 4]), &payload, &mut wire);
            let mut buf = wire.clone();
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| {
                    buf.copy_from_slice(&wire);
                    let (n, ev) = conn.read(black_box(&mut buf)).unwrap();
                    black_box(ev);
                    n
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, unmask, utf8, frames, handshake, deflate);
criterion_main!(benches);
