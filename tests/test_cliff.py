"""Pascanu et al.'s one-unit network: its gradient against finite differences, the wall, and what clipping does there."""

from __future__ import annotations

import pytest
import torch

from gradlab.measures.cliff import Config, derive, gradient, loss, run


@pytest.mark.parametrize("w,b", [(3.0, -1.0), (8.0, -4.5), (4.69, -2.42), (-1.0, 2.0)])
def test_gradient_matches_central_differences(w, b):
    cfg = Config()
    _, grad = gradient(w, b, cfg)
    eps = 1e-6
    for k, (dw, db) in enumerate([(eps, 0.0), (0.0, eps)]):
        up = loss(torch.tensor(w + dw, dtype=torch.float64), torch.tensor(b + db, dtype=torch.float64), cfg)
        down = loss(torch.tensor(w - dw, dtype=torch.float64), torch.tensor(b - db, dtype=torch.float64), cfg)
        assert grad[k].item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-5, abs=1e-9)


def test_the_wall_and_what_clipping_does_there():
    import pandas as pd

    none, clipped = (run(Config(clip=c, steps=200, resolution=11)) for c in ("none", "norm:1"))
    paths = {}
    for name, tables in (("none", none), ("norm:1", clipped)):
        df = pd.DataFrame(tables["results"]).assign(clip=name, point=name)
        paths[name] = derive({"results": df}, ["clip"])["paths"].set_index("start")
    first = paths["none"].loc[0]
    assert first["largest_grad_norm"] > 4 and first["longest_step"] > 8  # the wall throws the unclipped path ...
    assert first["final_b"] > 5 and first["final_loss"] > 0.05  # ... onto a far plateau, where it stays
    calm = paths["norm:1"].loc[0]
    assert calm["longest_step"] == pytest.approx(2.0) and calm["steps_clipped"] >= 1  # lr x threshold at most
    assert calm["final_loss"] < 0.01 < first["final_loss"]
    surface = pd.DataFrame(none["surface"])
    assert len(surface) == 121 and surface["loss"].between(0, 1).all()
