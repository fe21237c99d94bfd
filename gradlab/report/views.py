"""What every measure's view shares: the settings a drawing fixes, the ones that split it, model labels."""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from .figures import CELL_ORDER

Tables = dict[str, pd.DataFrame]
QUIET = {"point", "device", "corpus", "prefixes", "pred_len", "sample_temperature", "eval_seed", "eval_size", "eval_every",  # not worth a title
         "solve_fraction", "stop_when_solved", "probe_steps", "probe_size", "context_lengths", "context_positions", "eval_modes"}
OFF = {"embedding": 0, "tie": False, "dropout_embedding": 0.0, "dropout_chars": 0.0, "dropout_output": 0.0, "weight_drop": 0.0,
       "weight_decay": 0.0, "label_smoothing": 0.0, "lr_schedule": "constant", "tf32": False}  # features off by default: named in a title only when on


def _off(setting: str, value) -> bool:
    return setting in OFF and value == OFF[setting]


def fixed_settings(df: pd.DataFrame, settings: list[str], drawn: set[str]) -> dict:
    """Settings with one value in df (and not drawn): a figure's title names them, so a PNG stands alone."""
    out = {}
    for c in settings:
        if c in df and c not in drawn and c not in QUIET and df[c].map(repr).nunique() == 1:
            v = df[c].iloc[0]
            if v is not None and not (isinstance(v, float) and pd.isna(v)) and not _off(c, v):
                out[c] = f"{v:g}" if isinstance(v, float) else v
    return out


def group_by_others(df: pd.DataFrame, settings: list[str], drawn: set[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    """One group per combination of the settings that vary in df but a figure does not draw, with a
    label like ', seq_len 200' for its title and file name."""
    others = [c for c in settings if c in df and c not in drawn and c not in QUIET and df[c].map(repr).nunique() > 1]
    if not others:
        yield "", df
        return
    for key, g in df.groupby(others, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in zip(others, key)), g


def label_models(df: pd.DataFrame) -> pd.DataFrame:
    """A 'model' column: the cell, with its forget bias where one is set, and its variant where named."""
    model = df["cell"].astype(str)
    if "variant" in df:
        model = model + df["variant"].map(lambda v: f" ({v})" if isinstance(v, str) and v else "")
    if "forget_bias" in df:
        model = model + df["forget_bias"].map(lambda v: f", forget bias {v:g}" if v else "")
    return df.assign(model=model)


def model_order(labels) -> list[str]:
    """Model labels, cells in the order linear, rnn, gru, lstm, then by label."""
    def key(label: str) -> tuple:
        cell = label.split(" ")[0].rstrip(",")
        return (CELL_ORDER.index(cell) if cell in CELL_ORDER else len(CELL_ORDER), label)
    return sorted(dict.fromkeys(labels), key=key)
