"""The book's GRU has no recurrent candidate bias b_hh; gradlab's (like torch.nn.GRU's) trains one from 0.
Trains the book's scratch GRU both ways at the book's settings and prints the perplexities (about 3 min).

python scripts/book_gru_bias.py   (the lyrics corpus through $GRADLAB_DATA, or downloaded)
"""

from __future__ import annotations

import pandas as pd
import torch

from gradlab.baselines.speed import book_config
from gradlab.training import loop, train


def main() -> None:
    build = loop.build_model

    def book_cell(*args, **kwargs):
        model = build(*args, **kwargs)
        model.cell.b_hh.requires_grad_(False)  # held at its initial 0: the book's candidate has no b_hh
        return model

    rows = []
    for name, builder in (("b_hh trained (gradlab, torch.nn.GRU)", build), ("b_hh held at 0 (the book's code)", book_cell)):
        loop.build_model = builder
        try:
            result = train(book_config(eval_every=320))
        finally:
            loop.build_model = build
        history = pd.DataFrame(result.history).set_index("epoch")
        rows.append({"GRU": name, **{f"train ppl @{e}": history.loc[e, "train_ppl"] for e in (40, 80, 120, 160)},
                     "held-out ppl @160": history.loc[160, "val_ppl"]})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
