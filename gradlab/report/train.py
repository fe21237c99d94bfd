"""The training report: final held-out numbers per run first, then learning curves, then generated text."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd

from . import clipping, figures
from .page import Section
from ..names import DONOR_RULE, LEFT_BASELINE
from .views import Tables, fixed_settings, group_by_others, label_models, model_order

DRAWN = {"cell", "impl", "variant", "forget_bias", "point", "seed"}
PPL_CAP = 100_000  # above a hundred thousand a perplexity only says 'diverged'; drawn at the cap


def _varying(df: pd.DataFrame, settings: list[str]) -> list[str]:
    return [c for c in settings if c in df and c != "point" and df[c].map(repr).nunique() > 1]


def _who_solved(final: pd.DataFrame, settings: list[str]) -> str:
    """One sentence: which run solved which lag at which step, and how far the others ended from the baseline."""
    solved = final["solved"].astype(bool)
    if len(final) > 8:  # a sentence per run stops being read; the table has them
        return (f"{int(solved.sum())} of {len(final)} runs solved their lag (the final-evaluation table says which)." if solved.any()
                else f"None of the {len(final)} runs solved its lag.")
    others = [c for c in _varying(final, settings) if c not in ("cell", "variant", "forget_bias", "seq_len")]
    rows = label_models(final)

    def name(r: pd.Series) -> str:
        return r["model"] + "".join(f", {c} {r[c]}" for c in others) + f" at T {int(r['seq_len'])}"

    said = [f"{name(r)} at step {int(r['steps_to_solve']):,}" for _, r in rows[solved].iterrows()]
    on = f" (on the {_verdict_set(final)} set)" if "verdict_from" in final else ""
    text = (f"Solved{on}: " + "; ".join(said) + ".") if said else f"No run solved its lag{on}."
    not_solved = []
    for _, r in rows[~solved].iterrows():
        diverged_at = r.get("diverged_step")
        left = " (left the baseline)" if bool(r.get("left_baseline", False)) else ""
        tested = r.get("verdict_from") == "test" and pd.notna(r.get("test_loss_ratio", float("nan")))
        ratio, rate = (r["test_loss_ratio"], r.get("test_error_rate")) if tested else (r["loss_over_baseline"], r.get("error_rate"))
        error = f", {100 * rate:.1f}% of answers wrong" if rate is not None and pd.notna(rate) else ""
        where = f"on the test set, the model kept at step {int(r['kept_step']):,}" if tested and pd.notna(r.get("kept_step")) else f"after {int(r['step']):,} steps"
        not_solved.append(f"{name(r)} (diverged at step {int(diverged_at):,})" if pd.notna(diverged_at) and not tested else
                          f"{name(r)} ({ratio:.2f} x the baseline{error} {where}){left}")
    return text + (" Not solved: " + "; ".join(not_solved) + "." if not_solved else "")


def view(t: Tables, manifest: dict) -> Section:
    """Task by task (a study may mix lyrics and synthetic tasks): key points, the final table, curves."""
    settings = manifest.get("columns", [])
    sec = Section()
    tasks = list(dict.fromkeys(t["results"]["task"])) if "task" in t["results"] else [None]
    curves, per_task = t, settings  # the tables the curves and flow figures read, and the settings that split them
    final = t.get("final")
    if final is not None and "lr_selected" in final and not final["lr_selected"].astype(bool).all():  # a learning-rate sweep
        chosen = set(final.loc[final["lr_selected"].astype(bool), "point"])
        whole = ("final", "runs", "longest_lag", "by_setting", "tuned", "lr_selection", "skipped")  # every rate: tables that name it
        curves = {name: df if name in whole or "point" not in df else df[df["point"].isin(chosen)] for name, df in t.items()}  # the chosen rates
        per_task = [c for c in settings if c != "lr"]  # each model at its own rate in one figure (the tuned table names them)
    for task in tasks:
        sub = {name: df[df["task"] == task] if task is not None and "task" in df else df for name, df in curves.items()}
        before, drawn = len(sec.key_points), len(sec.figures)
        _one_task(sec, sub, per_task, task if len(tasks) > 1 else None)
        if len(tasks) > 1:  # each task's figures in files of their own: '<task>-flow-seq_len10', not one file per stem for all
            sec.figures[drawn:] = [(stem if str(task) in stem else f"{task}-{stem}", caption, draw)
                                   for stem, caption, draw in sec.figures[drawn:]]
        if len(tasks) > 1 and len(sec.key_points) > before + 1:  # one paragraph per task: its name once, then its findings
            prefix = f"{task}: "
            said = [k[len(prefix):] if k.startswith(prefix) else k for k in sec.key_points[before:]]
            sec.key_points[before:] = [prefix + " ".join(said)]
    language_model = "val_ppl" in t["results"] and t["results"]["val_ppl"].notna().all()
    if not language_model:  # a language model is never 'solved': its page leads with perplexities against baselines
        init_effect(sec, t.get("final"), settings)
        longest(sec, t.get("longest_lag"), settings, tuned=t.get("tuned") is not None)  # all tasks at once: the table the study exists for, first
        success(sec, t.get("by_setting"), settings, t.get("final"))
        own_rates(sec, t.get("tuned"), settings)  # with a learning-rate sweep: each cell at its own rate, before all
        lr_figures(sec, t.get("final"), t.get("lr_selection"), settings)
        verdict_note(sec, t.get("runs"), t.get("final"))
    left_out(sec, t.get("skipped"), manifest.get("ladder"))
    return sec


def left_out(sec: Section, skipped: pd.DataFrame | None, ladder: dict | None) -> None:
    """What the study's ladder did not run, per setting, with its reason."""
    if skipped is None or not len(skipped) or not ladder:
        return
    s = label_models(skipped) if "cell" in skipped else skipped
    by = [c for c in ("task", "model") if c in s]
    axis = ladder["axis"]
    rows = (s.groupby([*by, "because"], sort=False)
            .agg(**{f"{axis}_not_run": (axis, lambda v: " ".join(map(str, sorted(set(v))))), "points": ("key", "size")}).reset_index())
    sec.key_points.append(f"The ladder left {len(s)} point{'s' * (len(s) != 1)} of {len(rows)} setting{'s' * (len(rows) != 1)} out: once every {ladder.get('over', 'seed')} of a setting had "
                          f"failed at {ladder['stop_after']} {axis} values in a row, its longer ones were not run (table 'Not run').")
    sec.tables.append((f"Not run: {axis} values the ladder left out, per setting, and why", rows))


