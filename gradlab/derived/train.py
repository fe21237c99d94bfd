"""Derived tables of training runs: the final evaluation per run, the longest lag solved, clipping's
record and the effective context; recomputed from the stored rows at every assemble (outside the source digest)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

REFERENCE_LR = 3e-3  # the one rate the untuned lags profile trained every cell at: the tuned table's comparison
SELECTION_RULE = ("one rate per task and model for all its lags, read on the validation set alone: the rate whose seeds solve the longest "
                  "lag (by most seeds, every shorter lag solved too), then the most seeds solved over the lags tried, then the fewest steps "
                  "to solve at that lag (median over seeds), then the lowest validation loss over the memoryless one at the shortest lag, "
                  "then the lower rate")  # select_lr, in words (the page says it; torch-free)
SELECTION_READS = ("val_solved", "val_steps_to_solve", "kept_val_loss_ratio")  # all that choosing a learning rate reads: validation alone


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
        verdict(final, r)
        if "left_step" in r:  # runs from before 'left the baseline' was recorded have no such column
            left = r["left_step"].notna()
            if "test_left_baseline" in r:  # the kept model on the test set, where it was tested
                left = r["test_left_baseline"].where(r["test_left_baseline"].notna(), left).astype(bool)
            final["left_baseline"] = left
            final["steps_to_leave"] = r["left_step"]
        final["diverged_step"] = r["diverged_step"]
        final["train_seconds"] = r["train_seconds"]
        for col in ("best_step", "kept", "kept_step", "stopped_early_step", "stopped_solved_step", "test_loss", "test_metric", "baseline_theory",
                    "baseline_rel_se", "success_rule", "rules_beside", *[c for c in r if c.startswith("test_") and c not in final]):
            if col in r:
                final[col] = r[col]
        kept_loss = final["best_val_loss"].where(r["kept"] == "best", final["final_val_loss"]) if "kept" in r else final["final_val_loss"]
        final["kept_val_loss_ratio"] = kept_loss / final["baseline"]  # the kept model's validation loss over the memoryless one: selection's
        if r["steps_per_epoch"].notna().all():
            final["seconds_per_epoch"] = r["train_seconds"] / (r["steps_done"] / r["steps_per_epoch"])
    if "test_metric" in final and "val_ppl" in final:
        final["test_ppl"] = final["test_metric"]  # a language model's metric is its perplexity
    final = final.reset_index()
    derived = {"final": final}
    if "solved" in final:
        selection = select_lr(final, columns)
        final = derived["final"] = marked(final, selection, columns)
        derived["longest_lag"] = marked(longest_lag(final, columns), selection, columns)
        derived["by_setting"] = marked(by_setting(final, columns), selection, columns)
        if len(selection) and (selection.groupby(_lr_group(selection, columns), dropna=False, sort=False)["lr"].transform("size") > 1).any():
            derived["lr_selection"] = selection
            derived["tuned"] = tuned(derived["longest_lag"], selection, columns)
    if "context" in tables and len(tables["context"]):
        derived["effective_context"] = effective_context(tables["context"], columns)
        if len(derived["effective_context"]):
            derived["context_over_seeds"] = context_over_seeds(derived["effective_context"], columns)
    if "steps" in tables and len(tables["steps"]):
        derived["clipping"] = clipping(tables["steps"], columns)
        derived["norm_histogram"] = norm_histogram(tables["steps"], columns)
    return derived


def verdict(final: pd.DataFrame, r: pd.DataFrame) -> None:
    """The verdict columns of `final` (indexed by point) from the runs (r, indexed the same way). val_solved: the
    validation set met the task's rule at the kept checkpoint (selection's verdict; runs from before the kept
    checkpoint was judged: at some evaluation), val_steps_to_solve its step. solved, steps_to_solve: the verdict,
    from the fresh test set where the run has one (test_solved; a run without a model to test, diverged, is not
    solved), steps to solve being the kept checkpoint's step; from validation where it has none (verdict_from says which)."""
    first = r["solved_step"]  # validation: the first evaluation meeting the rule
    final["val_solved"] = r["val_solved"].fillna(False).astype(bool) if "val_solved" in r else first.notna()
    kept = r["kept_step"] if "kept_step" in r else first
    final["val_steps_to_solve"] = kept.where(final["val_solved"])
    on_test = r["verdict_from"].eq("test") if "verdict_from" in r else pd.Series(False, index=r.index)
    test = r["test_solved"].fillna(False).astype(bool) if "test_solved" in r else pd.Series(False, index=r.index)
    final["solved"] = test.where(on_test, final["val_solved"]).astype(bool)
    final["steps_to_solve"] = kept.where(on_test, final["val_steps_to_solve"]).where(final["solved"])
    final["verdict_from"] = pd.Series(np.where(on_test, "test", "validation"), index=r.index)


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


