"""First-token recall: remember the one token that came T steps ago (in the spirit of Hochreiter and
Schmidhuber 1997's noise-free long-lag task). The purest "remember across T steps" task."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Batch, Spec, Success, SyntheticTask, answer_at_end, last_step


@dataclass
class Recall(SyntheticTask):
    """Length T token ids. Step 0 holds one of n_symbols tokens (ids 0..K-1); steps 1..T-1 hold
    distractors drawn from another alphabet of n_distractors tokens (ids K..K+D-1). The target, read at
    the last step, is the token of step 0. Loss: cross-entropy; metric: accuracy.

    Worked example, K = 8, D = 8, T = 5: (3, 12, 9, 15, 8): answer 3.

    Memoryless baseline: the answer is uniform over K tokens, ln K. At lag 100 Hochreiter and Schmidhuber
    1997 report BPTT 0 of 18 trials, LSTM 18 of 18.
    """

    name = "recall"
    min_length = 2
    success = Success("error_rate", "a task of gradlab's, with no source rule of its own: Pascanu et al. 2013's rule for "
                                    "classification (under 1% of the answers wrong); Hochreiter and Schmidhuber 1997 judged their "
                                    "noise-free long-lag task per sequence")
    lag = "T: the token to recall lies T - 1 steps before the answer"
    n_symbols: int = 8  # K: tokens to remember
    n_distractors: int = 8  # D: the distractor alphabet

    @property
    def spec(self) -> Spec:
        return Spec(input="tokens", input_size=self.n_symbols + self.n_distractors, output_size=self.n_symbols,
                    loss="cross_entropy", metric="accuracy")

    def check(self, length: int) -> None:
        super().check(length)
        if self.n_symbols < 2 or self.n_distractors < 1:
            raise ValueError(f"recall needs n_symbols >= 2 and n_distractors >= 1, got {self.n_symbols} and {self.n_distractors}.")

    def baseline(self, length: int) -> float:
        return math.log(self.n_symbols)

    def sample(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device = "cpu") -> Batch:
        answer = torch.randint(0, self.n_symbols, (batch_size,), generator=gen)  # (B,)
        x = torch.randint(self.n_symbols, self.n_symbols + self.n_distractors, (length, batch_size), generator=gen)  # (T, B)
        x[0] = answer
        return Batch(x, answer_at_end(answer, length), last_step(length)).to(device)


TASK = Recall