def init_effect(sec: Section, final: pd.DataFrame | None, settings: list[str]) -> None:
    """Where the init varies (the critical init against torch.nn's): per setting, whether it solved more seeds or in
    fewer steps (the median over seeds, unsolved ones beyond the budget), said in one sentence."""
    if final is None or "init" not in final or final["init"].nunique() < 2 or "solved" not in final:
        return
    from ..derived.train import censored_median

    others = [c for c in _varying(final, settings) if c not in ("init", "seed", "init_scale")]
    inits = list(dict.fromkeys(final["init"]))
    better, worse, same, said = 0, 0, 0, []
    for key, g in final.groupby(others, sort=False, dropna=False) if others else [((), final)]:
        per = {i: (g.loc[g["init"] == i, "solved"].astype(bool).mean(), censored_median(g.loc[g["init"] == i, "steps_to_solve"], g.loc[g["init"] == i, "solved"]),
                   g.loc[g["init"] == i, "loss_over_baseline"].median()) for i in inits if (g["init"] == i).any()}
        if len(per) < 2:
            continue
        (a, ra), (b, rb) = list(per.items())[:2]
        score = lambda r: (-r[0], r[1], r[2])  # noqa: E731  (more solved, then fewer steps, then a lower final loss)
        if score(rb) < score(ra):
            better += 1
        elif score(rb) > score(ra):
            worse += 1
        else:
            same += 1
        where = ", ".join(f"{c} {v}" for c, v in zip(others, key if isinstance(key, tuple) else (key,)))
        said.append(f"{where}: {a} " + (f"{ra[1]:,.0f} steps" if ra[1] != float("inf") else f"not solved ({ra[2]:.2f} x the baseline)")
                    + f", {b} " + (f"{rb[1]:,.0f} steps" if rb[1] != float("inf") else f"not solved ({rb[2]:.2f} x the baseline)"))
    if better + worse + same:
        a, b = inits[:2]
        sec.key_points.insert(0, f"Did the {b} init help against {a}? Better in {better}, worse in {worse}, no different in {same} of "
                              f"{better + worse + same} settings (more seeds solved, else fewer steps to solve, else a lower final loss): "
                              + "; ".join(said) + ".")


def _budget(df: pd.DataFrame) -> str:
    """The optimiser steps each run was given (its budget), as the tables' headers say it."""
    if "steps" not in df or not len(df):
        return "their"
    values = sorted(set(int(v) for v in df["steps"]))
    return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,} to {values[-1]:,}"


def success(sec: Section, rates: pd.DataFrame | None, settings: list[str], final: pd.DataFrame | None = None) -> None:
    """Pascanu et al. 2013's form: the share of seeds that solved against the lag, one line per model, one panel
    per task; and the seeds behind every setting, in a table."""
    if rates is None or not len(rates) or "seq_len" not in rates:
        return
    swept = "lr_selected" in rates and not rates["lr_selected"].all()  # several learning rates per setting: the tables read each one's own
    every = label_models(rates)
    r = every[every["lr_selected"].astype(bool)] if swept else every
    if swept and final is not None and "lr_selected" in final:
        final = final[final["lr_selected"].astype(bool)]
    counts = sorted(set(r["seeds"].astype(int)))
    sec.key_points.insert(0, f"Seeds behind each setting: {' to '.join(map(str, (counts[0], counts[-1]) if len(counts) > 1 else counts))} "
                             f"({len(r)} settings); solved k/n counts the seeds that met their task's rule (said per task below) "
                             f"within the budget of {_budget(r)} steps, left k/n those whose held-out loss went under {LEFT_BASELINE:g} of the baseline.")
    keep = [c for c in ["task", "model", "impl", "lr", "seq_len", "seeds_solved_of", "val_seeds_solved_of", "seeds_hs_solved_of", "seeds_left_of",
                        "steps_to_solve_median", "steps_to_solve_min", "steps_to_solve_max", "seeds_censored", "test_loss_ratio_median",
                        "loss_over_baseline_median", "loss_over_baseline_q25", "loss_over_baseline_q75", "seeds_diverged"] if c in r]
    on = _verdict_set(final)
    title = (f"Over seeds, per setting, within {_budget(r)} steps" + (", each model at its own learning rate (chosen on validation)" if swept else "")
             + f": solved k/n (on the {on} set), on validation k/n (what chose the learning rate), left the baseline k/n, steps to solve "
             "(the kept checkpoint's step; the median over every seed, a seed that did not solve counted as beyond the budget: inf; the range "
             "over the seeds that solved), test loss / its memoryless loss (median), final validation loss / baseline (median and "
             "interquartile range over the seeds that did not diverge)")
    sec.tables.append((title, r[keep]))
    if swept:
        sec.folded.append(("The same at every learning rate tried", every[keep]))
    if r["seq_len"].nunique() < 2:
        return
    panel = "task" if "task" in r else "model"
    if final is not None and len(final) and "steps_to_solve" in final:
        f = label_models(final)
        sec.figures.append(("steps-to-solve", f"Steps to solve against the lag (seq_len), one colour per model, one panel per task: each "
                            f"seed a point, the line its median over seeds; a seed that did not solve within its budget ({_budget(r)} steps) is drawn "
                            "as a triangle above the budget line (censored: more than the budget), never dropped.",
                            partial(figures.steps_to_solve, f, panel, model_order=model_order(f["model"]),
                                    title=figures.fixed_title("steps to solve against the lag", fixed_settings(f, settings, DRAWN | {"task", "seq_len"})))))
    sec.figures.append(("success-rate", "Share of seeds that solved the task against the lag (seq_len, log axis), one line per model, one "
                        "panel per task: Pascanu et al. 2013's Fig. 7 form. Seeds per point: " + ", ".join(map(str, counts)) + ".",
                        partial(figures.success_rates, r, panel, model_order=model_order(r["model"]),
                                title=figures.fixed_title("success rate against the lag", fixed_settings(r, settings, DRAWN | {"task", "seq_len"})))))


