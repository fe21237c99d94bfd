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
        ("name = 'x'\nmeasure = 'gradient_decay'\n[profiles.q]\nexclude = 'rnn'", "profiles.q.exclude must be a list of tables"),
        ("name = 'x'\nmeasure = 'gradient_decay'\n[profiles.q]\nexclude = [1]", "profiles.q.exclude must be a list of tables"),
        ("name = 'x'\nmeasure = 'gradient_decay'\n[grid]\ncell=['rnn']\n[ladder]\naxis = 'seq_len'\nstop_after = 1",
         "the ladder walks 'seq_len', which is not an axis of the grid: it is fixed at its default"),
        ("name = 'x'\nmeasure = 'gradient_decay'\n[settings]\nseq_len = 5\n[ladder]\naxis = 'seq_len'\nstop_after = 1",
         "not an axis of the grid: it is fixed at 5"),
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


def test_a_study_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff".encode() + GOOD.encode())
    assert load_study(path).name == "tiny"


def test_when_settings_apply_before_the_exclusion_rules(tmp_path):
    """A [[when]] that sends rnn points to cudnn meets the rule excluding rnn on cudnn: the point is dropped and said so."""
    text = GOOD.replace('exclude = [{ cell = "linear", impl = "cudnn" }]', 'exclude = [{ cell = "rnn", impl = "cudnn", because = "not here" }]')
    text = text.replace('impl = ["scratch", "cudnn"]', 'impl = ["scratch"]') + """
[[when]]
match = { cell = "rnn" }
settings = { impl = "cudnn" }
"""
    study = load_study(write(tmp_path, text))
    points, dropped = expand(resolve(study, gradient_decay.Config), gradient_decay.Config)
    assert {p.cell for p in points} == {"linear"} and [d.count for d in dropped] == [1] and dropped[0].combos == [{"cell": "rnn", "impl": "cudnn"}]


def test_two_when_tables_that_set_a_key_differently_are_an_error_naming_both(tmp_path):
    text = WHEN + """
[[when]]
match = { seq_len = 5 }
settings = { hidden_size = 8 }
"""
    study = load_study(write(tmp_path, text))
    with pytest.raises(StudyError, match=r"two \[\[when\]\] tables set hidden_size differently .*when \{cell='rnn'\} \(rnn points are different\) sets hidden_size = 7, "
                                         r"when \{seq_len=5\} sets hidden_size = 8"):
        expand(resolve(study, gradient_decay.Config), gradient_decay.Config)
    agree = load_study(write(tmp_path, text.replace("hidden_size = 8", "hidden_size = 7"), "agree.toml"))  # the same value: fine
    points, _ = expand(resolve(agree, gradient_decay.Config), gradient_decay.Config)
    assert {(p.cell, p.hidden_size) for p in points} == {("linear", 7), ("rnn", 7)}


def test_a_float_list_setting_refuses_nan_and_duplicates():
    from gradlab.study import coerce

    assert coerce("xs", [1, 2.5], (tuple,), "--set", float) == (1.0, 2.5)
    with pytest.raises(StudyError, match="xs takes a list of float values; nan is not one"):
        coerce("xs", [1.0, float("nan")], (tuple,), "--set", float)
    with pytest.raises(StudyError, match="xs takes a list of float values; 'inf' is not one"):
        coerce("xs", ["1", "inf"], (tuple,), "--set", float)
    with pytest.raises(StudyError, match="xs lists 1.0 more than once"):
        coerce("xs", [1, 1.0], (tuple,), "--set", float)
