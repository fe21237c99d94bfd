"""Every table of names gradlab knows (name -> one-line description), and the one lookup that turns a
wrong name into an error saying what exists and what was probably meant. No torch here: `gradlab list`
and the error messages stay instant."""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping, TypeVar

V = TypeVar("V")

CELLS: dict[str, str] = {
    "linear": "identity activation h_t = x_t W_xh + h_{t-1} W_hh + b_h (the analytic oracle)",
    "rnn": "tanh RNN",
    "gru": "GRU; variant reset_after (torch.nn.GRU, cuDNN) or reset_before (Cho et al. 2014)",
    "lstm": "LSTM without peepholes, state (h, c)",
    "lru": "Linear Recurrent Unit (Orvieto et al. 2023): h_t = lambda * h_{t-1} + gamma * (x_t B), complex and diagonal, "
           "lambda = exp(-exp(nu) + i exp(theta)); output Re(h_t C) + x_t D; H real numbers of state = H/2 complex modes",
    "mingru": "minGRU (Feng et al. 2024): h_t = (1 - z_t) h_{t-1} + z_t g(x_t W_xh + b_h), z_t = sigmoid(x_t W_xz + b_z): gates read the input only",
    "minlstm": "minLSTM (Feng et al. 2024): h_t = f'_t h_{t-1} + i'_t g(x_t W_xh + b_h), f' = f / (f + i), i' = i / (f + i), f and i sigmoids of the input",
}
IMPLS: dict[str, str] = {
    "scratch": "the equations written out, a Python loop over time",
    "cudnn": "torch.nn.RNN/GRU/LSTM: cuDNN on CUDA, PyTorch's fused kernels on CPU",
    "scan": "lru, mingru, minlstm: every step at once by a parallel scan (log space for min*, powers of lambda for the lru)",
}
GRU_VARIANTS: dict[str, str] = {
    "reset_after": "n = tanh(x W_xh + b_h + r * (h W_hh + b_hh)): torch.nn.GRU, cuDNN; the book's code without b_hh",
    "reset_before": "n = tanh(x W_xh + (r * h) W_hh + b_h): Cho et al. 2014, the book's equation (scratch only)",
}
LRU_VARIANTS: dict[str, str] = {
    "normalised": "the input scaled by gamma = sqrt(1 - |lambda|^2), a function of lambda: the state's variance stays that of the input",
    "plain": "no normalisation (gamma = 1): the state's variance grows as 1 / (1 - |lambda|^2)",
}
INITS: dict[str, str] = {
    "normal": "N(0, 0.01) for every weight, biases 0: the book's scratch models",
    "xavier": "U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio 2010), biases 0",
    "orthogonal": "Haar-random orthogonal matrices (Saxe et al. 2014), biases 0",
    "uniform": "U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias: torch.nn's default (a bias here: the sum of its two; "
               "lru, mingru, minlstm: nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)))",
    "critical": "orthogonal, recurrent matrices scaled to the mean-field edge of chaos (factor per step 1) for unit-variance inputs "
                "(the classic cells: the others have no recurrent matrix)",
    "paper": "each cell as its source draws it: lru as Orvieto et al. 2023 (B ~ N(0, 1/(2I)) and C ~ N(0, 1/N) per real and "
             "imaginary part, D ~ N(0, 1/I)); mingru, minlstm as Feng et al. 2024 (nn.Linear's, as uniform); the classic cells as torch.nn (uniform)",
}
TASKS: dict[str, str] = {
    "adding": "sum of the two marked values of a long sequence; MSE; baseline 1/6 (Arjovsky et al. 2016)",
    "copy": "repeat 10 symbols after a lag of T blanks; cross-entropy; baseline 10 ln 8 / (T + 20) (Arjovsky et al. 2016)",
    "temporal_order": "order of two A/B symbols among distractors; 4 classes; baseline ln 4 (Hochreiter and Schmidhuber 1997)",
    "recall": "the first of K tokens, asked after T - 1 distractors; baseline ln K (the noise-free long-lag task)",
    "lyrics": "the Jay Chou lyrics character model of 'Dive into Deep Learning'; baseline: the unigram entropy",
}
MEASURES: dict[str, str] = {
    "gradient_decay": "how ||dL/dh_t||, ||dL/dx_t|| and ||ds_T/ds_t|| fall or grow with distance from the loss",
    "train": "a model trained on a task: learning curves and held-out loss against the memoryless baseline",
    "cliff": "Pascanu et al. 2013's one-unit network: its loss surface's cliff, and descent paths clipped or not",
    "throughput": "how fast each cell runs per impl (timed interleaved), against a matmul peak measured alongside",
    "curse_of_memory": "how the state's sensitivity to the recurrent parameters, E||ds_t/dtheta||^2, grows with memory; closed forms beside it",
}
OPTIMIZERS: dict[str, str] = {
    "sgd": "plain SGD, no momentum: the book's scratch trainer",
    "adam": "Adam, betas (0.9, 0.999), eps 1e-8 (Kingma and Ba 2015; the book's concise trainer)",
    "adamw": "AdamW: Adam with decoupled weight decay (Loshchilov and Hutter 2019)",
    "rmsprop": "RMSProp, decay alpha 0.9, eps 1e-8, no momentum (Arjovsky et al. 2016's set-up)",
}
CLIPS: dict[str, str] = {
    "none": "no clipping ('none')",
    "norm": "'norm:THETA': rescale all gradients so their global L2 norm is at most THETA (direction kept)",
    "value": "'value:THETA': clamp every gradient element to [-THETA, THETA] (direction not kept)",
    "adaptive": "'adaptive:P': norm clipping at the P-th percentile of the gradient norms seen so far in the run",
    "mean": "'mean:K': norm clipping at K times the mean norm of the steps not clipped so far (Pascanu et al. 2013: K in 0.5-10)",
}
SAMPLINGS: dict[str, str] = {
    "consecutive": "B parallel streams through the text; each batch continues the last, state carried",
    "random": "non-overlapping chunks in a shuffled order; every batch starts from a zero state",
}
TEXT_SETTINGS: dict[str, str] = {
    "book": "the first 10,000 characters of the training lines, as the book trains",
    "full": "every training line",
}
TEXT_SPLITS: dict[str, str] = {
    "tail": "the last val_fraction of the lines held out (the book's regime: one held-out set)",
    "blocks": "blocks of block_lines lines; every (1 / val_fraction)-th block held out, alternately validation and test",
}
DTYPES: dict[str, str] = {
    "float32": "single precision (torch's default; cuDNN may use TF32 on a GPU)",
    "float64": "double precision: exact comparisons, and norms far below float32's 1e-38",
}
PROBES: dict[str, str] = {
    "hidden": "||dL/dh_t|| (and the LSTM's total ||dL/dc_t||) for every t from one backward pass",
    "input": "||dL/dx_t|| for every t from one call of the cell",
    "jacobian": "every singular value of ds_{T-1}/ds_t, s the full state handed from step to step (h, or h and c)",
    "independent": "E ||g J_t||^2 / E ||g||^2 per step for a fresh random g: mean-field theory's quantity, cumulated",
}
EXECUTORS: dict[str, str] = {
    "inline": "one point after another in this process (the default with --workers 1)",
    "processes": "points in parallel worker processes (concurrent.futures, spawn)",
    "dask": "points on a Dask cluster: a local one of --workers processes, or --scheduler ADDRESS (gradlab[dask])",
}

