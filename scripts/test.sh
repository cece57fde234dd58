#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, and the workspace tests (unit tests and
# the end-to-end tests in tests/, which start real servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
