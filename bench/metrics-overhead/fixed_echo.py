#!/usr/bin/env python3
"""A fixed amount of echo work, for instruction counts: CONNS connections, MSGS binary messages
of 20 bytes on each, INFLIGHT in flight per connection, then a clean close.

Usage: fixed_echo.py HOST:PORT CONNS MSGS INFLIGHT (loopback only)"""
import base64, os, selectors, socket, sys

addr, conns, msgs, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
assert host.startswith("127."), "loopback only"
payload = b"x" * 20
mask = b"\x01\x02\x03\x04"
frame = bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
reply_len = 2 + len(payload)
close = bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i] for i, b in enumerate(b"\x03\xe8"))

def connect():
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert head.endswith(b"\r\n\r\n")
    s.setblocking(False)
    return s

sel = selectors.DefaultSelector()
state = {}
for _ in range(conns):
    s = connect()
    state[s] = [msgs, 0, 0]  # to send, unanswered, buffered reply bytes
    sel.register(s, selectors.EVENT_READ)
def top_up(s):
    st = state[s]
    n = min(inflight - st[1], st[0])
    if n > 0:
        s.sendall(frame * n)
        st[0] -= n
        st[1] += n
def finish(s):
    sel.unregister(s)
    s.setblocking(True)
    s.sendall(close)
    while s.recv(4096):
        pass
    s.close()
left = conns
for s in list(state):
    top_up(s)
    if state[s][0] == 0 and state[s][1] == 0:
        finish(s)
        left -= 1
while left:
    for key, _ in sel.select(timeout=30):
        s = key.fileobj
        st = state[s]
        data = s.recv(65536)
        assert data, "server closed early"
        st[2] += len(data)
        got, st[2] = divmod(st[2], reply_len)
        st[1] -= got
        top_up(s)
        if st[0] == 0 and st[1] == 0:
            finish(s)
            left -= 1
print(f"{conns * msgs} messages echoed")