def _lags(g: pd.DataFrame, solved: str) -> tuple[pd.DataFrame, float, list]:
    """Per lag, seeds solved and run by the column `solved`; the longest lag solved by most of its seeds with every
    shorter lag tried solved by most of its seeds too (NaN: not even the shortest); the lags solved above a failure."""
    per_lag = g.groupby("seq_len")[solved].agg(["sum", "count"]).sort_index()  # (lags,) seeds solved, seeds run
    majority = per_lag["sum"] > per_lag["count"] / 2
    unbroken = majority.cummin()  # solved, and so was every shorter lag
    longest = per_lag.index[unbroken]
    return per_lag, float(longest.max()) if len(longest) else float("nan"), list(per_lag.index[majority & ~unbroken])


def longest_lag(final: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per task, cell and every other setting but the lag and the seed (the learning rate is one of them: a row per
    rate): the lags tried, how many seeds solved each (the verdict: the test set), longest_lag_solved (the longest lag
    solved by most of its seeds with every shorter lag tried solved by most of its seeds too; NaN: not even the
    shortest) and solved_above_failure (lags solved by most seeds above a lag that was not: shown, not counted); and
    the same on validation (val_seeds_solved, val_longest_lag_solved: what the choice of a learning rate reads)."""
    by = [c for c in columns if c in final and c not in ("seq_len", "seed", "point")]
    rows = []
    for key, g in final.groupby(by, dropna=False, sort=False):
        per_lag, longest, above = _lags(g, "solved")
        val_lag, val_longest, _ = _lags(g, "val_solved") if "val_solved" in g else (None, float("nan"), [])
        rows.append(dict(zip(by, key if isinstance(key, tuple) else (key,))) | {
            "lags_tried": " ".join(map(str, per_lag.index)), "seeds_solved": " ".join(f"{s}/{c}" for s, c in zip(per_lag["sum"], per_lag["count"])),
            "longest_lag_solved": longest, "solved_above_failure": " ".join(map(str, above)),
            **({"val_seeds_solved": " ".join(f"{s}/{c}" for s, c in zip(val_lag["sum"], val_lag["count"])),
                "val_longest_lag_solved": val_longest} if val_lag is not None else {})})
    return pd.DataFrame(rows)


def _lr_group(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """The settings a learning rate is chosen for: every one but the rate, the lag and the seed (task, cell, forget bias, ...)."""
    return [c for c in columns if c in df and c not in ("lr", "seq_len", "seed", "point")]


def select_lr(final: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Each setting's learning rate, chosen on the validation set alone (SELECTION_READS: no test column is read),
    one rate per task, cell, forget bias and every other setting but the lag and the seed, for all its lags together.
    The rule, in order: the rate whose seeds solve the longest lag on validation (by most seeds, every shorter lag
    tried solved too), then the most seeds solved over every lag tried, then the fewest steps to solve at that longest
    lag (the median over seeds, one that did not solve counted as beyond its budget), then the lowest validation loss
    over the memoryless one at the shortest lag (the kept models; the median over seeds: a rate that solves nothing is
    chosen by how near it came), then the lower rate. Per setting and rate, one row: what the rule read, its rank
    (1: chosen) and lr_selected."""
    by = _lr_group(final, columns)
    seen = final[[*by, "lr", "seq_len", "seed", *[c for c in SELECTION_READS if c in final]]]  # the test set never enters
    rows = []
    for key, g in seen.groupby(by, dropna=False, sort=False):
        scored = []
        for lr, at_lr in g.groupby("lr", sort=True):
            per_lag, longest, _ = _lags(at_lr, "val_solved")
            at = at_lr[at_lr["seq_len"] == longest]
            steps = censored_median(at["val_steps_to_solve"], at["val_solved"]) if len(at) else float("inf")
            shortest = at_lr[at_lr["seq_len"] == at_lr["seq_len"].min()]["kept_val_loss_ratio"].astype(float)
            ratio = float(shortest.median()) if shortest.notna().any() else float("inf")
            scored.append(dict(zip(by, key if isinstance(key, tuple) else (key,))) | {
                "lr": lr, "lags_tried": " ".join(map(str, per_lag.index)),
                "val_seeds_solved": " ".join(f"{s}/{c}" for s, c in zip(per_lag["sum"], per_lag["count"])),
                "val_longest_lag_solved": longest, "val_solved_total": int(per_lag["sum"].sum()),
                "val_steps_to_solve_median": steps, "val_loss_ratio_shortest": ratio})
        order = sorted(scored, key=lambda row: (-np.nan_to_num(row["val_longest_lag_solved"], nan=0.0), -row["val_solved_total"],
                                                row["val_steps_to_solve_median"], row["val_loss_ratio_shortest"], row["lr"]))
        rows += [row | {"rank": i + 1, "lr_selected": i == 0} for i, row in enumerate(order)]
    return pd.DataFrame(rows)


def marked(table: pd.DataFrame, selection: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The table with lr_selected: whether the row's learning rate is its setting's choice on validation (select_lr)."""
    if not len(table) or not len(selection) or "lr" not in table:
        return table.assign(lr_selected=True) if len(table) else table
    keys = [*_lr_group(selection, columns), "lr"]
    chosen = set(_setting_ids(selection.loc[selection["lr_selected"]], keys))
    return table.assign(lr_selected=[k in chosen for k in _setting_ids(table, keys)])


def _setting_ids(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Each row's values on `keys` as one text, a missing value (None or NaN, whichever a table holds) written alike:
    tables grouped apart compare by it where a merge would refuse an object column beside a float one."""
    def say(v) -> str:
        return "missing" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v)

    return ["|".join(say(v) for v in row) for row in df[keys].itertuples(index=False, name=None)] if keys else [""] * len(df)


def tuned(lag: pd.DataFrame, selection: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per setting (task, cell, forget bias, ...): the longest lag solved on the test set at the learning rate chosen
    on validation (lr), beside the one at REFERENCE_LR (the untuned profile's one rate) and the one at every rate
    tried: how much each answer owes its rate."""
    by = _lr_group(selection, columns)
    rows = []
    for key, sel in selection.groupby(by, dropna=False, sort=False):
        named = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        at = lag[[k == _setting_ids(pd.DataFrame([named]), by)[0] for k in _setting_ids(lag, by)]].sort_values("lr")
        chosen = sel.loc[sel["lr_selected"]].iloc[0]
        mine = at[at["lr"] == chosen["lr"]].iloc[0]
        ref = at[np.isclose(at["lr"].astype(float), REFERENCE_LR)]

        def say(v: float) -> str:
            return "none" if pd.isna(v) else f"{v:g}"

        rows.append(named | {
            "lr": chosen["lr"], "lrs_tried": " ".join(f"{v:g}" for v in at["lr"]),
            "val_longest_lag_solved": chosen["val_longest_lag_solved"], "lags_tried": mine["lags_tried"], "seeds_solved": mine["seeds_solved"],
            "longest_lag_solved": mine["longest_lag_solved"], "solved_above_failure": mine["solved_above_failure"],
            "reference_lr": REFERENCE_LR if len(ref) else float("nan"),
            "longest_lag_at_reference_lr": ref["longest_lag_solved"].iloc[0] if len(ref) else float("nan"),
            "seeds_solved_at_reference_lr": ref["seeds_solved"].iloc[0] if len(ref) else "",
            "longest_lag_by_lr": "; ".join(f"{r['lr']:g}: {say(r['longest_lag_solved'])}" for _, r in at.iterrows()),
            "val_longest_lag_by_lr": "; ".join(f"{r['lr']:g}: {say(r['val_longest_lag_solved'])}" for _, r in sel.sort_values("lr").iterrows())})
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
        val = g["val_solved"].astype(bool) if "val_solved" in g else None
        tested = {}
        if "test_loss_ratio" in g:
            q = _quantiles(g["test_loss_ratio"].astype(float))
            tested = {"test_loss_ratio_median": q[1], "test_loss_ratio_q25": q[0], "test_loss_ratio_q75": q[2]}
        if "test_hs_solved" in g and g["test_hs_solved"].notna().any():
            tested["seeds_hs_solved_of"] = f"{int(g['test_hs_solved'].fillna(False).astype(bool).sum())}/{len(g)}"
        rows.append(dict(zip(by, key if isinstance(key, tuple) else (key,))) | {
            "seeds": len(g), "seeds_solved_of": f"{int(solved.sum())}/{len(g)}", "solved_rate": float(solved.mean()),
            **({"val_seeds_solved_of": f"{int(val.sum())}/{len(g)}"} if val is not None else {}), **tested,
            **({"seeds_left_of": f"{int(left.sum())}/{len(g)}", "left_rate": float(left.mean())} if left is not None else {}),
            "steps_to_solve_median": censored_median(g["steps_to_solve"], solved),
            "steps_to_solve_min": float(steps.min()) if len(steps) else float("nan"),
            "steps_to_solve_max": float(steps.max()) if len(steps) else float("nan"),
            "seeds_censored": int((~solved).sum()),
            "loss_over_baseline_median": median, "loss_over_baseline_q25": q25, "loss_over_baseline_q75": q75,
            "seeds_diverged": int(diverged.sum())})
    return pd.DataFrame(rows)
