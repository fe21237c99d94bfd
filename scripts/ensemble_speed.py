"""Model-steps per second of ensembles of E = 1, 4, 8, 16, 32 against E solo runs at the adding shape
(T 100, B 50, H 128), per cell, interleaved in one process; with where the ensemble step's time goes.
Usage: python scripts/ensemble_speed.py [--cells lstm,gru] [--sizes 1,4,8,16,32] [--threads 2] [--device cpu] [--fused] [--csv PATH]
(--csv reports/ensemble-speed.csv: the rows docs/ensembles.md quotes, with the commit, torch and threads that made them)"""

from __future__ import annotations

import argparse

import torch

from gradlab.training.ensemble_speed import ensemble_speed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--sizes", default="1,4,8,16,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fused", action="store_true", help="also time one torch.nn run (cuDNN on a GPU) stepped alone")
    ap.add_argument("--csv", default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    torch.set_num_threads(args.threads)
    print("| cell | E | ensemble model-steps/s | solo model-steps/s | speedup | fused solo model-steps/s | matmul | element-wise | Python and dispatch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cell in args.cells.split(","):
        for size in map(int, args.sizes.split(",")):
            r = ensemble_speed(cell, size, rounds=args.rounds, shares=args.device == "cpu", device=args.device, fused=args.fused)
            shares = [f"{r[k]:.0%}" if k in r else "" for k in ("share_matmul", "share_element_wise", "share_Python_and_dispatch")]
            print(f"| {cell} | {size} | {r['ensemble_model_steps_per_s']:.1f} | {r['solo_model_steps_per_s']:.1f} | "
                  f"{r['speedup']:.2f}x | {r.get('fused_model_steps_per_s', float('nan')):.1f} | {' | '.join(shares)} |", flush=True)
            rows.append({"cell": cell, "models": size, **{k: v for k, v in r.items() if isinstance(v, (int, float, str))}})
    if args.csv:
        import pandas as pd

        from gradlab.env import git_state

        state = git_state()
        pd.DataFrame(rows).assign(commit=state["commit"], dirty=state["dirty"], torch=torch.__version__, threads=args.threads,
                                  device=args.device).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
