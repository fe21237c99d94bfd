"""How long gradlab.flow's Jacobian probe takes per sequence, the steps' own Jacobians chained (flow.chained_spectra)
against backpropagating every basis vector through the whole sequence (probes.spectra_from_taps, the way it was
computed before), on the same layer and data, interleaved; and how far apart their spectra are.

    python scripts/flow_jacobian_speed.py            # a 2 x 64 LSTM at T 100, and a 2 x 128 LSTM at T 200
"""

from __future__ import annotations

import time

import torch
from torch import nn

from gradlab import flow
from gradlab.probes import spectra_from_taps


def layers_of(hidden: int, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.LSTM(32, hidden, num_layers=2).double()
    calls = []
    with flow._measured({"": model}, lambda name, layers: calls.append(layers)):
        model(torch.randn(steps, 1, 32, dtype=torch.float64))
    return calls[0]


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one sequence, float64, every layer of a 2-layer LSTM")
    for hidden, steps in ((64, 100), (128, 200)):
        layers = layers_of(hidden, steps)
        flow.chained_spectra(layers[0], 1)  # first use: torch.func's own set-up, not the probe's cost
        times = {"chained": [], "basis vectors": []}
        for _ in range(2):  # interleaved
            for layer in layers:
                start = time.perf_counter()
                new = flow.chained_spectra(layer, 1)
                times["chained"].append(time.perf_counter() - start)
                start = time.perf_counter()
                parts = layer.handed_taps()
                old = spectra_from_taps(layer.final, [[taps[t] for taps in parts] for t in range(steps)], 1)
                times["basis vectors"].append(time.perf_counter() - start)
        gap = float(((new - old).abs() / old[..., :1]).max())  # against each Jacobian's largest singular value
        per = {k: sum(v) / 2 for k, v in times.items()}  # both layers, per run
        print(f"LSTM 2 x {hidden}, T {steps}: basis vectors {per['basis vectors']:.2f} s, chained {per['chained']:.2f} s per sequence "
              f"({per['basis vectors'] / per['chained']:.1f}x faster); singular values apart by at most {gap:.1e} of the largest")


if __name__ == "__main__":
    main()