def _one_task(sec: Section, t: Tables, settings: list[str], task: str | None) -> None:
    res, final, runs = t["results"], t.get("final"), t.get("runs")
    lyrics = "val_ppl" in res and res["val_ppl"].notna().any()
    named = f"{task}: " if task else ""
    if lyrics:
        sec.notes.append(named + "Perplexity is exp(mean cross-entropy per next character). Training perplexity is over the last "
                              "epoch before each evaluation; held-out perplexity over whole lines the model never saw.")
        if runs is not None and "val_targets_scored" in runs and len(runs):
            r = runs.iloc[0]
            sec.notes.append(
                f"{named}Held out: {int(r['val_targets']):,} next-character targets; {int(r['val_targets_scored']):,} in the vocabulary of "
                f"{int(r['vocab_size']):,} characters are each scored once, and {int(r['val_targets_oov']):,} outside it are read as "
                f"context (an unknown-character input) and not scored. A uniform guess scores a perplexity of {int(r['vocab_size']):,}; "
                f"the baseline, predicting each character by its training frequency, scores {r['unigram_entropy']:.2f} nats per character "
                f"(perplexity {math.exp(r['unigram_entropy']):.0f}) on the training text"
                + (f" and {r['val_unigram_loss']:.2f} (perplexity {math.exp(r['val_unigram_loss']):.0f}) on the held-out text."
                   if "val_unigram_loss" in r and pd.notna(r["val_unigram_loss"]) else "."))
    else:
        sec.notes.append(named + "Held-out loss is divided by the memoryless loss of the held-out data itself (the loss of the best "
                              "predictor that ignores the past, scored on the same targets; the theoretical value is beside it): 1 means "
                              f"nothing learnt across the lag. 'Left the baseline' (Arjovsky et al. 2016's sense of beating it): under "
                              f"{LEFT_BASELINE:g} of it.")
        if runs is not None and "success_rule" in runs and len(runs):
            r = runs.iloc[0]
            data, theory = runs["baseline"].astype(float), float(runs["baseline_theory"].iloc[0])
            spread = f"{data.min():.4g}" if data.min() == data.max() else f"{data.min():.4g} to {data.max():.4g}"
            se = (f"; the memoryless loss of the held-out data is {spread} (theory {theory:.4g}), its sampling error "
                  f"{100 * runs['baseline_rel_se'].max():.1f}% at most" if runs["baseline_rel_se"].max() > 0 else "")
            beside = (f" Beside it: {r['rules_beside']}." if "rules_beside" in runs and isinstance(r.get("rules_beside"), str) and r["rules_beside"] else "")
            sec.key_points.append(f"{named}Solved means {r['success_rule']}; {r['lag_meaning']}{se}.{beside}")
    if final is not None and len(final):
        cols = _varying(final, settings) + (["lr"] if "lr" in final and final["lr"].nunique() > 1 else []) + (["epoch", "train_ppl", "val_ppl", "best_step", "test_ppl", "seconds_per_epoch"] if lyrics else
                                            ["step", "final_val_loss", "baseline", "baseline_theory", "loss_over_baseline", "error_rate",
                                             "kept_step", "kept_val_loss_ratio", "val_solved", "test_loss_ratio", "test_error_rate", "test_hs_error_rate",
                                             "left_baseline", "steps_to_leave", "solved", "steps_to_solve", "verdict_from"])
        cols += [c for c in ("diverged_step",) if c in final and final[c].notna().any()]
        per_run = (f"{named}final evaluation per run".capitalize(), final[[c for c in dict.fromkeys(cols) if c in final]])
        (sec.folded if len(final) > 12 else sec.summaries).append(per_run)  # many runs: the per-setting tables lead, these are folded
        diverged = final[final["diverged"].astype(bool)] if "diverged" in final else final.iloc[:0]
        if len(diverged):
            sec.key_points.append(f"{named}{len(diverged)} run(s) diverged (a non-finite loss or gradient, or a median loss over 50 steps "
                                  "above 3 times the loss of guessing); the table runs names the step and the reason.")
    if not lyrics and final is not None and "solved" in final and len(final):
        sec.key_points.append(named + _who_solved(final, settings))
    x, xlabel = ("epoch", "epoch") if "epoch" in res and res["epoch"].notna().all() else ("step", "optimiser step")
    curves = label_models(res).assign(loss_over_baseline=lambda d: d["val_loss"] / d["baseline"])
    by_clip = "clip" in curves and curves["clip"].nunique() > 1
    hue = "clip" if by_clip else "model"
    drawn = (DRAWN - {"cell", "impl", "variant", "forget_bias"} | {"clip"}) if by_clip else DRAWN | {"model"}
    for extra, g in group_by_others(curves, settings, drawn | (set() if lyrics else {"seq_len"})):  # one panel per lag
        fixed = fixed_settings(g, settings, drawn)
        style = "impl" if g["impl"].nunique() > 1 and not by_clip else None
        stem = f"{task or ''}{extra}".replace(" ", "").replace(",", "-").replace(":", "")
        if lyrics:
            long = g.melt(id_vars=[hue, "impl", x], value_vars=["train_ppl", "val_ppl"], var_name="split", value_name="perplexity")
            long["split"] = long["split"].map({"train_ppl": "training", "val_ppl": "held out"})
            sec.figures.append((f"perplexity-{stem}",
                                f"Training and held-out perplexity against {xlabel}, one panel per split, one colour per {hue}"
                                + (", line style per impl" if style else "") + f"; perplexities above {PPL_CAP:,} are drawn at "
                                f"{PPL_CAP:,}. X: the run diverged there (drawn at the top).",
                                partial(figures.panels_of_lines, long, x, "perplexity", panel="split", hue=hue, style=style, xlabel=xlabel,
                                        ylabel="perplexity", panel_order=["training", "held out"], cap=PPL_CAP,
                                        title=figures.fixed_title(f"{named}perplexity{extra}", fixed))))
        else:
            sec.figures.append((f"loss-{stem}",
                                f"Held-out loss over the memoryless baseline against {xlabel} (log axis; dashed: the baseline, 1), "
                                f"one panel per lag, one colour per {hue}. X: the run diverged there (drawn at the top); a line that stops without one was solved.",
                                partial(figures.panels_of_lines, g, x, "loss_over_baseline", panel="seq_len", hue=hue, style=style,
                                        xlabel=xlabel, ylabel="held-out loss / baseline", baseline=1.0,
                                        title=figures.fixed_title(f"{named}held-out loss / baseline{extra}", fixed))))
    if final is not None and lyrics and "seconds_per_epoch" in final and not by_clip and len(final) > 1:  # one bar: the table says it
        f = label_models(final)
        sec.figures.append(("seconds", "Training seconds per epoch (evaluation excluded), median run per model and impl.",
                            partial(figures.bars, f, "model", "seconds_per_epoch", hue="impl" if f["impl"].nunique() > 1 else None,
                                    title=figures.fixed_title("seconds per epoch", fixed_settings(f, settings, DRAWN)),
                                    ylabel="seconds per epoch", order=model_order(f["model"]))))
    clipping.add(sec, t, settings, lyrics, task)
    accuracy(sec, curves, settings, x, xlabel, lyrics)
    flow(sec, t.get("flow"), settings)
    context(sec, t.get("context"), t.get("context_grads"), t.get("effective_context"), settings, t.get("context_over_seeds"))
    tested(sec, final, runs, named)
    long_context(sec, runs, t.get("by_distance"), named)
    frequency(sec, t.get("by_frequency"), named)
    if lyrics:
        book(sec, res, final, runs, named)
    samples = t.get("samples")
    if samples is not None and len(samples):
        last = samples[samples["epoch"] == samples["epoch"].max()]
        cols = _varying(last, settings) + ["epoch", "prefix", "temperature", "text"]
        sec.tables.append(("Generated text at the last evaluation (temperature 0: greedy; Chinese: a browser without a CJK font, "
                           "such as Debian's fonts-wqy-zenhei or fonts-noto-cjk, draws it as boxes)", last[list(dict.fromkeys(cols))]))


