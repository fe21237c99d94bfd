"""Derived tables of training runs: the final evaluation per run, the longest lag solved, clipping's
record and the effective context; recomputed from the stored rows at every assemble (outside the source digest)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

def derive(tables: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, pd.DataFrame]:
    """Per run: the last evaluation, the best held-out loss, solved or not, and the training time."""
    results, runs = tables["results"], tables.get("runs")
    last = results.groupby("point", sort=False).tail(1).set_index("point")  # rows come in step order, points in grid order
    final = last.drop(columns=[c for c in ("grad_norm_post", "seconds") if c in last]).rename(
        columns={"val_loss": "final_val_loss", "train_loss": "final_train_loss"})
    final["best_val_loss"] = results.groupby("point")["val_loss"].min()
    final["loss_over_baseline"] = final["final_val_loss"] / final["baseline"]
    if runs is not None and len(runs):
        r = runs.set_index("point")
        final["solved"] = r["solved_step"].notna()
        final["steps_to_solve"] = r["solved_step"]
        if "left_step" in r:  # runs from before 'left the baseline' was recorded have no such column
            final["left_baseline"] = r["left_step"].notna()
            final["steps_to_leave"] = r["left_step"]
        final["diverged_step"] = r["diverged_step"]
        final["train_seconds"] = r["train_seconds"]
        for col in ("best_step", "kept", "stopped_early_step", "test_loss", "test_metric", "baseline_theory", "baseline_rel_se", "success_rule"):
            if col in r:
                final[col] = r[col]
        if r["steps_per_epoch"].notna().all():
            final["seconds_per_epoch"] = r["train_seconds"] / (r["steps_done"] / r["steps_per_epoch"])
    if "test_metric" in final and "val_ppl" in final:
        final["test_ppl"] = final["test_metric"]  # a language model's metric is its perplexity
    final = final.reset_index()
    derived = {"final": final}
    if "solved" in final:
        derived["longest_lag"] = longest_lag(final, columns)
        derived["by_setting"] = by_setting(final, columns)
    if "context" in tables and len(tables["context"]):
        derived["effective_context"] = effective_context(tables["context"], columns)
        if len(derived["effective_context"]):
            derived["context_over_seeds"] = context_over_seeds(derived["effective_context"], columns)
    if "steps" in tables and len(tables["steps"]):
        derived["clipping"] = clipping(tables["steps"], columns)
        derived["norm_histogram"] = norm_histogram(tables["steps"], columns)
    return derived


SPIKE = 3.0  # a loss spike: above 3 x the median of the previous 50 steps' losses
SPIKE_WINDOW = 50


HISTOGRAM_BINS = 40


def norm_histogram(steps: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per run, how many of its steps had a gradient norm before clipping in each of 40 log-spaced bins shared by
    every run of the table (from the smallest finite positive norm to the largest): the compact form of the
    step rows that the clipping figures draw, kept with the run where the step rows are not (git ignores them)."""
    norms = steps["grad_norm_pre"].astype(float)
    finite = norms[np.isfinite(norms) & (norms > 0)]
    if not len(finite):
        return pd.DataFrame(columns=["point", "bin", "lo", "hi", "count"])
    lo, hi = float(finite.min()), float(finite.max())
    edges = np.logspace(np.log10(lo), np.log10(hi if hi > lo else lo * 10), HISTOGRAM_BINS + 1)
    settings = [c for c in columns if c in steps and c != "point"]
    rows = []
    for point, g in steps.groupby("point", sort=False):
        values = g["grad_norm_pre"].astype(float)
        counts, _ = np.histogram(values[np.isfinite(values)], bins=edges)
        base = g.iloc[0][settings].to_dict() | {"point": point}
        rows += [base | {"bin": i, "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c)} for i, c in enumerate(counts)]
    return pd.DataFrame(rows)


def clipping(steps: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per run, from its steps: how often clipping fired, the thresholds and norms it met, what it did to
    the direction (cosine) and the step (update norm), and how many loss spikes there were."""
    settings = [c for c in columns if c in steps and c != "point"]
    rows = []
    for point, g in steps.groupby("point", sort=False):
        g = g.sort_values("step")
        running = g["loss"].shift(1).rolling(SPIKE_WINDOW, min_periods=SPIKE_WINDOW).median()
        clipped = g[g["clipped"]]
        finite = g["grad_norm_pre"][g["grad_norm_pre"].map(math.isfinite)]
        median_norm = finite.median() if len(finite) else float("nan")  # numpy scalars: a zero norm divides to inf
        median_threshold = g["clip_threshold"].median()
        rows.append(g.iloc[0][settings].to_dict() | {
            "point": point, "steps_run": len(g), "fraction_clipped": float(g["clipped"].mean()),
            "median_grad_norm": float(median_norm), "median_threshold": float(median_threshold),
            "threshold_over_norm": float(median_threshold / median_norm),
            "min_cosine": float(clipped["clip_cosine"].min()) if len(clipped) else 1.0,
            "median_cosine": float(clipped["clip_cosine"].median()) if len(clipped) else 1.0,
            "median_update_norm": float(g["update_norm"].median()), "max_update_norm": float(g["update_norm"].max()),
            "loss_spikes": int((g["loss"] > SPIKE * running).sum()),
        })
    return pd.DataFrame(rows)


def effective_context(context: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per run and text (gradlab.context's rules, on each k's 95% interval of the relative gap):
    effective_context (Khandelwal et al.'s cut against the full context: content and warm-up together),
    replace_context (the context whose content is used: inputs before k replaced, against the real window of the
    same length) and shuffle_context (whose order is used), each with its upper bound (*_upper: the noise's
    say); inf where even the longest k tried is not enough. warmup: what a zero state costs over a state warmed
    up on other inputs (cut minus replaced, relative to the window), the median over k. best_k: the k whose
    cut context scores lowest, and best_gap its gap to the full context (negative: a shorter context does
    better than the whole). Tables written before the intervals existed get the old point rule."""
    from ..context import effective_context as point_rule, used_context

    if "probe" not in context:  # tables of a run before the probes existed: nothing this rule can read
        return pd.DataFrame()
    by = [c for c in columns if c in context] + ["split"]
    intervals = "gap_lo" in context
    rows = []
    for key, g in context.groupby(by, dropna=False, sort=False):
        full = float(g["loss_full"].iloc[0])
        found = {}
        for probe, p in g.groupby("probe"):
            p = p.sort_values("k")
            if intervals:
                used, upper = used_context(p["k"].tolist(), p["gap_lo"].tolist(), p["gap_hi"].tolist(), float(p["loss_ref"].iloc[0]))
                found[probe], found[f"{probe}_upper"] = used, upper
            else:
                k = point_rule(p["k"].tolist(), p["loss"].tolist(), full)
                found[probe] = math.inf if math.isnan(k) else k  # inf: not within even at the longest k tried
        cut = g[g["probe"] == "truncate"].sort_values("k")
        row = dict(zip(by, key)) | {"effective_context": found.get("truncate"), "shuffle_context": found.get("shuffle"),
                                    "replace_context": found.get("replace"), "longest_context": int(cut["k"].iloc[-1]),
                                    "loss_full": full, "loss_shortest": float(cut["loss"].iloc[0]), "loss_longest": float(cut["loss"].iloc[-1])}
        if intervals:
            best = cut.loc[cut["loss"].idxmin()]
            both = cut.merge(g[g["probe"] == "replace"][["k", "loss"]], on="k", suffixes=("", "_replaced"))
            warm = ((both["loss"] - both["loss_replaced"]) / both["loss_window"]) if len(both) else pd.Series(dtype=float)
            row |= {"effective_upper": found.get("truncate_upper"), "replace_upper": found.get("replace_upper"),
                    "shuffle_upper": found.get("shuffle_upper"), "best_k": int(best["k"]), "best_gap": float(best["gap"]),
                    "warmup": float(warm.median()) if len(warm) else math.nan, "loss_window": float(cut["loss_window"].iloc[0])}
        rows.append(row)
    return pd.DataFrame(rows)


def context_over_seeds(eff: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per setting and text, over its seeds: the median and range of each context measure. A run whose loss
    is not within the tolerance even at the longest k looks back further than was tried: it is inf
    (effective_context), so the median and the maximum say so instead of skipping it."""
    by = [c for c in columns if c in eff and c not in ("seed", "point")] + ["split"]
    rows = []
    for key, g in eff.groupby(by, dropna=False, sort=False):
        row = dict(zip(by, key)) | {"seeds": len(g)}
        for col in ("effective_context", "shuffle_context", "replace_context", "loss_full", "effective_upper", "replace_upper", "best_k", "warmup"):
            if col not in g:
                continue
            v = g[col].astype(float)
            row |= {f"{col}_median": float(v.median()), f"{col}_min": float(v.min()), f"{col}_max": float(v.max())}
        rows.append(row)
    return pd.DataFrame(rows)


def longest_lag(final: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per task, cell and every other setting but the lag and the seed: the lags tried, how many seeds
    solved each, longest_lag_solved (the longest lag solved by most of its seeds with every shorter lag
    tried solved by most of its seeds too; NaN: not even the shortest) and solved_above_failure (lags
    solved by most seeds above a lag that was not: shown, not counted)."""
    by = [c for c in columns if c in final and c not in ("seq_len", "seed", "point")]
    rows = []
    for key, g in final.groupby(by, dropna=False, sort=False):
        per_lag = g.groupby("seq_len")["solved"].agg(["sum", "count"]).sort_index()  # (lags,) seeds solved, seeds run
        majority = per_lag["sum"] > per_lag["count"] / 2
        unbroken = majority.cummin()  # solved, and so was every shorter lag
        longest = per_lag.index[unbroken]
        above = per_lag.index[majority & ~unbroken]
        rows.append(dict(zip(by, key if isinstance(key, tuple) else (key,))) | {
            "lags_tried": " ".join(map(str, per_lag.index)), "seeds_solved": " ".join(f"{s}/{c}" for s, c in zip(per_lag["sum"], per_lag["count"])),
            "longest_lag_solved": float(longest.max()) if len(longest) else float("nan"),
            "solved_above_failure": " ".join(map(str, above))})
    return pd.DataFrame(rows)


def _quantiles(values: pd.Series) -> tuple[float, float, float]:
    finite = values[np.isfinite(values)]
    return tuple(float(finite.quantile(q)) for q in (0.25, 0.5, 0.75)) if len(finite) else (float("nan"),) * 3


def censored_median(steps: pd.Series, solved: pd.Series) -> float:
    """The median steps to solve over every seed, a seed that did not solve within its budget counted as
    beyond it (censored: inf), not dropped; inf when fewer than half the seeds solved."""
    values = np.sort(np.where(solved.astype(bool), steps.astype(float), np.inf))
    n = len(values)
    if not n:
        return float("nan")
    middle = values[(n - 1) // 2 : n // 2 + 1]
    return float(middle.mean()) if np.isfinite(middle).all() else float("inf")


def by_setting(final: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Seeds as a statistic: per setting (every setting but the seed), the seeds run, solved k/n and its rate,
    left the baseline k/n, steps to solve (the median over every seed with those
    that did not solve censored at their budget (the steps setting), and the range over the seeds that solved), the final held-out
    loss over baseline (median and interquartile range over the seeds that did not diverge) and how many diverged."""
    by = [c for c in columns if c in final and c not in ("seed", "point")]
    rows = []
    for key, g in final.groupby(by, dropna=False, sort=False):
        solved = g["solved"].astype(bool)
        steps = g.loc[solved, "steps_to_solve"].astype(float)
        diverged = g["diverged_step"].notna() if "diverged_step" in g else pd.Series(False, index=g.index)
        q25, median, q75 = _quantiles(g.loc[~diverged, "loss_over_baseline"].astype(float))
        left = g["left_baseline"].astype(bool) if "left_baseline" in g else None
        rows.append(dict(zip(by, key if isinstance(key, tuple) else (key,))) | {
            "seeds": len(g), "seeds_solved_of": f"{int(solved.sum())}/{len(g)}", "solved_rate": float(solved.mean()),
            **({"seeds_left_of": f"{int(left.sum())}/{len(g)}", "left_rate": float(left.mean())} if left is not None else {}),
            "steps_to_solve_median": censored_median(g["steps_to_solve"], solved),
            "steps_to_solve_min": float(steps.min()) if len(steps) else float("nan"),
            "steps_to_solve_max": float(steps.max()) if len(steps) else float("nan"),
            "seeds_censored": int((~solved).sum()),
            "loss_over_baseline_median": median, "loss_over_baseline_q25": q25, "loss_over_baseline_q75": q75,
            "seeds_diverged": int(diverged.sum())})
    return pd.DataFrame(rows)
