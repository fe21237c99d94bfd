"""The copy-memory problem (Hochreiter and Schmidhuber 1997; in the form of Arjovsky et al. 2016): see a
few symbols, wait T steps, then write them back."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Batch, Spec, Success, SyntheticTask


@dataclass
class Copy(SyntheticTask):
    """Length T + 2 * copy_len token ids. Token 0 is the blank, 1..n_symbols the symbols, n_symbols + 1
    the delimiter. Input: copy_len symbols drawn uniformly, T - 1 blanks, the delimiter, copy_len blanks.
    Targets: T + copy_len blanks, then the copy_len symbols. The loss is the cross-entropy over all
    T + 2 * copy_len steps; the metric is the accuracy on the copy_len symbols written back.

    Worked example, T = 3, copy_len = 2, n_symbols = 8: input (5, 2, 0, 0, 9, 0, 0), targets
    (0, 0, 0, 0, 0, 5, 2).

    Memoryless baseline: blanks where the targets are always blank (loss 0), then a uniform guess over
    n_symbols for each symbol: copy_len ln(n_symbols) / (T + 2 copy_len); with the defaults
    10 ln 8 / (T + 20). Arjovsky et al. 2016: an LSTM gets below it only at T = 100.
    """

    name = "copy"
    success = Success("error_rate", "Arjovsky et al. 2016 report the cross-entropy against the memoryless one and draw no line "
                                    "(beating it: 'left the baseline'); gradlab judges the answers, the symbols written back, by "
                                    "Pascanu et al. 2013's rule for classification (under 1% wrong), each copied symbol one answer")
    lag = "T: each of the copy_len symbols waits T + copy_len steps before it is written back"
    n_symbols: int = 8  # categories (Arjovsky et al. 2016)
    copy_len: int = 10  # symbols to remember

    @property
    def spec(self) -> Spec:
        return Spec(input="tokens", input_size=self.n_symbols + 2, output_size=self.n_symbols + 1, loss="cross_entropy", metric="accuracy")

    def check(self, length: int) -> None:
        super().check(length)
        if self.n_symbols < 2 or self.copy_len < 1:
            raise ValueError(f"copy needs n_symbols >= 2 and copy_len >= 1, got {self.n_symbols} and {self.copy_len}.")

    def baseline(self, length: int) -> float:
        return self.copy_len * math.log(self.n_symbols) / (length + 2 * self.copy_len)

    def sample(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device = "cpu") -> Batch:
        k = self.copy_len
        symbols = torch.randint(1, self.n_symbols + 1, (k, batch_size), generator=gen)  # (K, B)
        x = torch.zeros(length + 2 * k, batch_size, dtype=torch.long)  # (T + 2K, B)
        x[:k] = symbols
        x[length + k - 1] = self.n_symbols + 1  # the delimiter, after T - 1 blanks
        y = torch.zeros_like(x)
        y[length + k :] = symbols
        return Batch(x, y).to(device)

    def context_steps(self, length: int, batch: Batch) -> list[int]:
        """The answers: the last copy_len steps (every blank before them is predictable without memory)."""
        return list(range(length - self.copy_len, length))

    def score(self, outputs: torch.Tensor, batch: Batch) -> dict[str, float]:
        sums = super().score(outputs, batch)
        written = outputs[-self.copy_len :].argmax(-1)  # (K, B): the symbols written back
        answers = batch.y[-self.copy_len :]
        return sums | {"correct": float((written == answers).sum()), "answers": answers.numel()}


TASK = Copy
