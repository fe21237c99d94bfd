"""GPU timings in one short run: scratch vs fused forward+backward, probe cost, lyrics epoch speed.

python scripts/gpu_timings.py OUT.json [--device cuda]   (prints and writes one JSON object)
"""

from __future__ import annotations

import json
import sys

import torch

from gradlab.cells import create
from gradlab.probes import hidden_grad_norms, last_step_loss
from gradlab.baselines.speed import book_config, book_shaped_text, compare_epoch_speed
from gradlab.tasks.lyrics import Lyrics
from gradlab.timing import interleaved_medians, matmul_peak


def fwd_bwd(cell, x, g):
    cell.zero_grad(set_to_none=True)
    _, state = cell(x)
    last_step_loss(state, g).backward()


def main(out: str, device: str) -> None:
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                    "cudnn": torch.backends.cudnn.version(), "fp32_matmul_peak_tflops": matmul_peak(device) / 1e12}
    gen = torch.Generator().manual_seed(0)
    # the fastrnns anchor shape: T=100, B=64, I=H=512, fp32
    for cell_name in ("lstm", "gru"):
        x = torch.randn(100, 64, 512, generator=gen).to(device)
        g = torch.randn(64, 512, generator=gen).to(device)
        cells = {impl: create(cell_name, impl, 512, 512, init="xavier", device=device) for impl in ("scratch", "cudnn")}
        times = interleaved_medians({impl: (lambda c=c: fwd_bwd(c, x, g)) for impl, c in cells.items()}, device, repeats=10, warmup=3)
        for impl, c in cells.items():
            result[f"{cell_name}_backend_{impl}"] = c.last_backend
        result[f"{cell_name}_T100_B64_H512_scratch_ms"] = times["scratch"] * 1e3
        result[f"{cell_name}_T100_B64_H512_cudnn_ms"] = times["cudnn"] * 1e3
        result[f"{cell_name}_scratch_over_cudnn"] = times["scratch"] / times["cudnn"]
    # the hidden probe against a plain forward+backward at T=1000, H=128, B=32
    x = torch.randn(1000, 32, 32, generator=gen).to(device)
    g = torch.randn(32, 128, generator=gen).to(device)
    for impl in ("scratch", "cudnn"):
        cell = create("gru", impl, 32, 128, init="orthogonal", device=device)
        t = interleaved_medians({"plain": lambda: fwd_bwd(cell, x, g), "probe": lambda: hidden_grad_norms(cell, x, g)}, device, repeats=3)
        plain, probe = t["plain"], t["probe"]
        result[f"probe_over_plain_{impl}"] = probe / plain
        result[f"plain_T1000_{impl}_ms"] = plain * 1e3
    # the lyrics epoch at the book's settings, on a text of the book's shape
    speed = compare_epoch_speed(book_config(device=device), Lyrics.from_text(book_shaped_text()), 2)
    result |= {f"lyrics_{k}": v for k, v in speed.items() if isinstance(v, (int, float))}
    text = json.dumps(result, indent=1)
    print(text)
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cuda")
