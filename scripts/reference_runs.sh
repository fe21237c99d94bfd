#!/usr/bin/env bash
# The reference runs the README quotes, into reports/ (--reference: the one way to write over a committed run) (each run folder's manifest names its command and
# commit; .gitignore keeps their bulky parts out of git). On the 2-core development machine: hours.
# bash scripts/reference_runs.sh [NAME ...]   (no name: all; the lyrics corpus through GRADLAB_DATA)
set -euo pipefail
cd "$(dirname "$0")/.."
ALL="${*:-}"
run() { name=$1; shift; if [ -z "$ALL" ] || [[ " $ALL " == *" $name "* ]]; then echo "== $name: gradlab $*"; gradlab "$@" --out "reports/$name" --reference --quiet; fi; }
run gradient-decay-quick run gradient-decay
run gradient-decay-edge run gradient-decay --profile edge --workers 2
run gradient-decay-theory run gradient-decay --profile theory --workers 2
run gradient-decay-modern run gradient-decay --profile modern
run curse-of-memory run curse-of-memory --profile full --workers 2
run lyrics-context run lyrics --profile context --workers 2
run lyrics-full run lyrics --profile full --workers 2
run lyrics-generalise run lyrics --profile generalise --workers 2
run lyrics-counting run lyrics --profile counting --workers 2
run long-range-quick run long-range --workers 2
run long-range-lags run long-range --profile lags --workers 2
run long-range-critical run long-range --profile critical --workers 2
run long-range-tuned run long-range --profile tuned --workers 2
run long-range-long run long-range --profile long --workers 2
run long-range-modern run long-range --profile modern --workers 2
run long-range-copy-recall run long-range --profile copy-recall --workers 2
run clipping-quick run clipping --workers 2
run clipping-book run clipping --profile book --workers 2
run clipping-modern run clipping --profile modern --workers 2
run cliff-quick run cliff
run throughput-quick run throughput
run throughput-book run throughput --profile book
run throughput-modern run throughput --profile modern
if [ -z "$ALL" ] || [[ " $ALL " == *" benchmarks "* ]]; then
  python -m pytest -q -p no:cacheprovider tests/benchmarks --benchmark-json=reports/benchmarks-cpu.json
fi
if [ -z "$ALL" ] || [[ " $ALL " == *" book-gru-bias "* ]]; then
  python scripts/book_gru_bias.py | tee reports/book-gru-bias.txt
fi
