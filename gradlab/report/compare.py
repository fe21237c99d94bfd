"""Two runs of one measure side by side: before and after a code change, CPU against GPU, two seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..store import read_json

# measure -> (the table to compare, columns that identify a row beside the settings, the values compared)
COMPARED = {
    "gradient_decay": ("decay_rates", ["probe", "wrt"], ["factor_per_step", "predicted_factor", "r2", "vanish_distance"]),
    "train": ("final", [], ["final_train_loss", "final_val_loss", "val_metric", "loss_over_baseline", "steps_to_solve", "train_seconds"]),
    "throughput": ("results", ["impl"], ["ms_median", "tokens_per_s", "peak_fraction", "ratio_to_fused"]),
    "cliff": ("paths", ["start"], ["final_w", "final_b", "final_loss", "largest_grad_norm"]),
}

# what an empty (NaN) value of a compared column means, said under the table wherever one is empty
EMPTY = {
    "factor_per_step": "factor_per_step and r2 empty: fewer than two positive norms to fit a rate to",
    "predicted_factor": "predicted_factor empty: mean-field theory gives no prediction for that setting (the GRU's reset_before, "
                        "or a run derived before gradlab.theory)",
    "vanish_distance": "vanish_distance empty: the norm never fell below 1e-6 of its value nearest the loss within the sequence "
                       "(it did not vanish: a factor near or above 1, or a short sequence)",
    "steps_to_solve": "steps_to_solve empty: the run did not solve within its budget of steps",
    "val_metric": "val_metric empty: the task has no metric beside its loss",
    "peak_fraction": "peak_fraction empty: no matmul peak was measured for that point",
    "ratio_to_fused": "ratio_to_fused empty: the fused kernel itself, or a point without a fused twin",
}
AGREE = 1e-6  # scratch and cudnn closer than this are one curve (derived.gradient_decay.AGREE)


def one_curve(run: Path, df: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, str | None]:
    """A gradient-decay run whose scratch and cudnn norms agree (its impl_agreement, below AGREE) draws and
    gives each rate once: here too, the cudnn rows that repeat a scratch row are left out, and a sentence says so."""
    path = Path(run) / "impl_agreement.parquet"
    if "impl" not in df or not (df["impl"] == "cudnn").any() or not path.exists():
        return df, None
    agree = pd.read_parquet(path)
    if not len(agree) or agree["max_rel_diff"].max() >= AGREE:
        return df, None
    same = [c for c in dict.fromkeys([*columns, "probe", "wrt"]) if c in df and c not in ("impl", "point")]  # a curve's settings
    key = df[same].map(repr).agg("|".join, axis=1)
    twinned = (df["impl"] == "cudnn") & key.isin(set(key[df["impl"] == "scratch"]))
    if not twinned.any():
        return df, None
    return df[~twinned], (f"cudnn's norms equal scratch's (at most {agree['max_rel_diff'].max():.1e} apart), so each rate "
                          f"is given once, in the scratch row ({int(twinned.sum())} cudnn rows left out)")


def compare(run_a: Path, run_b: Path) -> tuple[pd.DataFrame, dict]:
    """Rows matched on the settings that vary within either run (and the table's own row keys), each
    value as A, B and B - A; and the settings that are constant in each run but differ between them.
    The table's attrs["notes"] say what its empty values mean and which rows were given once."""
    ma, mb = (read_json(Path(r) / "manifest.json") for r in (run_a, run_b))
    if ma.get("measure") != mb.get("measure"):
        raise ValueError(f"{run_a} ran measure {ma.get('measure')!r} and {run_b} {mb.get('measure')!r}: only runs of one measure compare.")
    name, ids, values = COMPARED[ma["measure"]]
    a, b = (pd.read_parquet(Path(r) / f"{name}.parquet") for r in (run_a, run_b))
    notes = []
    if ma["measure"] == "gradient_decay":
        (a, said_a), (b, said_b) = one_curve(run_a, a, ma.get("columns", [])), one_curve(run_b, b, mb.get("columns", []))
        notes += [f"A: {said_a}" if said_a else "", f"B: {said_b}" if said_b else ""]
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
    table = merged[columns].reset_index(drop=True)
    if (table["in"] != "both").any():
        notes.append("a row in one run only ('A only', 'B only'): the other has no row at its settings, so its other side and B - A are empty")
    both = table[table["in"] == "both"]
    notes += [EMPTY[v] for v in values if v in EMPTY and both[[f"{v} A", f"{v} B"]].isna().any().any()]
    table.attrs["notes"] = [n for n in notes if n]
    return table, differing
