"""The training report: final held-out numbers per run first, then learning curves, then generated text."""

from __future__ import annotations

from functools import partial

import pandas as pd

from . import figures
from .page import Section
from .views import Tables, fixed_settings, group_by_others, label_models, model_order

DRAWN = {"cell", "impl", "variant", "forget_bias", "point", "seed"}


def _varying(df: pd.DataFrame, settings: list[str]) -> list[str]:
    return [c for c in settings if c in df and c != "point" and df[c].map(repr).nunique() > 1]


def view(t: Tables, manifest: dict) -> Section:
    res, final, runs = t["results"], t.get("final"), t.get("runs")
    settings = manifest.get("columns", [])
    lyrics = "val_ppl" in res and res["val_ppl"].notna().any()
    sec = Section()
    if lyrics:
        sec.key_points.append("Perplexity is exp(mean cross-entropy per next character). Training perplexity is over the last "
                              "epoch before each evaluation; held-out perplexity over whole lines the model never saw.")
        if runs is not None and "val_targets_scored" in runs:
            r = runs.iloc[0]
            sec.key_points.append(
                f"Held out: {int(r['val_targets']):,} next-character targets; {int(r['val_targets_scored']):,} in the vocabulary of "
                f"{int(r['vocab_size']):,} characters are each scored once, and {int(r['val_targets_oov']):,} outside it are read as "
                f"context (an unknown-character input) and not scored. A uniform guess scores a perplexity of {int(r['vocab_size']):,}; "
                f"predicting each character by its training frequency, {r['unigram_entropy']:.2f} nats per character.")
    else:
        sec.key_points.append("Held-out loss is divided by the task's memoryless baseline (the loss of the best predictor that "
                              "ignores the past): 1 means nothing learnt across the lag; a run is solved below its solve_fraction.")
    if final is not None and len(final):
        varying = _varying(final, settings)
        cols = varying + (["epoch", "train_ppl", "val_ppl", "seconds_per_epoch"] if lyrics else
                          ["step", "final_val_loss", "baseline", "loss_over_baseline", "val_metric", "solved", "steps_to_solve"])
        cols += [c for c in ("diverged_step",) if c in final and final[c].notna().any()]
        sec.summary = ("Final evaluation per run", final[[c for c in dict.fromkeys(cols) if c in final]])
        diverged = final[final["diverged"]] if "diverged" in final else final.iloc[:0]
        if len(diverged):
            sec.key_points.append(f"{len(diverged)} run(s) diverged (a non-finite loss or gradient); their last row records the step.")
    x, xlabel = ("epoch", "epoch") if "epoch" in res and res["epoch"].notna().all() else ("step", "optimiser step")
    curves = label_models(res)
    curves = curves.assign(loss_over_baseline=curves["val_loss"] / curves["baseline"])
    for extra, g in group_by_others(curves, settings, DRAWN | {"model"}):
        fixed = fixed_settings(g, settings, DRAWN)
        style = "impl" if g["impl"].nunique() > 1 else None
        if lyrics:
            long = g.melt(id_vars=["model", "impl", x], value_vars=["train_ppl", "val_ppl"], var_name="split", value_name="perplexity")
            long["split"] = long["split"].map({"train_ppl": "training", "val_ppl": "held out"})
            sec.figures.append((f"perplexity{extra.replace(' ', '').replace(',', '-')}",
                                f"Training and held-out perplexity against {xlabel}, one panel per split, one colour per model"
                                + (", line style per impl." if style else "."),
                                partial(figures.panels_of_lines, long, x, "perplexity", panel="split", hue="model", style=style, xlabel=xlabel,
                                                        ylabel="perplexity", panel_order=["training", "held out"],
                                                        title=figures.fixed_title(f"perplexity{extra}", fixed))))
        else:
            panel = "seq_len" if "seq_len" in g and g["seq_len"].nunique() > 1 else "task"
            sec.figures.append((f"loss{extra.replace(' ', '').replace(',', '-')}",
                                f"Held-out loss over the memoryless baseline against {xlabel} (log axis; dashed: the baseline, 1), "
                                "one colour per model.",
                                partial(figures.panels_of_lines, g, x, "loss_over_baseline", panel=panel, hue="model", style=style, xlabel=xlabel,
                                                        ylabel="held-out loss / baseline", baseline=1.0,
                                                        title=figures.fixed_title(f"held-out loss / baseline{extra}", fixed))))
    if final is not None and lyrics and "seconds_per_epoch" in final:
        f = label_models(final)
        sec.figures.append(("seconds", "Training seconds per epoch (evaluation excluded), median run per model and impl.",
                            partial(figures.bars, f, "model", "seconds_per_epoch", hue="impl" if f["impl"].nunique() > 1 else None,
                                         title=figures.fixed_title("seconds per epoch", fixed_settings(f, settings, DRAWN)),
                                         ylabel="seconds per epoch", order=model_order(f["model"]))))
    samples = t.get("samples")
    if samples is not None and len(samples):
        last = samples[samples["epoch"] == samples["epoch"].max()]
        cols = _varying(last, settings) + ["epoch", "prefix", "temperature", "text"]
        sec.tables.append(("Generated text at the last evaluation (temperature 0: greedy)", last[list(dict.fromkeys(cols))]))
    return sec
