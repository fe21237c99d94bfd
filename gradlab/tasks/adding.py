"""The adding problem (Hochreiter and Schmidhuber 1997; in the form of Le et al. 2015 and Arjovsky et al.
2016): add the two marked numbers of a long sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, Spec, Success, SyntheticTask, answer_at_end, last_step

HS_TOLERANCE = 0.08  # Hochreiter and Schmidhuber 1997's 0.04 on their sum scaled to [0, 1]; gradlab's sum spans [0, 2]


@dataclass
class Adding(SyntheticTask):
    """Length T, two input channels per step: channel 0 a value drawn from U[0, 1], channel 1 a marker
    that is 1 at one position of the first half [0, T//2) and at one of the second half [T//2, T), and 0
    elsewhere. The target, read at the last step only, is the sum of the two marked values; the loss is
    the mean squared error.

    Worked example, T = 6: values (.2, .9, .4, .1, .7, .5), markers (0, 1, 0, 0, 1, 0): target .9 + .7 = 1.6.

    Memoryless baseline: the sum of two independent U[0, 1] has mean 1 and variance 1/12 + 1/12, so
    always answering 1 scores MSE 1/6, whatever T. Arjovsky et al. 2016: an LSTM of 128 units (RMSProp
    1e-3) beats it up to T = 400; a tanh RNN never does at T >= 100. A run is scored against the MSE of
    answering 1 on its own held-out sequences (data_baseline): 4,000 of them (the default) score 0.96 to 1.04
    x 1/6 by the draw (the middle 95% of held-out sets). (y - 1)^2 has mean 1/6 and standard deviation 0.197
    (1.18 x its mean), so the baseline of N sequences has a relative sampling error of 1.18 / sqrt(N): under 2%
    at 4,000.

    No affine function of the inputs solves it: the values covary with the answer by (2/T)/12 each, the markers not at
    all, so the best affine answer explains 2/T of its variance (an MSE of 1 - 2/T of the memoryless one: 0.8 at T 10).
    A model that is affine in its input sequence, such as one lru layer with a linear readout, stops there
    (tests/test_modern_cells.py); it takes a product of value and marker, which a gate or a nonlinearity forms.

    Whose rule: the source papers of this form (Le et al. 2015, Arjovsky et al. 2016) draw no line; 'solved' (an MSE
    under 10% of the memoryless one) is gradlab's. Hochreiter and Schmidhuber 1997's adding problem is a variant
    (values in [-1, 1], a target scaled to [0, 1], the first mark among the first ten steps) judged per sequence:
    their rule, moved to this scale, is the hs columns (an answer 0.08 or more from the sum is wrong).
    """

    name = "adding"
    min_length = 2
    success = Success("loss_ratio", "Le et al. 2015 and Arjovsky et al. 2016 report the MSE against the memoryless one and draw no "
                                    "line (beating it: 'left the baseline'); gradlab counts a run solved once its MSE is under "
                                    "solve_fraction (10%) of the memoryless MSE, that is once the answer explains over 90% of the "
                                    "target's variance (R^2 > 0.9): most of the sum, not a first dip. Hochreiter and Schmidhuber 1997's "
                                    "rule for their variant, per sequence, is kept beside it (the hs columns)")
    also = (Success("sequence_error", "their variant's rule: a sequence is processed correctly when its answer, the sum scaled to "
                                      "[0, 1], is within 0.04, and training stopped once the last 2,000 sequences were all correct. "
                                      "gradlab's sum lies in [0, 2] (values from [0, 1], not [-1, 1]): their 0.04 is 0.08 here, and "
                                      "'all of the last 2,000' is read as under 1 in 2,000 of the test sequences wrong",
                    threshold=1 / 2000, whose="Hochreiter and Schmidhuber 1997", tolerance=HS_TOLERANCE, name="hs"),)
    lag = "T steps per sequence; the first marked value lies at least T/2 steps before the answer"
    eval_size: int = 4000  # the memoryless MSE of the held-out set within 2% of 1/6 (1.18 / sqrt(4000) = 1.9%)

    @property
    def spec(self) -> Spec:
        return Spec(input="vectors", input_size=2, output_size=1, loss="mse", metric="mse")

    def baseline(self, length: int) -> float:
        return 1.0 / 6.0

    def data_baseline(self, held_out: list, length: int) -> tuple[float, float]:
        """The MSE of always answering 1 on these very sequences, and its relative standard error."""
        errors = torch.cat([(b.targets().double().flatten() - 1.0) ** 2 for b in held_out])
        mean = float(errors.mean())
        return mean, float(errors.std() / errors.numel() ** 0.5 / mean) if errors.numel() > 1 else 0.0

    def guess_loss(self, length: int) -> float:
        return 7.0 / 6.0  # predicting 0: E[(a + b)^2] = 2 E[a^2] + 2 E[a] E[b] = 2/3 + 1/2, a, b ~ U[0, 1]

    def score(self, outputs: torch.Tensor, batch: Batch) -> dict[str, float]:
        """The MSE's sums, and the sequences whose answer lies HS_TOLERANCE or more from its target (Hochreiter and Schmidhuber's 'wrong')."""
        sums = super().score(outputs, batch)
        error = (outputs - batch.targets().to(outputs.dtype)).abs().flatten()  # (B,): one answer per sequence
        return sums | {"hs_wrong": float((~(error < HS_TOLERANCE)).sum()), "sequences": error.numel()}  # NaN counts as wrong

    def finish(self, sums: dict[str, float]) -> dict[str, float]:
        return super().finish(sums) | {"val_hs_error_rate": sums["hs_wrong"] / sums["sequences"]}

    def sample(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device = "cpu") -> Batch:
        half = length // 2
        values = torch.rand(length, batch_size, generator=gen)  # (T, B)
        first = torch.randint(0, half, (batch_size,), generator=gen)  # (B,)
        second = torch.randint(half, length, (batch_size,), generator=gen)
        markers = torch.zeros(length, batch_size)
        rows = torch.arange(batch_size)
        markers[first, rows] = 1.0
        markers[second, rows] = 1.0
        x = torch.stack([values, markers], dim=-1)  # (T, B, 2)
        answer = values[first, rows] + values[second, rows]  # (B,)
        y = answer_at_end(answer, length)[..., None]  # (T, B, 1)
        return Batch(x, y, last_step(length)).to(device)


TASK = Adding
