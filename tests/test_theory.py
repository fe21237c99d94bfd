"""Mean-field theory (gradlab.theory) against exact answers, then against the probes that measure what it predicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradlab import theory
from gradlab.cells import create
from gradlab.derived.gradient_decay import decay_rates
from gradlab.measures.gradient_decay import Config, run


@pytest.mark.parametrize("std", [0.01, 0.3, 1.0, 3.0, 8.0, 20.0])
def test_gaussian_expectations_resolve_narrow_features_at_any_variance(std):
    # closed forms with a feature of unit width in the pre-activation, the case a fixed-node rule misses
    assert theory.gauss(lambda a: np.exp(-(a**2)), 0.0, std**2) == pytest.approx(1 / math.sqrt(1 + 2 * std**2), rel=1e-12)
    assert theory.gauss(lambda a: np.cos(2 * a), 0.3, std**2) == pytest.approx(math.cos(0.6) * math.exp(-2 * std**2), abs=1e-14)
    assert theory.gauss(lambda a: a**2, 0.5, std**2) == pytest.approx(std**2 + 0.25, rel=1e-12)
    both = theory.gauss(lambda a: a**2, np.array([0.0, 1.0]), np.array([std**2, 4.0]))  # arrays: one expectation each
    np.testing.assert_allclose(both, [std**2, 5.0], rtol=1e-12)


@pytest.mark.parametrize("rho", [0.3, 0.7, 0.95])
def test_tanh_rnn_without_input_decays_by_its_scale(rho):
    # no input: the state variance map has q* = 0 below rho = 1, where tanh' = 1, so the factor is rho exactly
    assert theory.rnn(theory.Setting(rho**2, 0.0)) == pytest.approx(rho, rel=1e-9)


@pytest.mark.parametrize("gain", [0.25, 1.0, 4.0, 9.0])
def test_gru_without_input_is_its_gates_at_one_half(gain):
    # q* = 0 (stable for gain < 12): z = r = 1/2, n = 0, tanh' = 1, so chi = E[z^2] + E[(1-z)^2] gain E[r^2] = 1/4 + gain/16
    assert theory.gru(theory.Setting(gain, 0.0)) == pytest.approx(math.sqrt(0.25 + gain / 16), rel=1e-9)


@pytest.mark.parametrize("gain,forget_bias", [(0.25, 0.0), (1.0, 0.0), (4.0, 1.5), (1.0, 3.0)])
def test_lstm_without_input_follows_its_forget_gate(gain, forget_bias):
    # q* = 0 (stable while gain / 16 < 1 - sigmoid(b)^2 ... checked for these): i = o = 1/2, f = sigmoid(b), g = c = 0;
    # M = [[gain/16, gain/4], [f^2/4, f^2]] has determinant 0, so its top eigenvalue is its trace
    f2 = (1 / (1 + math.exp(-forget_bias))) ** 2
    assert theory.lstm(theory.Setting(gain, 0.0, forget_bias)) == pytest.approx(math.sqrt(gain / 16 + f2), rel=1e-9)


def test_edge_of_chaos_without_input():
    # the RNN's edge is rho = 1; the LSTM's (forget_bias 0) is where gain / 16 + 1/4 = 1: rho = sqrt(12). Near an
    # edge without input q* -> 0 and the variance map converges slowly, hence tolerances above float precision
    assert theory.edge_of_chaos("rnn", 0.0) == pytest.approx(1.0, abs=1e-4)
    assert theory.edge_of_chaos("lstm", 0.0) == pytest.approx(math.sqrt(12), abs=1e-4)
    assert math.isnan(theory.edge_of_chaos("rnn", 0.0, high=0.9))  # never reaches 1 below 0.9
    assert theory.factor("linear", theory.Setting(1.21, 0.7)) == pytest.approx(1.1, rel=1e-12)


def test_more_input_moves_the_edge_out_and_a_forget_bias_moves_it_in():
    assert theory.edge_of_chaos("rnn", 0.25) > theory.edge_of_chaos("rnn", 0.05) > 1.0
    assert theory.edge_of_chaos("lstm", 0.25, 3.0) < theory.edge_of_chaos("lstm", 0.25, 0.0)


def _rates(probe: str, cell: str, init_scale: float | None, hidden_size: int = 256, init: str = "orthogonal", seq_len: int = 120):
    cfg = Config(cell=cell, impl="scratch", init=init, init_scale=init_scale, probe=probe, seq_len=seq_len,
                 hidden_size=hidden_size, input_size=hidden_size // 4, batch_size=8, dtype="float64")
    df = pd.DataFrame(run(cfg)["results"]).assign(cell=cell)
    df = df[df["wrt"] != "c"]  # the hidden probe's h, or the fresh probe's whole state
    return decay_rates(df, ["cell"]).iloc[0], theory.predict(cell, init, init_scale, 0.0, hidden_size // 4, hidden_size, 1.0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_fresh_gradient_each_step_decays_as_predicted(cell):
    measured, predicted = _rates("independent", cell, 1.0)
    assert measured["factor_per_step"] == pytest.approx(predicted, rel=0.01)


@pytest.mark.parametrize("init_scale", [0.5, 1.0, 3.0])
def test_the_tanh_rnns_true_gradient_decays_as_predicted(init_scale):
    measured, predicted = _rates("hidden", "rnn", init_scale)
    assert measured["factor_per_step"] == pytest.approx(predicted, rel=0.015)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_gated_cells_true_gradient_outlives_the_prediction(cell):
    # the gradient-independence assumption fails for the gates' diagonal paths (docs/mean_field.md): the true
    # gradient decays more slowly than a fresh one, by over 15% per step at init_scale 1
    measured, predicted = _rates("hidden", cell, 1.0)
    assert measured["factor_per_step"] > 1.15 * predicted


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_critical_init_sits_at_the_edge(cell):
    critical = create(cell, "scratch", 32, 128, init="critical", dtype=torch.float64)
    edge = theory.edge_of_chaos(cell, theory.input_variance("critical", 32, 128, 1.0))
    w_h = critical.recurrent()[0][:, :128]  # (H, H): the first gate's recurrent matrix
    assert torch.linalg.matrix_norm(w_h, ord=2).item() == pytest.approx(edge, rel=1e-9)
    assert torch.linalg.svdvals(w_h).min().item() == pytest.approx(edge, rel=1e-9)  # orthogonal: every singular value
    measured, predicted = _rates("independent", cell, None, init="critical")
    assert predicted == pytest.approx(1.0, abs=1e-9)
    assert measured["factor_per_step"] == pytest.approx(1.0, abs=0.06 if cell != "rnn" else 0.01)


def test_critical_init_refuses_a_scale():
    with pytest.raises(ValueError, match="init 'critical' chooses the recurrent scale itself"):
        create("rnn", "scratch", 4, 8, init="critical", init_scale=1.0)
    with pytest.raises(ValueError, match="init 'critical' chooses the recurrent scale itself: set init_scale=none"):
        Config(cell="rnn", init="critical", init_scale=1.0).validate()


@pytest.mark.parametrize("forget_bias", [0.0, 2.0])
def test_the_min_cells_factor_is_the_root_mean_square_of_what_they_keep(forget_bias):
    """sqrt(E[a^2]) by the quadrature against a Monte Carlo draw of the gates' pre-activations."""
    gen = np.random.default_rng(0)
    v = theory.gate_variance("paper", 16, 32, 1.0)
    u = gen.normal(size=(2, 2_000_000)) * np.sqrt(v)
    kept_gru = 1 / (1 + np.exp(u[0] - forget_bias))  # 1 - z, z = sigmoid(u - forget_bias)
    f, i = 1 / (1 + np.exp(-(u[0] + forget_bias))), 1 / (1 + np.exp(-u[1]))
    assert theory.predict("mingru", "paper", None, forget_bias, 16, 32, 1.0) == pytest.approx(np.sqrt((kept_gru**2).mean()), rel=1e-3)
    assert theory.modern_factor("mingru", "paper", None, forget_bias, 16, 32, 1.0, typical=True) == pytest.approx(np.exp(np.log(kept_gru).mean()), rel=1e-3)
    assert theory.predict("minlstm", "paper", None, forget_bias, 16, 32, 1.0) == pytest.approx(np.sqrt(((f / (f + i)) ** 2).mean()), rel=1e-3)
    assert theory.predict("lru", "paper", 0.93, 0.0, 16, 32, 1.0) == 0.93 and np.isnan(theory.predict("lru", "paper", None, 0.0, 16, 32, 1.0))


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_min_cells_measured_factor_lies_between_the_mean_square_and_the_typical(cell):
    """Orthogonal input weights with I >= H give every unit a column of norm 1 and no bias: each unit's gate is alike in
    law. The batch's RMS norm far from the loss sits between sqrt(E[a^2]) (its expectation) and exp(E[log a]) (a typical
    product): measured 0.481 for mingru between 0.447 and 0.542."""
    cfg = Config(cell=cell, impl="scan", init="orthogonal", init_scale=None, seq_len=300, hidden_size=32, input_size=64, batch_size=64)
    df = pd.DataFrame(run(cfg)["results"]).assign(cell=cell)
    measured = decay_rates(df, ["cell"]).iloc[0]["factor_per_step"]
    typical = theory.modern_factor(cell, "orthogonal", None, 0.0, 64, 32, 1.0, typical=True)
    assert typical < measured < theory.predict(cell, "orthogonal", None, 0.0, 64, 32, 1.0)
