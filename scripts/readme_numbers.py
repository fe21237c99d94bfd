"""The measured numbers of README.md and docs/, written from the committed runs under reports/: one source for every
number. Each block between `<!-- numbers NAME -->` and `<!-- /numbers -->` is what BLOCKS[NAME] makes of its runs,
with a line naming the run folders, their commands, commits and wall times.

    python scripts/readme_numbers.py            # check: exit 1 naming every block that differs from its runs
    python scripts/readme_numbers.py --write    # rewrite the blocks from the runs

tests/test_readme.py runs the check: a quoted number that its run does not hold, or a block whose run is missing,
fails it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/benchmarks.md", "docs/ensembles.md", "docs/library.md")
BLOCK = re.compile(r"(<!-- numbers (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /numbers -->)", re.S)
BLOCKS: dict[str, Callable[[Path], str]] = {}
CELLS = ["linear", "rnn", "gru", "lstm"]
CELLS_ALL = [*CELLS, "lru", "mingru", "minlstm"]


class MissingRun(FileNotFoundError):
    """A block names a run folder that is not there."""


def block(name: str):
    def register(fn):
        BLOCKS[name] = fn
        return fn
    return register


# --- reading runs -----------------------------------------------------------------------------------------------

def manifest(root: Path, run: str) -> dict:
    path = root / "reports" / run / "manifest.json"
    if not path.exists():
        raise MissingRun(f"reports/{run} is not there (no manifest.json): the README quotes it")
    return json.loads(path.read_text(encoding="utf-8"))


def table(root: Path, run: str, name: str) -> pd.DataFrame:
    manifest(root, run)
    path = root / "reports" / run / f"{name}.parquet"
    if not path.exists():
        raise MissingRun(f"reports/{run}/{name}.parquet is not there: the README quotes it")
    return pd.read_parquet(path)


def report_file(root: Path, name: str, made_by: str) -> Path:
    """reports/NAME, a file a script writes (not a run folder), or MissingRun saying which command writes it."""
    path = root / "reports" / name
    if not path.exists():
        raise MissingRun(f"reports/{name} is not there ({made_by} writes it)")
    return path


def minutes(m: dict) -> float | None:
    """The wall time of a run's last sitting (started to ended in its manifest)."""
    try:
        return (datetime.fromisoformat(m["ended"]) - datetime.fromisoformat(m["started"])).total_seconds() / 60
    except (KeyError, TypeError, ValueError):
        return None


def resumed(m: dict) -> tuple[int, float] | None:
    """(points an earlier sitting computed, minutes of wall time all the run's points took over its workers) for a run
    whose last sitting reused points, whose own wall time would understate the run's; None for a run made in one go."""
    cached = m.get("points_cached") or 0
    points = [p for p in (m.get("points") or []) if isinstance(p, dict) and isinstance(p.get("seconds"), (int, float))]
    if not cached or not points:
        return None
    # the members of an ensemble each record the ensemble's seconds: one batched pass, counted once
    once = {(p.get("ensemble") or {}).get("group") or p.get("key") or id(p): p["seconds"] for p in points}
    return cached, sum(once.values()) / max(1, int(m.get("workers") or 1)) / 60


def took_said(m: dict) -> str:
    """How long a run took, for the line under a block."""
    took, again = minutes(m), resumed(m)
    if again:
        return (f", about {again[1]:.0f} min of its points' compute over {m.get('workers') or 1} worker(s), in more than"
                f" one sitting (the last, {took:.1f} min, reused {again[0]} of {len(m.get('points') or [])} points)")
    return f", {took:.1f} min of wall time" if took is not None and took >= 0.05 else ""


def source(root: Path, *runs: str) -> str:
    """The line under a block: which runs, made by which command at which commit, in how long."""
    said = []
    for run in runs:
        m = manifest(root, run)
        commit = (m.get("code") or {}).get("commit") or "unknown"
        said.append(f"`reports/{run}`: `{' '.join(m.get('argv') or [])}` at {commit[:7]}" + took_said(m))
    return "*From " + "; ".join(said) + ".*"


def g(value: float, digits: int = 3) -> str:
    """A number to `digits` significant digits, thousands separated; inf as 'beyond', NaN as nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "beyond"
    v = float(f"{float(value):.{digits}g}")
    return f"{v:,.0f}" if v == int(v) else f"{v:,}"


def models(df: pd.DataFrame) -> pd.Series:
    """'lstm', 'lstm, forget bias 1', 'gru reset_before': the label every page uses."""
    label = df["cell"].astype(str)
    if "forget_bias" in df:
        fb = df["forget_bias"].fillna(0).astype(float)
        label = label.where(fb == 0, label + ", forget bias " + fb.map(lambda v: f"{v:g}"))
    return label


def markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join("" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def span(values: pd.Series, digits: int = 3) -> str:
    """'median (min-max)' over seeds, or the value alone."""
    v = values.astype(float)
    if len(v) == 1 or v.min() == v.max():
        return g(float(v.iloc[0]), digits)
    return f"{g(float(v.median()), digits)} ({g(float(v.min()), digits)}-{g(float(v.max()), digits)})"


# --- blocks -----------------------------------------------------------------------------------------------------

@block("decay-quick")
def decay_quick(root: Path) -> str:
    """Factor per step of ||dL/dh_t|| (h rows only) per model and init_scale, measured against predicted, a poor fit marked."""
    run = "gradient-decay-quick"
    rates = table(root, run, "decay_rates")
    rates = rates[(rates["probe"] == "hidden") & (rates["wrt"] == "h") & (rates["impl"] == "scratch")]
    theory = table(root, run, "theory") if (root / "reports" / run / "theory.parquet").exists() else None
    rates = rates.assign(model=models(rates))
    scales = sorted(rates["init_scale"].dropna().unique())
    rows = []
    for model, g_ in sorted(rates.groupby("model", sort=False), key=lambda kv: (CELLS.index(kv[0].split(",")[0]), kv[0])):
        row = {"model": model}
        for s in scales:
            r = g_[g_["init_scale"] == s]
            if not len(r):
                continue
            r = r.iloc[0]
            text = f"{r['factor_per_step']:.3f}"
            if "predicted_factor" in r and pd.notna(r.get("predicted_factor")):
                text += f" / {r['predicted_factor']:.3f}"
            if not bool(r.get("one_rate", True)):
                text += " (not one rate)"
            row[f"init_scale {s:g}"] = text
        rows.append(row)
    out = pd.DataFrame(rows)
    return (markdown(out) + "\n\nmeasured / predicted by mean-field theory (where it predicts), orthogonal init; 'not one rate': the fit's "
            "r2 is under 0.95 and the curve strays from the line by more than 12%.\n\n" + source(root, run))


@block("long-range-quick")
def long_range_quick(root: Path) -> str:
    """Steps to solve, or the final loss over the baseline, per cell and init, T 100 and 200."""
    quick, critical = table(root, "long-range-quick", "final"), table(root, "long-range-critical", "final")
    both = pd.concat([quick, critical]).drop_duplicates(["cell", "forget_bias", "seq_len", "init"], keep="first")
    both = both.assign(model=models(both), init_label=both["init"].map({"uniform": "torch.nn's init"}).fillna(both["init"] + " init"))
    rows = []
    for model, g_ in sorted(both.groupby("model", sort=False), key=lambda kv: (CELLS.index(kv[0].split(",")[0]), kv[0])):
        row = {"model": model}
        for (label, T), r in g_.groupby(["init_label", "seq_len"], sort=False):
            r = r.iloc[0]
            row[f"T {T}, {label}"] = (f"{g(r['steps_to_solve'], 4)}" if bool(r["solved"]) else f"{r['loss_over_baseline']:.2f} after {g(r['step'], 4)}")
        rows.append(row)
    out = pd.DataFrame(rows)
    order = ["model"] + sorted([c for c in out.columns if c != "model"], key=lambda c: ("critical" in c, int(c.split()[1].rstrip(","))))
    return (markdown(out[order]) + "\n\nsteps to solve (the task's rule: held-out MSE under 10% of the memoryless MSE of the held-out "
            "sequences), or the final held-out loss over that baseline and the steps run.\n\n" + source(root, "long-range-quick", "long-range-critical"))


def lag_cells(by_lag: pd.DataFrame, lags: list, best: float | None) -> dict[str, str]:
    """One setting's row of a lag table: seeds solved / run at each lag with the censored median step (blank: not run),
    the longest lag solved in bold, and that lag."""
    row = {}
    for T in lags:
        r = by_lag[by_lag["seq_len"] == T]
        if not len(r):
            row[f"T {T}"] = ""
            continue
        r = r.iloc[0]
        median = r["steps_to_solve_median"]
        cell = r["seeds_solved_of"] + (f" ({g(median, 4)})" if np.isfinite(median) else "")
        row[f"T {T}"] = f"**{cell}**" if best == T else cell
    row["longest lag"] = f"**{best:g}**" if best else "none"
    return row


def task_model_groups(by: pd.DataFrame) -> list:
    """A long-range table's (task, model) groups in the README's order: the tasks as the study lists them, then the cells."""
    order = {t: i for i, t in enumerate(("adding", "copy", "temporal_order", "recall"))}
    return sorted(by.groupby(["task", "model"], sort=False),
                  key=lambda kv: (order.get(kv[0][0], 9), CELLS_ALL.index(kv[0][1].split(",")[0]), kv[0][1]))


def _lag_rows(root: Path, run: str) -> tuple[list[dict], int | None, int]:
    """A one-rate run's lag table: per task and model, seeds solved / run at each lag and the longest lag; the budget
    and the seeds per setting."""
    by = table(root, run, "by_setting")
    lag = table(root, run, "longest_lag")
    by = by.assign(model=models(by))
    lag = lag.assign(model=models(lag))
    lags = sorted(by["seq_len"].unique())
    budget = int(by["steps"].max()) if "steps" in by else None
    rows = []
    for (task, model), g_ in task_model_groups(by):
        row = {"task": task.replace("_", " "), "model": model}
        longest = lag[(lag["task"] == task) & (lag["model"] == model)]["longest_lag_solved"]
        best = float(longest.iloc[0]) if len(longest) and pd.notna(longest.iloc[0]) else None
        row |= lag_cells(g_, lags, best)
        rows.append(row)
    return rows, budget, int(by["seeds"].max()) if "seeds" in by else 3


LAG_LEGEND = ("in brackets the median steps to solve over every seed (one that did not solve counted as beyond the budget: shown "
              "only where most solved); **bold**: the longest lag solved by most seeds with every shorter lag solved too; blank: not "
              "run (the ladder).")


@block("long-range-lags")
def long_range_lags(root: Path) -> str:
    """Per task and model: seeds solved / run at each lag, with the censored median step; the longest lag."""
    run = "long-range-lags"
    rows, budget, _ = _lag_rows(root, run)
    return (markdown(pd.DataFrame(rows)) + f"\n\nseeds solved / seeds run within {budget:,} steps, each task by its own rule; "
            + LAG_LEGEND + "\n\n" + source(root, run))


@block("long-range-copy-recall")
def long_range_copy_recall(root: Path) -> str:
    """All six cells on copy and recall under tuned's rules: the lag table, then per task who reaches furthest, with the
    classic cells' longest lags of long-range-lags (the older rule) beside."""
    run = "long-range-copy-recall"
    rows, budget, seeds = _lag_rows(root, run)
    old = table(root, "long-range-lags", "longest_lag")
    old = old.assign(model=models(old))
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        these = [r for r in rows if r["task"] == task]
        said = ", ".join(f"{r['model']} {r['longest lag'].strip('*')}" for r in these)
        before = old[old["task"] == task.replace(" ", "_")]
        before = before[before["model"].isin([r["model"] for r in these])]
        then = ", ".join(f"{r.model} {'none' if pd.isna(r.longest_lag_solved) else f'{r.longest_lag_solved:g}'}" for r in before.itertuples())
        lines.append(f"{task}: {said}" + (f" (long-range-lags, the older rule: {then})" if then else ""))
    return (markdown(pd.DataFrame(rows)) + f"\n\nRMSProp at 3e-3 for every cell, {seeds} seeds, 64 units; seeds solved / run within "
            f"{budget:,} steps, judged once on 10,000 fresh test sequences by the kept checkpoint (the tuned profile's rules); "
            + LAG_LEGEND + "\n\nLongest lag: " + "; ".join(lines) + ".\n\n" + source(root, run))


