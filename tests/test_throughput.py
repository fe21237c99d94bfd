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
    assert set(rows) == {"scratch", "cudnn"}
    assert rows["cudnn"]["ratio_to_fused"] == 1.0 or rows["cudnn"]["noisy"]  # a noisy fused timing quotes no ratio (next test)
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
    assert len(ratios) == 1 and ratios["scratch ratio_to_fused"].iloc[0] == pytest.approx(rows["scratch"]["ratio_to_fused"], nan_ok=True)


@pytest.mark.parametrize("attempts_times, noisy, ratio, attempts", [
    ([{"scratch": [2.0] * 6, "cudnn": [1.0] * 6}], False, 2.0, 1),  # quiet at once
    ([{"scratch": [1.0, 1, 9, 9, 1, 9], "cudnn": [1.0] * 6}, {"scratch": [3.0] * 6, "cudnn": [1.0] * 6}], False, 3.0, 2),  # quiet when retimed
    ([{"scratch": [1.0, 1, 9, 9, 1, 9], "cudnn": [1.0] * 6}] * 3, True, float("nan"), 3),  # noise every time: flagged, no ratio
])
def test_a_timing_that_is_noise_is_retimed_then_flagged_never_a_ratio(monkeypatch, attempts_times, noisy, ratio, attempts):
    from gradlab.measures import throughput

    given = iter(attempts_times)
    monkeypatch.setattr(throughput, "interleaved_times", lambda calls, device, repeats, warmup: {k: [t / 1e3 for t in v] for k, v in next(given).items()})
    rows = {r["impl"]: r for r in run(Config(cell="gru", seq_len=4, batch_size=2, hidden_size=8, repeats=6, warmup=0, noise_retries=2))["results"]}
    assert rows["scratch"]["noisy"] is noisy and rows["scratch"]["attempts"] == attempts and not rows["cudnn"]["noisy"]
    assert rows["scratch"]["ratio_to_fused"] == pytest.approx(ratio, nan_ok=True)
    assert rows["scratch"]["spread"] == pytest.approx(throughput.spread([t / 1e3 for t in attempts_times[-1]["scratch"]]))


def test_spread_is_iqr_over_median():
    from gradlab.measures.throughput import spread

    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.5 - 1.5) / 3.0)  # statistics.quantiles' exclusive method
    assert spread([2.0] * 5) == 0.0


def test_the_page_flags_noise_and_quotes_no_ratio_for_it():
    import pandas as pd

    from gradlab.report.throughput import view

    base = dict(workload="cell", cell="gru", seq_len=35, batch_size=32, hidden_size=256, mode="forward+backward", dtype="float32", device="cpu",
                tokens_per_s=1.0, gflops=1.0, peak_fraction=0.1, peak_mem_bytes=float("nan"), backend="x", attempts=3)
    res = pd.DataFrame([base | dict(impl="cudnn", ms_median=151.0, ms_iqr=5.0, spread=0.03, noisy=False, ratio_to_fused=1.0),
                        base | dict(impl="scratch", ms_median=54.0, ms_iqr=925.0, spread=17.1, noisy=True, ratio_to_fused=float("nan"))])
    said = " ".join(view({"results": res}, {"columns": []}).key_points)
    assert "NOISE: 1 timing spread too widely" in said and "scratch gru at T 35, B 32, H 256 (54 ms, IQR 925 ms)" in said
    assert "0.36" not in said and "Time over the fused kernel's" not in said


@pytest.mark.parametrize("kwargs,message", [
    (dict(impls=("scratch", "cudnn"), cell="linear"), "no cudnn implementation"),
    (dict(impls=("scratch-graph",)), "needs device cuda"),
    (dict(mode="backward"), "Unknown mode 'backward'"),
    (dict(workload="lyrics_epoch", cell="rnn"), "gru and lstm"),
    (dict(repeats=0), "repeats must be >= 1"),
    (dict(workload="train_step", optimizer="adamx"), "Unknown optimizer 'adamx'"),
    (dict(workload="train_step", clip="norm"), "clip"),
    (dict(workload="trainstep"), "Did you mean 'train_step'"),
])
def test_bad_settings_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs).validate()


