"""Every singular value of each recurrent matrix a gradlab init draws, per cell, init and init_scale."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from gradlab.cells import create, parameters_in_scratch_layout
from gradlab.measures import COMMON_COLUMNS
from gradlab.report.page import Section

COLUMNS = COMMON_COLUMNS | {
    "matrix": "the recurrent matrix, named as in gradlab's scratch layout (W_hh, W_hz, ...)",
    "rank": "the singular value's rank, 0 the largest",
    "singular_value": "a singular value of the matrix",
    "largest": "the largest singular value (the spectral norm)",
}


@dataclass
class Config:
    cell: str = "rnn"
    init: str = "orthogonal"
    init_scale: float | None = None  # none: the init's own scale
    hidden_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        create(self.cell, "scratch", 1, 1, init=self.init, init_scale=self.init_scale)  # gradlab's own checks and messages


def run(cfg: Config, progress: bool = False) -> dict[str, list[dict]]:
    cell = create(cfg.cell, "scratch", 4, cfg.hidden_size, init=cfg.init, init_scale=cfg.init_scale, seed=cfg.seed, dtype=torch.float64)
    rows = []
    for name, weight in parameters_in_scratch_layout(cell).items():
        if name.startswith("W_h"):
            rows += [{"matrix": name, "rank": k, "singular_value": v} for k, v in enumerate(torch.linalg.svdvals(weight).tolist())]
    return {"results": rows}


def derive(tables: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, pd.DataFrame]:
    res = tables["results"]
    by = [c for c in columns if c in res and c != "point"] + ["matrix"]
    return {"largest": res.groupby(by, dropna=False)["singular_value"].max().rename("largest").reset_index()}


def view(tables: dict[str, pd.DataFrame], manifest: dict) -> Section:
    """The page: the spectra drawn, the spectral norms tabled."""
    import seaborn as sns

    def draw():
        grid = sns.relplot(data=tables["results"], x="rank", y="singular_value", hue="init", col="cell", style="matrix", kind="line", height=2.6)
        return grid.figure

    return Section(key_points=[f"{len(tables['largest'])} recurrent matrices measured."], figures=[("spectra", "Singular values by rank.", draw)],
                   tables=[("Spectral norms", tables["largest"])])