@block("long-range-tuned")
def long_range_tuned(root: Path) -> str:
    """Per task and model at the learning rate chosen on validation: the chosen rate, seeds solved on the fresh test set
    at each lag with the censored median step, the longest lag; beside it the longest lag at 3e-3 and at every rate."""
    return _own_rates(root, "long-range-tuned")


@block("long-range-modern")
def long_range_modern(root: Path) -> str:
    """The lru, minGRU and minLSTM on the tuned profile's settings, as long-range-tuned's block reads the classic cells,
    and per task each new cell's longest lag against the classic cells' at their own rates."""
    text = _own_rates(root, "long-range-modern")
    new, old = table(root, "long-range-modern", "tuned"), table(root, "long-range-tuned", "tuned")
    new, old = new.assign(model=models(new)), old.assign(model=models(old))
    say = lambda v: "none" if pd.isna(v) else f"{v:g}"  # noqa: E731
    lines = []
    for task, g_ in new.groupby("task", sort=False):
        classic = old[old["task"] == task]
        lines.append(f"{task.replace('_', ' ')}: " + ", ".join(f"{r.model} {say(r.longest_lag_solved)}" for r in g_.itertuples())
                     + " against " + ", ".join(f"{r.model} {say(r.longest_lag_solved)}" for r in classic.itertuples()))
    cut = text.rindex("\n\n*From")
    return (text[:cut] + "\n\nLongest lag, each model at its own rate, the new cells against the classic ones (long-range-tuned, the same "
            "tasks, lags, rates, seeds, width and budget): " + "; ".join(lines) + "." + text[cut:])


def _own_rates(root: Path, run: str) -> str:
    by = table(root, run, "by_setting")
    tuned = table(root, run, "tuned")
    by = by[by["lr_selected"].astype(bool)]
    by = by.assign(model=models(by))
    tuned = tuned.assign(model=models(tuned))
    lags = sorted(by["seq_len"].unique())
    budget = int(by["steps"].max()) if "steps" in by else None
    rows = []
    for (task, model), g_ in task_model_groups(by):
        t = tuned[(tuned["task"] == task) & (tuned["model"] == model)].iloc[0]
        best = float(t["longest_lag_solved"]) if pd.notna(t["longest_lag_solved"]) else None
        row = {"task": task.replace("_", " "), "model": model, "lr": f"{t['lr']:g}"}
        row |= lag_cells(g_, lags, best)
        ref = t["longest_lag_at_reference_lr"]
        row["at 3e-3"] = "none" if pd.isna(ref) else f"{ref:g}"
        row["at each rate"] = t["longest_lag_by_lr"]
        rows.append(row)
    seeds = int(by["seeds"].max()) if "seeds" in by else 3
    changed = [f"{r['task']}, {r['model']}: {r['longest lag'].strip('*')} at {r['lr']} against {r['at 3e-3']}" for r in rows
               if r["longest lag"].strip("*") != r["at 3e-3"]]
    top = tuned["lr"].astype(float).max()
    at_top = int((tuned["lr"].astype(float) == top).sum())
    at_budget = [f"{r['task']}, {r['model']} at T {T}" for r in rows for T in lags
                 if r.get(f"T {T}", "").startswith("**") and r[f"T {T}"].endswith(f"({budget:,})**")]
    finding = (f"Against the one rate 3e-3, the chosen rate changes the longest lag in {len(changed)} of {len(rows)} settings"
               + (": " + "; ".join(changed) if changed else "") + f". {at_top} of the {len(rows)} chosen rates are the largest tried ({top:g}). "
               + ("Solved at the budget's last evaluation (median steps to solve = the budget), where the budget, not the cell, is the "
                  "limit: " + "; ".join(at_budget) + "." if at_budget else ""))
    return (markdown(pd.DataFrame(rows)) + f"\n\nlr: the rate chosen on validation for the task and model (over all its lags; the rule: "
            f"the longest lag its seeds solve on validation, then the most seeds solved, then the fewest steps). T columns, at that rate: seeds "
            f"solved / run ({seeds} seeds) within {budget:,} steps, judged once on 10,000 fresh test sequences by the kept checkpoint; in brackets "
            "the median steps to solve over every seed (one that did not solve counted as beyond the budget: shown only where most solved); "
            "**bold**: the longest lag solved by most seeds with every shorter lag solved too; blank: not run (the ladder). at 3e-3 and "
            "at each rate: the longest lag the same test reads at the one rate the lags profile used, and at every rate tried.\n\n"
            + finding + "\n\n" + source(root, run))


