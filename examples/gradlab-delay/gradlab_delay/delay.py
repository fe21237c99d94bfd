"""Delayed echo: repeat the token seen `delay` steps ago."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gradlab.tasks import Batch, Spec, SyntheticTask


@dataclass
class Delay(SyntheticTask):
    """Length T token ids drawn uniformly from n_symbols. At every step t >= delay the target is the
    token of step t - delay. Loss: cross-entropy over those steps; metric: accuracy.

    Worked example, delay 2: input (3, 1, 4, 1, 5), targets at steps 2, 3, 4: (3, 1, 4).

    Memoryless baseline: the echoed token is uniform and independent of the current one: ln n_symbols.
    """

    name = "delay"
    n_symbols: int = 8
    delay: int = 3

    @property
    def spec(self) -> Spec:
        return Spec(input="tokens", input_size=self.n_symbols, output_size=self.n_symbols, loss="cross_entropy", metric="accuracy")

    def check(self, length: int) -> None:
        super().check(length)
        if not 0 < self.delay < length:
            raise ValueError(f"delay must be in [1, seq_len), got {self.delay} with seq_len {length}.")

    def baseline(self, length: int) -> float:
        return math.log(self.n_symbols)

    def sample(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device = "cpu") -> Batch:
        x = torch.randint(0, self.n_symbols, (length, batch_size), generator=gen)  # (T, B)
        y = torch.zeros_like(x)
        y[self.delay :] = x[: -self.delay]
        return Batch(x, y, torch.arange(length) >= self.delay).to(device)
