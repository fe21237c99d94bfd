"""The curse of memory: the closed forms (docs/curse_of_memory.md) against autograd's derivatives of each coefficient,
the exact sensitivity probe against the full Jacobian, the measure against its closed form within its standard error,
and the study's page."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradlab import theory
from gradlab.cells import create
from gradlab.measures.curse_of_memory import DIAGONAL, Config, Diagonal, e_folding, recorded, run
from gradlab.probes import parameter_sensitivity

F64 = torch.float64


@pytest.mark.parametrize("q", [0.25, 0.81, 0.9])
@pytest.mark.parametrize("n", [1, 2, 5, 30])
def test_the_polynomial_sums_are_the_running_sums(q, n):
    """The docs' closed forms of P0, P1, P2 equal memory_sums' running sums where both are well conditioned."""
    P0, P1, P2 = (v[-1] for v in theory.memory_sums(q, n))
    assert P0 == pytest.approx((1 - q**n) / (1 - q), rel=1e-12)
    assert P1 == pytest.approx(q * (1 - n * q ** (n - 1) + (n - 1) * q**n) / (1 - q) ** 2, rel=1e-12, abs=1e-15)
    assert P2 == pytest.approx(q * (1 + q - n * n * q ** (n - 1) + (2 * n * n - 2 * n - 1) * q**n - (n - 1) ** 2 * q ** (n + 1)) / (1 - q) ** 3,
                               rel=1e-10, abs=1e-13)


def _by_autograd(wrt: str, variant: str, r: float, phase: float, n: int) -> float:
    """E|dh_t/dtheta|^2 for unit-power white noise = sum_k |d a_k / dtheta|^2, a_k = gamma lambda^k the coefficient of x_{t-k}:
    each coefficient's derivative by autograd, no algebra shared with gradlab.theory."""
    nu = torch.tensor(math.log(-math.log(r)), dtype=F64, requires_grad=True)
    th = torch.tensor(math.log(phase), dtype=F64, requires_grad=True)
    total = 0.0
    for k in range(n):
        mod = torch.exp(-torch.exp(nu))
        gamma = torch.sqrt(1 - mod**2) if variant == "normalised" else torch.ones((), dtype=F64)
        ang = torch.exp(th) * k
        re, im = gamma * mod**k * torch.cos(ang), gamma * mod**k * torch.sin(ang)
        for part in (re, im):
            if wrt == "state":
                total += float(part.detach()) ** 2
                continue
            (d,) = torch.autograd.grad(part, th if wrt == "theta_log" else nu, retain_graph=True)
            if wrt == "|lambda|":
                d = d / (float(mod.detach()) * math.log(float(mod.detach())))  # d/dnu = d|lambda|/dnu * d/d|lambda|
            total += float(d) ** 2
    return total


@pytest.mark.parametrize("variant", ["plain", "normalised"])
@pytest.mark.parametrize("wrt", ["state", "|lambda|", "nu_log", "theta_log"])
@pytest.mark.parametrize("r,phase", [(0.6, 0.3), (0.95, 0.05)])
def test_the_closed_forms_are_the_coefficients_derivatives(variant, wrt, r, phase):
    n = 40
    got = theory.curse_closed_form(wrt, variant, r, n, phase)
    for t in (0, 1, 7, n - 1):
        assert got[t] == pytest.approx(_by_autograd(wrt, variant, r, phase, t + 1), rel=1e-10)
    if wrt != "theta_log":  # the real recurrence: no phase
        assert theory.curse_closed_form(wrt, variant, r, n)[-1] == pytest.approx(_by_autograd(wrt, variant, r, 1e-300, n), rel=1e-10)