@block("long-range-long")
def long_range_long(root: Path) -> str:
    """Per task and model at the rate long-range-tuned chose: seeds solved on the fresh test set at each lag within the
    long budget, the longest lag, beside the longest lag the tuned run's 2,000 steps reached at the same rate."""
    run = "long-range-long"
    by = table(root, run, "by_setting")
    lag = table(root, run, "longest_lag")
    tuned = table(root, "long-range-tuned", "tuned")
    by, lag, tuned = (d.assign(model=models(d)) for d in (by, lag, tuned))
    lags = sorted(by["seq_len"].unique())
    budget = int(by["steps"].max())
    short_budget = int(table(root, "long-range-tuned", "by_setting")["steps"].max())
    rows, further, same, capped = [], [], [], []
    for (task, model), g_ in task_model_groups(by):
        longest = lag[(lag["task"] == task) & (lag["model"] == model)]["longest_lag_solved"]
        best = float(longest.iloc[0]) if len(longest) and pd.notna(longest.iloc[0]) else None
        t = tuned[(tuned["task"] == task) & (tuned["model"] == model)].iloc[0]
        assert float(t["lr"]) == float(g_["lr"].iloc[0]), (task, model)  # the long run trains at the rate the tuned run chose
        before = float(t["longest_lag_solved"]) if pd.notna(t["longest_lag_solved"]) else None
        row = {"task": task.replace("_", " "), "model": model, "lr": f"{t['lr']:g}"}
        row |= lag_cells(g_, lags, best)
        if best is None:
            row["longest lag"] = f"under {lags[0]:g}"
        row[f"at {short_budget:,} steps"] = "none" if before is None else f"{before:g}"
        now = best or 0.0
        label = f"{row['task']}, {model}"
        if now == lags[-1] and before == lags[-1]:
            capped.append(label)
        elif now > (before or 0.0):
            further.append(f"{label} ({'none' if before is None else f'{before:g}'} to {now:g}{' or more' if now == lags[-1] else ''})")
        elif now == (before or 0.0) or (best is None and (before or 0.0) < lags[0]):
            same.append(f"{label} ({row['longest lag'].strip('*')})")
        else:
            same.append(f"{label} ({row['longest lag'].strip('*')}, where {short_budget:,} steps read {before:g})")
        rows.append(row)
    seeds = int(by["seeds"].max())
    finding = (f"With {budget // short_budget} times the budget, {len(further)} of {len(rows)} settings go further: "
               + ("; ".join(further) if further else "none") + ". The longest lag stays where it was for "
               + ("; ".join(same) if same else "none") + f": there the cell or its rate, not the {short_budget:,}-step budget, is the limit."
               + (f" At the longest lag run with either budget, so how far it goes is not measured: {'; '.join(capped)}." if capped else ""))
    runs = table(root, run, "runs")
    blew = runs[runs["diverged"].astype(bool)].sort_values(["task", "seq_len", "seed"])
    if len(blew):
        finding += (f" {len(blew)} of {len(runs)} runs diverged: " + "; ".join(
            f"{r.task.replace('_', ' ')}, {m} at T {r.seq_len:g}, seed {r.seed:g}, step {r.diverged_step:,.0f}"
            for r, m in zip(blew.itertuples(), models(blew))) + " (the kept checkpoint, the best on validation before it, is what the test set judged).")
    return (markdown(pd.DataFrame(rows)) + f"\n\nlr: the rate long-range-tuned chose on validation for the task and model. T columns: seeds "
            f"solved / run ({seeds} seeds) within {budget:,} steps, judged once on 10,000 fresh test sequences by the kept checkpoint; in "
            "brackets the median steps to solve over every seed (one that did not solve counted as beyond the budget: shown only where most "
            "solved); **bold**: the longest lag solved by most seeds with every shorter lag solved too; blank: not run (the ladder). "
            f"at {short_budget:,} steps: the longest lag long-range-tuned's test set read at the same rate.\n\n" + finding + "\n\n" + source(root, run))


@block("lyrics-full")
def lyrics_full(root: Path) -> str:
    run = "lyrics-full"
    final = table(root, run, "final")
    final = final.assign(col=final["impl"] + ", " + final["sampling"].fillna("consecutive"))
    cols = [c for c in ("scratch, consecutive", "cudnn, consecutive", "scratch, random", "cudnn, random") if c in set(final["col"])]
    rows = []
    for cell, g_ in final.groupby("cell", sort=False):
        row = {"cell": cell}
        for c in cols:
            r = g_[g_["col"] == c]
            row[c] = f"{g(r['train_ppl'].iloc[0])} / {g(r['val_ppl'].iloc[0], 4)}" if len(r) else ""
        rows.append(row)
    return markdown(pd.DataFrame(rows)) + "\n\nfinal training / held-out perplexity, 160 epochs at the book's settings.\n\n" + source(root, run)


@block("lyrics-book")
def lyrics_book(root: Path) -> str:
    from gradlab.published import BOOK_TRAINING_PERPLEXITY

    res = table(root, "lyrics-full", "results")
    res = res[(res["impl"] == "scratch") & (res["sampling"].fillna("consecutive") == "consecutive")]
    rows = []
    for cell in ("gru", "lstm", "rnn"):
        r = res[res["cell"] == cell].set_index("epoch")["train_ppl"]
        published = BOOK_TRAINING_PERPLEXITY.get(cell, {})
        rows.append({"scratch cell": cell, "measured, epochs 40 / 80 / 120 / 160": " / ".join(g(float(r.get(float(e), float("nan")))) for e in (40, 80, 120, 160)),
                     "the book": " / ".join(f"{v:g}" for v in published.values()) if published else ""})
    return markdown(pd.DataFrame(rows)) + "\n\ntraining perplexity of the book's scratch run.\n\n" + source(root, "lyrics-full")


def _context_over_seeds(root: Path, run: str) -> pd.DataFrame:
    over = table(root, run, "context_over_seeds")
    return over.assign(model=models(over))


@block("lyrics-generalise")
def lyrics_generalise(root: Path) -> str:
    return _language_models(root, "lyrics-generalise")


@block("lyrics-counting")
def lyrics_counting(root: Path) -> str:
    return _language_models(root, "lyrics-counting")


def _language_models(root: Path, run: str) -> str:
    """Test perplexity per cell over seeds against the unigram and the Kneser-Ney n-grams; the context each uses."""
    final, runs = table(root, run, "final"), table(root, run, "runs")
    over = _context_over_seeds(root, run) if (root / "reports" / run / "context_over_seeds.parquet").exists() else None
    rows = []
    modes = "test_best_loss" in runs and runs["test_best_loss"].notna().any()
    for cell, f in final.groupby("cell", sort=False):
        row = {"model": cell, "test perplexity": span(f["test_ppl"], 3), "best validation perplexity": span(np.exp(f["best_val_loss"].astype(float)), 3),
               "seeds": str(len(f))}
        if modes:
            r_ = runs[runs["cell"] == cell]
            picked = ", ".join(sorted({MODE_NAMES.get(m, m) for m in r_["eval_best_mode"].astype(str)}))
            row["long context (best mode on validation)"] = f"{span(np.exp(r_['test_best_loss'].astype(float)), 3)} ({picked})"
            row["mixed with counting"] = span(np.exp(r_["test_mix_loss"].astype(float)), 4)
        if over is not None and "replace_context_median" in over:
            for split, name in (("held out", "context used, held out"), ("training", "context used, training text")):
                o = over[(over["cell"] == cell) & (over["split"] == split)]
                if len(o):
                    o = o.iloc[0]
                    row[name] = f"{g(o['replace_context_median'])} ({g(o['replace_context_min'])}-{g(o['replace_context_max'])})"
            o = over[(over["cell"] == cell) & (over["split"] == "held out")]
            if len(o):
                row["best k, held out"] = g(float(o["best_k_median"].iloc[0]))
        rows.append(row)
    r = runs.iloc[0]
    baselines = [{"model": "unigram (the memoryless baseline)", "test perplexity": g(math.exp(r["test_unigram_loss"]))}]
    for n in (2, 3, 4, 5):
        if f"test_mkn{n}_loss" in runs:
            baselines.append({"model": f"Kneser-Ney {n}-gram",
                              "test perplexity": f"{g(math.exp(r[f'test_mkn{n}_loss']))} ({g(math.exp(r[f'test_kn{n}_loss']))})",
                              "best validation perplexity": f"{g(math.exp(r[f'val_mkn{n}_loss']))} ({g(math.exp(r[f'val_kn{n}_loss']))})"})
            if modes and f"test_mkn{n}cache_loss" in runs:
                baselines[-1]["long context (best mode on validation)"] = (f"{g(math.exp(r[f'test_mkn{n}cache_loss']))} "
                                                                          f"({g(math.exp(r[f'test_kn{n}cache_loss']))}), its cache")
    out = pd.DataFrame(rows + baselines)
    long = (" Long context: each held-out text read as one stream from its start, the settings of each mode chosen on the validation "
            "text and the test text read once; the network's modes are Grave et al.'s neural cache, Krause et al.'s dynamic "
            "evaluation and both, the one best on validation shown; the n-grams' is a cache of the last "
            f"{int(r['ngram_cache_window']):,} held-out characters (unigram to 5-gram counts, each target scored before it joins, "
            "weights by EM on validation); mixed with counting: the network's distribution mixed with the static and the cached "
            "5-gram's, weights on validation." if modes else "")
    return (markdown(out.fillna("")) + f"\n\nmedian (range) over seeds; the n-grams: interpolated Kneser-Ney with Chen and Goodman's "
            f"modified discounts (in brackets: one discount, 0.75); {int(r['test_targets_scored']):,} test targets, "
            f"{int(r['vocab_size']):,} characters in the vocabulary; context used: the fewest characters k from which no longer k "
            "shows evidence (95% interval) of costing over 1% when the ones before are replaced by unrelated text (Terms)." + long
            + "\n\n" + source(root, run))


