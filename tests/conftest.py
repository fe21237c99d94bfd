"""Shared fixtures: devices to test on, and the lyrics corpus from the shared copy when present."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # tests draw figures headless

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    if request.param == "cuda":  # parity means exact fp32: cuDNN's RNNs would otherwise use TF32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        rnn = getattr(torch.backends.cudnn, "rnn", None)  # torch >= 2.9 has a per-backend switch
        if rnn is not None and hasattr(rnn, "fp32_precision"):
            rnn.fp32_precision = "ieee"
    return request.param


@pytest.fixture(scope="session")
def corpus_zip() -> Path:
    """The real corpus: $GRADLAB_DATA (a zip, or a folder holding it); skipped when not supplied."""
    from gradlab.tasks.corpus import locate

    path = locate(None, download=False)
    if path is None:
        pytest.skip("lyrics corpus not supplied (set GRADLAB_DATA to the zip or its folder)")
    return path


@dataclass
class _FakeConfig:
    x: int = 0
    seed: int = 0

    def validate(self) -> None:
        pass


def _fake_run(cfg: _FakeConfig, progress: bool = False) -> dict:
    if cfg.x == 2:
        raise RuntimeError("x=2 blows up")
    return {"results": [{"value": cfg.x * 10, "backend": "none"}]}


@pytest.fixture
def failing_study(tmp_path, monkeypatch) -> Path:
    """A study of measure 'fake' over x = 1, 2, 3 whose point x=2 raises (in-process executors only)."""
    from gradlab import measures

    fake = types.SimpleNamespace(Config=_FakeConfig, run=_fake_run, derive=lambda tables, axes: {})
    real_load = measures.load
    monkeypatch.setattr(measures, "load", lambda name: fake if name == "fake" else real_load(name))
    path = tmp_path / "fake.toml"
    path.write_text('name = "f"\nmeasure = "fake"\n[grid]\nx = [1, 2, 3]\n')
    return path


def pytest_collection_modifyitems(session, config, items):
    """The speed benchmarks last: collected first (tests/benchmarks sorts before test_*.py) they opened the suite,
    timing a machine still busy starting up and saying nothing for minutes; last, the rest reports first."""
    items.sort(key=lambda item: "benchmarks" in item.path.parts)