READERS = {"stream": "network", "cache": "network + neural cache", "dynamic": "network, dynamic evaluation",
           "dynamic_cache": "network, dynamic evaluation + cache", "mix": "network mixed with counting"}  # the evaluation modes, by their columns


def _ppl(values: pd.Series) -> str:
    """'median (min-max)' of perplexities from losses in nats."""
    v = np.exp(values.astype(float))
    return f"{v.median():.1f}" + (f" ({v.min():.1f}-{v.max():.1f})" if len(v) > 1 and v.min() != v.max() else "")


def long_context(sec: Section, runs: pd.DataFrame | None, bands: pd.DataFrame | None, named: str) -> None:
    """The kept models read with long context (a neural cache, dynamic evaluation, both, mixed with counting; each text one
    stream, settings chosen on validation) against counting with and without a cache of the held-out text: the verdict,
    a table over seeds, and where each gains by how far back the target's context last occurred."""
    if runs is None or "test_stream_loss" not in runs or "test_mkn5cache_loss" not in runs:
        return
    r = label_models(runs)
    modes = [m for m in READERS if f"test_{m}_loss" in r and r[f"test_{m}_loss"].notna().any()]
    rows = []
    for model, g in r.groupby("model", sort=False):
        row = {"model": model, "seeds": str(len(g))}
        for m in modes:
            row[READERS[m]] = _ppl(g[f"test_{m}_loss"])
        if "eval_best_mode" in g:
            picked = sorted({READERS.get(str(m), str(m)).replace("network, ", "").replace("network + ", "") for m in g["eval_best_mode"]})
            row["best on validation"] = _ppl(g["test_best_loss"]) + f" ({', '.join(picked)})"
        rows.append(row)
    first = runs.iloc[0]
    grams = {n: (math.exp(first[f"test_mkn{n}_loss"]), math.exp(first[f"test_mkn{n}cache_loss"])) for n in range(2, 6)
             if f"test_mkn{n}cache_loss" in runs}
    best_n = min(grams, key=lambda n: grams[n][1])
    bar = grams[best_n][1]
    beaten = [m for m, g in r.groupby("model", sort=False) if "test_best_loss" in g and (np.exp(g["test_best_loss"].astype(float)) < bar).all()]
    mixed = [m for m, g in r.groupby("model", sort=False) if "test_mix_loss" in g and (np.exp(g["test_mix_loss"].astype(float)) < bar).all()]
    top = min(rows, key=lambda row: float(row.get("best on validation", "inf").split(" ")[0]))
    sec.key_points.insert(1 if sec.key_points else 0,
        f"{named}Read with long context (each held-out text one stream from its start; a mode's settings chosen on validation, the "
        f"test text read once): the networks' best mode on validation reaches {top['best on validation']} ({top['model']}); "
        f"counting with a cache of the last {int(first.get('ngram_cache_window', 1000)):,} held-out characters reaches {bar:.1f} "
        f"(the modified {best_n}-gram alone: {grams[best_n][0]:.0f}). "
        + (f"Every seed of {', '.join(beaten)} beats it." if beaten else "No network beats counting with a cache, on any seed, in any mode of its own.")
        + (f" Mixed with counting (the static and the cached n-gram, weights on validation), every seed of {', '.join(mixed)} scores below it, "
           f"by {100 * (1 - np.exp(r['test_mix_loss'].astype(float)).median() / bar):.1f}% at the median, with the network's weight at "
           f"{r['mix_net'].astype(float).median():.2f}" if mixed and "mix_net" in r else
           " Mixed with counting, no network gets below counting alone on every seed") + " (table: long context).")
    table = pd.DataFrame(rows + [{"model": f"Kneser-Ney {n}-gram", "network": f"{v[0]:.1f}", "network + neural cache": f"{v[1]:.1f} (its n-gram cache)"}
                                 for n, v in grams.items()])
    sec.summaries.append((f"{named}Long context: test perplexity, median (range) over seeds, of each network read as one stream, with "
                          "Grave et al.'s neural cache, under Krause et al.'s dynamic evaluation, both, and mixed with counting; and of "
                          "the Kneser-Ney n-grams without and with their cache of the held-out text (in the cache column)", table.fillna("")))
    if bands is None or not len(bands) or "distance_from" not in bands:
        return
    b = label_models(bands)
    cols = {"net_loss": "network", "cache_loss": "network + neural cache", "dynamic_loss": "network, dynamic evaluation",
            "dynamic_cache_loss": "network, dynamic evaluation + cache", "ngram_loss": "5-gram", "ngram_cache_loss": "5-gram + cache",
            "mix_loss": "network mixed with counting"}
    cols = {k: v for k, v in cols.items() if k in b and b[k].notna().any()}
    order = list(dict.fromkeys(b.sort_values("distance_from")["band"]))
    per = b.groupby(["model", "band"], sort=False).agg(distance_from=("distance_from", "first"), share=("share", "first"),
                                                      **{v: (k, "median") for k, v in cols.items()}).reset_index()
    chosen = top["model"]
    long = per[per["model"] == chosen].melt(id_vars=["band"], value_vars=list(cols.values()), var_name="reader", value_name="loss")
    long = long.rename(columns={"band": "characters back to the context's last occurrence"})
    shares = ", ".join(f"{band} {100 * s:.0f}%" for band, s in per[per["model"] == chosen].set_index("band")["share"].items())
    sec.figures.append(("by-distance", f"Mean test loss per band of how far back the target's {int(b['context_chars'].iloc[0])}-character "
                        f"context last occurred in the text read so far ({chosen}: median over seeds; the share of targets per band: "
                        f"{shares}): where a cache or dynamic evaluation gains, and where counting with a cache copies more sharply.",
                        partial(figures.bars, long, "characters back to the context's last occurrence", "loss", hue="reader", ylabel="mean loss (nats)", order=order,
                                title=f"{named}loss by distance to the context's last occurrence ({chosen})")))
    sec.tables.append((f"{named}Where each gains: per band of distance back to the last occurrence of the target's context, the share "
                       "of test targets and each reader's mean loss (networks: median over seeds)", per.sort_values(["model", "distance_from"])))


