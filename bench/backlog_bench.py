#!/usr/bin/env python3
"""Big-backlog benchmark: a queue of N messages with the next hop down, then a restart.

Fills a queue folder with `fill_queue` (N messages of SIZE bytes, as sluice would have
queued them), starts a release `sluice serve` on it with the next hop down, and reports:
time until the listener answers EHLO (the queue is scanned before listeners accept), and
the server's peak RSS while it retries the whole backlog against the dead hop. Then the
next hop (Postfix's smtp-sink) comes up and the queue drains: drain time, msg/s and peak
RSS while draining.

Needs Debian's postfix (smtp-sink) and release builds:
    cargo build --release -p sluice -p sluice-bench --bin fill_queue
    python3 bench/backlog_bench.py --messages 1000000 --size 5000
Everything binds to 127.0.0.1. Uses about N x SIZE bytes of disk under --dir.
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from benchlib import ROOT, free_port, rss_mb

SLUICE = os.path.join(ROOT, "target", "release", "sluice")
FILL = os.path.join(ROOT, "target", "release", "fill_queue")


def ehlo_ok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(5)
            f = s.makefile("rwb")
            if not f.readline().startswith(b"220"):
                return False
            f.write(b"EHLO bench.test\r\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    return False
                if line[3:4] == b" ":
                    return line.startswith(b"250")
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--down-seconds", type=float, default=20.0,
                    help="how long the next hop stays down after the restart")
    ap.add_argument("--drain-limit", type=float, default=1800.0)
    args = ap.parse_args()
    for tool in (SLUICE, FILL):
        if not os.path.exists(tool):
            sys.exit(f"missing {tool}: cargo build --release -p sluice -p sluice-bench --bin fill_queue")
    if not shutil.which("smtp-sink"):
        sys.exit("missing smtp-sink: apt-get install postfix")
    work = args.dir or tempfile.mkdtemp(prefix="sluice-backlog-")
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    t = time.time()
    subprocess.run([FILL, os.path.join(data, "queue"), str(args.messages), str(args.size)], check=True)
    fill_s = time.time() - t
    du = subprocess.run(["du", "-sm", os.path.join(data, "queue")], capture_output=True, text=True).stdout.split()[0]
    sink_port, mx_port = free_port(), free_port()
    conf = os.path.join(work, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f"""hostname = "bench.test"
data_dir = "{data}"
queue_min_free = 0
local_domains = ["localhost"]

[[listener]]
name = "mx"
bind = "127.0.0.1:{mx_port}"
role = "mx"
max_connections = 100

[delivery]
retry_initial = "2s"
retry_max = "5s"
max_connections = 100
max_connections_per_destination = 100

[[route]]
domain = "remote.test"
via = "smarthost"
host = "127.0.0.1:{sink_port}"
tls = "none"
""")
    log = open(os.path.join(work, "sluice.log"), "w")
    t0 = time.time()
    proc = subprocess.Popen([SLUICE, "--config", conf, "serve"], stdout=log, stderr=log,
                            env=dict(os.environ, RUST_LOG="warn"))
    peak_down = 0.0
    ready_s = None
    while time.time() - t0 < 120:
        peak_down = max(peak_down, rss_mb(proc.pid))
        if ehlo_ok(mx_port):
            ready_s = time.time() - t0
            break
        time.sleep(0.05)
    if ready_s is None:
        proc.kill()
        sys.exit("sluice did not get ready within 120 s")
    end = time.time() + args.down_seconds
    while time.time() < end:
        peak_down = max(peak_down, rss_mb(proc.pid))
        time.sleep(0.25)
    sink_out = open(os.path.join(work, "sink.out"), "w+b")
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", "-m", "1000",
                             f"127.0.0.1:{sink_port}", "1024"], stdout=sink_out,
                            stderr=subprocess.STDOUT)

    def delivered():
        sink_out.flush()
        with open(sink_out.name, "rb") as f:
            m = re.findall(rb"mesg=(\d+)", f.read())
        return int(m[-1]) if m else 0

    t1 = time.time()
    peak_drain = 0.0
    samples = []
    while delivered() < args.messages and time.time() - t1 < args.drain_limit:
        r = rss_mb(proc.pid)
        peak_drain = max(peak_drain, r)
        samples.append(r)
        time.sleep(0.5)
    drain_s = time.time() - t1
    got = delivered()
    proc.terminate()
    proc.wait()
    sink.terminate()
    sink.wait()
    print(f"backlog: {args.messages} messages of {args.size} B ({du} MB on disk), filled in {fill_s:.1f} s")
    print(f"restart with the next hop down: EHLO answered after {ready_s:.2f} s; "
          f"peak RSS {peak_down:.0f} MB over {args.down_seconds:.0f} s of retries")
    print(f"next hop up: {got} delivered in {drain_s:.1f} s ({got / drain_s:.0f} msg/s); "
          f"peak RSS while draining {peak_drain:.0f} MB")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if got >= args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
