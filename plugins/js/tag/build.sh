#!/usr/bin/env bash
# Builds tag.js into a WebAssembly component at $1 with jco/componentize-js.
#
# The npm packages (pinned in package.json) are installed once into a cache folder outside
# the repository, $SLUICE_JS_CACHE (default ~/.cache/sluice-js); only the npm registry is
# needed. `-d all` leaves out every WASI feature the plugin does not use (clocks, random,
# stdio, http), so the component imports only the Sluice interfaces.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:?usage: build.sh OUTPUT.wasm}"
cache="${SLUICE_JS_CACHE:-$HOME/.cache/sluice-js}"
mkdir -p "$cache"
if ! cmp -s "$here/package.json" "$cache/package.json" || [ ! -x "$cache/node_modules/.bin/jco" ]; then
    cp "$here/package.json" "$cache/package.json"
    (cd "$cache" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
"$cache/node_modules/.bin/jco" componentize "$here/tag.js" --wit "$root/wit" -n plugin -d all \
    -o "$out" >/dev/null