def test_the_stationary_limits():
    r = np.array([0.9, 0.99, 0.999])
    q = r * r
    for radius, qq in zip(r, q):
        assert theory.curse_stationary("|lambda|", "plain", radius) == pytest.approx((1 + qq) / (1 - qq) ** 3, rel=1e-12)
        assert theory.curse_stationary("|lambda|", "normalised", radius) == pytest.approx(1 / (1 - qq) ** 2, rel=1e-12)
        assert theory.curse_stationary("state", "plain", radius) == pytest.approx(1 / (1 - qq), rel=1e-12)
        assert theory.curse_stationary("state", "normalised", radius) == pytest.approx(1.0, rel=1e-12)
        assert theory.curse_closed_form("|lambda|", "normalised", radius, 200_000)[-1] == pytest.approx(
            theory.curse_stationary("|lambda|", "normalised", radius), rel=1e-9)
    assert theory.curse_stationary("nu_log", "normalised", 1 - 1e-6) == pytest.approx(0.25, rel=1e-5)  # bounded: 1/4
    assert theory.curse_stationary("nu_log", "plain", 1 - 1e-6) * 4e-6 == pytest.approx(1.0, rel=1e-4)  # 1 / (4 (1 - |lambda|))


CELLS = [("rnn", dict(init="orthogonal", init_scale=0.9)), ("gru", dict(init="xavier")), ("lstm", dict(init="orthogonal", forget_bias=1.0)),
         ("lru", dict(init="paper")), ("mingru", dict(init="paper", forget_bias=1.0)), ("minlstm", dict(init="uniform"))]


@pytest.mark.parametrize("cell_name,options", CELLS)
def test_the_sensitivity_probe_is_the_full_jacobians_squared_norm(cell_name, options):
    """One JVP per entry (dense cells) or per row (the modern cells' units do not interact) gives the same squared
    Frobenius norm as the full Jacobian by reverse mode, per sequence and recorded step."""
    from torch.func import functional_call

    from gradlab.probes import _Trajectory

    cell = create(cell_name, "scratch", 3, 4, seed=1, dtype=F64, **options)
    x = torch.randn(25, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    record = [0, 4, 24]
    names = cell.family.recurrent_parameters
    got = parameter_sensitivity(cell, x, names, record)
    trajectory = _Trajectory(cell, record)
    for name in names:
        theta = dict(cell.named_parameters())[name].detach()
        jac = torch.autograd.functional.jacobian(lambda v: functional_call(trajectory, {f"cell.{name}": v}, (x,), strict=False), theta)
        want = jac.pow(2).flatten(3).sum(-1).sum(-1)  # (R, B)
        torch.testing.assert_close(got[name], want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", ["plain", "normalised"])
def test_the_diagonal_recurrence_meets_its_closed_form(variant):
    """Measured on 32 sequences of 64 units: within 4 standard errors of the closed form at every recorded step, with
    respect to |lambda| and nu_log; the state's power likewise; the memory measured is -1 / ln |lambda|."""
    for radius in (0.7, 0.95):
        cfg = Config(cell=DIAGONAL, variant=variant, memory=radius, seq_len=300, hidden_size=64, input_size=64, batch_size=32, record_steps=20)
        cfg.validate()
        rows = pd.DataFrame(run(cfg)["results"])
        for wrt in ("|lambda|", "nu_log"):
            g = rows[(rows["wrt"] == wrt) & (rows["t"] > 0)]
            z = (g["sensitivity"] - g["sensitivity_closed_form"]) / g["sensitivity_se"]
            assert z.abs().max() < 4, (wrt, radius, z.abs().max())
        assert (rows["state_power"] / rows["state_power_closed_form"]).sub(1).abs().max() < 0.2
        assert rows["memory_steps"].iloc[0] == pytest.approx(-1 / math.log(radius), rel=1e-9)


def test_the_lru_meets_its_closed_form_from_its_realised_weights():
    cfg = Config(cell="lru", variant="normalised", memory=0.9, seq_len=200, hidden_size=64, input_size=8, batch_size=32, record_steps=10)
    cfg.validate()
    rows = pd.DataFrame(run(cfg)["results"])
    last = rows[rows["t"] == 199].set_index("wrt")
    for wrt in ("nu_log", "theta_log", "|lambda|"):
        assert abs(last.loc[wrt, "sensitivity"] - last.loc[wrt, "sensitivity_closed_form"]) < 4 * last.loc[wrt, "sensitivity_se"], wrt
    assert last.loc["all recurrent", "sensitivity"] == pytest.approx(last.loc["nu_log", "sensitivity"] + last.loc["theta_log", "sensitivity"], rel=1e-12)
    assert np.isnan(last.loc["all recurrent", "sensitivity_closed_form"])


def test_memory_and_recorded_steps():
    assert recorded(5, 60) == [0, 1, 2, 3, 4] and recorded(1000, 10)[-1] == 999 and recorded(1000, 10)[0] == 0
    assert e_folding(0.5 ** np.arange(10.0)) == pytest.approx(1 / math.log(2), rel=1e-12)
    assert np.isnan(e_folding(np.ones(5)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(cell="diagonal", memory=1.0), r"must be in \(0, 1\)"),
    (dict(cell="lru", memory=1.2, input_size=8), r"must be in \(0, 1\)"),
    (dict(cell="diagonal", input_size=8), "input_size must equal hidden_size"),
    (dict(cell="rnn", variant="plain", memory=0.9, init="orthogonal"), "has no variants"),
    (dict(cell="diagnal"), "Did you mean 'diagonal'"),
    (dict(cell="lstm", variant=None, memory=1.0, init="critical"), "chooses the recurrent scale itself|has none"),
])
def test_bad_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs).validate()


