"""The throughput measure: FLOP counts against torch's counter, rows and ratios, and its checks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gradlab.cells import create
from gradlab.measures.throughput import Config, derive, run
from gradlab.timing import layer_flops


@pytest.mark.parametrize("cell", ["linear", "rnn", "gru", "lstm"])
@pytest.mark.parametrize("backward", [False, True])
def test_layer_flops_match_torchs_flop_counter(cell, backward):
    T, B, I, H = 7, 3, 5, 6
    layer = create(cell, "scratch", I, H, init="xavier")
    x = torch.randn(T, B, I)
    with FlopCounterMode(display=False) as counter:
        out, _ = layer(x)
        if backward:
            out.sum().backward()
    assert counter.get_total_flops() == layer_flops(cell, T, B, I, H, backward)


def test_rows_ratios_and_peak_fraction():
    tables = run(Config(cell="gru", seq_len=6, batch_size=4, hidden_size=16, repeats=3, warmup=1))
    rows = {r["impl"]: r for r in tables["results"]}
    assert set(rows) == {"scratch", "cudnn"} and rows["cudnn"]["ratio_to_fused"] == 1.0
    for r in rows.values():
        assert r["ms_median"] > 0 and r["ms_iqr"] >= 0 and r["flops"] == layer_flops("gru", 6, 4, 16, 16, True)
        assert r["gflops"] == pytest.approx(r["flops"] / (r["ms_median"] / 1e3) / 1e9)
        assert r["peak_fraction"] == pytest.approx(r["gflops"] / r["peak_gflops"])
        assert r["tokens_per_s"] == pytest.approx(6 * 4 / (r["ms_median"] / 1e3))
    assert rows["scratch"]["backend"] == "python-loop" and rows["cudnn"]["backend"] in ("aten-cpu", "onednn")
    import pandas as pd

    df = pd.DataFrame(tables["results"]).assign(workload="cell", cell="gru", seq_len=6, batch_size=4, hidden_size=16, mode="forward+backward",
                                                dtype="float32", device="cpu")
    ratios = derive({"results": df}, [])["ratios"]
    assert len(ratios) == 1 and ratios["scratch ratio_to_fused"].iloc[0] == pytest.approx(rows["scratch"]["ratio_to_fused"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(impls=("scratch", "cudnn"), cell="linear"), "no cudnn implementation"),
    (dict(impls=("scratch-graph",)), "needs device cuda"),
    (dict(mode="backward"), "Unknown mode 'backward'"),
    (dict(workload="lyrics_epoch", cell="rnn"), "gru and lstm"),
    (dict(repeats=0), "repeats must be >= 1"),
])
def test_bad_settings_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs).validate()