def frequency(sec: Section, bands: pd.DataFrame | None, named: str) -> None:
    """Where a network wins or loses against the Kneser-Ney n-gram: per band of the target's training count, the
    mean loss of each (median over seeds) and the band's part of the gap."""
    if bands is None or not len(bands) or "gap_part" not in bands:
        return
    b = label_models(bands)
    if "impl" in b and b["impl"].nunique() > 1:
        b["model"] = b["model"] + " " + b["impl"].astype(str)
    b = b.assign(gap=b["net_loss"] - b["ngram_loss"])
    order = list(dict.fromkeys(b.sort_values("count_from")["band"]))
    per = b.groupby(["model", "band"], sort=False).agg(
        count_from=("count_from", "first"), share=("share", "first"), net_loss=("net_loss", "median"), ngram_loss=("ngram_loss", "first"),
        gap=("gap", "median"), gap_part=("gap_part", "median"), seeds=("seed", "nunique") if "seed" in b else ("share", "size")).reset_index()
    rank = {m: i for i, m in enumerate(model_order(per["model"]))}
    per = per.assign(_rank=per["model"].map(rank)).sort_values(["_rank", "count_from"]).drop(columns="_rank")
    gram, split = int(b["ngram_order"].iloc[0]), str(b["split"].iloc[0])
    sec.figures.append(("by-frequency", f"Network loss minus the modified Kneser-Ney {gram}-gram's on the {split} text, per band of how often the "
                        "target character occurs in the training text (median over seeds; below 0: the network predicts those characters "
                        "better). The band's share of the targets is in the table.",
                        partial(figures.bars, b.groupby(["model", "band"], sort=False)["gap"].median().reset_index(), "band", "gap", hue="model",
                                title=f"{named}network - {gram}-gram loss per band of training count", ylabel="loss gap (nats)", order=order)))
    totals = per.groupby("model", sort=False)["gap_part"].sum()  # the table's rows added up: each band's median part over seeds
    worst = per.loc[per["gap_part"].idxmax()]
    sec.key_points.append(f"{named}Where the gap to the {gram}-gram lies ({split} text, read as one stream): "
                          + "; ".join(f"{m} {v:+.3f} nats in all" for m, v in totals.items())
                          + " (the parts of the table's rows added up: each band's median over seeds)"
                          + f". The largest part, {worst['gap_part']:+.3f} nats ({worst['model']}), comes from characters seen "
                          f"{worst['band']} times in training ({100 * worst['share']:.0f}% of the targets); on the characters seen 300 times "
                          "or more the networks " + ("do better" if (per[per["band"] == "300+"]["gap"] < 0).all() else "do not all do better")
                          + " (table: where the gap lies).")
    sec.tables.append((f"{named}Where the gap to the {gram}-gram lies: per band of the target's training count, its share of the "
                       f"{split} targets, the mean losses (network: median over seeds) and the band's part of the mean gap",
                       per[["model", "band", "share", "net_loss", "ngram_loss", "gap", "gap_part", "seeds"]]))


def book(sec: Section, res: pd.DataFrame, final: pd.DataFrame | None, runs: pd.DataFrame | None, named: str) -> None:
    """The book's chapter, reproduced: a scratch run at the book's settings (its 10,000 characters, consecutive batches)
    against the book's printed training perplexity at epochs 40, 80, 120 and 160, and what the held-out text says."""
    from ..published import BOOK_TRAINING_PERPLEXITY

    if "setting" not in res or final is None or runs is None or "vocab_size" not in runs:
        return
    book_text = res["setting"].fillna("book") == "book"  # unset: the lyrics task's default, the book's 10,000 characters
    sampling = res["sampling"].fillna("consecutive") if "sampling" in res else "consecutive"
    mine = res[book_text & (res["impl"] == "scratch") & (sampling == "consecutive")]
    said = []
    for cell, published in BOOK_TRAINING_PERPLEXITY.items():
        g = mine[mine["cell"] == cell]
        at = {int(e): float(v) for e, v in zip(g["epoch"], g["train_ppl"]) if int(e) in published and e == int(e)}
        if len(at) == len(published):
            said.append(f"{cell} " + " / ".join(f"{at[e]:.3g}" for e in published) + " (the book: " + " / ".join(f"{v:g}" for v in published.values()) + ")")
    if not said:
        return
    held = final[(final["setting"].fillna("book") == "book") & (final["impl"] == "scratch")]
    vocab = int(runs["vocab_size"].iloc[0])
    worse = held[held["val_ppl"] > vocab] if "val_ppl" in held else held.iloc[:0]
    sec.key_points.insert(0, f"{named}The book's chapter, reproduced: training perplexity of the scratch models at epochs 40 / 80 / 120 / 160, "
                          + "; ".join(said) + "." + (f" On held-out lines every one of them scores worse than a uniform guess over its {vocab:,} "
                          f"characters (held-out perplexity {held['val_ppl'].min():,.0f} to {held['val_ppl'].max():,.0f}): at 160 epochs over "
                          "10,000 characters it has memorised its text." if len(worse) == len(held) and len(held) else ""))


def tested(sec: Section, final: pd.DataFrame | None, runs: pd.DataFrame | None, named: str) -> None:
    """The page's first line for a run with a test set: test perplexity of the kept model per model, over
    its seeds, against the unigram baseline on the same text."""
    if final is None or "test_ppl" not in final or final["test_ppl"].isna().all() or runs is None or "test_unigram_loss" not in runs:
        return
    f = label_models(final)
    parts = []
    for model, g in f.groupby("model", sort=False):
        v = g["test_ppl"].astype(float)
        parts.append(f"{model} {v.median():.0f}" + (f" ({v.min():.0f}-{v.max():.0f}, {len(v)} seeds)" if len(v) > 1 else ""))
    unigram = math.exp(float(runs["test_unigram_loss"].iloc[0]))
    counting = ""
    grams = {n: math.exp(float(runs[f"test_mkn{n}_loss"].iloc[0])) for n in range(2, 6) if f"test_mkn{n}_loss" in runs}
    if grams:
        best = min(grams, key=grams.get)
        beaten = [m for m, g in f.groupby("model", sort=False) if (g["test_ppl"].astype(float) < grams[best]).all()]
        verdict = f"Every seed of {', '.join(beaten)} beats counting" if beaten else "Counting does better"
        counting = (f" {verdict}: Kneser-Ney n-grams fitted on the training text (modified discounts) score "
                    + ", ".join(f"{grams[n]:.0f} ({n}-gram)" for n in grams) + f"; the best, the {best}-gram at {grams[best]:.0f}, is the bar a "
                    "network has to clear.")
    sec.key_points.insert(0, f"{named}Test perplexity of the kept (best-validation) model, median (range) over seeds: " + "; ".join(parts)
                          + f". The unigram baseline scores {unigram:.0f} on the same test text." + counting)


def accuracy(sec: Section, curves: pd.DataFrame, settings: list[str], x: str, xlabel: str, lyrics: bool) -> None:
    """Held-out accuracy against step, for the tasks whose metric is an accuracy."""
    if lyrics or "val_metric" not in curves:
        return
    acc = curves[curves["task"].isin(["copy", "temporal_order", "recall"])] if "task" in curves else curves.iloc[:0]
    if not len(acc):
        return
    for extra, g in group_by_others(acc, settings, DRAWN | {"model", "seq_len"}):
        panel = "seq_len" if g["seq_len"].nunique() > 1 else "task"
        sec.figures.append((f"accuracy{extra.replace(' ', '').replace(',', '-')}",
                            "Held-out accuracy against " + xlabel + " (for copy: on the symbols written back), one colour per model.",
                            partial(figures.panels_of_lines, g, x, "val_metric", panel=panel, hue="model", xlabel=xlabel, ylabel="accuracy",
                                    log=False, title=figures.fixed_title(f"held-out accuracy{extra}", fixed_settings(g, settings, DRAWN)))))


