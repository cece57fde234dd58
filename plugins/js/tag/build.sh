#!/usr/bin/env bash
# Builds tag.js into a WebAssembly component at $1 with componentize-js (StarlingMonkey).
#
# The npm packages pinned in package.json/package-lock.json are installed with `npm ci` into
# a cache folder outside the repository, $SLUICE_JS_CACHE (default ~/.cache/sluice-js), in a
# subfolder named after the lockfile's hash, so a version bump never reuses a stale install.
# Only the npm registry is needed (never pass --aot: weval would download a binary from GitHub),
# and nothing once the cache is there (or ~/.npm holds the tarballs: `npm ci --offline` works).
#
# `-d stdio random clocks http fetch-event` leaves out every WASI feature, so the component
# imports only sluice:plugin/{types,host}. Without `clocks`/`random`, Date.now() is frozen at
# build time and Math.random() repeats the same sequence: enable them if a plugin needs them
# (SLUICE_JS_DISABLE="stdio http fetch-event" -> imports wasi:clocks, random, io, cli/stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:?usage: build.sh OUTPUT.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
disable="${SLUICE_JS_DISABLE:-stdio random clocks http fetch-event}"
key="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)"
cache="${SLUICE_JS_CACHE:-$HOME/.cache/sluice-js}/$key"
if [ ! -x "$cache/node_modules/.bin/componentize-js" ]; then
    rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
    cp "$here/package.json" "$here/package-lock.json" "$cache.tmp/"
    (cd "$cache.tmp" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null)
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
mkdir -p "$(dirname "$out")"
# componentize-js lets the engine (under wizer) read only the working directory: run from here.
cd "$here"
# shellcheck disable=SC2086
"$cache/node_modules/.bin/componentize-js" tag.js --wit "$root/wit" -n plugin \
    -d $disable -o "$out" >/dev/null
