"""The lyrics language model as a study: perplexity curves, samples, per-step clipping telemetry."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..tasks.corpus import locate, read_text
from ..tasks.lyrics import prepare
from ..train import LyricsConfig, train_lyrics


KEY_COLUMNS = ("cell", "impl", "sampling")  # in every table, axes or not


@dataclass
class Config(LyricsConfig):
    corpus: str | None = None  # the zip or its folder; else $GRADLAB_DATA, the user cache, a download


def preflight(configs: list[Config]) -> None:
    """Find (or fetch) every corpus the points name once, before any work: a missing corpus is one
    clear error, not a failure per point."""
    for corpus in {cfg.corpus for cfg in configs}:
        locate(corpus)


def run(cfg: Config) -> dict[str, list[dict]]:
    data = prepare(read_text(locate(cfg.corpus)), cfg.setting, cfg.val_fraction, cfg.oov)
    result = train_lyrics(cfg, data, progress=False)
    extra = {"backend": result.meta["backend"], "vocab_size": data.stats["vocab_size"], "val_oov_rate": data.stats["val_oov_rate"]}
    return {
        "results": [row | extra for row in result.history],
        "samples": result.samples,
        "steps": result.steps,
    }


def derive(tables: dict[str, pd.DataFrame], axes: list[str]) -> dict[str, pd.DataFrame]:
    """The last row of each run, and seconds per epoch (median over the run)."""
    results = tables["results"]
    by = [a for a in axes if a in results.columns]
    last = results.sort_values("epoch").groupby(by, dropna=False).tail(1)
    speed = results.groupby(by, dropna=False)["seconds"].median().rename("seconds_per_epoch").reset_index()
    final = last[by + ["epoch", "train_ppl", "val_ppl", "grad_norm", "clip_rate", "diverged"]].merge(speed, on=by)
    return {"final": final.reset_index(drop=True)}
