"""The search behind the lyrics 'counting' profile: each recipe (a set of overrides of that profile) trained for one
seed per cell on the generalise split, judged on validation perplexity only (the test set is read once, by the
reference run of the recipe chosen). Writes reports/lyrics-recipe-search.csv: per recipe and cell, the best
validation perplexity, the step it was reached at and the training seconds; prints it beside the best
Kneser-Ney n-gram's validation perplexity.

    GRADLAB_DATA=... python scripts/lyrics_recipe_search.py [--cells gru,lstm,rnn] [--recipes base,small,...]

Each run lands in runs/recipe-search/RECIPE-CELL and is cached there: rerunning resumes. (The study scores the test
text too; this script never reads it.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch

from gradlab.runner import run_study

# The first base recipe, written out against the counting profile (which now holds the best recipe found): each
# recipe below is BASE plus its own changes, so the table's rows mean what they meant when they were run.
BASE = ["dropout_output=0.4", "dropout_embedding=0.1", "dropout_chars=0.1", "weight_drop=0.3", "weight_decay=0.01", "label_smoothing=0",
        "seq_len=64", "batch_size=32", "eval_streams=0"]
OLD = ["embedding=0", "tie=false", "dropout_output=0", "dropout_embedding=0", "dropout_chars=0", "weight_drop=0", "weight_decay=0",
       "optimizer=adam", "lr=0.002", "lr_schedule=constant", "clip=norm:1", "dropout=0.3", "patience=6"]
STRONG = ["dropout_output=0.5", "dropout_embedding=0.3", "dropout_chars=0.2", "weight_drop=0.5", "weight_decay=0.1"]
STRONGER = ["dropout_output=0.6", "dropout_embedding=0.4", "dropout_chars=0.3", "weight_drop=0.6", "weight_decay=0.3"]
SMOOTH = ["label_smoothing=0.1"]
LONGER = ["seq_len=256", "batch_size=8"]  # the same characters per step
RECIPES = {  # name -> overrides of BASE, and what the recipe tries
    "generalise": (OLD, "the generalise profile's recipe: one-hot inputs, dropout 0.3 on outputs, Adam 2e-3"),
    "base": ([], "embedding 256 tied, locked dropout 0.4 out / 0.1 in, characters 0.1, weight drop 0.3, AdamW 3e-3 wd 0.01, plateau, 64 characters x 32 streams"),
    "strong": (STRONG, "the base recipe with more of every regulariser: dropout 0.5 out / 0.3 in, characters 0.2, weight drop 0.5, wd 0.1"),
    "small-strong": (STRONG + ["hidden_size=128", "embedding=128"], "the strong recipe at 128 units"),
    "slow-strong": (STRONG + ["lr=0.001"], "the strong recipe at a third of the rate"),
    "untied": (["tie=false"], "the base recipe, output layer untied"),
    "stronger": (STRONGER, "more still: dropout 0.6 out / 0.4 in, characters 0.3, weight drop 0.6, wd 0.3"),
    "longer-strong": (STRONG + LONGER, "the strong recipe on 256 characters per step, 8 streams: room to learn a chorus's return"),
    "stronger-smooth": (STRONGER + SMOOTH, "the stronger recipe with label smoothing 0.1"),
    "stronger-smooth-longer": (STRONGER + SMOOTH + LONGER, "the stronger recipe with label smoothing 0.1, 256 characters per step, 8 streams (the counting profile)"),
    "wide-smooth": (STRONGER + SMOOTH + ["hidden_size=512", "embedding=512"], "the stronger recipe with label smoothing 0.1 at 512 units"),
    "strongest-smooth-longer": (["dropout_output=0.7", "dropout_embedding=0.5", "dropout_chars=0.4", "weight_drop=0.7", "weight_decay=0.5"] + SMOOTH + LONGER,
                                "more again: dropout 0.7 out / 0.5 in, characters 0.4, weight drop 0.7, wd 0.5, label smoothing 0.1, 256 characters per step"),
    "stronger-smooth2-longer": (STRONGER + ["label_smoothing=0.2"] + LONGER, "the counting profile's recipe with label smoothing 0.2"),
    "wide-smooth-longer": (STRONGER + SMOOTH + LONGER + ["hidden_size=512", "embedding=512"], "the counting profile's recipe at 512 units"),
}
SEARCH = Path("runs/recipe-search")
OUT = Path("reports/lyrics-recipe-search.csv")


def summarise() -> pd.DataFrame:
    """Every finished search run's row (each run folder holds its own: runs of this script in parallel do not clash)."""
    rows = []
    for name, (_, what) in RECIPES.items():
        for out in sorted(SEARCH.glob(f"{name}-*")):
            if out.name.rsplit("-", 1)[0] != name or not (out / "final.parquet").exists():  # stronger-gru, not stronger-smooth-gru
                continue
            final = pd.read_parquet(out / "final.parquet").iloc[0]
            runs = pd.read_parquet(out / "runs.parquet").iloc[0]
            manifest = json.loads((out / "manifest.json").read_text())
            grams = {n: math.exp(runs[f"val_mkn{n}_loss"]) for n in (2, 3, 4, 5)}
            rows.append({"recipe": name, "cell": final["cell"], "best_val_ppl": math.exp(final["best_val_loss"]), "best_step": int(final["best_step"]),
                         "parameters": int(runs["parameters"]), "train_seconds": round(float(final["train_seconds"])), "what": what,
                         "val_streams": int(runs.get("eval_streams", 0) or runs["batch_size"]),  # streams the validation text was scored as
                         "best_kn_val_ppl": min(grams.values()), "unigram_val_ppl": math.exp(runs["val_unigram_loss"]),
                         "commit": (manifest.get("code") or {}).get("commit", "")[:7] + ("+" if (manifest.get("code") or {}).get("dirty") else "")})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="gru,lstm,rnn")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--collect", action="store_true", help="only gather the finished runs into the table")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); two searches side by side take 1 each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.collect:
        for cell in args.cells.split(","):
            for name in args.recipes.split(","):
                overrides, _ = RECIPES[name]
                run_study("lyrics", "counting", [f"cell={cell}", "seed=0", "context_lengths=[]", "pred_len=0", *BASE, *overrides],
                          out=SEARCH / f"{name}-{cell}", progress=False)
    table = summarise()
    OUT.parent.mkdir(exist_ok=True)
    table.to_csv(OUT, index=False)
    print(table[["recipe", "cell", "best_val_ppl", "best_step", "parameters", "train_seconds", "best_kn_val_ppl"]].to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
