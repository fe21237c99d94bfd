"""The `gradlab lyrics` job: load the corpus, train, print the book's view, write the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .store import write_json_atomic, write_table_atomic
from .tasks.corpus import locate, read_text
from .tasks.lyrics import prepare
from .train import LyricsConfig, TrainResult, train_lyrics


def run_lyrics(
    cfg: LyricsConfig, corpus: Path | None, out: Path | None, progress: bool = True, echo: Callable[[str], None] = print
) -> TrainResult:
    data = prepare(read_text(locate(corpus)), cfg.setting, cfg.val_fraction, cfg.oov)
    s = data.stats
    echo(
        f"corpus: {s['train_chars']} training characters, vocabulary {s['vocab_size']}; held out "
        f"{s['val_chars']} characters in {s['val_lines']} unseen lines ({s['val_oov_chars']} out-of-vocabulary, {cfg.oov})"
    )
    result = train_lyrics(cfg, data, progress=progress)
    history = pd.DataFrame(result.history)
    echo(history.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for row in result.samples[-2 * len(cfg.prefixes):]:
        echo(f" - [T={row['temperature']:g}] {row['text']}")
    if result.meta["diverged"]:
        echo("the run diverged (non-finite loss or gradient); the history's last row records where.")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_table_atomic(history, out / "history.csv")
        write_table_atomic(pd.DataFrame(result.samples, columns=["epoch", "prefix", "temperature", "text"]), out / "samples.csv")
        write_table_atomic(pd.DataFrame(result.steps), out / "steps.csv")
        write_json_atomic(result.meta, out / "meta.json")
        echo(f"wrote {out}/history.csv, samples.csv, steps.csv, meta.json")
    return result
