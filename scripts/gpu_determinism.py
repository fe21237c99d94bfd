"""Two runs of the book's lyrics model on one device, same seed: do they give one history?

python scripts/gpu_determinism.py OUT.txt [cuda]   (a text of the book's shape: no corpus needed)
"""

from __future__ import annotations

import sys

import torch

from gradlab.baselines.speed import book_config, book_shaped_text
from gradlab.tasks.lyrics import Lyrics
from gradlab.training import train


def main(out: str, device: str) -> None:
    lines = [f"torch {torch.__version__}, device {device}"]
    for impl in ("scratch", "cudnn"):
        runs = [train(book_config(impl=impl, steps=80, eval_every=40, device=device), Lyrics.from_text(book_shaped_text(), pred_len=4, prefixes=("一",)))
                for _ in range(2)]
        a, b = ([s["loss"] for s in r.steps] for r in runs)
        diff = [abs(x - y) for x, y in zip(a, b)]
        first = next((k + 1 for k, d in enumerate(diff) if d), None)
        lines.append(f"{impl}: {len(a)} steps, first differing step {first}, max |loss_a - loss_b| {max(diff):.3g}, "
                     f"final losses {a[-1]:.9g} / {b[-1]:.9g}")
    text = "\n".join(lines)
    print(text)
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cuda")