MODE_NAMES = {"stream": "plain", "cache": "neural cache", "dynamic": "dynamic evaluation", "dynamic_cache": "dynamic evaluation + cache"}


@block("lyrics-long-context")
def lyrics_long_context(root: Path) -> str:
    """Where each reader gains: per band of distance back to the last occurrence of the target's context."""
    run = "lyrics-counting"
    b, runs = table(root, run, "by_distance"), table(root, run, "runs")
    best = runs.groupby("cell", sort=False)["test_best_loss"].median().idxmin()
    part = b[b["cell"] == best]
    cols = {"net_loss": f"{best}", "cache_loss": f"{best} + neural cache", "dynamic_loss": f"{best}, dynamic evaluation",
            "ngram_loss": "5-gram", "ngram_cache_loss": "5-gram + cache", "mix_loss": f"{best} mixed with counting"}
    rows = []
    for band, g_ in part.groupby("band", sort=False):
        share = 100 * g_["share"].iloc[0]
        row = {"the context last seen": "never" if band == "never" else f"{band} characters back",
               "share of test targets": f"{share:.0f}%" if share >= 1 else f"{share:.1f}%"}
        row |= {name: f"{g_[c].median():.2f}" for c, name in cols.items() if c in g_}
        rows.append((int(g_["distance_from"].iloc[0]), row))
    return (markdown(pd.DataFrame([r for _, r in sorted(rows, key=lambda x: x[0])]))
            + f"\n\nmean test loss in nats per band of how far back the target's {int(part['context_chars'].iloc[0])}-character context "
            f"last occurred in the text read so far ({best}, the cell best in long context: median over {part['seed'].nunique()} seeds; "
            "the counting columns are the same for every seed).\n\n" + source(root, run))


@block("lyrics-counting-gap")
def lyrics_counting_gap(root: Path) -> str:
    """Where the counting recipe's networks lose to the 5-gram: per band of the target's training count."""
    b = table(root, "lyrics-counting", "by_frequency")
    b = b.assign(gap=b["net_loss"] - b["ngram_loss"])
    rows = []
    for band, g_ in b.groupby("band", sort=False):
        row = {"target seen in training": f"{band} times", "share of test targets": f"{100 * g_['share'].iloc[0]:.0f}%",
               "5-gram loss": f"{g_['ngram_loss'].iloc[0]:.2f}"}
        for cell, c in g_.groupby("cell", sort=False):
            row[f"{cell} - 5-gram"] = f"{c['gap'].median():+.2f}"
        rows.append((int(g_["count_from"].iloc[0]), row))
    # the rows' own numbers added up: each band's median gap over seeds, weighted by its share of the targets (a median
    # of each seed's total would be another statistic, and would not agree with the rows above it)
    per = b.groupby(["cell", "band"], sort=False).agg(share=("share", "first"), gap=("gap", "median"))
    totals = (per["share"] * per["gap"]).groupby(level="cell", sort=False).sum()
    return (markdown(pd.DataFrame([r for _, r in sorted(rows, key=lambda x: x[0])]))
            + "\n\nmean loss in nats per band of how often the target character occurs in the training text (network: median over "
            f"{b['seed'].nunique()} seeds), on the test text read as one stream; the mean gap over all targets, the rows' gaps "
            "weighted by their shares: " + ", ".join(f"{c} {v:+.3f}" for c, v in totals.items()) + " nats.\n\n" + source(root, "lyrics-counting"))


def _by_cell(df: pd.DataFrame, col: str) -> dict[str, float]:
    return {c: float(v[col].median()) for c, v in df.groupby("cell", sort=False)}


@block("lyrics-counting-finding")
def lyrics_counting_finding(root: Path) -> str:
    """The reference run's verdict against counting, without and with long context; what it gained over the generalise
    recipe; and how far back its networks look under the replace probe, in words."""
    run = "lyrics-counting"
    final, runs, over = table(root, run, "final"), table(root, run, "runs"), _context_over_seeds(root, run)
    r = runs.iloc[0]
    grams = {n: math.exp(r[f"test_mkn{n}_loss"]) for n in (2, 3, 4, 5)}
    cached = {n: math.exp(r[f"test_mkn{n}cache_loss"]) for n in (2, 3, 4, 5)}
    top, top_cached = min(grams, key=grams.get), min(cached, key=cached.get)
    test = _by_cell(final, "test_ppl")
    before = _by_cell(table(root, "lyrics-generalise", "final"), "test_ppl")
    best = min(test, key=test.get)
    beaten = [c for c, f in final.groupby("cell", sort=False) if (f["test_ppl"].astype(float) < grams[top]).all()]
    ppl = runs.assign(best_ppl=np.exp(runs["test_best_loss"].astype(float)), mix_ppl=np.exp(runs["test_mix_loss"].astype(float)),
                      stream_ppl=np.exp(runs["test_stream_loss"].astype(float)))
    long = _by_cell(ppl, "best_ppl")
    long_best = min(long, key=long.get)
    long_beaten = [c for c, f in ppl.groupby("cell", sort=False) if (f["best_ppl"] < cached[top_cached]).all()]
    mixed = [c for c, f in ppl.groupby("cell", sort=False) if (f["mix_ppl"] < cached[top_cached]).all()]
    picked = ppl[ppl["cell"] == long_best]["eval_best_mode"].astype(str).value_counts()
    held, trained = over[over["split"] == "held out"].set_index("cell"), over[over["split"] == "training"].set_index("cell")
    bands = table(root, run, "by_distance")
    bands = bands[bands["cell"] == bands["cell"].iloc[0]].groupby("band", sort=False).first().reset_index().sort_values("distance_from")
    far = bands[(bands["distance_from"] > 10) & (bands["distance_from"] <= 1000)]  # the bands a line's repetition falls in
    verdict = (f"**Every seed of {', '.join(beaten)} beats counting.**" if beaten else
               "**No network beats counting.** Every seed of every cell loses on the test text:")
    others = [c for c in test if c != best]
    static = (f"{verdict} the {best.upper()}, the best, at {span(final[final['cell'] == best]['test_ppl'])} against the "
              f"modified {top}-gram's {g(grams[top])}, {100 * (test[best] / grams[top] - 1):.0f}% above it (the bigram: {g(grams[2])}); "
              + ", ".join(f"{c} {g(test[c])}" for c in others) + ". Against the generalise recipe: "
              + ", ".join(f"{c} {g(before[c])} -> {g(test[c])}" for c in test if c in before) + ".")
    with_long = (f" **Read with long context, {'every seed of ' + ', '.join(long_beaten) + ' beats' if long_beaten else 'no network beats'} "
                 f"counting with a cache.** The held-out songs repeat their lines, and counting with a cache of the last "
                 f"{int(r['ngram_cache_window']):,} held-out characters scores {g(cached[top_cached])} (the {top_cached}-gram; "
                 f"{g(grams[top_cached])} without it). The networks' best mode on validation reaches "
                 + ", ".join(f"{c} {span(ppl[ppl['cell'] == c]['best_ppl'])}" for c in long) + " on test ("
                 + ", ".join(f"{MODE_NAMES.get(m, m)} for {n} of {picked.sum()} {long_best} seeds" for m, n in picked.items())
                 + f"): a cache or dynamic evaluation takes the {long_best.upper()} from {span(ppl[ppl['cell'] == long_best]['stream_ppl'])} "
                 f"to {span(ppl[ppl['cell'] == long_best]['best_ppl'])}, {g(long[long_best] / cached[top_cached], 2)} times counting's. "
                 + (f"Mixed with counting, every seed of {', '.join(mixed)} scores below counting alone ("
                    + ", ".join(f"{c} {span(ppl[ppl['cell'] == c]['mix_ppl'], 4)}" for c in mixed)
                    + f" against {g(cached[top_cached], 4)}), by {100 * (1 - ppl['mix_ppl'].max() / cached[top_cached]):.1f} to "
                    f"{100 * (1 - ppl['mix_ppl'].min() / cached[top_cached]):.1f}%, the network weighted "
                    f"{ppl['mix_net'].min():.2f} to {ppl['mix_net'].max():.2f}: what the network knows that counting does not is little."
                    if mixed else "Mixed with counting, no network gets below counting alone on every seed."))
    context = (" How far back they look (the replace probe, heads from unrelated text: Terms), on held-out text: "
               + ", ".join(f"{c} {g(v)} characters" for c, v in held["replace_context_median"].items())
               + " (median over seeds; the cut probe: " + ", ".join(f"{c} {g(v)}" for c, v in held["effective_context_median"].items())
               + "); on training text " + ", ".join(f"{c} {g(v)}" for c, v in trained["replace_context_median"].items())
               + f". Khandelwal et al. found about 200 tokens used by word-level LSTMs on large corpora: on {int(r['train_chars']):,} "
               f"characters of training text these networks use at most {g(held['replace_context_median'].max())} characters of unseen "
               f"text, while the text's own long-range structure is repetition: for {100 * far['share'].sum():.0f}% of the test targets "
               f"the {int(far['context_chars'].iloc[0])} characters before them last occurred {far['band'].iloc[0].split('-')[0]} to "
               f"{far['band'].iloc[-1].split('-')[-1]} characters back, where counting with a cache scores "
               + " and ".join(f"{v:.2f}" for v in far["ngram_cache_loss"]) + " nats against the 5-gram's "
               + " and ".join(f"{v:.2f}" for v in far["ngram_loss"]) + " (table below).")
    return static + with_long + context + "\n\n" + source(root, run, "lyrics-generalise")


