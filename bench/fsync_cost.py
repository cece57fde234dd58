#!/usr/bin/env python3
"""What one group commit's syncs cost on this filesystem: three files appended (the queue's
body segment, sled's log, the archive segment) and made durable per cycle, in three ways:

- seq: fdatasync each file in turn (what the queue's flusher does today);
- sfr: start writeback on all three first (sync_file_range WRITE), then fdatasync each;
- prealloc: the same appends into files written full of zeros beforehand (no size change,
  so fdatasync has no metadata to commit), fdatasync each.

Prints wall and CPU microseconds per cycle. Usage:
`python3 bench/fsync_cost.py [DIR] [CYCLES]` (DIR on the filesystem of the data_dir).
"""

import ctypes
import os
import resource
import sys
import tempfile
import time

LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
SYNC_FILE_RANGE_WRITE = 2
RECORD = b"x" * 6000


def cycle_cost(directory, mode, cycles):
    fds = []
    for i in range(3):
        fd = os.open(os.path.join(directory, f"f{i}"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        if mode == "prealloc":
            os.write(fd, b"\0" * (len(RECORD) * (cycles + 10)))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        fds.append(fd)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(cycles):
        for fd in fds:
            os.write(fd, RECORD)
        if mode == "sfr":
            for fd in fds:
                LIBC.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0),
                                     SYNC_FILE_RANGE_WRITE)
        for fd in fds:
            os.fdatasync(fd)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    for fd in fds:
        os.close(fd)
    return wall / cycles * 1e6, cpu / cycles * 1e6


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with tempfile.TemporaryDirectory(dir=directory) as d:
        print("| mode | wall µs / cycle | CPU µs / cycle |")
        print("| --- | --- | --- |")
        for mode in ("seq", "sfr", "prealloc") * 2:
            wall, cpu = cycle_cost(d, mode, cycles)
            print(f"| {mode} | {wall:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
