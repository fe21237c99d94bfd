"""Study files, profiles and --set: typed, checked before any work, with errors that say what is allowed."""

from __future__ import annotations

import pytest

from gradlab.study import StudyError, builtin_studies, expand, load_study, parse_override, resolve
from gradlab.measures import gradient_decay, load
from gradlab.runner import plan

GOOD = """
name = "tiny"
measure = "gradient_decay"
description = "a tiny study"
exclude = [{ cell = "linear", impl = "cudnn" }]
[grid]
cell = ["linear", "rnn"]
impl = ["scratch", "cudnn"]
[settings]
seq_len = 5
hidden_size = 4
[profiles.quick]
grid = { seq_len = [3, 4] }
settings = { batch_size = 2 }
"""


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_studies_load_by_name():
    assert {"gradient-decay", "lyrics"} <= set(builtin_studies())
    for name in builtin_studies():
        study = load_study(name)
        module = load(study.measure)
        for profile in [None, *study.profiles]:
            resolve(study, module.Config, profile)  # every shipped profile is valid


def test_resolve_layers_and_types(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    r = resolve(study, gradient_decay.Config, "quick", ["init_scale=0.5,1", "dtype=float32"])
    assert r.values["seq_len"] == [3, 4] and r.values["batch_size"] == [2] and r.values["hidden_size"] == [4]
    assert r.values["init_scale"] == [0.5, 1.0] and all(isinstance(v, float) for v in r.values["init_scale"])
    assert r.axes == ["cell", "impl", "seq_len", "init_scale", "dtype"]
    points, dropped = expand(r, gradient_decay.Config)
    assert len(points) == 3 * 2 * 2  # (linear/scratch, rnn/scratch, rnn/cudnn) x seq_len x init_scale
    assert not any(p.cell == "linear" and p.impl == "cudnn" for p in points)
    assert len(dropped) == 1 and dropped[0].count == 4 and dropped[0].combos == [{"cell": "linear", "impl": "cudnn"}]
    assert resolve(study, gradient_decay.Config, None, ["variant=none", "init_scale=None"]).values["init_scale"] == [None]


@pytest.mark.parametrize(
    "override,message",
    [
        ("seqlen=3", "unknown key 'seqlen' for measure 'gradient_decay'. Known: .* Did you mean 'seq_len'"),
        ("seq_len=abc", "seq_len='abc' is not a valid int value"),
        ("seq_len=1.5", "seq_len='1.5' is not a valid int value"),
        ("init_scale=big", "is not a valid float/none value"),
        ("seq_len", "must read KEY=VALUE"),
        ("seq_len=3,", "no empty value"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    study = load_study(write(tmp_path, GOOD))
    with pytest.raises(StudyError, match=message):
        resolve(study, gradient_decay.Config, None, [override])


@pytest.mark.parametrize(
    "text,message",
    [
        ("name = 'x'\nmeasure = 'gradient_decay'\n[gird]\ncell=['rnn']", "unknown key 'gird'. .*Did you mean 'grid'"),
        ("name = 'x'\nmeasure = 'gradient_decay'\n[grid]\ncell='rnn'", "grid.cell must be a non-empty list"),
        ("name = 'x'\n[grid]\ncell=['rnn']", "'measure' \\(a string\\) is required"),
        ("name = 'x'\nmeasure = 'gradient_decay'\n[grid\n", "is not valid TOML"),
        ("name = 'x'\nmeasure = 'gradient_decay'\n[profiles.q]\ngrd = {}", "profiles.q: unknown key 'grd'"),
        ("name = 'x'\nmeasure = 'gradient_decay'\nexclude = [{ cel = 'rnn' }]", "exclude names unknown key 'cel'"),
    ],
)
def test_malformed_study_files(tmp_path, text, message):
    with pytest.raises(StudyError, match=message):
        study = load_study(write(tmp_path, text))
        resolve(study, gradient_decay.Config)


def test_unknown_study_and_profile(tmp_path):
    with pytest.raises(StudyError, match="Unknown study 'gradient-decy'.*Did you mean 'gradient-decay'"):
        load_study("gradient-decy")
    with pytest.raises(StudyError, match="does not exist"):
        load_study(tmp_path / "nope.toml")
    with pytest.raises(StudyError, match="has no profile 'quik'.*Did you mean 'quick'"):
        resolve(load_study("gradient-decay"), gradient_decay.Config, "quik")
    with pytest.raises(ValueError, match="Unknown measure 'trian'.*Did you mean 'train'"):
        load("trian")


def test_impossible_combinations_fail_before_any_work(tmp_path):
    path = write(tmp_path, GOOD.replace('exclude = [{ cell = "linear", impl = "cudnn" }]\n', ""))
    with pytest.raises(StudyError, match="1 of 4 points of study 'tiny' cannot run:\n  cell 'linear' has no cudnn implementation"):
        plan(path, None, [], "cpu")
    with pytest.raises(StudyError, match="Unknown probe 'hiden'"):
        plan(write(tmp_path, GOOD, "t.toml"), None, ["probe=hiden"], "cpu")
    with pytest.raises(StudyError, match="no points left"):
        plan(write(tmp_path, GOOD, "u.toml"), None, ["cell=linear", "impl=cudnn"], "cpu")


def test_parse_override():
    assert parse_override("cell=rnn,gru") == ("cell", ["rnn", "gru"])
    assert parse_override(" seq_len = 3 ") == ("seq_len", ["3"])


WHEN = GOOD + """
[[when]]
match = { cell = "rnn" }
settings = { hidden_size = 7, batch_size = 3 }
because = "rnn points are different"
"""


def test_when_sets_settings_for_the_points_it_matches(tmp_path):
    study = load_study(write(tmp_path, WHEN))
    points, _ = expand(resolve(study, gradient_decay.Config), gradient_decay.Config)
    assert {(p.cell, p.hidden_size, p.batch_size) for p in points} == {("linear", 4, 16), ("rnn", 7, 3)}
    points, _ = expand(resolve(study, gradient_decay.Config, None, ["hidden_size=9"]), gradient_decay.Config)
    assert {(p.cell, p.hidden_size, p.batch_size) for p in points} == {("linear", 9, 16), ("rnn", 9, 3)}  # --set has the last word
    with pytest.raises(StudyError, match="when.settings: unknown key 'hiden_size'.*Did you mean 'hidden_size'"):
        resolve(load_study(write(tmp_path, WHEN.replace("hidden_size = 7", "hiden_size = 7"), "w2.toml")), gradient_decay.Config)
    with pytest.raises(StudyError, match="when: unknown key 'mach'"):
        load_study(write(tmp_path, WHEN.replace("match = {", "mach = {"), "w3.toml"))


def test_when_reaches_a_one_valued_axis_but_never_a_varied_one(tmp_path):
    text = GOOD + """
[[when]]
match = { cell = "rnn" }
settings = { seq_len = 9, init_scale = 2.0 }
"""
    study = load_study(write(tmp_path, text.replace("seq_len = 5\n", "").replace("[grid]", "[grid]\ninit_scale = [1.0]\nseq_len = [5, 6]")))
    points, _ = expand(resolve(study, gradient_decay.Config), gradient_decay.Config)
    assert {(p.cell, p.seq_len, p.init_scale) for p in points} == {
        ("linear", 5, 1.0), ("linear", 6, 1.0), ("rnn", 5, 2.0), ("rnn", 6, 2.0)}