@block("lyrics-counting-limits")
def lyrics_counting_limits(root: Path) -> str:
    """Where the gap lies, in words, and what the search and the reference run cannot tell."""
    run = "lyrics-counting"
    b = table(root, run, "by_frequency")
    b = b.assign(gap=b["net_loss"] - b["ngram_loss"])
    final, runs = table(root, run, "final"), table(root, run, "runs")
    best = min(_by_cell(final, "test_ppl").items(), key=lambda kv: kv[1])[0]
    gaps = b[b["cell"] == best].groupby("count_from")["gap"].median()
    shares = b.groupby("count_from")["share"].first()
    bands = b.groupby("count_from")["band"].first()
    wins = [k for k in gaps.index if gaps[k] < 0]
    worst = [k for k in gaps.index if gaps[k] >= 0.4]
    search = pd.read_csv(report_file(root, "lyrics-recipe-search.csv", "python scripts/lyrics_recipe_search.py")).set_index("recipe")
    chosen, wide = search.loc["stronger-smooth-longer"], search.loc["wide-smooth-longer"]
    vals = np.exp(final[final["cell"] == best]["best_val_loss"].astype(float))
    r = runs.iloc[0]
    epochs = int(r["steps"]) * int(r["seq_len"]) * int(r["batch_size"]) / int(r["train_chars"])
    return (f"The networks predict the frequent characters (seen {bands[wins[0]].rstrip('+')} times or more, "
            f"{100 * shares[wins].sum():.0f}% of the test targets) better than the 5-gram, the {best.upper()} by {-gaps[wins].max():.2f} nats, "
            + ("and lose in every rarer band" if wins == list(gaps.index[len(gaps) - len(wins):]) else "and lose in others")
            + f", most on the characters seen {bands[worst[0]].split('-')[0]} to {bands[worst[-1]].split('-')[-1]} times "
            f"({100 * shares[worst].sum():.0f}% of the targets, the {best.upper()} {gaps[worst].min():.2f} to {gaps[worst].max():.2f} nats worse). "
            "There the n-gram has exact recall of the phrases it has seen and Kneser-Ney's smoothing towards characters that follow "
            "many others; the networks put too little probability on the tail (label smoothing, a uniform floor on the training "
            f"targets, was among the larger single gains of the search: stronger {g(search.loc['stronger', 'best_val_ppl'])} -> "
            f"stronger-smooth {g(search.loc['stronger-smooth', 'best_val_ppl'])} on validation).\n\n"
            f"What this cannot tell: the search is {len(search)} runs, one seed each, {int((search['cell'] == 'gru').sum())} of them on the GRU "
            f"(the reference run's seeds spread by {100 * (vals.max() / vals.min() - 1):.0f}% in validation perplexity, {best.upper()} "
            f"{g(vals.min())}-{g(vals.max())}, so a recipe within a few percent of another is not known to be better). The profile's recipe "
            f"at 512 units, run after the reference run, scored {100 * (1 - wide['best_val_ppl'] / chosen['best_val_ppl']):.0f}% better on its "
            f"one seed, within that spread, at {wide['parameters'] / chosen['parameters']:.1f} times the parameters. Training stops at "
            f"{int(r['steps']):,} steps of {int(r['seq_len']) * int(r['batch_size']):,} characters (about {epochs:.0f} epochs) and at what 2 "
            "cores train in minutes: no recipe with a model beyond 512 units or averaged weights was run, and none that teaches the "
            f"network itself to copy (truncation beyond {int(r['seq_len'])} characters, a curriculum of repeated lines). "
            "A network that beats the n-gram may exist; none of these gets within "
            f"{100 * (search['best_val_ppl'] / search['best_kn_val_ppl']).min() - 100:.0f}% of it on validation text. The long-context "
            "modes' settings (the neural cache's theta, window and share; dynamic evaluation's rule, rate and decay, 20-character "
            f"segments) are chosen on one validation text of {int(r['val_chars']):,} characters from small grids, and each of them, like "
            "counting's cache, reads only the held-out text before the target: what they gain is repetition within the held-out songs.\n\n"
            + source(root, run) + " *And `reports/lyrics-recipe-search.csv`.*")


@block("lyrics-context")
def lyrics_context(root: Path) -> str:
    run = "lyrics-context"
    over = _context_over_seeds(root, run)
    rows = []
    for (cell, split), o in over.groupby(["cell", "split"], sort=False):
        o = o.iloc[0]
        rows.append({"model": cell, "text": split, "context used": g(o["replace_context_median"]), "surely within by": g(o["replace_upper_median"]),
                     "cut (Khandelwal et al.)": g(o["effective_context_median"]), "best k": g(o["best_k_median"]),
                     "warm-up": f"{100 * o['warmup_median']:+.1f}%"})
    return markdown(pd.DataFrame(rows)) + "\n\nthe book's runs (160 epochs on 10,000 characters), one seed each.\n\n" + source(root, run)


@block("clipping-quick")
def clipping_quick(root: Path) -> str:
    run = "clipping-quick"
    final, clip = table(root, run, "final"), table(root, run, "clipping")
    rows = []
    for (task, lr), g_ in final.groupby(["task", "lr"], sort=True):
        for _, r in g_.iterrows():
            c = clip[clip["point"] == r["point"]]
            share = f", clipped {100 * c['fraction_clipped'].iloc[0]:.0f}% of steps" if len(c) else ""
            value = (f"diverged at step {int(r['diverged_step'])}" if pd.notna(r.get("diverged_step")) else
                     f"{g(r['train_ppl'])} / {g(r['val_ppl'])}" if task == "lyrics" else f"{r['loss_over_baseline']:.2f}")
            rows.append({"task": task, "lr": f"{lr:g}", "clip": r["clip"], "result": value + share})
    return (markdown(pd.DataFrame(rows)) + "\n\nlyrics: training / held-out perplexity; adding: final held-out loss over the memoryless "
            "loss of the held-out sequences.\n\n" + source(root, run))


@block("clipping-modern")
def clipping_modern(root: Path) -> str:
    """Per cell and threshold: at each SGD rate, the median over seeds of the test loss over the memoryless loss (a
    diverged seed counted as beyond every value), how many seeds diverged, and the median share of steps clipped; per
    cell, the rates it trains at unclipped and clipped, its best entry, and how often norm:1 fires at the lowest rate."""
    run = "clipping-modern"
    final, clip = table(root, run, "final"), table(root, run, "clipping")
    final = final.merge(clip[["point", "fraction_clipped"]], on="point", how="left")
    final["ratio"] = final["test_loss_ratio"].astype(float).where(final["diverged_step"].isna(), np.inf)
    rates = sorted(final["lr"].unique())
    clips = [c for c in ("none", "norm:1", "value:0.1", "adaptive:90") if c in set(final["clip"])]
    cells = [c for c in CELLS_ALL if c in set(final["cell"])]
    seeds = int(final.groupby(["cell", "clip", "lr"]).size().max())
    rows, at = [], {}
    for cell in cells:
        for c in clips:
            row = {"cell": cell, "clip": c}
            for lr in rates:
                r = final[(final["cell"] == cell) & (final["clip"] == c) & (final["lr"] == lr)]
                bad, median, share = int(r["diverged_step"].notna().sum()), float(r["ratio"].median()), float(r["fraction_clipped"].median())
                text = f"{bad}/{len(r)} diverged" if not np.isfinite(median) else f"{median:.2f}" + (f", {bad}/{len(r)} diverged" if bad else "")
                if c != "none":
                    text += f" ({100 * share:.0f}%)"
                row[f"lr {lr:g}"] = text
                at[cell, c, lr] = (median, bad, share)
            rows.append(row)
    said = []
    for cell in cells:
        trains = lambda c, lr: at[cell, c, lr][1] == 0  # noqa: E731 (every seed kept finite)
        plain = [lr for lr in rates if trains("none", lr)]
        clipped = {lr: [c for c in clips[1:] if trains(c, lr)] for lr in rates}
        top = max((lr for lr in rates if clipped[lr]), default=None)
        best = min(((at[cell, c, lr][0], c, lr) for c in clips for lr in rates), key=lambda v: v[0])
        share = at[cell, "norm:1", rates[0]][2]
        said.append(f"{cell}: unclipped, every seed trains up to {max(plain):g}" if plain else f"{cell}: unclipped, no rate keeps every seed")
        said[-1] += (f"; clipped, up to {top:g} ({', '.join(clipped[top])})" if top is not None else "; clipped, no rate keeps every seed")
        said[-1] += f"; best {best[0]:.2f} ({best[1]} at {best[2]:g}); norm:1 clips {100 * share:.0f}% of its steps at {rates[0]:g}"
    return (markdown(pd.DataFrame(rows)) + f"\n\nthe adding problem at T 20, 64 units, plain SGD, batch 32, 1,500 steps, {seeds} seeds; each entry: "
            "the median over seeds of the final model's loss on 10,000 fresh test sequences over their memoryless loss (a diverged seed "
            "counts as beyond every value; 'k/3 diverged' alone: most seeds did), how many seeds diverged, and in brackets the median "
            "share of steps the threshold clipped.\n\n" + "; ".join(said) + " (trains: no seed diverged; best: the lowest entry of the "
            "cell's rows).\n\n" + source(root, run))


