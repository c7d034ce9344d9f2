#!/usr/bin/env python3
"""Echo server CPU per message with and without the metrics counters.

Usage: cpu.py BINS [RUNS] [SECS]

BINS holds `ringside-base` (a build without the counters: the commit before they were wired),
`ringside-wired` (this tree) and `ringside-load`. Three variants run: base, wired, and wired with
--metrics-listen scraped every second. Servers are pinned to CPU 0, the load generator (and the
scraper) to CPU 1; the variants take turns in a rotating order, run after run, so drift from other
work on the machine reaches each of them alike. Prints each run and the medians."""
import json, os, re, signal, socket, statistics, subprocess, sys, threading, time

BINS = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
SECS = sys.argv[3] if len(sys.argv) > 3 else "5"
ROWS = [(100, 20, 1), (100, 20, 16)]
BACKENDS = ["io-uring", "epoll"]
VARIANTS = [("base", "ringside-base", []), ("wired", "ringside-wired", []),
            ("wired+scraped", "ringside-wired", ["--metrics-listen", "127.0.0.1:0"])]

def start(binary, backend, extra):
    p = subprocess.Popen(["taskset", "-c", "0", f"{BINS}/{binary}", "--listen", "127.0.0.1:0",
                          "--backend", backend, "--workers", "1", "--no-pin",
                          "--idle-timeout", "3600", "--no-idle-ping"] + extra,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = p.stdout.readline().strip().removeprefix("ringside: listening on ")
    metrics = None
    if extra:
        metrics = p.stdout.readline().strip().removeprefix("ringside: metrics on ")
    return p, addr, metrics

def scrape_loop(addr, stop, counter):
    host, port = addr.rsplit(":", 1)
    while not stop.is_set():
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            while s.recv(65536):
                pass
        counter[0] += 1
        stop.wait(1.0)

def load(addr, pid, conns, size, inflight):
    out = subprocess.run(["taskset", "-c", "1", f"{BINS}/ringside-load", "echo", "--url",
                          f"ws://{addr}/", "--conns", str(conns), "--size", str(size),
                          "--inflight", str(inflight), "--warmup", "1", "--duration", SECS,
                          "--server-pid", str(pid), "--threads", "1", "--quiet", "--json", "-"],
                         capture_output=True, text=True, timeout=120)
    r = json.loads(out.stdout)
    return r["server"]["cpu_us_per_msg"], r["msgs_per_s"], r.get("errors", 0)

results = {}
for backend in BACKENDS:
    servers = [start(b, backend, e) for (_, b, e) in VARIANTS]
    stop = threading.Event()
    scrapes = [0]
    t = threading.Thread(target=scrape_loop, args=(servers[2][2], stop, scrapes), daemon=True)
    # The scraper runs on CPU 1 with the load generator; the page is rendered on the server's.
    os.sched_setaffinity(0, {1})
    t.start()
    for row in ROWS:
        for run in range(RUNS):
            for k in range(len(VARIANTS)):
                i = (k + run) % len(VARIANTS)
                p, addr, _ = servers[i]
                cpu, rate, errs = load(addr, p.pid, *row)
                results.setdefault((backend, row, VARIANTS[i][0]), []).append((cpu, rate))
                print(f"{backend:8} {row} run {run+1} {VARIANTS[i][0]:14} {cpu:7.3f} us/msg "
                      f"{rate:10.0f} msg/s errors {errs}", flush=True)
    stop.set()
    t.join()
    print(f"{backend}: {scrapes[0]} scrapes of the wired+scraped server", flush=True)
    for p, _, _ in servers:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)

print("\nmedians (server CPU us/msg, msg/s):")
for backend in BACKENDS:
    for row in ROWS:
        base = statistics.median(c for c, _ in results[(backend, row, "base")])
        line = f"{backend:8} {row[0]} x {row[1]} B, {row[2]} in flight:"
        for name, _, _ in VARIANTS:
            cpus = [c for c, _ in results[(backend, row, name)]]
            rates = [r for _, r in results[(backend, row, name)]]
            m = statistics.median(cpus)
            line += f" | {name} {m:.3f} ({(m / base - 1) * 100:+.1f}%) {statistics.median(rates):.0f}/s"
        print(line, flush=True)
