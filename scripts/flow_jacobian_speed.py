"""How long gradlab.flow's Jacobian probe takes per sequence, the steps' own Jacobians chained (flow.chained_spectra)
against backpropagating every basis vector through the whole sequence (probes.spectra_from_taps, the way it was
computed before), on the same layer and data, interleaved; and how far apart their spectra are.

    python scripts/flow_jacobian_speed.py [--dtype float32] [--rounds 3] [--csv reports/flow-jacobian-speed.csv]

Two shapes: a 2 x 64 LSTM at T 100 and a 2 x 128 LSTM at T 200 (issue 31's). --csv writes the rows the README quotes,
with the commit, torch and threads that made them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gradlab import flow
from gradlab.probes import spectra_from_taps


def layers_of(hidden: int, steps: int, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.LSTM(32, hidden, num_layers=2).to(dtype)
    calls = []
    with flow._measured({"": model}, lambda name, layers: calls.append(layers)):
        model(torch.randn(steps, 1, 32, dtype=dtype))
    return calls[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each times both ways on every layer)")
    ap.add_argument("--csv", default=None, help="also write the rows here")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one sequence, {args.dtype}, every layer of a 2-layer LSTM")
    rows = []
    for hidden, steps in ((64, 100), (128, 200)):
        layers = layers_of(hidden, steps, dtype)
        flow.chained_spectra(layers[0], 1)  # first use: torch.func's own set-up, not the probe's cost
        times = {"chained": [], "basis vectors": [], "chained, no SVD": [], "basis vectors, no SVD": []}
        svdvals = torch.linalg.svdvals
        spectra = {}
        for _ in range(args.rounds):  # interleaved
            for way in times:
                # "no SVD": the same work with each singular value decomposition replaced by reading a diagonal, so
                # the SVDs' own cost (the floor both ways share) is the difference
                torch.linalg.svdvals = (lambda m: m.diagonal(dim1=-2, dim2=-1)) if way.endswith("no SVD") else svdvals
                try:
                    start = time.perf_counter()
                    for layer in layers:
                        if way.startswith("chained"):
                            spectra[way] = flow.chained_spectra(layer, 1)
                        else:
                            parts = layer.handed_taps()
                            spectra[way] = spectra_from_taps(layer.final, [[taps[t] for taps in parts] for t in range(steps)], 1)
                    times[way].append(time.perf_counter() - start)
                finally:
                    torch.linalg.svdvals = svdvals
        new, old = spectra["chained"], spectra["basis vectors"]
        gap = float(((new - old).abs() / old[..., :1]).max())  # against each Jacobian's largest singular value (last layer)
        per = {k: statistics.median(v) for k, v in times.items()}  # seconds per sequence, both layers
        ratios = [b / c for b, c in zip(times["basis vectors"], times["chained"])]
        print(f"LSTM 2 x {hidden}, T {steps}: basis vectors {per['basis vectors']:.2f} s, chained {per['chained']:.2f} s per sequence "
              f"({per['basis vectors'] / per['chained']:.2f}x faster); without the SVDs {per['basis vectors, no SVD']:.2f} s against "
              f"{per['chained, no SVD']:.2f} s ({per['basis vectors, no SVD'] / per['chained, no SVD']:.2f}x); singular values apart by at "
              f"most {gap:.1e} of the largest")
        rows.append({"layers": 2, "hidden_size": hidden, "seq_len": steps, "basis_vectors_s": per["basis vectors"], "chained_s": per["chained"],
                     "speedup": per["basis vectors"] / per["chained"], "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "basis_vectors_no_svd_s": per["basis vectors, no SVD"], "chained_no_svd_s": per["chained, no SVD"],
                     "speedup_no_svd": per["basis vectors, no SVD"] / per["chained, no SVD"], "max_gap": gap, "rounds": args.rounds})
    if args.csv:
        import pandas as pd

        from gradlab.env import git_state

        state = git_state()
        pd.DataFrame(rows).assign(dtype=args.dtype, commit=state["commit"], dirty=state["dirty"], torch=torch.__version__,
                                  threads=torch.get_num_threads()).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
