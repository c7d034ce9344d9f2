"""Interop client: Python `websockets` (sync API) with permessage-deflate, against echo servers.

Usage: python3 deflate_client.py ws://127.0.0.1:PORT/ [ws://... more servers]

websockets offers permessage-deflate by default. For each server: checks the extension was
agreed, echoes market-data ticks, a 64 KiB compressible text, a compressible binary and 1 MiB
of noise, checks every echo, counts the frames that came compressed (RSV1), closes 1000.
Prints "ok <check>: ..." per check and exits 0 when all passed; on the first failure prints
"FAIL <check>: ..." and exits 1. Every wait is bounded.
"""

import json
import os
import sys

from websockets.extensions import permessage_deflate
from websockets.sync.client import connect

WAIT = 10.0  # seconds any one wait may take
MIB = 1 << 20

# Count the frames the server sent compressed: websockets hands every incoming data frame to
# the extension's decode, RSV1 set or not.
compressed_frames = 0
_decode = permessage_deflate.PerMessageDeflate.decode


def _counting_decode(self, frame, *, max_size=None):
    global compressed_frames
    if frame.rsv1:
        compressed_frames += 1
    return _decode(self, frame, max_size=max_size)


permessage_deflate.PerMessageDeflate.decode = _counting_decode


def fail(check, why):
    print(f"FAIL {check}: {why}", flush=True)
    sys.exit(1)


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def echo(ws, check, message):
    ws.send(message)
    got = ws.recv(timeout=WAIT)
    if got != message:
        fail(check, f"sent {len(message)} {type(message).__name__}, got {len(got)} back, differing")


def run(url):
    global compressed_frames
    compressed_frames = 0
    with connect(url, open_timeout=WAIT, close_timeout=WAIT, max_size=4 * MIB) as ws:
        header = ws.response.headers.get("Sec-WebSocket-Extensions")
        agreed = [e for e in ws.protocol.extensions if isinstance(e, permessage_deflate.PerMessageDeflate)]
        if not header or "permessage-deflate" not in header or not agreed:
            fail("negotiated", f"no permessage-deflate agreed (response header {header!r})")
        e = agreed[0]
        ok(
            "negotiated",
            f"{header!r} (server keeps context: {not e.remote_no_context_takeover}, "
            f"server window {e.remote_max_window_bits} bits)",
        )

        for i in range(50):
            tick = json.dumps(
                {"type": "tick", "symbol": f"SYM{i % 7}", "seq": i, "bid": 100 + i / 100,
                 "ask": 100.02 + i / 100, "size": 100 + i, "currency": "USD", "venue": "XNAS",
                 "ts": "2026-11-21T10:25:13.123456Z", "flags": ["regular"]},
                separators=(",", ":"),
            )
            echo(ws, "ticks", tick)
        ok("ticks", "50 JSON ticks echoed")

        text = ("the quick brown fox jumps over the lazy dog; h\u00e9llo \u2713 " * 2000)[: 64 * 1024]
        echo(ws, "big-text", text)
        ok("big-text", f"{len(text.encode())} bytes of text echoed")

        data = bytes(range(256)) * 1024
        echo(ws, "binary", data)
        ok("binary", f"{len(data)} bytes of binary echoed")

        noise = os.urandom(MIB)
        echo(ws, "noise", noise)
        ok("noise", f"{len(noise)} random bytes echoed intact")

        # The ticks, the text and the binary compress (noise may go either way).
        if compressed_frames < 52:
            fail("compressed", f"only {compressed_frames} frames came compressed")
        ok("compressed", f"{compressed_frames} frames from the server came compressed")

        ws.close(code=1000, reason="done")
        received = ws.protocol.close_rcvd
        if received is None or received.code != 1000:
            fail("close", f"server's close frame: {received}")
        ok("close", "closed 1000")


def main():
    for url in sys.argv[1:]:
        print(f"server {url}", flush=True)
        run(url)


if __name__ == "__main__":
    main()
