#!/usr/bin/env bash
# Installs what is needed, builds Sluice in release mode and starts it on the embedded
# default configuration (mx on 127.0.0.1:2525, submission on 127.0.0.1:2587, data in ./data).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release -p sluice -- serve "$@"
