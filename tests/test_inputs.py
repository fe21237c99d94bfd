"""Inputs that cannot mean anything are refused before any work: exit 2, naming what was wrong and what
is allowed; list settings through --set; exclusion rules on settings left at their defaults."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gradlab.cli import main
from gradlab.measures.gradient_decay import Config as DecayConfig
from gradlab.study import load_study, parse_study, resolve, expand


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("study, setting, said", [
    ("long-range", "lr=inf", "lr=inf is not a finite number"),
    ("long-range", "init_scale=inf", "init_scale=inf is not a finite number"),
    ("long-range", "init_scale=1e300", "init_scale must be in (0, 100]"),
    ("long-range", "forget_bias=nan", "forget_bias=nan is not a finite number"),
    ("gradient-decay", "input_std=nan", "input_std=nan is not a finite number"),
    ("lyrics", "sample_temperature=-1", "sample_temperature must be in (0, 100]"),
    ("long-range", "probe_steps=30000", "probe_steps [30000] lie beyond the run's 6000 steps"),
    ("gradient-decay", "jacobian_batch=99", "jacobian_batch (99) must be at most batch_size"),
    ("gradient-decay", "seq_len=20,20", "seq_len lists 20 more than once"),
    ("gradient-decay", "init_scale=1.0,1.0", "init_scale lists 1.0 more than once"),
    ("gradient-decay", f"seed={2**70}", f"seed={2**70} is too large a number (a setting is stored in the run's tables as a 64-bit integer"),
    ("gradient-decay", f"seed={2**40}", "seed must be in 0 .. 2**32 - 1"),
    ("gradient-decay", "seed=-1", "seed must be in 0 .. 2**32 - 1"),
    ("long-range", "probe_steps=x", "probe_steps takes a list of int values; 'x' is not one"),
    ("gradient-decay", "seq_len=" + ",".join(map(str, range(1, 3001))), "more than 20,000: give fewer values"),
    ("long-range", f"eval_seed={2**70}", f"eval_seed={2**70} is too large a number"),  # every rerun and report failed in pyarrow
    ("long-range", "eval_seed=-1", "eval_seed must be in 0 .. 2**32 - 1"),
    ("gradient-decay", "input_std=1e308", "input_std 1e+308 makes inputs whose summed variance is no float64 number"),
    ("gradient-decay", "device=foo", "device must be cpu, cuda or cuda:N (a GPU's index), got 'foo'"),
    ("throughput", "impls=[]", "impls is empty: name the impls to time"),
    ("throughput", 'impls=["scratch", "scratch"]', "impls lists 'scratch' more than once"),
    ("lyrics", 'prefixes=[""]', "prefixes holds an empty prefix (item 0)"),
    ("lyrics", 'prefixes=["分开", "分开"]', "prefixes lists '分开' more than once"),
    ("long-range", "probe_steps=[0, 250, 250]", "probe_steps lists 250 more than once"),
    ("long-range", "hidden_size=1000000000", "GiB (weights, their gradients and the stored gates of every step), more than the"),
    ("throughput", "batch_size=100000000", "GiB (weights, their gradients and the stored gates of every step), more than the"),
])
def test_a_value_that_cannot_mean_anything_is_refused_before_any_work(tmp_path, study, setting, said):
    extra = ["--set", "probe=jacobian"] if setting.startswith("jacobian") else []
    r = invoke("run", study, "--set", setting, *extra, "--out", str(tmp_path / "run"), "--quiet")
    assert r.exit_code == 2, r.output
    assert said in " ".join(r.output.split()), r.output
    assert not (tmp_path / "run" / "points").exists()
    assert invoke("run", study, "--set", setting, *extra, "--dry-run").exit_code == 2  # a dry run says the same


def test_list_settings_through_set_are_one_list_of_their_item_type():
    s = load_study("long-range")
    from gradlab.measures.train import Config

    r = resolve(s, Config, None, ["probe_steps=0,100"])
    assert r.values["probe_steps"] == [(0, 100)]
    r = resolve(load_study("lyrics"), Config, "context", ["context_lengths=1,2"])
    assert r.values["context_lengths"] == [(1, 2)]
    r = resolve(load_study("lyrics"), Config, "book", ["prefixes=分开"])
    assert r.values["prefixes"] == [("分开",)]


def test_an_exclusion_rule_on_a_setting_left_at_its_default_applies():
    study = parse_study({"name": "s", "measure": "gradient_decay", "grid": {"cell": ["rnn", "lstm"]},
                         "exclude": [{"cell": "lstm", "probe": "hidden", "because": "not this time"}]}, "s.toml")
    points, dropped = expand(resolve(study, DecayConfig), DecayConfig)  # probe is 'hidden' by default, named nowhere
    assert [p.cell for p in points] == ["rnn"] and dropped[0].count == 1 and dropped[0].combos == [{"cell": "lstm", "probe": "hidden"}]


def test_a_study_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes('name = "s"\nmeasure = "gradient_decay"\ndescription = "caf\xe9"\n'.encode("latin-1"))
    r = invoke("run", str(path), "--dry-run")
    assert r.exit_code == 2 and "latin.toml is not UTF-8 text" in r.output


def test_a_jacobian_only_run_reports_without_crashing(tmp_path):
    r = invoke("run", "gradient-decay", "--profile", "quick", "--set", "probe=jacobian", "--set", "seq_len=30", "--no-report",
               "--out", str(tmp_path / "run"), "--quiet")
    assert r.exit_code == 0, r.output
    assert "Jacobian spectral norm" in r.output or "factor" in r.output
    assert invoke("report", str(tmp_path / "run")).exit_code == 0
