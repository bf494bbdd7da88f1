#!/usr/bin/env bash
# Scores the whole single-turn BFCL V4 set (13 categories, 3,641 entries) from a results file,
# with a release build, and reports the time. The results are the gold answers recorded in the
# agreement fixture (stages/fixtures/bfcl/agreement.jsonl.gz), written in BFCL's result format.
# Target: under 1 s on the dev machine's 2 cores.
# Usage: bash bench/bfcl/run.sh [RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-10}
data=$root/target/test-assets/bfcl-data
bash "$root/scripts/fetch-bfcl.sh" "$data"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p forge-stages --example bfcl_score
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$root/stages/fixtures/bfcl/agreement.jsonl.gz" "$tmp/results.jsonl" <<'PY'
import gzip, json, sys
with gzip.open(sys.argv[1], "rt") as f, open(sys.argv[2], "w") as out:
    next(f)  # header
    for line in f:
        case = json.loads(line)
        if case["mutation"] == "gold":
            out.write(json.dumps({"id": case["id"], "result": case["output"]}) + "\n")
PY
echo "results: $(wc -l < "$tmp/results.jsonl") lines, $(du -h "$tmp/results.jsonl" | cut -f1)"
start=$(date +%s.%N)
"$root/target/release/examples/bfcl_score" "$data" "$tmp/results.jsonl" 1 >/dev/null
end=$(date +%s.%N)
echo "one whole process (start, score, exit): $(python3 -c "print(f'{($end - $start) * 1000:.0f} ms')")"
"$root/target/release/examples/bfcl_score" "$data" "$tmp/results.jsonl" "$runs"