@block("throughput-quick")
def throughput_quick(root: Path) -> str:
    run = "throughput-quick"
    res = table(root, run, "results")
    res = res[res["impl"] == "scratch"]
    res = res.assign(shape=np.where(res["workload"] == "train_step", "one training step",
                                    "T " + res["seq_len"].astype(str) + ", B " + res["batch_size"].astype(str) + ", H " + res["hidden_size"].astype(str)))
    wide = res.pivot_table(index="shape", columns="cell", values="ratio_to_fused", aggfunc="first", sort=False)
    wide = wide[[c for c in ("rnn", "gru", "lstm") if c in wide.columns]].map(lambda v: f"{v:.2f}").reset_index()
    return markdown(wide) + "\n\nscratch time over the fused kernel's (below 1: faster), interleaved in each point.\n\n" + source(root, run)


@block("throughput-modern")
def throughput_modern(root: Path) -> str:
    """The modern cells' loop against their scan against the LSTM's fused kernel, per length (forward and backward)."""
    run = "throughput-modern"
    res = table(root, run, "results")
    rows = []
    groups = sorted(res.groupby(["cell", "seq_len"]), key=lambda kv: (CELLS_ALL.index(kv[0][0]), kv[0][1]))
    for (cell, T), q in groups:
        twin = q["twin"].iloc[0]  # the impl the measure divided by: cudnn, or the modern cells' scan
        q = q.set_index("impl")
        row = {"cell": cell, "T": f"{int(T):,}", "loop, ms": g(q.loc["scratch", "ms_median"]) if "scratch" in q.index else "",
               "twin": twin, "twin, ms": g(q.loc[twin, "ms_median"]) if twin in q.index else "",
               "loop / twin": f"{q.loc['scratch', 'ratio_to_fused']:.2f}" if "scratch" in q.index else ""}
        ref = q.loc[twin, "ratio_to_reference"] if twin == "scan" and "ratio_to_reference" in q and twin in q.index else float("nan")
        row["twin / the LSTM's fused kernel"] = f"{ref:.2f}" if pd.notna(ref) else ""
        rows.append(row)
    shape = res.iloc[0]
    modern = res[res["twin"] == "scan"]
    loop = modern[modern["impl"] == "scratch"]["ratio_to_fused"]
    scan = modern[modern["impl"] == "scan"]["ratio_to_reference"]
    finding = (f"\n\nOn these shapes the scan is {loop.min():.1f} to {loop.max():.1f} times faster than the loop, and takes "
               f"{scan.min():.2f} to {scan.max():.1f} times the time of a whole LSTM through torch.nn's fused kernel.")
    return (markdown(pd.DataFrame(rows)) + f"\n\nforward and backward of one layer, B {int(shape['batch_size'])}, H {int(shape['hidden_size'])}, float32, "
            "the median of the repeats, the impls interleaved in each point; twin: the cell's fast twin (the scan for the modern cells, torch.nn's "
            "fused kernel for the LSTM); the last column: the scan's time over the LSTM's fused kernel's at the same shape, timed in the same point."
            + finding + "\n\n" + source(root, run))


@block("benchmark-gates")
def benchmark_gates(root: Path) -> str:
    gates = tomllib.loads((root / "tests" / "benchmarks" / "gates.toml").read_text(encoding="utf-8"))
    rows = [{"ratio": name, "goal": v.get("goal", ""), "recorded runs": ", ".join(f"{x:g}" for x in v.get("runs", [])),
             "gate": f"{'>=' if v.get('minimum') else '<='} {v['threshold']:g}"} for name, v in gates.items() if isinstance(v, dict) and "threshold" in v]
    return markdown(pd.DataFrame(rows)) + "\n\n*From `tests/benchmarks/gates.toml` (each gate with the runs it was set from).*"


@block("decay-theory")
def decay_theory(root: Path) -> str:
    """The true and the fresh gradient's factor per step against the prediction, per cell and width."""
    run = "gradient-decay-theory"
    rates = table(root, run, "decay_rates")
    rates = rates[(rates["init"] == "orthogonal") & (rates["wrt"].isin(["h", "h,c"]))]
    rows = []
    for cell in [c for c in CELLS if c in set(rates["cell"])]:
        r = rates[rates["cell"] == cell]
        for probe, name in (("hidden", "true gradient"), ("independent", "fresh gradient")):
            q = r[r["probe"] == probe].sort_values("hidden_size")
            if len(q):
                rows.append({"cell": cell, "probe": name, **{f"H {int(h)}": f"{v:.4f}" for h, v in zip(q["hidden_size"], q["factor_per_step"])},
                             "predicted": f"{q['predicted_factor'].iloc[0]:.4f}"})
    crit = table(root, run, "decay_rates")
    crit = crit[(crit["init"] == "critical") & (crit["probe"] == "hidden") & (crit["wrt"] == "h")]
    said = "; ".join(f"{r['cell']} {r['factor_per_step']:.3f}" for _, r in crit.iterrows())
    return (markdown(pd.DataFrame(rows).fillna("")) + f"\n\nfactor per step at init_scale 1, orthogonal init. The critical init, which puts "
            f"the prediction at 1, gives the true gradient {said} per step (H 256).\n\n" + source(root, run))


@block("decay-modern")
def decay_modern(root: Path) -> str:
    """The modern cells' factor per step of ||dL/dh_t|| against their exact closed forms, and scratch against scan."""
    run = "gradient-decay-modern"
    rates = table(root, run, "decay_rates")
    rates = rates[(rates["probe"] == "hidden") & (rates["wrt"] == "h")]
    agree = table(root, run, "impl_agreement")
    rows = []
    for cell in ("linear", "lstm", "lru", "mingru", "minlstm"):
        r = rates[rates["cell"] == cell]
        if not len(r):
            continue
        memory = "forget_bias" if cell in ("lstm", "mingru", "minlstm") else "init_scale"
        for value, q in r.groupby(r[memory].fillna(-1.0), sort=True):
            if cell == "lstm" and q["init_scale"].nunique() > 1:
                q = q[q["init_scale"] == 0.9]
            one = q.iloc[0]
            setting = ({"init_scale": "radius" if cell == "lru" else "init_scale", "forget_bias": "forget bias"}[memory]
                       + (" " + f"{value:g}" if value >= 0 else ": the paper's ring 0.9-0.999"))
            closed = one["closed_form_factor"]
            rows.append({"cell": cell + (f" ({one['variant']})" if isinstance(one.get("variant"), str) else ""), "memory": setting,
                         "factor per step": f"{one['factor_per_step']:.4f}" + ("" if bool(one.get("one_rate", True)) else " (not one rate)"),
                         "closed form": f"{closed:.4f}" if pd.notna(closed) else "",
                         "closed form's largest relative error": f"{q['closed_form_max_rel'].max():.0e}" if pd.notna(closed) else "",
                         "predicted": f"{one['predicted_factor']:.4f}" if pd.notna(one.get("predicted_factor")) else ""})
    gated = rates[rates["cell"].isin(["mingru", "minlstm"]) & (rates["impl"] == "scan")]
    fb = gated["forget_bias"].max()
    kept = gated[gated["forget_bias"] == fb].groupby("cell")["factor_per_step"].first()
    worst = agree.groupby("cell")["max_rel_diff"].max()
    said = "; ".join(f"{c} {worst[c]:.0e}" for c in ("lru", "mingru", "minlstm") if c in worst)
    return (markdown(pd.DataFrame(rows)) + "\n\nfactor per step: the fit of log10 ||dL/dh_t|| against distance over T 200 (H 32, float64; the lstm at "
            "init_scale 0.9). closed form: the lru's |lambda|^k per mode, the min cells' product of their realised retention gates "
            "(1 - z_t, f'_t), the linear cell's rho^k, evaluated on the same sequences, with the largest relative error of the closed "
            "form against the measured gradient at any distance. predicted: mean-field theory for the classic cells; for the min cells "
            "sqrt(E[a^2]) from their gates' law over fresh weights (one draw's norm follows its slowest units, which puts every "
            "measured factor above it here). The scan against the loop, every gradient at every distance: largest "
            f"relative difference {said}.\n\nSo a gate's bias is not a memory knob for every cell alike: at forget bias {fb:g} minLSTM "
            f"keeps {kept['minlstm']:.2f} per step where minGRU keeps {kept['mingru']:.2f}.\n\n" + source(root, run))


