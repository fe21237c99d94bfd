"""Two runs of one measure side by side: before and after a code change, CPU against GPU, two seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..store import read_json

# measure -> (the table to compare, columns that identify a row beside the settings, the values compared)
COMPARED = {
    "gradient_decay": ("decay_rates", ["probe", "wrt"], ["factor_per_step", "r2", "vanish_distance"]),
    "train": ("final", [], ["final_train_loss", "final_val_loss", "val_metric", "loss_over_baseline", "steps_to_solve", "train_seconds"]),
    "throughput": ("results", ["impl"], ["ms_median", "tokens_per_s", "peak_fraction", "ratio_to_fused"]),
    "cliff": ("paths", ["start"], ["final_w", "final_b", "final_loss", "largest_grad_norm"]),
}


def compare(run_a: Path, run_b: Path) -> tuple[pd.DataFrame, dict]:
    """Rows matched on the settings that vary within either run (and the table's own row keys), each
    value as A, B and B - A; and the settings that are constant in each run but differ between them."""
    ma, mb = (read_json(Path(r) / "manifest.json") for r in (run_a, run_b))
    if ma.get("measure") != mb.get("measure"):
        raise ValueError(f"{run_a} ran measure {ma.get('measure')!r} and {run_b} {mb.get('measure')!r}: only runs of one measure compare.")
    name, ids, values = COMPARED[ma["measure"]]
    a, b = (pd.read_parquet(Path(r) / f"{name}.parquet") for r in (run_a, run_b))
    settings = [c for c in dict.fromkeys(ma.get("columns", []) + mb.get("columns", [])) if c in a and c in b and c != "point"]
    varying = [c for c in settings if a[c].map(repr).nunique() > 1 or b[c].map(repr).nunique() > 1]
    ra, rb = ma.get("resolved", {}), mb.get("resolved", {})  # a setting fixed in each run, to another value
    differing = {k: (ra[k][0], rb[k][0]) for k in ra if k in rb and len(ra[k]) == len(rb[k]) == 1 and ra[k] != rb[k]}
    keys = list(dict.fromkeys(varying + [c for c in ids if c in a and c in b]))
    values = [v for v in values if v in a and v in b]
    key_of = lambda df: df[keys].map(repr).agg("|".join, axis=1) if keys else pd.Series("all", index=df.index)  # noqa: E731
    a, b = a.assign(_key=key_of(a)), b.assign(_key=key_of(b))
    b_keys = {k: f"{k} (B)" for k in keys}  # a row only B has takes its settings from B
    merged = a[keys + ["_key"] + values].merge(b[keys + ["_key"] + values].rename(columns=b_keys), on="_key", how="outer",
                                               suffixes=(" A", " B"), indicator=True)
    for k, kb in b_keys.items():
        merged[k] = merged[k].where(merged["_merge"] != "right_only", merged[kb])
    for v in values:
        merged[f"{v} B-A"] = merged[f"{v} B"] - merged[f"{v} A"]
    merged["in"] = merged["_merge"].map({"both": "both", "left_only": "A only", "right_only": "B only"})
    columns = keys + [c for v in values for c in (f"{v} A", f"{v} B", f"{v} B-A")] + ["in"]
    return merged[columns], differing
