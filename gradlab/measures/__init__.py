"""Measures: one module per study kind (named in gradlab.names.MEASURES), each with a Config dataclass,
run(cfg, progress) -> tables (no file I/O; a progress bar inside the point when asked), derive(tables, columns) -> derived tables, COLUMNS (the column
dictionary: every column it writes, with its unit and meaning), and optionally preflight(configs): checks
of shared inputs made once before any work. Every table carries every setting as a column. Another package
may add one under the entry-point group gradlab.measures (its module; optionally with view(tables, manifest))."""

from __future__ import annotations

import importlib
from types import ModuleType

from .. import plugins
from ..names import MEASURES, lookup


COMMON_COLUMNS: dict[str, str] = {
    "point": "the point's cache key: a hash of its whole config",
    "seed": "seed of the weights (and of the data's own generator)",
    "cell": "recurrent cell: linear, rnn, gru or lstm; lru, mingru or minlstm (the diagonal recurrences); diagonal (the curse of memory's linear diagonal recurrence)",
    "impl": "scratch (equations written out, a loop over time), cudnn (torch.nn's fused kernels: the classic cells' twin) or scan (a parallel scan: the modern cells' twin)",
    "variant": "GRU variant (reset_after, reset_before) or the lru's (normalised: gamma = sqrt(1 - |lambda|^2) on the input, plain: none); empty for other cells",
    "init": "weight initialisation (gradlab list: inits)",
    "init_scale": "spectral norm each recurrent matrix is scaled to (the lru: every eigenvalue's radius |lambda|); empty: the init's own",
    "forget_bias": "added to the forget gate's initial bias: the LSTM's (0, but under init uniform), minLSTM's, and minGRU's 1 - z",
    "hidden_size": "hidden units H",
    "seq_len": "steps T per sequence (the lag)",
    "batch_size": "sequences B per batch",
    "dtype": "floating-point type of weights and data",
    "device": "cpu or cuda",
    "backend": "the kernel that ran, read off autograd (python-loop, aten-cpu, onednn, cudnn)",
    "error": "the failed point's exception and the end of its traceback",
}


def known_measures() -> dict[str, str]:
    """Every measure's name and description: the built-in ones, then the installed plugins'."""
    return plugins.described("measures")


def load(name: str) -> ModuleType:
    """The measure's module (imported on demand: torch loads only when a measure runs)."""
    if name in MEASURES:
        return importlib.import_module(f"{__name__}.{name}")
    lookup(known_measures(), name, "measure")
    return plugins.load_measure(name)