def test_the_train_step_workload_times_one_optimiser_step_as_the_trainer_takes_it():
    """The timed call is training.loop.train_step on the adding task: it moves the parameters exactly as
    the trainer's first step from the same model and batch does."""
    import torch

    from gradlab.measures import throughput as tp
    from gradlab.tasks import build
    from gradlab.training.clipping import parse_clip
    from gradlab.training.loop import train_step
    from gradlab.training.model import build_model
    from gradlab.training.optimizers import make_optimizer

    cfg = Config(workload="train_step", cell="lstm", seq_len=12, batch_size=4, hidden_size=8, lr=0.01)
    batch = build("adding", {}).sample(torch.Generator().manual_seed(0), 4, 12)
    call, cell = tp._train_step_call(cfg, "scratch", batch)
    call()
    spec = build("adding", {}).spec
    model = build_model(spec, "lstm", "scratch", 8, seed=0, init="uniform")
    params = list(model.parameters())
    train_step(model, spec, batch, None, make_optimizer("rmsprop", params, 0.01), parse_clip("norm:1"), params)
    for a, b in zip(cell.parameters(), model.cell.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    rows = tp.run(cfg.__class__(**{**cfg.__dict__, "repeats": 2, "warmup": 1, "noise_retries": 0}))["results"]
    assert {r["impl"] for r in rows} == {"scratch", "cudnn"} and all(r["ms_median"] > 0 for r in rows)
    assert rows[0]["flops"] == pytest.approx(rows[1]["flops"])  # the same matmuls counted for both (I = 2, forward and backward)


def test_time_shares_sum_to_one_and_put_a_matmul_in_matmul():
    import torch

    from gradlab.timeshare import BUCKETS, bucket_of, time_shares

    assert [bucket_of(n) for n in ("aten::mm", "aten::mkldnn_rnn_layer", "aten::sigmoid_backward", "aten::slice",
                                   "autograd::engine::evaluate_function: MmBackward0", "LSTMSequenceBackward", "aten::nonzero")] == [
        "matmul", "fused recurrent kernel", "element-wise", "views and allocation", "autograd engine", "Python and dispatch", "other kernels"]
    a = torch.randn(400, 400)
    shares = time_shares(lambda: a @ a, repeats=3, warmup=1)
    assert set(shares) == set(BUCKETS) | {"wall_ms"} and sum(shares[b] for b in BUCKETS) == pytest.approx(1.0)
    assert shares["matmul"] > 0.5
    x = torch.randn(200, 200)
    assert time_shares(lambda: [torch.tanh(x) for _ in range(20)], repeats=3)["element-wise"] > 0.3


@pytest.mark.parametrize("cell", ["lru", "mingru", "minlstm"])
@pytest.mark.parametrize("impl", ["scratch", "scan"])
@pytest.mark.parametrize("backward", [False, True])
def test_the_modern_cells_flops_match_torchs_flop_counter(cell, impl, backward):
    from gradlab.measures.throughput import flops_of

    T, B, I, H = 7, 3, 5, 6
    layer = create(cell, impl, I, H, init="xavier")
    x = torch.randn(T, B, I)
    with FlopCounterMode(display=False) as counter:
        out, _ = layer(x)
        if backward:
            out.sum().backward()
    assert counter.get_total_flops() == flops_of(cell, T, B, I, H, backward)


def test_a_modern_cell_is_timed_against_its_scan_and_a_reference_interleaved():
    """The ratio is to the cell's own fast twin (scan), and a reference cell's kernel (lstm/cudnn) is timed on the same
    data in the same interleaved runs, with its own FLOP count."""
    from gradlab.measures.throughput import flops_of

    rows = {r["impl"]: r for r in run(Config(cell="mingru", impls=("scratch", "scan"), reference="lstm/cudnn", seq_len=64, batch_size=4,
                                             hidden_size=16, repeats=3, warmup=1))["results"]}
    assert set(rows) == {"scratch", "scan", "lstm/cudnn (reference)"} and {r["twin"] for r in rows.values()} == {"scan"}
    assert rows["scan"]["ratio_to_fused"] == 1.0 or rows["scan"]["noisy"]
    assert rows["lstm/cudnn (reference)"]["ratio_to_reference"] == 1.0 or rows["lstm/cudnn (reference)"]["noisy"]
    assert rows["scratch"]["backend"] == "python-loop" and rows["scan"]["backend"] == "log-space-scan"
    assert rows["lstm/cudnn (reference)"]["flops"] == flops_of("lstm", 64, 4, 16, 16, True) != rows["scan"]["flops"]
    with pytest.raises(ValueError, match="no cudnn implementation"):
        Config(cell="lru", impls=("scratch", "cudnn")).validate()
    with pytest.raises(ValueError, match="reference names CELL/IMPL"):
        Config(cell="lru", impls=("scratch", "scan"), reference="lstm").validate()
    with pytest.raises(ValueError, match="no scan implementation"):
        Config(cell="lru", impls=("scratch", "scan"), reference="lstm/scan").validate()
