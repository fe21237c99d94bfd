"""Measures: one module per study kind (named in gradlab.names.MEASURES), each with a Config dataclass,
run(cfg) -> tables (no file I/O), derive(tables, axes), KEY_COLUMNS (the config keys every table carries
even when a study fixes them), and optionally preflight(configs): checks of shared inputs made once
before any work."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..names import MEASURES, lookup


def load(name: str) -> ModuleType:
    """The measure's module (imported on demand: torch loads only when a measure runs)."""
    lookup(MEASURES, name, "measure")
    return importlib.import_module(f"{__name__}.{name}")
