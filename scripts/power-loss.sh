#!/usr/bin/env bash
# The power-loss simulation at length: CYCLES (default 30) power cuts under load on the FUSE
# filesystem that drops unsynced writes (tests/storage.rs; CI runs 3). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
SLUICE_POWER_CYCLES="${1:-30}" cargo test -p sluice --test storage every_acknowledged -- --nocapture 2>&1 |
    grep -E '^cycle|cycles:|test result|panicked|lost'
