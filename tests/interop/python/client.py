"""Interop client: Python `websockets` (sync API) against an echo server.

Usage: python3 client.py ws://127.0.0.1:PORT/
       RINGSIDE_CA=ca.pem python3 client.py wss://127.0.0.1:PORT/   (trusting that CA only)

Prints one line per check ("ok <check>: ...") and exits 0 when every check passed; on the
first failure prints "FAIL <check>: ..." and exits 1. Every wait is bounded.
"""

import os
import ssl
import sys
import time

from websockets.sync.client import connect

WAIT = 10.0  # seconds any one wait may take
MIB = 1 << 20


def fail(check, why):
    print(f"FAIL {check}: {why}", flush=True)
    sys.exit(1)


def ok(check, detail):
    print(f"ok {check}: {detail}", flush=True)


def main():
    url = sys.argv[1]
    tls = None
    if url.startswith("wss:"):
        tls = ssl.create_default_context(cafile=os.environ["RINGSIDE_CA"])
    # max_size: websockets refuses messages over 1 MiB by default; allow the big one and more.
    with connect(url, open_timeout=WAIT, close_timeout=WAIT, max_size=4 * MIB, ssl=tls) as ws:
        if tls is not None:
            ok("tls", ws.socket.version())
        text = "hello, ringside: h\u00e9llo \u2713 \U0001f980"
        ws.send(text)
        got = ws.recv(timeout=WAIT)
        if got != text:
            fail("text", f"sent {text!r}, got {got!r}")
        ok("text", f"{len(text.encode())} bytes echoed")

        data = bytes(range(256)) * 4
        ws.send(data)
        got = ws.recv(timeout=WAIT)
        if got != data:
            fail("binary", f"sent {len(data)} bytes, got {type(got).__name__} of {len(got)}")
        ok("binary", f"{len(data)} bytes echoed")

        big = os.urandom(MIB)
        ws.send(big)
        got = ws.recv(timeout=WAIT)
        if got != big:
            fail("big", f"sent {len(big)} bytes, got {len(got)} (intact: {got == big})")
        ok("big", f"{len(big)} bytes echoed intact")

        pong = ws.ping(b"ping-payload")
        if not pong.wait(WAIT):
            fail("ping", f"no pong with the ping's payload within {WAIT} s")
        ok("ping", "pong received with the ping's payload")

        started = time.monotonic()
        ws.close(code=4000, reason="bye")
        took = time.monotonic() - started
        received = ws.protocol.close_rcvd
        if received is None:
            fail("close", f"no close frame from the server (state {ws.protocol.state.name})")
        # RFC 6455 5.5.1: the reply typically echoes the status code; the reason is optional.
        if received.code != 4000:
            fail("close", f"server's close frame was {received.code} {received.reason!r}")
        if ws.protocol.state.name != "CLOSED":
            fail("close", f"connection state {ws.protocol.state.name} after close()")
        if took >= WAIT:
            fail("close", f"closing handshake did not finish within {WAIT} s")
        ok("close", f"server echoed {received.code} {received.reason!r} in {took * 1000:.0f} ms")


if __name__ == "__main__":
    main()
