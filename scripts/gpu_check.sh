#!/usr/bin/env bash
# One short GPU check (device time is scarce): the CUDA tests, the GPU throughput study, the lyrics epoch,
# gradient decay on CUDA (long-range too with GPU_LONG_RANGE=1), a smoke run of the other studies on CUDA, and two-run determinism.
# On the GPU machine, from the repository root: bash scripts/gpu_check.sh OUTDIR   (about 3 minutes on an H200)
# (the lyrics corpus through GRADLAB_DATA; gradlab runs from the checkout: PYTHONPATH=.)
set -uo pipefail
out=${1:-gpu-out}
mkdir -p "$out" runs
exec > >(tee "$out/log.txt") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
g="python3 -m gradlab.cli"
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
python3 -c "import gradlab.study as s; d = s.studies_dir(); print('studies in', d, sorted(s.builtin_studies()))"; ls -la gradlab | head -30
echo "== CUDA tests"; timeout 90 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/test_cells.py tests/test_probes.py tests/test_tasks.py -k cuda 2>&1 | tail -4
echo "== throughput gpu"; timeout 150 $g run throughput --profile gpu --set batch_size=1,16,64,128 --set hidden_size=512,2048 \
  --out runs/throughput-gpu --quiet 2>&1 | tail -30
echo "== throughput book"; timeout 45 $g run throughput --profile book --device cuda --out runs/throughput-book-gpu --quiet 2>&1 | tail -8
echo "== gradient decay"; timeout 50 $g run gradient-decay --profile gpu --set seq_len=1000 --set seed=0 --set probe=hidden,input \
  --set init_scale=1.0 --out runs/gradient-decay-gpu --quiet 2>&1 | tail -12
if [ "${GPU_LONG_RANGE:-0}" = 1 ]; then  # a minute and a half more: opt in
  echo "== long-range quick on cuda"; timeout 100 $g run long-range --device cuda --set impl=cudnn --workers 4 --out runs/long-range-gpu --quiet 2>&1 | tail -10
fi
echo "== other studies on cuda, small"; for args in "lyrics --profile quick --set steps=8 --set eval_every=4" \
    "clipping --set task=adding --set clip=none,norm:1 --set lr=1 --set steps=50" "cliff"; do
  timeout 25 $g run $args --device cuda --out runs/smoke --quiet --no-report > runs/smoke.txt 2>&1 \
    && echo "ok: $args" || { echo "FAILED: $args"; tail -5 runs/smoke.txt; }
done
echo "== ensembles: E models as one batched step against E solo scratch runs and one cuDNN run"
timeout 120 python3 scripts/ensemble_speed.py --device cuda --sizes 1,8,64 --rounds 3 --fused 2>&1 | tee "$out/ensemble_speed.md"
echo "== determinism"; timeout 45 python3 scripts/gpu_determinism.py "$out/determinism.txt" cuda
python3 - "$out" <<'PY'
import sys, pandas as pd
out = sys.argv[1]
pd.read_parquet("runs/throughput-gpu/results.parquet").to_csv(f"{out}/throughput_gpu.csv", index=False)
pd.read_parquet("runs/throughput-book-gpu/results.parquet").to_csv(f"{out}/throughput_book_gpu.csv", index=False)
r = pd.read_parquet("runs/gradient-decay-gpu/decay_rates.parquet")
r[[c for c in ["cell", "impl", "dtype", "forget_bias", "probe", "wrt", "factor_per_step", "r2"] if c in r]].to_csv(f"{out}/gd_gpu_rates.csv", index=False)
print(pd.read_csv(f"{out}/throughput_gpu.csv")[["cell", "impl", "seq_len", "batch_size", "hidden_size", "ms_median", "ratio_to_fused", "peak_fraction"]].to_string(index=False))
PY
rm -rf runs/*/points runs/smoke; tar czf "$out/gpu-runs.tar.gz" runs && ls -la "$out"