TABLES: dict[str, dict[str, str]] = {
    "cells": CELLS, "impls": IMPLS, "gru variants": GRU_VARIANTS, "lru variants": LRU_VARIANTS, "inits": INITS, "tasks": TASKS,
    "measures": MEASURES, "optimizers": OPTIMIZERS, "clipping": CLIPS, "samplings": SAMPLINGS,
    "text settings": TEXT_SETTINGS, "text splits": TEXT_SPLITS, "dtypes": DTYPES, "probes": PROBES,
    "executors": EXECUTORS,
}


def suggest(name: str, known: Iterable[str]) -> str:
    """A sentence naming what exists, and the closest match if there is one."""
    names = sorted(known)
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Known: {', '.join(names)}.{hint}"


def lookup(table: Mapping[str, V], name: str, what: str) -> V:
    """table[name], or a ValueError that says what exists and what was probably meant."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown {what} {name!r}. {suggest(name, table)}") from None

LEFT_BASELINE = 0.9  # 'left the baseline' (Arjovsky et al. 2016's sense of beating it): held-out loss 10% under the memoryless loss of the same data


DONOR_RULE = ("for positions of one text, the characters before the last k come from the window of the position "  # gradlab.context's replace probe
              "half the text away (wrapping round from the text's end to its start), and each such replacement lies "
              "at least L + k characters (L the longest window) from the item's own window and target, never "
              "overlapping them; a text too short for that (under about 7 L characters) is not replaced")
