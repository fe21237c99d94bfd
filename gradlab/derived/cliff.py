"""Derived tables of the cliff study: where each path ended, its largest step and gradient norm."""

from __future__ import annotations

import pandas as pd

def derive(tables: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, pd.DataFrame]:
    """Per path: where it ended, its largest step and gradient norm, how often it clipped."""
    res = tables["results"]
    by = [c for c in columns if c in res and c != "point"] + ["start"]
    g = res.groupby(by, dropna=False, sort=False)
    out = g.tail(1)[by + ["w", "b", "loss"]].rename(columns={"w": "final_w", "b": "final_b", "loss": "final_loss"}).set_index(by)
    out["largest_grad_norm"] = g["grad_norm_pre"].max()
    out["longest_step"] = g["step_length"].max()
    out["steps_clipped"] = g["clipped"].sum()
    return {"paths": out.reset_index()}
