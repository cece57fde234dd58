#!/usr/bin/env python3
"""A FUSE filesystem that loses everything not fsynced when told to: a power cut.

Like LazyFS (used by Jepsen), it keeps two states of every file and folder: what programs
see now, and what would survive a power cut. Only fsync moves data to the second:

- a file's contents and size become durable when that file is fsynced (fsync or
  fdatasync on any handle of it);
- a folder's entries (create, unlink, rename, mkdir, rmdir) become durable when that
  folder is fsynced. This is POSIX's rule and stricter than ext4, which tends to commit a
  new file's name along with its data.

`lazyfs.py MOUNTPOINT CONTROL_SOCKET` mounts an empty filesystem and serves a Unix socket:
a client that sends `cut` gets every file and folder put back to its durable state and the
answer `ok`; `fail-fsync N` makes the next N fsyncs of files fail with EIO, dropping what
they should have made durable (as Linux may after a device error); `stats` answers counts. Everything lives in memory. The kernel's caches are
off (direct_io, zero timeouts) so a cut is seen at once. Unmount with `fusermount -u`.
"""

import errno
import os
import socket
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

LOCK = threading.RLock()


class Node:
    __slots__ = ("mode", "data", "synced", "entries", "synced_entries", "mtime", "ino")
    next_ino = 1

    def __init__(self, mode):
        self.mode = mode
        self.mtime = time.time()
        self.ino = Node.next_ino
        Node.next_ino += 1
        if stat.S_ISDIR(mode):
            self.entries, self.synced_entries = {}, {}
            self.data = self.synced = None
        else:
            self.data, self.synced = bytearray(), b""
            self.entries = self.synced_entries = None

    def is_dir(self):
        return self.entries is not None