@block("curse-of-memory")
def curse_of_memory(root: Path) -> str:
    """The state's sensitivity to the recurrent parameters as memory grows: the diagonal recurrences measured against their
    closed forms, with the growth exponent; the classic and min cells at each of their memory settings."""
    run = "curse-of-memory"
    s = table(root, run, "sensitivity")
    diag = s[s["cell"].isin(["diagonal", "lru"]) & s["wrt"].isin(["|lambda|", "nu_log"])]
    radii = [0.9, 0.99, 0.998]
    rows = []
    for (cell, variant, wrt), q in diag.groupby(["cell", "variant", "wrt"], sort=False):
        q = q.sort_values("memory")
        row = {"recurrence": f"{cell} ({variant})", "theta": wrt.replace("|", "\\|")}  # a table cell: its pipes escaped
        for r in radii:
            x = q[np.isclose(q["memory"], r)]
            if len(x):
                x = x.iloc[0]
                row[f"radius {r:g} ({g(x['memory_steps'], 3)} steps)"] = f"{g(x['sensitivity'], 3)} ({g(x['sensitivity_closed_form'], 3)})"
        far = q[q["memory"] >= 0.9]
        k = np.polyfit(np.log(far["memory_steps"]), np.log(far["sensitivity"]), 1)[0]
        row["grows as memory^k: k"] = f"{round(k, 2) + 0.0:.2f}"
        row["largest gap, z"] = f"{np.abs(q['z']).max():.1f}"
        rows.append(row)
    first = markdown(pd.DataFrame(rows))
    others = s[~s["cell"].isin(["diagonal", "lru"]) & (s["wrt"] == "all recurrent")]
    rows = []
    for cell in ("rnn", "lstm", "mingru", "minlstm"):
        q = others[others["cell"] == cell].sort_values("memory")
        if not len(q):
            continue
        said = ", ".join(f"{q['memory_setting'].iloc[0].replace('_', ' ')} {m:g}: {g(v, 3)} ({g(steps, 2)} steps)"
                         for m, v, steps in zip(q["memory"], q["sensitivity"], q["memory_steps"]))
        rows.append({"cell": cell, "sensitivity to all its recurrent parameters (memory measured)": said})
    def at(cell: str, memory: float | None = None) -> pd.Series:
        q = others[others["cell"] == cell]
        return q[q["memory"] == (q["memory"].max() if memory is None else memory)].iloc[0]

    mingru = others[others["cell"] == "mingru"]
    finding = (f"The tanh RNN at init_scale 1 remembers {g(at('rnn', 1.0)['memory_steps'], 2)} steps. The LSTM at forget bias "
               f"{at('lstm')['memory']:g} remembers {g(at('lstm')['memory_steps'], 2)} steps, its sensitivity {g(at('lstm')['sensitivity'], 2)}. "
               f"minGRU remembers {g(at('mingru')['memory_steps'], 2)} steps at forget bias {at('mingru')['memory']:g}, its sensitivity "
               f"{g(mingru['sensitivity'].min(), 2)} to {g(mingru['sensitivity'].max(), 2)} at every forget bias. minLSTM remembers at most "
               f"{g(others[others['cell'] == 'minlstm']['memory_steps'].max(), 2)} steps at any forget bias.")
    seeds = int(s["seeds"].min())
    T = int(s["seq_len"].max())
    return (first + f"\n\nE ||ds_t/dtheta||^2 per unit at the last step (T {T:,}, white noise, {seeds} seed{'s' if seeds > 1 else ''} pooled): measured (closed form). memory: the "
            "distance at which the state's backward signal has fallen by e (for a radius r, -1 / ln r). k: the slope of log sensitivity "
            "against log memory over radii 0.9 to 0.998; z: the largest gap to the closed form in standard errors, over every radius.\n\n"
            + markdown(pd.DataFrame(rows)) + "\n\n" + finding + "\n\n" + source(root, run))


@block("lyrics-recipe-search")
def lyrics_recipe_search(root: Path) -> str:
    path = report_file(root, "lyrics-recipe-search.csv", "python scripts/lyrics_recipe_search.py")
    search = pd.read_csv(path)
    rows = [{"recipe": r["recipe"], "cell": r["cell"], "best validation perplexity": g(r["best_val_ppl"]),
             "over the best n-gram": f"{r['best_val_ppl'] / r['best_kn_val_ppl']:.2f}", "at step": f"{int(r['best_step']):,}",
             "parameters": f"{int(r['parameters']):,}", "what it tries": r["what"]} for _, r in search.iterrows()]
    kn = search["best_kn_val_ppl"].iloc[0]
    commits = ", ".join(sorted(set(search["commit"].dropna().astype(str))))
    return (markdown(pd.DataFrame(rows)) + f"\n\none seed (0) each; the best Kneser-Ney n-gram (the modified 5-gram) scores {g(kn)} on the same "
            f"validation text, the unigram {g(search['unigram_val_ppl'].iloc[0])}; the validation text scored as "
            f"{' or '.join(str(v) for v in sorted(set(search['val_streams'].dropna().astype(int))))} parallel streams, each from a zero state.\n\n"
            f"*From `reports/lyrics-recipe-search.csv` (`python scripts/lyrics_recipe_search.py`, runs at {commits}"
            + ("; +: the tree held changes not yet committed: at 93a14fa the label smoothing and eval_streams committed in 490673f, at "
               "490673f page and README code" if "+" in commits else "") + ").*")


@block("throughput-book")
def throughput_book(root: Path) -> str:
    run = "throughput-book"
    res = table(root, run, "results")
    rows = []
    for cell, g_ in res.groupby("cell", sort=False):
        mine, book = g_[g_["impl"] == "gradlab"].iloc[0], g_[g_["impl"] == "book"].iloc[0]
        rows.append({"cell": cell, "gradlab, ms per epoch": f"{mine['ms_median']:.0f}", "the book's code": f"{book['ms_median']:.0f}",
                     "gradlab faster by": f"{book['ms_median'] / mine['ms_median']:.2f}x", "epoch over its own matmuls": f"{mine['epoch_over_matmuls']:.2f}x"})
    return markdown(pd.DataFrame(rows)) + "\n\n" + source(root, run)