def test_the_diagonal_model_is_what_the_closed_form_describes():
    d = Diagonal(3, 0.8, "normalised").double()
    x = torch.randn(4, 2, 3, dtype=F64)
    inputs, _ = d.prepare(x)
    h = d.init_state(2)
    for inp in inputs:
        h = d.step(inp, h)
    gamma = math.sqrt(1 - 0.64)
    want = gamma * sum(0.8**k * x[3 - k] for k in range(4))
    torch.testing.assert_close(h.detach(), want, rtol=1e-14, atol=0)


def test_the_study_runs_and_its_page_shows_the_curse(tmp_path):
    """A small run of the study: the table's sensitivity columns, the key points, both figures, and figures that fit the
    page with no text under 7 pt and every legend entry drawn (as tests/test_figures.py asks of every page)."""
    from test_figures import _stats

    from gradlab.report import figures, render
    from gradlab.runner import run_study

    seen = {}
    original = figures.save

    def catching(fig, path):
        seen[path.stem] = _stats(fig)
        original(fig, path)

    out = tmp_path / "com"
    run_study("curse-of-memory", "quick", ["seq_len=120", "batch_size=8", "record_steps=8", "cell=diagonal,lru,rnn,mingru",
                                           "memory=0.5,0.9,0.95,0.8,1.0,0.0,3.0"], out=out, device="cpu", progress=False)
    table = pd.read_parquet(out / "sensitivity.parquet")
    assert {"sensitivity", "sensitivity_se", "sensitivity_closed_form", "sensitivity_stationary", "memory_steps"} <= set(table.columns)
    assert set(table["cell"]) == {"diagonal", "lru", "rnn", "mingru"}
    figures.save = catching
    try:
        page = render(out).read_text(encoding="utf-8")
    finally:
        figures.save = original
    assert "The curse of memory, measured on the diagonal linear recurrence" in page and "Where the other cells sit" in page
    assert {"sensitivity", "finite-t"} <= set(seen)
    for stem, st in seen.items():
        assert st["width"] <= figures.PAGE_IN + 0.05 and st["smallest"] >= figures.MIN_FONT_PT and not st["overlaps"], stem
        for label, colour in st["legend"].items():
            if not label.startswith(("closed form", "memory beyond", "measured (o)")):
                assert colour in st["drawn"], (stem, label)
