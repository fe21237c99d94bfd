"""The speed gates guard against regressions from what is measured now: each sits within 1.3x of the worst
recorded run (a gate loosened past that guards nothing), and each says the goal it serves."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

GATES = tomllib.loads((Path(__file__).parent / "benchmarks" / "gates.toml").read_text())
MARGIN = 1.3  # the most run-to-run noise a gate may allow for on this machine


@pytest.mark.parametrize("name", sorted(GATES))
def test_a_gate_sits_near_what_is_measured_and_names_its_goal(name):
    g = GATES[name]
    assert len(g["runs"]) >= 3 and "goal" in g, name
    if g.get("minimum"):
        worst = min(g["runs"])
        assert worst / MARGIN <= g["threshold"] <= worst, (name, g)
    else:
        worst = max(g["runs"])
        assert worst <= g["threshold"] <= worst * MARGIN, (name, g)
