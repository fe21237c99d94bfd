#!/usr/bin/env bash
# One short GPU check (device time is scarce): CUDA parity tests, the GPU timings, a GPU study.
# Usage on the GPU machine, from the repository root: bash scripts/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
timeout 60 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/test_cells.py tests/test_probes.py -k cuda 2>&1 | tail -5 | tee "$out/tests.txt"
timeout 80 python3 scripts/gpu_timings.py "$out/timings.json" cuda 2>&1 | tail -40
timeout 60 python3 -m gradlab.cli run gradient-decay --profile gpu --set seq_len=1000 --set seed=0 --set probe=hidden,input \
  --set init_scale=1.0 --out "$out/gd-gpu" --quiet 2>&1 | tail -4
python3 - "$out" <<'PY'
import sys, pandas as pd
out = sys.argv[1]
r = pd.read_parquet(f"{out}/gd-gpu/decay_rates.parquet")
cols = [c for c in ["cell", "impl", "dtype", "forget_bias", "init_scale", "probe", "wrt", "factor_per_step", "r2", "vanish_distance"] if c in r]
r[cols].to_csv(f"{out}/gd_gpu_rates.csv", index=False)
print(r[cols].to_string(index=False))
PY