def _verdict_set(final: pd.DataFrame | None) -> str:
    """The set the verdicts of these runs were read on: test, validation (runs without a test set), or both."""
    if final is None or "verdict_from" not in final or not len(final):
        return "held-out"
    sets = set(final["verdict_from"].dropna())
    return "test" if sets == {"test"} else "validation" if sets <= {"validation"} else "test (validation where a run had no test set)"


def _lr_text(v: float) -> str:
    return f"{v:g}"


def longest(sec: Section, lag: pd.DataFrame | None, settings: list[str], tuned: bool = False) -> None:
    """The longest lag solved by most seeds, per task, model and learning rate (0: none of the lags tried). With a
    learning-rate sweep (tuned: its table leads), this table of every rate tried follows it."""
    if lag is None or not len(lag) or lag["lags_tried"].str.contains(" ").sum() == 0:
        return
    lag = label_models(lag).assign(longest=lag["longest_lag_solved"].fillna(0))
    varied = [c for c in settings if c in lag and c not in ("task", "cell", "forget_bias", "variant", "impl", "seq_len", "seed", "point", "lr")
              and lag[c].nunique(dropna=False) > 1]  # e.g. the init a study varies: part of each row's name, or rows repeat
    for c in varied:
        lag["model"] = lag["model"] + ", " + c.replace("_", " ") + " " + lag[c].map(lambda v: f"{v:g}" if isinstance(v, float) else str(v))
    cols = [c for c in ["task", "model", "impl", "lr", "lags_tried", "seeds_solved", "longest_lag_solved", "val_seeds_solved", "val_longest_lag_solved",
                        "lr_selected"] if c in lag and (c != "lr_selected" or tuned)]
    title = (f"Longest lag solved (by most seeds, every shorter lag tried solved too) within {_budget(lag)} steps, per task, model and learning "
             "rate (seeds solved on the verdict's set; val_: on validation): a limit of this budget, not of the cell")
    if tuned:
        sec.tables.append((title + "; lr_selected: the rate chosen on validation", lag[cols]))
        lag = lag[lag["lr_selected"].astype(bool)]  # the bars: each model at its own rate
    else:
        sec.summaries.insert(0, (title, lag[cols]))
    if len(lag) < 2:  # one bar: the table above says it
        return
    sec.figures.append(("longest-lag", "The longest lag (seq_len) solved by most of its seeds, per task and model"
                        + (" at its own learning rate (chosen on validation)" if tuned else "") + "; 0: none of the lags tried.",
                        partial(figures.bars, lag, "task", "longest", hue="model", ylabel="longest lag solved (steps)",
                                title=figures.fixed_title("longest lag solved", fixed_settings(lag, settings, DRAWN | {"task", "lr"})),
                                order=list(dict.fromkeys(lag["task"])))))


def own_rates(sec: Section, table: pd.DataFrame | None, settings: list[str]) -> None:
    """With a learning-rate sweep: per task and model, the longest lag solved on the test set at the rate chosen on
    validation (the rule: derived.train.SELECTION_RULE), beside the one at the untuned profile's rate and at every
    rate tried; first on the page."""
    from ..derived.train import REFERENCE_LR, SELECTION_RULE

    if table is None or not len(table):
        return
    t = label_models(table)

    def say(v: float) -> str:
        return "none" if pd.isna(v) else f"{v:g}"

    ref = f"{REFERENCE_LR:g}"
    has_ref = t["longest_lag_at_reference_lr"].notna() | t["reference_lr"].notna()
    # a setting other than the model's own that tells rows of one task and model apart (a clipping strategy, say) is
    # named in every row and every sentence: without it the rows would read as one model chosen several times
    apart = [c for c in settings if c in t and c not in ("task", "cell", "forget_bias", "lr", "seed", "variant")
             and t.groupby(["task", "model"])[c].nunique(dropna=False).max() > 1]
    shown = t.assign(**{"lr (chosen on validation)": t["lr"].map(_lr_text), f"longest lag at {ref}": t["longest_lag_at_reference_lr"].map(say),
                        "longest lag": t["longest_lag_solved"].map(say)})
    cols = [c for c in ["task", "model", *apart, "lr (chosen on validation)", "lags_tried", "seeds_solved", "longest lag",
                        *([f"longest lag at {ref}", "seeds_solved_at_reference_lr"] if has_ref.any() else []),
                        "longest_lag_by_lr", "val_longest_lag_by_lr"] if c in shown]
    beside = f", beside the one at {ref}, the one rate every cell trained at before," if has_ref.any() else ""
    sec.summaries.insert(0, (f"Longest lag solved on the fresh test set within {_budget(t)} steps, per task and model"
                             + (f" and {', '.join(apart)}" if apart else "") + f" at its own learning rate (chosen on validation: "
                             f"{SELECTION_RULE}){beside} and at every rate tried (longest_lag_by_lr: test; val_longest_lag_by_lr: what "
                             "the choice read)", shown[cols]))
    differ = t[has_ref & (t["longest_lag_solved"].fillna(0) != t["longest_lag_at_reference_lr"].fillna(0))]
    said = "; ".join(f"{r['task']} {r['model']} {say(r['longest_lag_at_reference_lr'])} -> {say(r['longest_lag_solved'])} at {_lr_text(r['lr'])}"
                     for _, r in differ.iterrows())
    chosen = "; ".join(f"{task}: " + ", ".join(" ".join([str(r["model"]), *(str(r[c]) for c in apart), _lr_text(r["lr"])]) for _, r in g.iterrows())
                       for task, g in t.groupby("task", sort=False))
    against = (f" Against the one rate {ref}, the longest lag solved on the test set changes in {len(differ)} of {int(has_ref.sum())} settings"
               + (f": {said}." if said else ".")) if has_ref.any() else ""
    sec.key_points.insert(0, f"Each model at its own learning rate, chosen on validation per task and model ({len(t)} settings, rates "
                          f"{t['lrs_tried'].iloc[0]}): {chosen}.{against} Curves and gradient flow below: each model at its own rate.")


