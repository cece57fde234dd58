#!/usr/bin/env python3
"""Idle sessions: N clients connect to a release `sluice serve`, each gets its EHLO answered
and then stays idle; reports the server's RSS before and with all N sessions open.

    cargo build --release -p sluice
    python3 bench/idle_sessions.py --sessions 10000

Everything binds to 127.0.0.1. Raises the open-file limit of itself and the server.
"""
import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from benchlib import ROOT, free_port, rss_mb

SLUICE = os.path.join(ROOT, "target", "release", "sluice")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    args = ap.parse_args()
    n = args.sessions
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 2 * n + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < n + 100:
        sys.exit(f"open-file limit {hard} is too low for {n} sessions")
    work = tempfile.mkdtemp(prefix="sluice-idle-")
    port = free_port()
    conf = os.path.join(work, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f"""hostname = "bench.test"
data_dir = "{work}/data"
local_domains = ["localhost"]

[[listener]]
name = "mx"
bind = "127.0.0.1:{port}"
role = "mx"
max_connections = {n + 100}
""")
    log = open(os.path.join(work, "sluice.log"), "w")
    proc = subprocess.Popen([SLUICE, "--config", conf, "serve"], stdout=log, stderr=log)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.5)
    before = rss_mb(proc.pid)
    sel = selectors.DefaultSelector()
    socks = []
    t0 = time.time()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, [b"", False])
        # Keep the number of pending greetings modest.
        if i % 500 == 499:
            pump(sel, until=lambda: False, limit=0.01)
    done = pump(sel, until=lambda: all_ehloed(sel), limit=120)
    elapsed = time.time() - t0
    time.sleep(1)
    with_sessions = rss_mb(proc.pid)
    ok = sum(1 for k in sel.get_map().values() if k.data[1])
    print(f"{ok}/{n} sessions open with EHLO answered in {elapsed:.1f} s; server RSS "
          f"{before:.0f} MB idle, {with_sessions:.0f} MB with the sessions "
          f"({(with_sessions - before) * 1024 / max(ok, 1):.1f} kB per session)")
    for s in socks:
        s.close()
    proc.terminate()
    proc.wait()
    return 0 if done else 1


def all_ehloed(sel):
    return all(k.data[1] for k in sel.get_map().values())


def pump(sel, until, limit):
    end = time.time() + limit
    while time.time() < end:
        if until():
            return True
        for key, _ in sel.select(timeout=0.05):
            s, state = key.fileobj, key.data
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                continue
            if not chunk:
                continue
            state[0] += chunk
            if not state[1] and state[0].startswith(b"220") and b"EHLO-SENT" not in state[0]:
                if state[0].endswith(b"\r\n") and b"250" not in state[0]:
                    s.send(b"EHLO idle.test\r\n")
                    state[0] += b"EHLO-SENT"
            if b"EHLO-SENT" in state[0] and b"250 " in state[0].split(b"EHLO-SENT", 1)[1]:
                state[1] = True
    return until()


if __name__ == "__main__":
    sys.exit(main())
