#!/usr/bin/env bash
# The peer benchmark in one command: our worker against DuckDB and Polars on the same input,
# 1 core and all cores, with verify.py checksums and peak RSS.
#
# Usage: bench/run.sh DATA_DIR [ROWS]        (ROWS default 1000000; 5000000 is the 2.6 GB file)
# Env:   RUNS (default 3), PEERS (default duckdb,polars), MODES (default 1core,all),
#        VENV (default $HOME/.cache/tributary/bench-venv), BENCH_DIR (default ../shared/bench),
#        BASELINE (an earlier worker binary, run as one more peer; see bench/baseline.sh) and
#        BASELINE_PIPELINE (its pipeline file, default examples/workload.toml)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DATA="${1:?usage: bench/run.sh DATA_DIR [ROWS]}"
ROWS="${2:-1000000}"
BENCH_DIR="${BENCH_DIR:-$ROOT/../shared/bench}"
VENV="${VENV:-$HOME/.cache/tributary/bench-venv}"
mkdir -p "$DATA"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q -r "$BENCH_DIR/requirements.txt"
INPUT="$DATA/ev_${ROWS}.ndjson"
if [ ! -s "$INPUT" ]; then
  "$VENV/bin/python" "$BENCH_DIR/gen_events.py" --rows "$ROWS" --seed 42 --out "$INPUT"
fi
(cd "$ROOT" && cargo build --profile dist -q -p worker --bin worker)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
"$VENV/bin/python" "$HERE/compare.py" --input "$INPUT" --worker "$TARGET/dist/worker" \
  --pipeline "$ROOT/examples/workload.toml" --bench-dir "$BENCH_DIR" --python "$VENV/bin/python" \
  --peers "${PEERS:-duckdb,polars}" --modes "${MODES:-1core,all}" --runs "${RUNS:-3}" \
  --json "$DATA/bench-results.jsonl" \
  ${BASELINE:+--baseline "$BASELINE"} ${BASELINE_PIPELINE:+--baseline-pipeline "$BASELINE_PIPELINE"}
