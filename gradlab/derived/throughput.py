"""Derived tables of throughput: each impl's time and its ratio to the fused kernel, side by side per shape."""

from __future__ import annotations

import pandas as pd

def derive(tables: dict[str, pd.DataFrame], columns: list[str]) -> dict[str, pd.DataFrame]:
    """Side by side per shape: each impl's median time, and its ratio to the fast twin (cudnn's fused kernel, the modern
    cells' scan; or the book), and to the reference timed beside it where one was."""
    res = tables["results"]
    keys = [c for c in ("workload", "cell", "seq_len", "batch_size", "hidden_size", "input_size", "mode", "dtype", "device") if c in res]
    ratio = "ratio_to_book" if (res["workload"] == "lyrics_epoch").all() else "ratio_to_fused"
    values = ["ms_median", ratio, "peak_fraction"] + (["ratio_to_reference"] if "ratio_to_reference" in res and res["ratio_to_reference"].notna().any() else [])
    wide = res.pivot_table(index=keys, columns="impl", values=values, aggfunc="first", dropna=False)
    wide.columns = [f"{impl} {what}" for what, impl in wide.columns]
    return {"ratios": wide.dropna(how="all").reset_index()}  # only the shapes a point measured
