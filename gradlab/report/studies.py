"""Which figures and tables each measure's report shows, read from the stored tables only."""

from __future__ import annotations

from typing import Callable, Iterator

import pandas as pd

from . import figures

Tables = dict[str, pd.DataFrame]
Figure = tuple[str, str, object]  # (file stem, caption, matplotlib figure)


def _others(df: pd.DataFrame, axes: list[str], drawn: set[str]) -> list[str]:
    """Axes not drawn in a figure: each combination of theirs gets its own figure."""
    return [a for a in axes if a in df.columns and a not in drawn and df[a].nunique(dropna=False) > 1]


def _groups(df: pd.DataFrame, by: list[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    if not by:
        yield "", df
        return
    for key, g in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield ", ".join(f"{k}={v}" for k, v in zip(by, key)), g


def gradient_decay_figures(t: Tables, axes: list[str]) -> Iterator[Figure]:
    res = t["results"]
    drawn = {"cell", "impl", "init_scale", "probe", "seed", "wrt"}
    what = {("hidden", "h"): "||dL/dh_t||", ("hidden", "c"): "||dL/dc_t|| (LSTM cell state)", ("input", "x"): "||dL/dx_t||"}
    for (probe, wrt), g in res.groupby(["probe", "wrt"], sort=False):
        for label, gg in _groups(g, _others(g, axes, drawn)):
            name = what.get((probe, wrt), f"||ds_T/ds_t||_2, s = ({wrt})" if probe == "jacobian" else f"{probe} {wrt}")
            yield (f"decay-{probe}-{wrt.replace(',', '')}-{label}".replace("=", "").replace(", ", "-"),
                   f"{name} against distance from the loss{' (' + label + ')' if label else ''}: hue cell, style impl, one panel per init_scale.",
                   figures.log_lines(gg, "distance", "grad_norm", hue="cell", style="impl", col="init_scale", title=name, ylabel=name))
    rates = t.get("decay_rates")
    if rates is not None and len(rates):
        for label, g in _groups(rates, [a for a in ("probe", "wrt") if a in rates] + _others(rates, axes, drawn)):
            yield (f"rates-{label}".replace("=", "").replace(", ", "-").replace(",", ""),
                   f"Fitted factor per step (10^slope of log10 grad_norm against distance); 1 keeps, <1 decays, >1 explodes ({label}).",
                   figures.heatmap(g, ["cell", "impl"], "init_scale", "factor_per_step", title=f"factor per step: {label}", center=1.0))


def train_figures(t: Tables, axes: list[str]) -> Iterator[Figure]:
    """Learning curves: perplexity for a language model, held-out loss over the baseline otherwise."""
    res = t["results"]
    x = "epoch" if "epoch" in res and res["epoch"].notna().all() else "step"
    panels = next((a for a in ("sampling", "seq_len", "task") if a in res and res[a].nunique() > 1), None)
    if "val_ppl" in res and res["val_ppl"].notna().all():
        long = res.melt(id_vars=[c for c in res.columns if c not in ("train_ppl", "val_ppl")], value_vars=["train_ppl", "val_ppl"],
                        var_name="split", value_name="perplexity")
        for split, g in long.groupby("split"):
            yield (f"curve-{split}", f"{split.replace('_ppl', '')} perplexity against {x} (hue cell, style impl).",
                   figures.log_lines(g, x, "perplexity", hue="cell", style="impl", col=panels, title=split))
    else:
        res = res.assign(loss_over_baseline=res["val_loss"] / res["baseline"])
        yield ("curve-val", f"Held-out loss over the memoryless baseline against {x} (1: no better than ignoring the past).",
               figures.log_lines(res, x, "loss_over_baseline", hue="cell", style="impl", col=panels, title="held-out loss / baseline"))
    final = t.get("final")
    if final is not None and "seconds_per_epoch" in final:
        yield ("seconds", "Seconds per epoch (training steps only).",
               figures.bars(final, "cell", "seconds_per_epoch", hue="impl", title="seconds per epoch"))


def gradient_decay_tables(t: Tables) -> list[tuple[str, pd.DataFrame]]:
    return [("Decay rates per cell, impl and init_scale", t["decay_rates"])] if "decay_rates" in t else []


def train_tables(t: Tables) -> list[tuple[str, pd.DataFrame]]:
    out = [("Final evaluation per run", t["final"])] if "final" in t else []
    if "samples" in t and len(t["samples"]):
        s = t["samples"]
        out.append(("Samples at the last epoch", s[s["epoch"] == s["epoch"].max()]))
    return out


FIGURES: dict[str, Callable[[Tables, list[str]], Iterator[Figure]]] = {
    "gradient_decay": gradient_decay_figures,
    "train": train_figures,
}
TABLES: dict[str, Callable[[Tables], list[tuple[str, pd.DataFrame]]]] = {
    "gradient_decay": gradient_decay_tables,
    "train": train_tables,
}
