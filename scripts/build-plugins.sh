#!/usr/bin/env bash
# Builds the plugins in plugins/ into target/plugins (Rust for wasm32-wasip2, Python with
# componentize-py, JavaScript with jco), trains the spam model (target/plugins/spam.model)
# on the SpamAssassin corpus's training groups (scripts/spam-corpus.sh), and writes each
# plugin's and data file's sha256 into the example policies in policies/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
(cd plugins && cargo build --release --target wasm32-wasip2 --target-dir ../target/plugins)
mkdir -p target/plugins/python
for py in spam_words tag; do
    componentize-py -d wit -w plugin componentize -p plugins/python/$py app \
        -o target/plugins/python/$py.wasm >/dev/null
done
mkdir -p target/plugins/js
plugins/js/tag/build.sh target/plugins/js/tag.wasm
corpus=$(scripts/spam-corpus.sh)
cargo run --release -q -p sluice -- spam train --ham "$corpus/easy-ham-1" \
    --ham "$corpus/hard-ham-1" --spam "$corpus/spam-1" -o target/plugins/spam.model
for policy in policies/*.toml; do
    python3 - "$policy" <<'PY'
import hashlib, os, re, sys
path = sys.argv[1]
text = open(path).read()
def fix(block):
    m = re.search(r'^plugin = "([^"]+)"', block, re.M)
    if not m:
        return block
    wasm = os.path.join(os.path.dirname(path), m.group(1))
    digest = hashlib.sha256(open(wasm, "rb").read()).hexdigest()
    block = re.sub(r'^sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', block, flags=re.M)
    # Data files: `name = { path = "...", sha256 = "..." }`.
    def data(m):
        f = os.path.join(os.path.dirname(path), m.group(2))
        d = hashlib.sha256(open(f, "rb").read()).hexdigest()
        return f'{m.group(1)}{{ path = "{m.group(2)}", sha256 = "{d}" }}'
    return re.sub(r'^(\w+ = )\{ path = "([^"]+)", sha256 = "[0-9a-f]*" \}', data, block, flags=re.M)
parts = re.split(r'(?=^\[\[pipeline\.step\]\])', text, flags=re.M)
open(path, "w").write("".join(fix(p) for p in parts))
print(f"{path}: sha256 updated")
PY
done