class LazyFS(Operations):
    def __init__(self):
        self.root = Node(stat.S_IFDIR | 0o755)
        self.handles = {}
        self.next_fh = 1
        self.cuts = 0
        self.fsyncs = 0
        self.failing_fsyncs = 0

    # -- lookup ------------------------------------------------------------------------
    def _node(self, path):
        node = self.root
        for part in [p for p in path.split("/") if p]:
            if not node.is_dir() or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def _parent(self, path):
        parent, _, name = path.rstrip("/").rpartition("/")
        node = self._node(parent or "/")
        if not node.is_dir():
            raise FuseOSError(errno.ENOTDIR)
        return node, name

    # -- the power cut -------------------------------------------------------------------
    def cut(self):
        with LOCK:
            seen = set()

            def revert(node):
                if node.ino in seen:
                    return
                seen.add(node.ino)
                if node.is_dir():
                    node.entries = dict(node.synced_entries)
                    for child in node.entries.values():
                        revert(child)
                else:
                    node.data = bytearray(node.synced)

            revert(self.root)
            self.handles.clear()
            self.cuts += 1

    # -- metadata ------------------------------------------------------------------------
    def getattr(self, path, fh=None):
        with LOCK:
            n = self._node(path)
            size = 4096 if n.is_dir() else len(n.data)
            return {
                "st_mode": n.mode,
                "st_ino": n.ino,
                "st_nlink": 2 if n.is_dir() else 1,
                "st_size": size,
                "st_blocks": (size + 511) // 512,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_atime": n.mtime,
                "st_mtime": n.mtime,
                "st_ctime": n.mtime,
            }

    def chmod(self, path, mode):
        with LOCK:
            n = self._node(path)
            n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        with LOCK:
            self._node(path).mtime = times[1] if times else time.time()
            return 0

    def statfs(self, path):
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 1 << 24,
            "f_bfree": 1 << 23,
            "f_bavail": 1 << 23,
            "f_files": 1 << 20,
            "f_ffree": 1 << 19,
            "f_favail": 1 << 19,
            "f_namemax": 255,
        }

    def access(self, path, amode):
        with LOCK:
            self._node(path)
            return 0

    # -- folders -------------------------------------------------------------------------
    def readdir(self, path, fh):
        with LOCK:
            n = self._node(path)
            if not n.is_dir():
                raise FuseOSError(errno.ENOTDIR)
            return [".", ".."] + list(n.entries)

    def opendir(self, path):
        with LOCK:
            self._node(path)
            return 0

    def mkdir(self, path, mode):
        with LOCK:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = Node(stat.S_IFDIR | (mode & 0o7777))
            return 0

    def rmdir(self, path):
        with LOCK:
            parent, name = self._parent(path)
            n = parent.entries.get(name)
            if n is None:
                raise FuseOSError(errno.ENOENT)
            if not n.is_dir():
                raise FuseOSError(errno.ENOTDIR)
            if n.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            return 0

    def fsyncdir(self, path, datasync, fh):
        with LOCK:
            n = self._node(path)
            n.synced_entries = dict(n.entries)
            self.fsyncs += 1
            return 0

    # -- names ---------------------------------------------------------------------------
    def create(self, path, mode, fi=None):
        with LOCK:
            parent, name = self._parent(path)
            n = parent.entries.get(name)
            if n is None:
                n = Node(stat.S_IFREG | (mode & 0o7777))
                parent.entries[name] = n
            return self._open_node(n)

    def unlink(self, path):
        with LOCK:
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise FuseOSError(errno.ENOENT)
            if parent.entries[name].is_dir():
                raise FuseOSError(errno.EISDIR)
            del parent.entries[name]
            return 0

    def rename(self, old, new):
        with LOCK:
            op, on = self._parent(old)
            np, nn = self._parent(new)
            if on not in op.entries:
                raise FuseOSError(errno.ENOENT)
            target = np.entries.get(nn)
            if target is not None and target.is_dir() and target.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            np.entries[nn] = op.entries.pop(on)
            return 0

    def link(self, target, source):
        raise FuseOSError(errno.EPERM)

    def symlink(self, target, source):
        raise FuseOSError(errno.EPERM)

    # -- data ----------------------------------------------------------------------------
    def _open_node(self, n):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = n
        return fh

    def _handle(self, path, fh):
        n = self.handles.get(fh)
        return n if n is not None else self._node(path)

    def open(self, path, flags):
        with LOCK:
            n = self._node(path)
            if n.is_dir():
                raise FuseOSError(errno.EISDIR)
            if flags & os.O_TRUNC:
                n.data = bytearray()
            return self._open_node(n)

    def release(self, path, fh):
        with LOCK:
            self.handles.pop(fh, None)
            return 0

    def flush(self, path, fh):
        return 0

    def read(self, path, size, offset, fh):
        with LOCK:
            n = self._handle(path, fh)
            return bytes(n.data[offset : offset + size])

    def write(self, path, data, offset, fh):
        with LOCK:
            n = self._handle(path, fh)
            end = offset + len(data)
            if len(n.data) < offset:
                n.data.extend(b"\0" * (offset - len(n.data)))
            n.data[offset:end] = data
            n.mtime = time.time()
            return len(data)

    def truncate(self, path, length, fh=None):
        with LOCK:
            n = self._handle(path, fh) if fh else self._node(path)
            if length < len(n.data):
                del n.data[length:]
            else:
                n.data.extend(b"\0" * (length - len(n.data)))
            return 0

    def fsync(self, path, datasync, fh):
        with LOCK:
            n = self._handle(path, fh)
            if self.failing_fsyncs > 0:
                self.failing_fsyncs -= 1
                # The device failed: the unsynced writes are gone, as if evicted.
                n.data = bytearray(n.synced)
                raise FuseOSError(errno.EIO)
            n.synced = bytes(n.data)
            self.fsyncs += 1
            return 0


def serve_control(fs, sock_path):
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        with conn:
            cmd = conn.makefile("r").readline().strip()
            if cmd == "cut":
                fs.cut()
                conn.sendall(b"ok\n")
            elif cmd.startswith("fail-fsync "):
                with LOCK:
                    fs.failing_fsyncs = int(cmd.split()[1])
                conn.sendall(b"ok\n")
            elif cmd == "stats":
                conn.sendall(f"cuts={fs.cuts} fsyncs={fs.fsyncs}\n".encode())
            else:
                conn.sendall(b"unknown command\n")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: lazyfs.py MOUNTPOINT CONTROL_SOCKET")
    mountpoint, control = sys.argv[1], sys.argv[2]
    fs = LazyFS()
    threading.Thread(target=serve_control, args=(fs, control), daemon=True).start()
    FUSE(
        fs,
        mountpoint,
        foreground=True,
        nothreads=False,
        direct_io=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        default_permissions=True,
        allow_other=True,
    )


if __name__ == "__main__":
    main()