def _steps_against_lr(df: pd.DataFrame, title: str, model_order: list, chosen: dict) -> "figures.plt.Figure":
    """Steps to solve against the learning rate (log axes), one panel per lag, one colour per model: each seed a point, a
    seed that did not solve within its budget a triangle above the budget line, a line through the median over seeds
    (those counted as beyond the budget), each model's chosen rate ringed."""
    plt = figures.plt
    lags = sorted(df["seq_len"].unique())
    fig, axes = figures.panel_grid(len(lags), 4, width=3.0, height=2.5, sharey=True)
    colours = figures.palette(model_order, hue="model")
    budget = float(df["steps"].max())
    above = budget * 1.35
    models = [m for m in model_order if m in set(df["model"])]
    rates = sorted(df["lr"].unique())
    offsets = {m: 1 + 0.06 * (i - (len(models) - 1) / 2) for i, m in enumerate(models)}
    for ax in axes.flat[len(lags):]:
        ax.set_visible(False)
    for ax, lag in zip(axes.flat, lags):
        g = df[df["seq_len"] == lag]
        for model in models:
            m = g[g["model"] == model]
            if not len(m):
                continue
            solved = m["solved"].astype(bool)
            x = m["lr"].astype(float) * offsets[model]
            ax.scatter(x[solved], m.loc[solved, "steps_to_solve"].astype(float), color=colours[model], s=14, alpha=0.8, zorder=3)
            ax.scatter(x[~solved], np.full(int((~solved).sum()), above), color=colours[model], marker="^", s=18, alpha=0.8, zorder=3)
            medians = []
            for lr, per in m.groupby("lr"):
                values = np.sort(np.where(per["solved"].astype(bool), per["steps_to_solve"].astype(float), np.inf))
                middle = values[(len(values) - 1) // 2 : len(values) // 2 + 1]
                medians.append((lr * offsets[model], float(middle.mean()) if np.isfinite(middle).all() else above))
            xs, ys = zip(*medians)
            ax.plot(xs, ys, color=colours[model], lw=1.1)
            if model in chosen:
                pick = [y for xv, y in medians if np.isclose(xv, chosen[model] * offsets[model])]
                if pick:
                    ax.scatter([chosen[model] * offsets[model]], pick, s=90, facecolors="none", edgecolors=colours[model], lw=1.2, zorder=4)
        ax.axhline(budget, color="0.3", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(rates, [f"{v:g}" for v in rates])
        ax.minorticks_off()
        ax.set_title(f"T {lag}", fontsize=9)
        ax.set_xlabel("learning rate")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"steps to solve (triangles: > {budget:,.0f})")
    handles = {m: plt.Line2D([], [], color=colours[m], lw=1.1, marker="o", markersize=4) for m in models}
    handles[f"not solved within {budget:,.0f} steps"] = plt.Line2D([], [], color="0.3", lw=0, marker="^", markersize=5)
    handles["the rate chosen on validation"] = plt.Line2D([], [], color="0.3", lw=0, marker="o", markersize=9, markerfacecolor="none")
    fig.suptitle(title, fontsize=10)
    for ax in fig.axes:
        figures.powers_of_ten_only(ax)
    fig.tight_layout()
    figures.legend_below(fig, handles)
    return fig


def lr_figures(sec: Section, final: pd.DataFrame | None, selection: pd.DataFrame | None, settings: list[str]) -> None:
    """With a learning-rate sweep: per task, steps to solve (the verdict) against the rate, one panel per lag, one colour
    per model: how much each answer owes its rate."""
    if final is None or selection is None or not len(final) or "lr" not in final or final["lr"].nunique() < 2 or "steps_to_solve" not in final:
        return
    f = label_models(final)
    sel = label_models(selection)
    for task in dict.fromkeys(f["task"]) if "task" in f else [None]:
        g = f[f["task"] == task] if task is not None else f
        chosen = {r["model"]: float(r["lr"]) for _, r in sel[(sel["task"] == task) & sel["lr_selected"].astype(bool)].iterrows()} if task is not None else {}
        on = _verdict_set(g)
        sec.figures.append((f"{task}-steps-against-lr" if task else "steps-against-lr",
                            f"{task}: steps to solve (on the {on} set: the kept checkpoint's step) against the learning rate, one panel per lag, "
                            "one colour per model: each seed a point, a seed that did not solve within its budget a triangle above the budget "
                            "line, the line the median over seeds; ringed: each model's rate, chosen on validation for all lags together.",
                            partial(_steps_against_lr, g, model_order=model_order(g["model"]), chosen=chosen,
                                    title=figures.fixed_title(f"{task}: steps to solve against the learning rate",
                                                              fixed_settings(g, settings, DRAWN | {"task", "seq_len", "lr"})))))


def verdict_note(sec: Section, runs: pd.DataFrame | None, final: pd.DataFrame | None) -> None:
    """How a run's verdict is read, apart from what chose its checkpoint, stopped it and chose its learning rate."""
    if runs is None or not len(runs) or "verdict_from" not in runs or not (runs["verdict_from"] == "test").any():
        return
    r = runs[runs["verdict_from"] == "test"]
    sizes = sorted({int(v) for v in r["test_sequences"].dropna()}) if "test_sequences" in r else []
    evals = sorted({int(v) for v in r["val_sequences"].dropna()}) if "val_sequences" in r else []
    kept = "the checkpoint with the lowest validation loss" if (r.get("kept", pd.Series(["last"])) == "best").all() else "the model at the run's end (or its best checkpoint where kept)"
    margins = sorted({float(v) for v in r["stop_margin"].dropna()}) if "stop_margin" in r else [1.0]
    stop = (f"stopped a run once it met its task's rule at {' / '.join(f'{m:g}' for m in margins)} of the rule's threshold" if (r.get("stop_when_solved", pd.Series([False])).astype(bool)).any()
            else "did not stop a run")
    seconds = r["test_seconds"].astype(float) if "test_seconds" in r else pd.Series(dtype=float)
    sec.notes.append(f"Verdicts: a run is solved when its task's rule holds on a fresh test set of {' / '.join(f'{n:,}' for n in sizes)} sequences "
                     "(a seed stream of its own, never drawn in training or validation), read once, at the end, by the kept model: "
                     f"{kept}; steps to solve are that checkpoint's step. The validation set ({' / '.join(f'{n:,}' for n in evals)} sequences, "
                     f"read at every evaluation) chose the checkpoint, {stop}, and chose the learning rate where several were tried; "
                     "its own verdict is the val_ columns. Each ratio to the memoryless loss is taken on the very set it scores."
                     + (f" Reading the test set took {seconds.median():.1f} s per run (median; {seconds.sum() / 60:.1f} min in all)." if len(seconds) else ""))


def flow(sec: Section, flow_table: pd.DataFrame | None, settings: list[str]) -> None:
    """||dL/dh_t|| on held-out data at initialisation and while learning: one curve per training step."""
    if flow_table is None or not len(flow_table):
        return
    f = label_models(flow_table[flow_table["wrt"] == "h"])
    for extra, g in group_by_others(f, settings, DRAWN | {"model", "probe_steps"}):
        sec.figures.append((f"flow{extra.replace(' ', '').replace(',', '-')}",
                            "||dL/dh_t|| for the task's own loss on held-out sequences (RMS over them) against distance from the last "
                            "step, one colour per training step (0: at initialisation), one panel per model: does a cell that learns "
                            "the lag keep its gradient alive across it? (Arjovsky et al. 2016, Fig. 4)",
                            partial(figures.panels_of_lines, g, "distance", "state_grad_norm", panel="model", hue="step",
                                    xlabel="distance from the last step (steps)", ylabel="||dL/dh_t||",
                                    title=figures.fixed_title(f"gradient flow while learning{extra}", fixed_settings(g, settings, DRAWN)))))


def _span(row: pd.Series, col: str) -> str:
    """'median (min-max)' of a context measure over seeds; inf (not within even at the longest k) as 'beyond'."""
    def say(v: float) -> str:
        return "beyond the longest k" if math.isinf(v) else f"{v:g}"

    med, lo, hi = row[f"{col}_median"], row[f"{col}_min"], row[f"{col}_max"]
    return say(med) if lo == hi else f"{say(med)} ({say(lo)} to {say(hi)})"


def context(sec: Section, ctx: pd.DataFrame | None, grads: pd.DataFrame | None, eff: pd.DataFrame | None, settings: list[str],
            over_seeds: pd.DataFrame | None = None) -> None:
    """How far back a trained model looks (Khandelwal et al. 2018): loss with the context cut or scrambled
    before the last k inputs, against the full-context loss; effective context per model, over its seeds."""
    if ctx is None or not len(ctx) or "probe" not in ctx:
        return
    if over_seeds is not None and len(over_seeds):
        o = label_models(over_seeds)
        if "impl" in o and o["impl"].nunique() > 1:
            o["model"] = o["model"] + " " + o["impl"].astype(str)
        said = []
        intervals = "replace_upper_median" in o
        for split in dict.fromkeys(o["split"]):
            part = o[o["split"] == split]
            if intervals:
                said.append(f"on {split} text " + "; ".join(
                    f"{m} {_span(r, 'replace_context')}" + (f" (surely within by {_span(r, 'replace_upper')})" if r["replace_upper_median"] != r["replace_context_median"] else "")
                    + f", cut {_span(r, 'effective_context')}, best k {_span(r, 'best_k')}, warm-up {100 * r['warmup_median']:+.1f}%"
                    for m, (_, r) in zip(part["model"], part.iterrows())))
            else:
                said.append(f"on {split} text " + "; ".join(
                    f"{m} {_span(r, 'effective_context')}" + (f" (order beyond {_span(r, 'shuffle_context')} ignored)" if pd.notna(r["shuffle_context_median"]) else "")
                    for m, (_, r) in zip(part["model"], part.iterrows())))
        seeds = sorted(set(o["seeds"].astype(int)))
        over = f"median and range over {' to '.join(map(str, (seeds[0], seeds[-1]) if len(seeds) > 1 else seeds))} seed{'s' * (seeds[-1] != 1)}"
        if intervals:
            sec.key_points.insert(0, f"Context used ({over}): the fewest inputs k from which no longer k shows evidence (its 95% interval) of costing "
                                  "more than 1% when the inputs before it are replaced by unrelated ones (the same number read, so no warm-up "
                                  "counts): " + "; ".join(said) + ". 'cut' is Khandelwal et al.'s effective context (a zero state before k, "
                                  "against the full context: content and warm-up together); best k the cut context that scores lowest; warm-up "
                                  "what a zero state costs over one warmed up on unrelated text.")
            sec.notes.append(f"The replace probe's unrelated text: {DONOR_RULE}; for independent sequences, another sequence's. "
                             "Each gap's 95% interval is for the gap over every position the scored targets were drawn from.")
        else:
            sec.key_points.insert(0, "Effective context, the fewest inputs k from which every longer context stays within 1% of the full-context "
                                  f"loss ({over}): " + "; ".join(said) + ". In brackets: the k beyond which shuffling the earlier inputs costs under 1%.")
        sec.tables.append(("Context over seeds (k inputs; replace: the context used, against the real window; shuffle: whose order is "
                           "used; effective: the cut against the full context; *_upper: from where every longer k is surely within 1%)",
                           o[[c for c in ["task", "model", "impl", "split", "seeds", "replace_context_median", "replace_context_min", "replace_context_max",
                                          "replace_upper_median", "effective_context_median", "effective_context_min", "effective_context_max",
                                          "shuffle_context_median", "best_k_median", "warmup_median", "loss_full_median"] if c in o]]))
    if eff is not None and len(eff):
        e = label_models(eff)
        sec.tables.append(("Context per run", e[[c for c in ["task", "model", "impl", "seed", "split", "replace_context", "replace_upper", "effective_context",
                                                             "effective_upper", "shuffle_context", "best_k", "best_gap", "warmup", "longest_context",
                                                             "loss_full", "loss_window", "loss_shortest", "loss_longest"] if c in e]]))
    c = label_models(ctx)
    c = c.assign(increase=c["gap"]) if "gap" in c else c.assign(increase=lambda d: (d["loss"] - d["loss_full"]) / d["loss_full"].abs())
    c["probe"] = c["probe"].map({"truncate": "cut", "shuffle": "shuffled before k", "replace": "replaced before k"})
    for extra, g in group_by_others(c, settings, DRAWN | {"model"}):
        sec.figures.append((f"context-loss{extra.replace(' ', '').replace(',', '-')}",
                            "Loss with only the last k inputs (cut: a zero state before them, against the full context; shuffled or "
                            "replaced: the earlier inputs permuted, or taken from unrelated text far from the target (the rule under 'How to read these numbers'), against the real window of as many inputs), "
                            "relative to its reference on the same targets ((loss - reference) / reference; 0: k is enough), one panel per "
                            "text, log x axis. Several seeds: their median and middle half.",
                            partial(figures.panels_of_lines, g, "k", "increase", panel="split", hue="model", style="probe",
                                    xlabel="inputs of context k", ylabel="relative loss increase", log=False, logx=True, baseline=0.0, sharey=False,
                                    title=figures.fixed_title(f"loss by available context{extra}", fixed_settings(g, settings, DRAWN)))))
    if grads is not None and len(grads):
        g = label_models(grads)
        sec.figures.append(("context-grads", "||dL/dz|| for the input k characters before the predicted one (z: its row of W_x), "
                            "RMS over held-out positions, with the longest context: how fast the trained model's sensitivity fades.",
                            partial(figures.panels_of_lines, g.assign(split="held out"), "distance", "input_grad_norm", panel="split", hue="model",
                                    style="impl" if g["impl"].nunique() > 1 else None, xlabel="characters back", ylabel="||dL/dz||",
                                    title=figures.fixed_title("input gradient by distance", fixed_settings(g, settings, DRAWN)))))
