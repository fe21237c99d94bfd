"""The temporal-order problem (Hochreiter and Schmidhuber 1997; Pascanu et al. 2013's tempOrder.py): in
which order did two relevant symbols come, among many distractors?"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Batch, Spec, Success, SyntheticTask, answer_at_end, last_step

CLASSES = ("AA", "AB", "BA", "BB")


@dataclass
class TemporalOrder(SyntheticTask):
    """Length T token ids over six symbols: A = 0, B = 1 and the distractors c, d, e, f = 2..5. One A or
    B sits at a position drawn from [0.1 T, 0.2 T), another at one from [0.5 T, 0.6 T); every other
    position holds a random distractor. The target, read at the last step, is the class of the pair in
    order: AA = 0, AB = 1, BA = 2, BB = 3. Loss: cross-entropy; metric: accuracy.

    Worked example, T = 10: (c, B, f, d, e, A, c, c, d, f): B at 1 in [1, 2), A at 5 in [5, 6): BA = 2.

    Memoryless baseline: the four classes are equally likely, ln 4 (25% accuracy). Pascanu et al. 2013
    call it solved below 1% errors on 10,000 fresh sequences: the task's rule here, on the test set.
    """

    name = "temporal_order"
    min_length = 4
    success = Success("error_rate", "their rule for this task: under 1% errors on 10,000 fresh sequences, their test set; gradlab's test set is test_size "
                                    "(10,000) fresh sequences of a stream of their own", threshold=0.01, whose="Pascanu et al. 2013")
    lag = "T steps per sequence; the first relevant symbol lies 0.8T to 0.9T steps before the answer, the second 0.4T to 0.5T"

    @property
    def spec(self) -> Spec:
        return Spec(input="tokens", input_size=6, output_size=len(CLASSES), loss="cross_entropy", metric="accuracy")

    def baseline(self, length: int) -> float:
        return math.log(len(CLASSES))

    @staticmethod
    def windows(length: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """[lo, hi) of the two relevant positions; at least one position each, even for a short T."""
        def tenths(k: int) -> int:  # ceil(k T / 10) in integers: 0.1 * 30 is 3.0000000000000004 in floats
            return -(-k * length // 10)

        a, b = tenths(1), tenths(5)  # the integers t with 0.1T <= t < 0.2T, and 0.5T <= t < 0.6T
        return (a, max(a + 1, tenths(2))), (b, max(b + 1, tenths(6)))

    def sample(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device = "cpu") -> Batch:
        (lo1, hi1), (lo2, hi2) = self.windows(length)
        x = torch.randint(2, 6, (length, batch_size), generator=gen)  # (T, B) distractors
        first = torch.randint(lo1, hi1, (batch_size,), generator=gen)
        second = torch.randint(lo2, hi2, (batch_size,), generator=gen)
        which = torch.randint(0, 2, (2, batch_size), generator=gen)  # 0: A, 1: B
        rows = torch.arange(batch_size)
        x[first, rows] = which[0]
        x[second, rows] = which[1]
        y = answer_at_end(2 * which[0] + which[1], length)
        return Batch(x, y, last_step(length)).to(device)


TASK = TemporalOrder
