#!/usr/bin/env python3
"""Whole-system relay benchmark: Postfix's smtp-source drives load into a relay that passes
every message on to smtp-sink, for Sluice and for a private Postfix instance, in one run.

Reports, per relay and message size: messages/s accepted (smtp-source's run time) and
delivered (counted at the sink), server CPU seconds per 1000 messages (from /proc, children
included), and p50/p99 end-of-data->250 latency seen by a probe client that sends one
message at a time alongside the load.

Needs: Debian's postfix package (smtp-source, smtp-sink, postfix), a release build of sluice.
Everything binds to 127.0.0.1. Run as root (Postfix's master needs it).

    python3 bench/relay_bench.py --messages 5000
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import urllib.request
import threading
import time
from benchlib import ROOT, free_port, wait_port

CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid, children=True):
    """utime+stime (+ reaped children's) of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11
    ut, st, cut, cst = (int(x) for x in fields[11:15])
    return (ut + st + ((cut + cst) if children else 0)) / CLK


def children_of(ppid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == ppid:
                out.append(int(d))
        except OSError:
            pass
    return out


class Sink:
    """smtp-sink with running counters on stdout."""

    def __init__(self, workdir):
        self.port = free_port()
        self.out = open(os.path.join(workdir, f"sink-{self.port}.out"), "w+b")
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", "-m", "1000", f"127.0.0.1:{self.port}", "1024"],
            stdout=self.out, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def count(self):
        self.out.flush()
        with open(self.out.name, "rb") as f:
            data = f.read()
        m = re.findall(rb"mesg=(\d+)", data)
        return int(m[-1]) if m else 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def plugin_path(name):
    """A plugin scripts/build-plugins.sh built (Rust, wasm32-wasip2)."""
    return os.path.join(ROOT, "target", "plugins", "wasm32-wasip2", "release", f"{name}.wasm")


def digest(path):
    """The file's SHA-256, hex, as policies name it."""
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rebase_plugins(policy, directory):
    """Points a policy's plugins at the builds in `directory` that have one of the same file
    name (a baseline's own plugins), with their digests."""
    with open(policy) as f:
        text = f.read()

    def swap(m):
        other = os.path.join(directory, os.path.basename(m.group(1)))
        if not os.path.exists(other):
            return m.group(0)
        return f'plugin = "{other}"\nsha256 = "{digest(other)}"'
    with open(policy, "w") as f:
        f.write(re.sub(r'plugin = "([^"]+)"\nsha256 = "[0-9a-f]+"', swap, text))


NOOP = plugin_path("noop")
SUBMIT_LOAD = os.path.join(ROOT, "target", "release", "submit_load")
HOOK_SINK = os.path.join(ROOT, "target", "release", "hook_sink")


def noop_policy(path, steps, stage="data"):
    """A policy with `steps` no-op plugin steps at the data (or queued) stage."""
    sha = digest(NOOP)
    with open(path, "w") as f:
        f.write('[[pipeline]]\nname = "bench"\n')
        for i in range(steps):
            f.write(f'[[pipeline.step]]\nname = "noop{i}"\nplugin = "{NOOP}"\nsha256 = "{sha}"\n'
                    f'stages = ["{stage}"]\n')


SPAM_SCORE = plugin_path("spam_score")
SPAM_MODEL = os.path.join(ROOT, "target", "plugins", "spam.model")


def spam_policy(path):
    """The spam-score plugin with the model scripts/build-plugins.sh trains; no thresholds
    (every message is relayed), X-Spam-* headers added."""
    with open(path, "w") as f:
        f.write(f'[[pipeline]]\nname = "bench"\n[[pipeline.step]]\nname = "spam"\n'
                f'plugin = "{SPAM_SCORE}"\nsha256 = "{digest(SPAM_SCORE)}"\n'
                f'[pipeline.step.data]\nmodel = {{ path = "{SPAM_MODEL}", sha256 = "{digest(SPAM_MODEL)}" }}\n')


LINK_TRACKING = plugin_path("link_tracking")


def track_policy(path):
    """The link-tracking plugin at the render stage: every recipient gets its own copy with
    signed links, an open pixel and List-Unsubscribe headers."""
    sha = digest(LINK_TRACKING)
    with open(path, "w") as f:
        f.write(f'[[pipeline]]\nname = "bench"\n[[pipeline.step]]\nname = "track"\n'
                f'plugin = "{LINK_TRACKING}"\nsha256 = "{sha}"\nstages = ["render"]\n'
                f'[pipeline.step.capabilities]\ntracking = true\n')


ARCHIVE = plugin_path("archive")


def archive_policy(path, stage="queued"):
    """The archive plugin at the queued stage (or `stage`): every message stored (zstd
    segments, search index, hash chain, synced with the queue's group commit) before its
    delivery."""
    sha = digest(ARCHIVE)
    with open(path, "w") as f:
        f.write(f'[[pipeline]]\nname = "bench"\n[[pipeline.step]]\nname = "archive"\n'
                f'plugin = "{ARCHIVE}"\nsha256 = "{sha}"\nstages = ["{stage}"]\n'
                f'[pipeline.step.capabilities]\nblobs = "bench"\n'
                f'[pipeline.step.config]\nretention_days = 7\n')


SUPPRESSION = plugin_path("suppression")
WEBHOOK = plugin_path("webhook")


def outbound_policy(path, hook_port):
    """The whole outbound chain of policies/outbound.toml that costs something per message:
    suppression at RCPT, link tracking per recipient, every event POSTed to a local webhook
    receiver. DKIM signing is the server's [[dkim]]."""
    with open(path, "w") as f:
        f.write(f'''[[pipeline]]
name = "outbound"
listeners = ["submission"]
authenticated = true

[[pipeline.step]]
name = "suppression"
plugin = "{SUPPRESSION}"
sha256 = "{digest(SUPPRESSION)}"
stages = ["rcpt", "event"]
[pipeline.step.capabilities]
kv = "suppression"
[pipeline.step.config]
stream = "outbound"

[[pipeline.step]]
name = "track"
plugin = "{LINK_TRACKING}"
sha256 = "{digest(LINK_TRACKING)}"
stages = ["render"]
[pipeline.step.capabilities]
tracking = true

[[pipeline.step]]
name = "webhook"
plugin = "{WEBHOOK}"
sha256 = "{digest(WEBHOOK)}"
stages = ["event"]
on_error = "tempfail"
timeout_ms = 10000
warm_pool = 64
[pipeline.step.capabilities]
http = ["http://127.0.0.1:{hook_port}"]
[pipeline.step.config]
url = "http://127.0.0.1:{hook_port}/events"
secret = "bench-webhook-secret-0123456789"
''')


ACCESS = plugin_path("access")
GREYLIST = plugin_path("greylist")
ANTIVIRUS = plugin_path("antivirus")
FORWARD = plugin_path("webhook_forward")


def inbound_dropped():
    """RELAY_BENCH_INBOUND_DROP=forward,archive: steps left out of the inbound chain, to see
    what each costs (without `forward` the POST is not the delivery: the message goes to
    the SMTP sink)."""
    return [d for d in os.environ.get("RELAY_BENCH_INBOUND_DROP", "").split(",") if d]


def inbound_policy(path, hook_port, clamd_port=None):
    """policies/inbound.toml's chain as it costs per message: allow/deny lists (entries that
    do not match, so every check runs), greylisting (the bench's triplets passed beforehand,
    no network whitelisting: a triplet lookup per recipient), antivirus against a real clamd
    when `clamd_port`, the archive at the queued stage, and webhook-forward in queued mode
    to the local receiver (the POST is the delivery). The host's SPF/DKIM/DMARC checks run
    too (`[authentication]`, a local DNS server)."""
    av = ""
    if clamd_port:
        av = f'''
[[pipeline.step]]
name = "antivirus"
plugin = "{ANTIVIRUS}"
sha256 = "{digest(ANTIVIRUS)}"
stages = ["data"]
timeout_ms = 30000
on_error = "tempfail"
[pipeline.step.capabilities]
tcp = ["127.0.0.1:{clamd_port}"]
[pipeline.step.config]
clamd = "127.0.0.1:{clamd_port}"
action = "reject"
'''
    text = f'''[[pipeline]]
name = "inbound"
listeners = ["mx"]

[[pipeline.step]]
name = "access"
plugin = "{ACCESS}"
sha256 = "{digest(ACCESS)}"
stages = ["connect", "mail", "rcpt", "data"]
[pipeline.step.config]
deny_clients = ["192.0.2.0/24", "2001:db8::/32"]
deny_senders = ["@spam.example", "bad@example.net"]
deny_recipients = ["nobody@bench.test"]

[[pipeline.step]]
name = "greylist"
plugin = "{GREYLIST}"
sha256 = "{digest(GREYLIST)}"
stages = ["rcpt"]
[pipeline.step.capabilities]
kv = "greylist"
[pipeline.step.config]
delay_seconds = 1
auto_whitelist_after = 0
{av}
[[pipeline.step]]
name = "archive"
plugin = "{ARCHIVE}"
sha256 = "{digest(ARCHIVE)}"
stages = ["queued"]
[pipeline.step.capabilities]
blobs = "inbound"
[pipeline.step.config]
retention_days = 7

[[pipeline.step]]
name = "forward"
plugin = "{FORWARD}"
sha256 = "{digest(FORWARD)}"
stages = ["queued"]
timeout_ms = 35000
[pipeline.step.capabilities]
http = ["http://127.0.0.1:{hook_port}"]
[pipeline.step.config]
url = "http://127.0.0.1:{hook_port}/incoming"
secret = "bench-forward-secret-0123456789"
'''
    drop = inbound_dropped()
    if drop:
        head, *steps = text.split("\n[[pipeline.step]]\n")
        steps = [b for b in steps if not any(b.startswith(f'name = "{d}"') for d in drop)]
        text = "\n[[pipeline.step]]\n".join([head] + steps)
    with open(path, "w") as f:
        f.write(text)


class Dns:
    """A DNS server on 127.0.0.1 (dnslib, UDP and TCP) for the host's SPF and DMARC checks of
    the bench's mail: bench.test publishes SPF for loopback and DMARC p=none; other names
    do not exist."""

    ZONE = """
bench.test. 3600 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.bench.test. 3600 IN TXT "v=DMARC1; p=none"
"""

    def __init__(self):
        try:
            from dnslib.server import DNSServer
            from dnslib.zoneresolver import ZoneResolver
        except ImportError:
            sys.exit("the inbound bench needs dnslib: python3 -m pip install dnslib")
        self.port = free_port()
        zone = self.ZONE
        if DKIM_KEY:
            r = DKIM_KEY["record"]
            parts = " ".join(f'"{r[i:i + 250]}"' for i in range(0, len(r), 250))
            zone += f"s1._domainkey.bench.test. 3600 IN TXT {parts}\n"
        resolver = ZoneResolver(zone)
        self.servers = [DNSServer(resolver, port=self.port, address="127.0.0.1", tcp=tcp,
                                  logger=_QuietDnsLog()) for tcp in (False, True)]
        for srv in self.servers:
            srv.start_thread()

    def stop(self):
        for srv in self.servers:
            srv.stop()


class _QuietDnsLog:
    def __getattr__(self, name):
        return lambda *a, **k: None


EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class Clamd:
    """A real clamd (Debian clamav-daemon) on 127.0.0.1 with one signature, the EICAR file's
    MD5 (`sigtool --md5`): no download, the scanning work per message is clamd's own."""

    def __init__(self, workdir, tmpfs=False):
        for tool in ("clamd", "sigtool"):
            if not shutil.which(tool):
                sys.exit(f"{tool} not found: apt-get install clamav-daemon")
        d = os.path.join(workdir, "clamd")
        db = os.path.join(d, "db")
        os.makedirs(db)
        eicar = os.path.join(d, "eicar.com")
        with open(eicar, "w") as f:
            f.write(EICAR)
        md5 = subprocess.run(["sigtool", "--md5", eicar], capture_output=True, text=True,
                             check=True).stdout.strip()
        md5_hex, size = md5.split(":")[:2]
        with open(os.path.join(db, "bench.hdb"), "w") as f:
            f.write(f"{md5_hex}:{size}:Bench-EICAR\n")
        self.port = free_port()
        # clamd spools each stream and the mail parts it takes apart to files in its
        # TemporaryDirectory (a directory and files per message): on the disk's ext4 by
        # default, or with `tmpfs` on a tmpfs (/dev/shm), the usual tuning for mail.
        self.tmp = tempfile.mkdtemp(prefix="clamd-", dir="/dev/shm") if tmpfs else None
        conf = os.path.join(d, "clamd.conf")
        with open(conf, "w") as f:
            f.write(f"Foreground yes\nTCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
                    f"DatabaseDirectory {db}\nLogFile {d}/clamd.log\n"
                    f"MaxThreads 20\nStreamMaxLength 100M\n"
                    + (f"TemporaryDirectory {self.tmp}\n" if self.tmp else ""))
        self.proc = subprocess.Popen(["clamd", "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, limit=120)

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def smtp_reply(f):
    """The last line of one SMTP reply read from the file `f` (multi-line replies skipped)."""
    while True:
        line = f.readline()
        if not line or line[3:4] != b"-":
            return line


def pass_greylist(port, pairs):
    """Passes greylisting for each (sender, recipient): a first RCPT (451), a retry after
    the delay (250)."""
    def attempt(sender, rcpt):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        f = s.makefile("rb")

        def reply():
            return smtp_reply(f)
        reply()
        s.sendall(b"EHLO warmup.bench.test\r\n")
        reply()
        s.sendall(f"MAIL FROM:<{sender}>\r\n".encode())
        reply()
        s.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
        r = reply()
        s.sendall(b"QUIT\r\n")
        s.close()
        return r
    for sender, rcpt in pairs:
        attempt(sender, rcpt)
    time.sleep(1.5)
    for sender, rcpt in pairs:
        r = attempt(sender, rcpt)
        if not r.startswith(b"250"):
            sys.exit(f"greylisting did not pass {sender} -> {rcpt}: {r!r}")


class Hooks:
    """The local webhook receiver (target/release/hook_sink): 204 to every POST, counted."""

    def __init__(self):
        self.port = free_port()
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([HOOK_SINK, str(self.port)], stdout=self.out)
        wait_port(self.port)

    @property
    def count(self):
        self.out.seek(0)
        lines = self.out.read().split()
        return int(lines[-1]) if lines else 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def rsa_key(path):
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", path], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(path, 0o644)


def html_message(size):
    """A newsletter of about `size` bytes: text and HTML parts, ten links (LF line ends, as
    smtp-source -F wants)."""
    links = "".join(f'<p><a href="https://shop.example/item/{i}?utm=news&amp;id={i}">Item {i}</a></p>\n'
                    for i in range(10))
    head = ("From: News <news@bench.test>\nTo: rcpt@bench.test\nSubject: This week\n"
            "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"b\"\n\n"
            "--b\nContent-Type: text/plain; charset=utf-8\n\nSee https://shop.example/ for this week.\n"
            "--b\nContent-Type: text/html; charset=utf-8\n\n<html><body>\n" + links)
    tail = "</body></html>\n--b--\n"
    filler = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 1 + "</p>\n"
    body = head
    while len(body) + len(tail) < size:
        body += filler
    return body + tail


DKIM_KEY = {}


def dkim_key(workdir):
    """An RSA-2048 key for bench.test (selector s1): the private key's path and the DNS
    record publishing it, made once per run."""
    if not DKIM_KEY:
        path = os.path.join(workdir, "bench-dkim.pem")
        rsa_key(path)
        der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                             capture_output=True, check=True).stdout
        import base64
        p = base64.b64encode(der).decode()
        DKIM_KEY.update(path=path, record=f"v=DKIM1; k=rsa; p={p}")
    return DKIM_KEY


def signed_message(workdir, size):
    """A plain-text message of about `size` bytes from bench.test, DKIM-signed (dkimpy,
    RSA-SHA256, relaxed/relaxed) with the key `Dns` publishes, LF line ends for
    smtp-source -F: the inbound chain's DKIM and DMARC checks verify a real signature."""
    try:
        import dkim
    except ImportError:
        sys.exit("the inbound bench signs with dkimpy: python3 -m pip install dkimpy")
    key = dkim_key(workdir)
    head = ("From: Load <load@bench.test>\r\nTo: rcpt@bench.test\r\nSubject: inbound bench\r\n"
            "Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <inbound-bench@bench.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = ""
    while len(head) + len(body) + 500 < size:
        body += line
    msg = (head + body).encode()
    sig = dkim.sign(msg, b"s1", b"bench.test", open(key["path"], "rb").read(),
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    path = os.path.join(workdir, f"signed-{size}.eml")
    with open(path, "wb") as f:
        f.write((sig + msg).replace(b"\r\n", b"\n"))
    return path


class Sluice:
    name = "sluice"

    def __init__(self, workdir, sink_port, binary, steps=0, delivery="", plugins=None,
                 instances=None):
        self.dir = os.path.join(workdir, "sluice")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        sub = free_port()
        self.submission = sub
        self.hooks = None
        self.dns = None
        self.clamd = None
        self.http = None
        conf = os.path.join(self.dir, "sluice.toml")
        policies = ""
        extra = ""
        if steps == "spam":
            spam_policy(os.path.join(self.dir, "policy.toml"))
            policies = 'policies = "policy.toml"'
        elif steps == "outbound":
            self.hooks = Hooks()
            outbound_policy(os.path.join(self.dir, "policy.toml"), self.hooks.port)
            policies = 'policies = "policy.toml"'
            with open(os.path.join(self.dir, "tracking.key"), "w") as k:
                k.write("bench-tracking-key-0123456789abcdef0123456789\n")
            key = os.path.join(self.dir, "dkim.pem")
            rsa_key(key)
            http = free_port()
            self.http = http
            extra = (f'[http]\nbind = "127.0.0.1:{http}"\n\n[tracking]\n'
                     f'base_url = "https://t.bench.test"\nkey = "tracking.key"\n\n'
                     f'[[dkim]]\ndomain = "bench.test"\nselector = "s1"\nkey = "{key}"\n\n')
        elif steps in ("inbound", "inbound-av", "inbound-av@shm"):
            self.hooks = Hooks()
            self.dns = Dns()
            self.clamd = (Clamd(workdir, tmpfs=steps.endswith("@shm"))
                          if steps.startswith("inbound-av") else None)
            inbound_policy(os.path.join(self.dir, "policy.toml"), self.hooks.port,
                           self.clamd.port if self.clamd else None)
            policies = 'policies = "policy.toml"'
            http = free_port()
            self.http = http
            extra = f'[http]\nbind = "127.0.0.1:{http}"\n\n[authentication]\n\n'
            delivery += f'nameservers = ["127.0.0.1:{self.dns.port}"]\n'
        elif steps == "queued":
            noop_policy(os.path.join(self.dir, "policy.toml"), 1, stage="queued")
            policies = 'policies = "policy.toml"'
        elif steps in ("archive", "archive@data"):
            archive_policy(os.path.join(self.dir, "policy.toml"),
                           "data" if steps == "archive@data" else "queued")
            policies = 'policies = "policy.toml"'
        elif steps == "track":
            track_policy(os.path.join(self.dir, "policy.toml"))
            policies = 'policies = "policy.toml"'
            with open(os.path.join(self.dir, "tracking.key"), "w") as k:
                k.write("bench-tracking-key-0123456789abcdef0123456789\n")
            http = free_port()
            self.http = http
            extra = (f'[http]\nbind = "127.0.0.1:{http}"\n\n[tracking]\n'
                     f'base_url = "https://t.bench.test"\nkey = "tracking.key"\n\n')
        elif steps:
            noop_policy(os.path.join(self.dir, "policy.toml"), steps)
            policies = 'policies = "policy.toml"'
        if plugins and policies:
            rebase_plugins(os.path.join(self.dir, "policy.toml"), plugins)
        if instances and policies:
            all_instances(os.path.join(self.dir, "policy.toml"), instances)
        with open(conf, "w") as f:
            f.write(f'''hostname = "sluice.bench.test"
{policies}
data_dir = "{self.dir}/data"
relay_domains = ["bench.test"]

[[listener]]
name = "mx"
bind = "127.0.0.1:{self.port}"
role = "mx"
max_connections = 1000

[[listener]]
name = "submission"
bind = "127.0.0.1:{sub}"
role = "submission"
max_connections = 1000
max_recipients = 1000

{extra}[delivery]
max_connections_per_destination = 20
{delivery}
[[route]]
domain = "bench.test"
via = "smarthost"
host = "127.0.0.1:{sink_port}"
tls = "none"
''')
        self.log = open(os.path.join(self.dir, "sluice.log"), "w")
        if steps == "outbound":
            subprocess.run([binary, "--config", conf, "user", "add", "bench"], input="pw\n",
                           text=True, check=True, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen([binary, "--config", conf, "serve"],
                                     stdout=self.log, stderr=self.log,
                                     env=dict(os.environ, RUST_LOG="warn"))
        wait_port(self.port)
        # RELAY_BENCH_PERF=DIR: profile the server while it runs (perf record, one file per
        # relay in DIR), for finding where its CPU goes under load.
        # RELAY_BENCH_PERF_STAT=DIR: count its context switches, page faults, memory-map,
        # sync and write system calls and TLB flushes instead (perf stat, a text file per relay in DIR).
        self.perf = None
        perf_dir = os.environ.get("RELAY_BENCH_PERF")
        stat_dir = os.environ.get("RELAY_BENCH_PERF_STAT")
        if perf_dir:
            out = os.path.join(perf_dir, f"sluice-{steps}-{self.proc.pid}.data")
            # RELAY_BENCH_PERF_ARGS: other perf record options (for example events with
            # call graphs: "-e syscalls:sys_enter_futex --call-graph dwarf").
            extra = os.environ.get("RELAY_BENCH_PERF_ARGS", "-F 1999").split()
            self.perf = subprocess.Popen(["perf", "record", *extra, "-o", out, "-p",
                                          str(self.proc.pid)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        elif stat_dir:
            out = os.path.join(stat_dir, f"sluice-{steps}-{self.proc.pid}.txt")
            events = ",".join([
                "context-switches", "cpu-migrations", "page-faults", "tlb:tlb_flush",
                "syscalls:sys_enter_madvise", "syscalls:sys_enter_mmap",
                "syscalls:sys_enter_munmap", "syscalls:sys_enter_mprotect",
                "syscalls:sys_enter_ioctl", "syscalls:sys_enter_futex",
                "syscalls:sys_enter_sched_yield", "syscalls:sys_enter_fdatasync",
                "syscalls:sys_enter_fsync", "syscalls:sys_enter_sync_file_range",
                "syscalls:sys_enter_pwrite64", "syscalls:sys_enter_write"])
            self.perf = subprocess.Popen(["perf", "stat", "-e", events, "-o", out, "-p",
                                          str(self.proc.pid)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        if self.perf:
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait()
        if self.http:
            # How many instances each step created (fresh steps: one per call).
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
                    commits = {}
                    for line in r.read().decode().splitlines():
                        if line.startswith("sluice_plugin_instances_total{"):
                            print("  " + line, file=sys.stderr)
                        m = re.match(r"sluice_queue_commit_(seconds|writes)_(sum|count) (\S+)", line)
                        if m:
                            commits[m.group(1) + m.group(2)] = float(m.group(3))
                    # The queue's group commits: how many, writes per commit, time per commit.
                    if commits.get("secondscount"):
                        n = commits["secondscount"]
                        print(f"  queue group commits: {n:.0f}, "
                              f"{commits.get('writessum', 0) / n:.1f} writes and "
                              f"{commits.get('secondssum', 0) / n * 1000:.2f} ms each",
                              file=sys.stderr)
            except OSError as e:
                print(f"  metrics: {e}", file=sys.stderr)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print("sluice: not stopped 60 s after SIGTERM; killed", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()
        # A relay that logged warnings or errors under load is worth a look: count them
        # and show the first few.
        self.log.close()
        with open(self.log.name, errors="replace") as f:
            bad = [line.rstrip() for line in f if " WARN " in line or " ERROR " in line]
        if bad:
            print(f"  sluice logged {len(bad)} warnings or errors, first:", file=sys.stderr)
            for line in bad[:3]:
                print("    " + line[:300], file=sys.stderr)
        if self.hooks:
            self.hooks.stop()
        if self.dns:
            self.dns.stop()
        if self.clamd:
            self.clamd.stop()


class OpenDkim:
    """OpenDKIM as Postfix's signing milter (RSA-2048, mail from bench.test, from loopback)."""

    def __init__(self, workdir):
        # OpenDKIM refuses a configuration under a folder others may write (/tmp).
        self.port = free_port()
        self.dir = f"/var/lib/sluice-bench/opendkim-{self.port}"
        os.makedirs("/var/lib/sluice-bench", mode=0o755, exist_ok=True)
        os.makedirs(self.dir, exist_ok=True)
        shutil.chown(self.dir, "opendkim")
        key = os.path.join(self.dir, "s1.private")
        rsa_key(key)
        shutil.chown(key, "opendkim")
        os.chmod(key, 0o600)
        conf = os.path.join(self.dir, "opendkim.conf")
        with open(conf, "w") as f:
            f.write(f"""Syslog no
Mode s
Domain bench.test
Selector s1
KeyFile {key}
Socket inet:{self.port}@127.0.0.1
InternalHosts 127.0.0.1
Canonicalization relaxed/relaxed
UserID opendkim
PidFile {self.dir}/opendkim.pid
""")
        self.proc = subprocess.Popen(["opendkim", "-f", "-x", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Postfix:
    """A private Postfix instance: its own config folder, queue and loopback port; with
    `milter`, OpenDKIM signs what it relays."""
    name = "postfix"

    def __init__(self, workdir, sink_port, dkim=False):
        self.milter = OpenDkim(workdir) if dkim else None
        self.dir = os.path.join(workdir, "postfix")
        conf = os.path.join(self.dir, "conf")
        os.makedirs(conf, exist_ok=True)
        self.conf = conf
        self.port = free_port()
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
daemon_directory = /usr/lib/postfix/sbin
command_directory = /usr/sbin
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
relay_domains = bench.test
relayhost = [127.0.0.1]:{sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_tls_security_level = none
smtpd_tls_security_level = none
local_transport = error:no local delivery
alias_maps =
alias_database =
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
default_process_limit = 100
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
""")
            if self.milter:
                f.write(f"smtpd_milters = inet:127.0.0.1:{self.milter.port}\n"
                        "milter_default_action = tempfail\n")
        with open("/etc/postfix/master.cf") as f:
            master = f.read()
        lines = []
        for line in master.splitlines():
            if re.match(r"^smtp\s+inet\s", line):
                line = f"127.0.0.1:{self.port} inet n - n - - smtpd"
            elif re.match(r"^\S+\s+(unix|inet|fifo|pass|unix-dgram)\s", line):
                cols = line.split(None, 7)
                if len(cols) >= 8:
                    cols[4] = "n"  # no chroot: the private queue has no chroot files
                    line = "  ".join(cols[:7]) + "  " + cols[7]
                elif len(cols) == 7:
                    cols[4] = "n"
                    line = "  ".join(cols)
            lines.append(line)
        with open(os.path.join(conf, "master.cf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        os.makedirs(os.path.join(self.dir, "queue"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        r = subprocess.run(["postfix", "-c", conf, "check"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("postfix check: " + r.stderr)
        subprocess.run(["postfix", "-c", conf, "start"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
            self.master = int(f.read().split()[0])

    def cpu(self):
        total = proc_cpu(self.master)
        for pid in children_of(self.master):
            try:
                total += proc_cpu(pid, children=False)
            except OSError:
                pass
        if self.milter:
            total += self.milter.cpu()
        return total

    def stop(self):
        subprocess.run(["postfix", "-c", self.conf, "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + 30
        while time.time() < end and os.path.exists(f"/proc/{self.master}"):
            time.sleep(0.1)
        if self.milter:
            self.milter.stop()


class Direct:
    """No relay: smtp-source straight into smtp-sink, the ceiling of this machine."""
    name = "direct"

    def __init__(self, workdir, sink_port):
        self.port = sink_port

    def cpu(self):
        return 0.0

    def stop(self):
        pass


def probe(port, size, stop, latencies, sent):
    """Sends one message at a time over one connection, timing end-of-data -> 250."""
    body = b"Subject: probe\r\n\r\n" + (b"x" * 78 + b"\r\n") * max(1, size // 80) + b".\r\n"
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")

        def reply():
            return smtp_reply(f)

        reply()
        s.sendall(b"EHLO probe.bench.test\r\n")
        reply()
        while not stop.is_set():
            s.sendall(b"MAIL FROM:<probe@bench.test>\r\nRCPT TO:<probe@bench.test>\r\nDATA\r\n")
            r1, r2, r3 = reply(), reply(), reply()
            if not r3.startswith(b"354"):
                break
            s.sendall(body[:-3])
            t = time.perf_counter()
            s.sendall(b".\r\n")
            r = reply()
            latencies.append(time.perf_counter() - t)
            if not r.startswith(b"250"):
                break
            sent[0] += 1
        s.sendall(b"QUIT\r\n")
        s.close()
    except OSError as e:
        print("probe:", e, file=sys.stderr)


def step_costs(http_port):
    """Mean wall-clock time per call of each plugin step and stage, and of end of data to
    the reply, from the server's /metrics."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    sums, counts = {}, {}
    for line in text.splitlines():
        m = re.match(r'sluice_plugin_call_seconds_(sum|count)\{chain="[^"]*",stage="([^"]*)",step="([^"]*)"\} (\S+)', line)
        if m:
            (sums if m.group(1) == "sum" else counts)[f"{m.group(3)}@{m.group(2)}"] = float(m.group(4))
        m = re.match(r'sluice_smtp_end_of_data_seconds_(sum|count) (\S+)', line)
        if m:
            (sums if m.group(1) == "sum" else counts)["end-of-data"] = float(m.group(2))
    return {k: sums[k] / counts[k] * 1000 for k in sums if counts.get(k)}


def all_instances(path, mode):
    """Every step of a policy file in `mode` instances (`instances = "warm"` or "fresh")."""
    out = []
    for line in open(path).read().splitlines():
        if line.startswith("instances ="):
            continue
        out.append(line)
        if line.startswith("[[pipeline.step]]"):
            out.append(f'instances = "{mode}"')
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def run_one(kind, workdir, size, n, sessions, binary, baseline=None, message_file=None,
            recipients=1, baseline_plugins=None):
    sink = Sink(workdir)
    label = kind
    make = Sluice
    mode = None
    if kind.endswith("+archive-warm"):
        # The older name of `sluice+archive~w`, kept for the commands in bench/RESULTS.md.
        kind = kind[:-len("-warm")] + "~w"
    if kind.endswith("~w") or re.fullmatch(r"(sluice|baseline)\+\d+w", kind):
        # Any sluice row with every step in warm instances (`sluice+6w` is `sluice+6~w`).
        kind, mode = (kind[:-2] if kind.endswith("~w") else kind[:-1]), "warm"
    elif kind.endswith("~f"):
        # Any sluice row with every step in a fresh instance per call.
        kind, mode = kind[:-2], "fresh"
    if mode:
        inner = make
        make = lambda *a, **k: inner(*a, instances=mode, **k)
    if kind == "baseline" or kind.startswith("baseline+"):
        # The older binary (and its plugins, --baseline-plugins) in any setup below.
        kind, binary = "sluice" + kind[len("baseline"):], baseline
        inner_base = make
        make = lambda *a, **k: inner_base(*a, plugins=baseline_plugins, **k)
    if kind == "sluice":
        server = make(workdir, sink.port, binary)
    elif kind == "sluice-history":
        # The same server without the event history (`event_history = "0s"`).
        server = make(workdir, sink.port, binary, delivery='event_history = "0s"\n')
    elif kind == "sluice+spam":
        server = make(workdir, sink.port, binary, steps="spam")
    elif kind == "sluice+track":
        server = make(workdir, sink.port, binary, steps="track")
    elif kind == "sluice+outbound":
        server = make(workdir, sink.port, binary, steps="outbound")
    elif kind == "sluice+queued":
        server = make(workdir, sink.port, binary, steps="queued")
    elif kind in ("sluice+archive", "sluice+archive@data"):
        # `@data`: the archive step at the data stage (before the 250) instead of queued.
        server = make(workdir, sink.port, binary, steps=kind.split("+")[1])
    elif kind in ("sluice+inbound", "sluice+inbound-av", "sluice+inbound-av@shm"):
        # `@shm`: clamd's TemporaryDirectory on a tmpfs.
        server = make(workdir, sink.port, binary, steps=kind.split("+")[1])
        pass_greylist(server.port, [("load@bench.test", "rcpt@bench.test"),
                                    ("probe@bench.test", "probe@bench.test")])
    elif kind == "postfix+opendkim":
        server = Postfix(workdir, sink.port, dkim=True)
    elif kind.startswith("sluice+"):
        server = make(workdir, sink.port, binary, steps=int(kind.split("+")[1]))
    elif kind == "postfix":
        server = Postfix(workdir, sink.port)
    else:
        server = Direct(workdir, sink.port)
    try:
        cpu0 = server.cpu()
        clamd = getattr(server, "clamd", None)
        clamd_cpu0 = clamd.cpu() if clamd else 0.0
        stop = threading.Event()
        latencies, sent = [], [0]
        t = threading.Thread(target=probe, args=(server.port, size, stop, latencies, sent))
        t0 = time.perf_counter()
        t.start()
        payload = ["-F", message_file] if message_file else ["-l", str(size)]
        if kind == "sluice+outbound":
            # An application's way in: STARTTLS and AUTH on the submission port.
            subprocess.run([SUBMIT_LOAD, f"127.0.0.1:{server.submission}", "bench", "pw",
                            str(sessions), str(n), str(recipients), message_file],
                           check=True, stdout=subprocess.DEVNULL)
        else:
            subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(n), *payload,
                            "-r", str(recipients),
                            "-f", "load@bench.test", "-t", "rcpt@bench.test",
                            f"127.0.0.1:{server.port}"], check=True)
        accepted_s = time.perf_counter() - t0
        stop.set()
        t.join()
        total = n + sent[0]
        # Per-recipient rendering sends each recipient its own transaction.
        per_recipient = kind in ("sluice+track", "sluice+outbound")
        expected = n * recipients + sent[0] if per_recipient else total
        # Inbound mail is delivered by its POST to the application's endpoint.
        inbound = kind.startswith("sluice+inbound")
        forwarding = "forward" not in inbound_dropped()
        count = (lambda: server.hooks.count) if inbound and forwarding else sink.count
        deadline = time.time() + 600
        while count() < expected and time.time() < deadline:
            time.sleep(0.02)
        delivered_s = time.perf_counter() - t0
        got = count()
        cpu = server.cpu() - cpu0
        clamd_cpu = clamd.cpu() - clamd_cpu0 if clamd else 0.0
        hooks = getattr(server, "hooks", None)
        if getattr(server, "http", None):
            costs = step_costs(server.http)
            print(f"{kind}: mean ms per call: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in sorted(costs.items())), file=sys.stderr)
        if hooks and not inbound:
            # Events still in the outbox are sent after the run; how many arrived by now.
            print(f"{kind}: {hooks.count} webhook events received", file=sys.stderr)
    finally:
        server.stop()
        sink.stop()
    lat = sorted(latencies)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")
    return {
        "kind": label, "size": size, "n": total, "delivered": got, "recipients": recipients,
        "cpu_per_recipient_ms": cpu / (n * recipients + sent[0]) * 1000,
        "accepted_rate": total / accepted_s, "delivered_rate": got / delivered_s,
        "cpu_per_1000": cpu / total * 1000, "p50": p(0.50), "p99": p(0.99),
        "probe": len(lat), "clamd_cpu_per_1000": clamd_cpu / total * 1000,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--sizes", default="5000,50000")
    ap.add_argument("--relays", default="direct,sluice,sluice+6,postfix",
                    help="comma-separated: direct, sluice, sluice+N (N no-op plugin steps), sluice+Nw (the same in warm instances), any sluice row with a ~w suffix (every step in warm instances) or ~f (every step in a fresh instance per call; without a suffix a step runs as its policy and plugin say), postfix, "
                         "sluice+spam (the spam-score plugin and model), "
                         "sluice+track (link tracking, per-recipient render), "
                         "sluice+archive (the archive plugin at the queued stage; "
                         "sluice+archive@data: at the data stage), "
                         "sluice+archive-warm (sluice+archive~w), "
                         "sluice+queued (one no-op step at the queued stage), "
                         "sluice+outbound (STARTTLS+AUTH submission, suppression, tracking, "
                         "DKIM RSA-2048, webhook events; needs --html), "
                         "postfix+opendkim (Postfix with OpenDKIM signing as a milter), "
                         "sluice+inbound (SPF/DKIM/DMARC checks, allow/deny lists, greylisting "
                         "passed, archive, webhook-forward queued to a local receiver), "
                         "sluice+inbound-av (the same with antivirus, a real clamd; its CPU "
                         "in its own column; sluice+inbound-av@shm: clamd's temporary files "
                         "on a tmpfs), "
                         "baseline (another sluice binary, --baseline), baseline+X (it in the setup sluice+X)")
    ap.add_argument("--message-file", help="send this message (headers and body, LF line ends) "
                    "instead of smtp-source's generated text; --sizes is then ignored")
    ap.add_argument("--baseline", help="path of an older sluice binary to compare with")
    ap.add_argument("--baseline-plugins", help="a folder of plugin builds (.wasm) that the "
                    "baseline relays use instead of target/plugins' (same file names)")
    ap.add_argument("--recipients", type=int, default=1, help="recipients per message")
    ap.add_argument("--html", action="store_true",
                    help="send a newsletter with ten links (text and HTML) of each --sizes size")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install postfix")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-bench",
                        "--bin", "sluice", "--bin", "submit_load", "--bin", "hook_sink"], cwd=ROOT, check=True)
        if "sluice+" in a.relays:
            subprocess.run(["scripts/build-plugins.sh"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "sluice")
    rows = []
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.message_file:
        sizes = [os.path.getsize(a.message_file)]
    for size in sizes:
        message_file = a.message_file
        html_dir = None
        if a.html:
            html_dir = tempfile.mkdtemp()
            message_file = os.path.join(html_dir, "news.eml")
            with open(message_file, "w") as f:
                f.write(html_message(size))
        signed_dir = None
        if "sluice+inbound" in a.relays and not message_file:
            # Every relay of the run gets the same DKIM-signed message.
            signed_dir = tempfile.mkdtemp()
            message_file = signed_message(signed_dir, size)
        for kind in a.relays.split(","):
            with tempfile.TemporaryDirectory() as workdir:
                os.chmod(workdir, 0o755)
                r = run_one(kind, workdir, size, a.messages, a.sessions, binary, a.baseline,
                            message_file, a.recipients, a.baseline_plugins)
                rows.append(r)
                print(f"{kind} {size} B: {r}", file=sys.stderr)
        if html_dir:
            shutil.rmtree(html_dir)
        if signed_dir:
            shutil.rmtree(signed_dir)
            DKIM_KEY.clear()
    print(f"| relay | size | recipients | messages | accepted msg/s | delivered msg/s | CPU s / 1000 msgs | CPU ms / recipient | clamd CPU s / 1000 | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kind']} | {r['size'] // 1000} KB | {r['recipients']} | {r['delivered']}/{r['n']} | {r['accepted_rate']:.0f} | "
              f"{r['delivered_rate']:.0f} | {r['cpu_per_1000']:.2f} | {r['cpu_per_recipient_ms']:.3f} | "
              f"{r['clamd_cpu_per_1000']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} |")


if __name__ == "__main__":
    main()
