#!/usr/bin/env bash
# 60,000 synth rows through normalize → verify → split → format, timed by forge itself: each
# stage's duration is read back from forge.lock (stage work only, not forge's own bookkeeping).
# Usage: bash bench/data/run.sh [ROWS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rows=${1:-60000}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
ws=$(mktemp -d)
trap 'rm -rf "$ws"' EXIT
mkdir -p "$ws/scripts"
cp "$root/scripts/fetch-tokenizer.sh" "$ws/scripts/"
sed "s/rows: 2000/rows: $rows/" "$root/forge.yaml" > "$ws/forge.yaml"
"$root/target/release/forge" -f "$ws/forge.yaml" run >/dev/null
python3 - "$ws" <<'PY'
import json, sys
ws = sys.argv[1]
lock = json.load(open(f"{ws}/forge.lock"))["stages"]
def metrics(stage):
    return json.load(open(f"{ws}/artifacts/{stage}/metrics.json"))
rows_in = {s: metrics(s).get("rows_in") for s in ("normalize", "verify")}
rows_in["split"] = metrics("split").get("rows_in")
fm = metrics("format")
tokens = sum(v["tokens"] for v in fm["splits"].values())
print(f"| stage | rows in | seconds | rows/s |")
print(f"|---|---:|---:|---:|")
total = 0.0
for s in ("synth", "normalize", "verify", "split", "format"):
    d = lock[s]["duration_s"]
    n = metrics(s).get("rows") if s == "synth" else rows_in.get(s, sum(v["rows_in"] for v in fm["splits"].values()))
    if s in ("normalize", "verify", "split"):
        total += d
    print(f"| {s} | {n} | {d:.2f} | {n / d:,.0f} |")
print(f"\nnormalize + verify + split: {total:.2f} s (target < 3 s)")
print(f"format: {tokens:,} tokens in {lock['format']['duration_s']:.2f} s = {tokens / lock['format']['duration_s'] / 1e6:.2f} M tokens/s (target >= 1 M)")
PY
