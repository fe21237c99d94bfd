"""The tables of names: each name in each table is implemented, every wrong name gets "did you mean",
and only gradlab/cells knows what a cell is made of."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from gradlab import names
from gradlab.cells import FAMILIES, create
from gradlab.executors import make_executor
from gradlab.measures import load
from gradlab.tasks import task_class
from gradlab.training.clipping import STRATEGIES, parse_clip
from gradlab.training.optimizers import FACTORIES, make_optimizer

PACKAGE = Path(__file__).resolve().parent.parent / "gradlab"


def test_tables_and_implementations_agree():
    assert set(names.CELLS) == set(FAMILIES)
    assert set(names.OPTIMIZERS) == set(FACTORIES)
    assert set(names.CLIPS) == set(STRATEGIES)
    assert set(names.GRU_VARIANTS) == set(FAMILIES["gru"].variants)
    assert set(names.LRU_VARIANTS) == set(FAMILIES["lru"].variants)
    assert set(names.IMPLS) == {impl for f in FAMILIES.values() for impl in f.impls}
    for name in names.DTYPES:
        assert isinstance(getattr(torch, name), torch.dtype)


@pytest.mark.parametrize("name", names.INITS)
def test_every_init_makes_every_cell(name):
    """Every init makes every cell, but 'critical' (a recurrent matrix at the edge of chaos) makes none of the cells
    without a recurrent matrix: those say so."""
    for cell in names.CELLS:
        for impl in FAMILIES[cell].impls:
            if name == "critical" and FAMILIES[cell].diagonal:
                with pytest.raises(ValueError, match=f"cell {cell!r} has none"):
                    create(cell, impl, 3, 4, init=name)
            else:
                create(cell, impl, 3, 4, init=name)


@pytest.mark.parametrize("name", names.MEASURES)
def test_every_measure_has_the_measure_contract(name):
    module = load(name)
    assert dataclasses.is_dataclass(module.Config) and callable(module.run) and callable(module.derive)
    assert {f.name for f in dataclasses.fields(module.Config)} <= set(module.COLUMNS)  # every setting described
    module.Config().validate()  # the defaults are a valid point


def test_every_task_loads_and_every_optimizer_clip_and_executor_builds():
    for name in names.TASKS:
        assert task_class(name).name == name
    p = torch.nn.Parameter(torch.zeros(2))
    for name in names.OPTIMIZERS:
        make_optimizer(name, [p], 0.1)
    for name in names.CLIPS:
        parse_clip(name if name == "none" else f"{name}:1")
    for name in names.EXECUTORS:
        make_executor(name, 2).shutdown()


WRONG = [  # (table, config field of the train measure that takes its names)
    ("CELLS", "cell"), ("IMPLS", "impl"), ("INITS", "init"), ("TASKS", "task"), ("OPTIMIZERS", "optimizer"),
    ("DTYPES", "dtype"), ("SAMPLINGS", "sampling"), ("TEXT_SETTINGS", "setting"),
]


@pytest.mark.parametrize("table,key", WRONG)
def test_every_wrong_name_says_did_you_mean(table, key):
    Config = load("train").Config
    for name in getattr(names, table):
        extra = {"task": "lyrics"} if key in ("sampling", "setting") else {}  # lyrics parameters
        wrong = "x" + name  # one character added: the name itself is the nearest (a last letter changed can sit between two, adam and adamw)
        with pytest.raises(ValueError, match=f"Unknown .*{re.escape(repr(wrong))}.*Did you mean {re.escape(repr(name))}"):
            Config(**(extra | {key: wrong})).validate()


@pytest.mark.parametrize("table,field,measure", [("PROBES", "probe", "gradient_decay"), ("CLIPS", "clip", "train")])
def test_wrong_probe_and_clip_names(table, field, measure):
    Config = load(measure).Config
    for name in getattr(names, table):
        wrong = name[:-1] + "x"
        with pytest.raises(ValueError, match=f"Did you mean {re.escape(repr(name))}"):
            Config(**{field: wrong}).validate()


def test_only_the_cells_package_knows_what_a_cell_is_made_of():
    """No cell-name comparisons, state-part strings or gate weights outside gradlab/cells (the book's own
    code in baselines/book.py and the mean-field formulas in theory.py are the exceptions: each is per cell
    by nature)."""
    pattern = re.compile(r"""== ?["'](lstm|gru|rnn|linear)["']|!= ?["'](lstm|gru|rnn|linear)["']|["']h,c["']|W_h[cfiozr]\b""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cells/") or rel in ("baselines/book.py", "theory.py"):
            continue
        offenders += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
