"""Measures: one module per study kind, each a Config dataclass, run(cfg) -> tables, derive(tables, axes),
KEY_COLUMNS (the config keys every table carries even when a study fixes them), and optionally
preflight(configs), checks of shared inputs made once before any work."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..registry import lookup

MEASURES: dict[str, str] = {
    "gradient_decay": "how ||dL/dh_t||, ||dL/dx_t|| and ||ds_T/ds_t|| fall or grow with distance from the loss",
    "lyrics": "the character language model on the Jay Chou lyrics: perplexity curves, samples, seconds per epoch",
}


def load(name: str) -> ModuleType:
    """The measure's module (imported on demand: torch loads only when a measure runs)."""
    lookup(MEASURES, name, "measure")
    return importlib.import_module(f"{__name__}.{name}")