@block("throughput-gpu")
def throughput_gpu(root: Path) -> str:
    run = "throughput-gpu"
    res = table(root, run, "results")
    res = res[(res["workload"] == "cell") & (res["impl"] != "cudnn")] if "workload" in res else res[res["impl"] != "cudnn"]
    res = res.assign(shape="T " + res["seq_len"].astype(str) + ", B " + res["batch_size"].astype(str) + ", H " + res["hidden_size"].astype(str))
    wide = res.pivot_table(index=["cell", "shape"], columns="impl", values="ratio_to_fused", aggfunc="first", sort=False).reset_index()
    for c in wide.columns[2:]:
        wide[c] = wide[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    m = manifest(root, run)
    env = m.get("environment", {})
    return (markdown(wide) + f"\n\ntime over cuDNN's ({env.get('device_name', 'GPU')}, torch {env.get('torch')}, cuDNN {env.get('cudnn')}; "
            f"cuDNN ran float32 in TF32: {env.get('cudnn_allow_tf32')}); scratch-graph: the scratch cell replayed as a CUDA graph.\n\n" + source(root, run))


@block("book-gru-bias")
def book_gru_bias(root: Path) -> str:
    path = report_file(root, "book-gru-bias.txt", "python scripts/book_gru_bias.py")
    return "```\n" + path.read_text(encoding="utf-8").strip() + "\n```\n\n*From `reports/book-gru-bias.txt` (`python scripts/book_gru_bias.py`).*"


@block("ensemble-speed")
def ensemble_speed(root: Path) -> str:
    path = report_file(root, "ensemble-speed.csv", "python scripts/ensemble_speed.py --csv reports/ensemble-speed.csv")
    r = pd.read_csv(path)
    share = lambda v: "" if pd.isna(v) else f"{100 * v:.0f}%"  # noqa: E731
    rows = [{"cell": x["cell"], "E": int(x["models"]), "ensemble": f"{x['ensemble_model_steps_per_s']:.1f}", "solo": f"{x['solo_model_steps_per_s']:.1f}",
             "speedup": f"{x['speedup']:.2f}x", "matmul": share(x.get("share_matmul")), "element-wise": share(x.get("share_element_wise")),
             "Python and dispatch": share(x.get("share_Python_and_dispatch"))} for _, x in r.iterrows()]
    first = r.iloc[0]
    return (markdown(pd.DataFrame(rows)) + f"\n\nmodel-steps per second, {first['device']}, {int(first['threads'])} threads, torch {first['torch']}; "
            f"time shares of the ensemble step.\n\n*From `reports/ensemble-speed.csv` (`python scripts/ensemble_speed.py --csv "
            f"reports/ensemble-speed.csv` at {str(first['commit'])[:7]}).*")


@block("flow-jacobian-speed")
def flow_jacobian_speed(root: Path) -> str:
    path = report_file(root, "flow-jacobian-speed.csv", "python scripts/flow_jacobian_speed.py --csv reports/flow-jacobian-speed.csv")
    r = pd.read_csv(path)
    rows = [{"LSTM": f"{int(x['layers'])} x {int(x['hidden_size'])}, T {int(x['seq_len'])}", "every basis vector (s)": f"{x['basis_vectors_s']:.2f}",
             "chained (s)": f"{x['chained_s']:.2f}", "faster": f"{x['speedup']:.2f}x ({x['ratio_min']:.2f}-{x['ratio_max']:.2f})",
             "without the SVDs (s)": f"{x['basis_vectors_no_svd_s']:.2f} against {x['chained_no_svd_s']:.2f} ({x['speedup_no_svd']:.1f}x)",
             "largest gap": f"{x['max_gap']:.0e}"} for _, x in r.iterrows()]
    first = r.iloc[0]
    return (markdown(pd.DataFrame(rows)) + f"\n\nSeconds per sequence (both layers; median of {int(first['rounds'])} interleaved rounds, the "
            f"range of the rounds' ratios in brackets), {first['dtype']}, {int(first['threads'])} threads, torch {first['torch']}; without the SVDs: the "
            f"same work with each decomposition replaced by reading a diagonal (the SVDs are the floor both ways share); the gap "
            f"between the two ways' singular values is relative to each Jacobian's largest.\n\n*From `reports/flow-jacobian-speed.csv` "
            f"(`python scripts/flow_jacobian_speed.py --csv reports/flow-jacobian-speed.csv` at {str(first['commit'])[:7]}).*")


STUDIES = [  # study, the question, its quick command, the committed run behind the time and the headline, the section
    ("gradient-decay", "How fast does a gradient shrink or grow with distance, and does mean-field theory say why?",
     "gradlab run gradient-decay", "gradient-decay-quick", "Gradient decay"),
    ("long-range", "Which cell learns a dependency across how many steps, within a budget of updates?",
     "gradlab run long-range --workers 2", "long-range-quick", "Long-range learning"),
    ("lyrics", "Does the book's chapter reproduce, and what do its models learn?", "gradlab lyrics", "lyrics-full", "Lyrics"),
    ("lyrics generalise", "Does a character network trained on the whole corpus beat counting on held-out lyrics, and how far back does it look?",
     "gradlab run lyrics --profile generalise --workers 2", "lyrics-generalise", "Lyrics"),
    ("lyrics counting", "Does the best regularised recipe found beat counting, where does it lose, and how far back does it look?",
     "gradlab run lyrics --profile counting --workers 2", "lyrics-counting", "Lyrics"),
    ("clipping", "What does clipping do: how often does it fire, what does it save, what does it cost?",
     "gradlab run clipping --workers 2", "clipping-quick", "Clipping and the cliff"),
    ("throughput", "How fast is scratch against torch.nn's fused kernels?", "gradlab run throughput", "throughput-quick", "Throughput"),
    ("curse-of-memory", "As a recurrence remembers longer, how sensitive does its state grow to the parameters that set its memory?",
     "gradlab run curse-of-memory --profile full --workers 2", "curse-of-memory", "The diagonal recurrences of the 2020s"),
]


def _headline(root: Path, run: str) -> str:
    """The number a study's page leads with, read from its committed run."""
    if run == "gradient-decay-quick":
        r = table(root, run, "decay_rates")
        r = r[(r["probe"] == "hidden") & (r["wrt"] == "h") & (r["impl"] == "scratch") & (r["cell"] == "rnn") & (r["init_scale"] == 1.0)].iloc[0]
        return f"tanh RNN at init_scale 1: {r['factor_per_step']:.3f} per step (theory {r['predicted_factor']:.3f})"
    if run == "long-range-quick":
        f = table(root, run, "final")
        f = f.assign(model=models(f))
        said = [f"{r['model']} {g(r['steps_to_solve'], 4)} steps" if r["solved"] else f"{r['model']} not solved at T {r['seq_len']}" for _, r in f.iterrows()]
        return "adding: " + "; ".join(said)
    if run == "lyrics-full":
        r = table(root, run, "final")
        r = r[(r["cell"] == "gru") & (r["impl"] == "scratch") & (r["sampling"].fillna("consecutive") == "consecutive")].iloc[0]
        return f"scratch GRU, epoch 160: training perplexity {g(r['train_ppl'])} (the book: 1.82)"
    if run in ("lyrics-generalise", "lyrics-counting"):
        f, runs = table(root, run, "final"), table(root, run, "runs")
        best = min(math.exp(runs[f"test_mkn{n}_loss"].iloc[0]) for n in (2, 3, 4, 5))
        said = "test perplexity " + ", ".join(f"{c} {g(v['test_ppl'].median())}" for c, v in f.groupby("cell", sort=False)) + f"; best n-gram {g(best)}"
        if "test_best_loss" in runs and runs["test_best_loss"].notna().any():  # read with long context, against counting with a cache
            long = {c: math.exp(v["test_best_loss"].median()) for c, v in runs.groupby("cell", sort=False)}
            cached = min(math.exp(runs[f"test_mkn{n}cache_loss"].iloc[0]) for n in (2, 3, 4, 5))
            said += f"; with long context {', '.join(f'{c} {g(v)}' for c, v in long.items())} against counting with a cache {g(cached)}"
        return said
    if run == "clipping-quick":
        c = table(root, run, "clipping")
        return f"share of steps clipped: {g(100 * c['fraction_clipped'].min())}% to {g(100 * c['fraction_clipped'].max())}% across strategies"
    if run == "curse-of-memory":
        c = table(root, run, "sensitivity")
        c = c[c["cell"] == "diagonal"]
        c = c[c["memory"] == c["memory"].max()].set_index(["variant", "wrt"])["sensitivity"]
        return (f"diagonal recurrence remembering 499 steps, sensitivity to its radius: plain {g(c[('plain', '|lambda|')])}, normalised "
                f"{g(c[('normalised', '|lambda|')])}; to nu, normalised: {g(c[('normalised', 'nu_log')])}")
    if run == "throughput-quick":
        r = table(root, run, "results")
        r = r[(r["impl"] == "scratch") & (r["workload"] == "cell") & (r["seq_len"] == 35)]
        return "scratch / fused at the lyrics shape: " + ", ".join(f"{x['cell']} {x['ratio_to_fused']:.2f}" for _, x in r.iterrows())
    return ""


@block("study-map")
def study_map(root: Path) -> str:
    rows = []
    for study, question, command, run, section in STUDIES:
        m = manifest(root, run)
        again = resumed(m)
        took = again[1] if again else minutes(m)
        rows.append({"study": f"`{study}`", "question": question, "command": f"`{command}`",
                     "time": ("about " if again else "") + ((f"{took:.0f} min" if took >= 1 else f"{60 * took:.0f} s") if took is not None else ""),
                     "headline (the committed run)": _headline(root, run), "section": section})
    return (markdown(pd.DataFrame(rows)) + "\n\ntime: the wall time of the committed run, on this project's 2-core machine (other runs may "
            "have shared the cores: each page's manifest says how many workers it had). " + source(root, *[s[3] for s in STUDIES]))


# --- the documents ----------------------------------------------------------------------------------------------

def rewrite(text: str, root: Path) -> tuple[str, list[str]]:
    """The text with every block made anew, and the names of the blocks that changed (or could not be made)."""
    changed = []

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            changed.append(f"{name}: no such block (scripts/readme_numbers.py knows {', '.join(BLOCKS)})")
            return m.group(0)
        try:
            body = BLOCKS[name](root).rstrip("\n") + "\n"
        except MissingRun as exc:
            changed.append(f"{name}: {exc}")
            return m.group(0)
        if body != m["body"]:
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(one, text), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the blocks from the runs")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    bad = []
    for doc in DOCUMENTS:
        path = ROOT / doc
        if not path.exists():
            continue
        new, changed = rewrite(path.read_text(encoding="utf-8"), ROOT)
        if args.write:
            path.write_text(new, encoding="utf-8")
        bad += [f"{doc}: {c}" for c in changed]
    if bad and not args.write:
        print("blocks that differ from their runs:\n  " + "\n  ".join(bad))
        return 1
    print("\n".join(f"rewrote {b}" for b in bad) if bad else "every block matches its runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
