"""The search behind the lyrics 'counting' profile: each recipe (a set of overrides of that profile) trained for one
seed per cell on the generalise split, judged on validation perplexity only (the test set is read once, by the
reference run of the recipe chosen). Writes reports/lyrics-recipe-search.csv: per recipe and cell, the best
validation perplexity, the step it was reached at and the seconds the run took; prints it beside the best
Kneser-Ney n-gram's validation perplexity.

    GRADLAB_DATA=... python scripts/lyrics_recipe_search.py [--cells gru,lstm,rnn] [--recipes base,small,...]

Each run lands in runs/recipe-search/RECIPE-CELL and is cached there: rerunning resumes.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd

from gradlab.runner import run_study

OLD = ["embedding=0", "tie=false", "dropout_output=0", "dropout_embedding=0", "dropout_chars=0", "weight_drop=0", "weight_decay=0",
       "optimizer=adam", "lr=0.002", "lr_schedule=constant", "clip=norm:1", "dropout=0.3", "patience=6"]
RECIPES = {  # name -> overrides of the counting profile, and what the recipe tries
    "generalise": (OLD, "the generalise profile's recipe: one-hot inputs, dropout 0.3 on outputs, Adam 2e-3"),
    "base": ([], "embedding 256 tied, locked dropout 0.4 out / 0.1 in, characters 0.1, weight drop 0.3, AdamW 3e-3 wd 0.01, plateau"),
    "untied": (["tie=false"], "the base recipe, output layer untied"),
    "small": (["hidden_size=128", "embedding=128"], "the base recipe at 128 units"),
    "more-dropout": (["dropout_output=0.5", "weight_drop=0.5", "dropout_chars=0.2"], "the base recipe, more dropout"),
    "less-dropout": (["dropout_output=0.25", "weight_drop=0.15", "dropout_chars=0"], "the base recipe, less dropout"),
}
OUT = Path("reports/lyrics-recipe-search.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="gru,lstm,rnn")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    rows = pd.read_csv(OUT).to_dict("records") if OUT.exists() else []
    done = {(r["recipe"], r["cell"]) for r in rows}
    for cell in args.cells.split(","):
        for name in args.recipes.split(","):
            if (name, cell) in done:
                continue
            overrides, what = RECIPES[name]
            start = time.time()
            out = Path("runs/recipe-search") / f"{name}-{cell}"
            run_study("lyrics", "counting", [f"cell={cell}", "seed=0", "context_lengths=[]", "pred_len=0", *overrides], out=out, progress=False)
            final = pd.read_parquet(out / "final.parquet").iloc[0]
            runs = pd.read_parquet(out / "runs.parquet").iloc[0]
            grams = {n: math.exp(runs[f"val_mkn{n}_loss"]) for n in (2, 3, 4, 5)}
            rows.append({"recipe": name, "cell": cell, "best_val_ppl": math.exp(final["best_val_loss"]), "best_step": int(final["best_step"]),
                         "parameters": int(runs["parameters"]), "seconds": round(time.time() - start), "what": what,
                         "best_kn_val_ppl": min(grams.values()), "unigram_val_ppl": math.exp(runs["val_unigram_loss"])})
            pd.DataFrame(rows).to_csv(OUT, index=False)
            print(pd.DataFrame(rows)[["recipe", "cell", "best_val_ppl", "best_step", "parameters", "seconds", "best_kn_val_ppl"]].to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
