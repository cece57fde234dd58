#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, and the workspace tests (unit tests and
# the end-to-end tests in tests/, which start real servers on 127.0.0.1). Ends with one
# summary line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --workspace --all-targets -- -D warnings)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# Plugins' own unit tests (their workspace, built for the host here).
(cd plugins && cargo test --no-fail-fast -p access -p antivirus -p dmarc-reports -p link-tracking -p sender-policy -p send-window -p webhook -p webhook-forward -p sluice-plugin-sdk --features sluice-plugin-sdk/http 2>&1) | tee -a "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
