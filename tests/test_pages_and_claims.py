"""Pages and claims (issue 36, items 12 to 16): a page says what ran and keeps its figures' words apart, the
predicted factor stands beside the measured one wherever a run's rates are shown, a reader of the repository can
open a reference run's page, a page's opening words match the settings its run used, and what the docs claim is
what the code does."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from figure_text import overlaps

from gradlab.cli import main
from gradlab.report import figures, render, summary_of
from gradlab.report.compare import compare

ROOT = Path(__file__).resolve().parent.parent
SETS = ["--set", "seq_len=30", "--set", "cell=rnn,gru,lstm", "--set", "init_scale=1.0", "--set", "forget_bias=0.0",
        "--set", "init=orthogonal,uniform", "--set", "probe=hidden,independent"]  # the custom run, at T 30


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> dict:
    """The issue's --set run of gradient-decay (shorter sequences) and the same with seed 1, each drawn with every
    figure caught as it is saved; what `gradlab run` printed."""
    where = tmp_path_factory.mktemp("custom")
    caught: dict = {}
    original = figures.save

    def catching(fig, path):
        caught[Path(path).stem] = overlaps(fig)
        original(fig, path)

    figures.save = catching
    try:
        first = invoke("run", "gradient-decay", *SETS, "--device", "cpu", "--out", str(where / "a"), "--quiet")
    finally:
        figures.save = original
    second = invoke("run", "gradient-decay", *SETS, "--set", "seed=1", "--device", "cpu", "--out", str(where / "b"), "--quiet")
    assert first.exit_code == 0 and second.exit_code == 0, (first.output, second.output)
    return {"a": where / "a", "b": where / "b", "printed": first.output, "overlaps": caught}


# 12: the custom run's page: its figures' words apart, its heading what ran

def test_no_figure_of_a_custom_runs_page_has_words_that_run_into_each_other(custom):
    assert any(stem.startswith("rates") for stem in custom["overlaps"])  # the heatmap of the factor per step, with its colour bar
    assert {stem: found for stem, found in custom["overlaps"].items() if found} == {}


def test_the_recorders_figure_keeps_its_labels_apart():
    from gradlab import flow

    class Stack(torch.nn.Module):  # three rows of panels (two LSTM layers and a GRU's), the GRU without a c column
        def __init__(self):
            super().__init__()
            self.lstm, self.gru, self.out = torch.nn.LSTM(3, 8, num_layers=2), torch.nn.GRU(8, 4), torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.out(self.gru(self.lstm(x)[0])[0][-1])

    torch.manual_seed(0)
    model = Stack()
    with flow.watch(model, every=1) as recorder:
        for _ in range(4):
            model(torch.randn(12, 2, 3)).pow(2).mean().backward()
        for fig in (recorder.figure(), recorder.figure_at_distances((0, 5))):
            assert overlaps(fig) == []
            figures.close(fig)


def _lede(page: str) -> str:
    """The page's title and the paragraphs before its run line: what the page says ran."""
    head = page.split("<p class='run'>")[0]
    return html.unescape(re.sub(r"<[^>]+>", " ", head.split("<body>")[-1]))


def test_a_set_run_is_headed_by_what_ran_and_a_plain_run_by_its_profile(custom, tmp_path):
    manifest = json.loads((custom["a"] / "manifest.json").read_text())
    lede = _lede((custom["a"] / "report.html").read_text(encoding="utf-8"))
    for change in manifest["overrides"]:
        assert f"--set {change}" in lede
    assert manifest["profile_description"] not in lede  # it describes the profile's own grid: T 200, three scales
    assert re.search(r"<title>[^<]*--set[^<]*</title>", (custom["a"] / "report.html").read_text(encoding="utf-8"))
    plain = tmp_path / "plain"  # a run with no --set: its profile's description, as written
    shutil.copytree(ROOT / "reports" / "gradient-decay-quick", plain, ignore=shutil.ignore_patterns("points", "report.html"))
    page = render(plain).read_text(encoding="utf-8")
    described = json.loads((plain / "manifest.json").read_text())["profile_description"]
    assert described and described in _lede(page) and "--set" not in _lede(page)


# 13: the predicted factor beside the measured one: terminal, page, compare; compare without twins or unexplained gaps

def test_the_summary_printed_and_on_the_page_gives_the_predicted_factor(custom):
    rates = pd.read_parquet(custom["a"] / "summary.parquet")
    (title, table), *_ = summary_of(custom["a"]).summaries
    page = (custom["a"] / "report.html").read_text(encoding="utf-8")
    first_table = page.split("<h3>", 1)[1].split("</table>")[0]
    for value in rates["predicted_factor"]:
        said = f"predicted {value:.3f}"
        assert said in custom["printed"] and said in first_table and table.apply(lambda c: c.str.contains(said, regex=False)).any().any()


def test_compare_gives_the_predicted_factor_once_per_curve_and_says_what_its_gaps_mean(custom):
    table, differing = compare(custom["a"], custom["b"])
    assert differing == {"seed": (0, 1)}
    assert {"predicted_factor A", "predicted_factor B", "predicted_factor B-A"} <= set(table.columns)
    assert table["predicted_factor A"].notna().all()
    keys = [c for c in table.columns if not c.endswith((" A", " B", " B-A")) and c != "in"]
    assert not table.duplicated(keys).any()
    values = [c for c in table.columns if c.endswith((" A", " B"))]
    assert not table.duplicated(values).any()  # scratch and cudnn agree to 1e-15 here: a curve's numbers once, not twice
    notes = " ".join(table.attrs["notes"])
    assert "cudnn" in notes  # which rows were given once, and why
    for column in {c.rsplit(" ", 1)[0] for c in values if table[c].isna().any()}:  # every empty column is explained
        assert f"{column} empty" in notes, column
    assert table["vanish_distance A"].isna().any()  # at T 30 and factors near 0.7 some norms never fall to 1e-6: explained above


def test_the_compare_command_prints_what_its_gaps_mean(custom):
    r = invoke("compare", str(custom["a"]), str(custom["b"]))
    assert r.exit_code == 0
    assert "predicted_factor A" in r.output and "note: vanish_distance empty" in r.output and "note: A: cudnn's norms" in r.output


# 14: a reference run's page, for a reader of the repository

def test_the_readme_says_how_to_draw_the_reference_pages_and_that_command_draws_one(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"`(gradlab report reports/[^`]*)`", readme)
    assert commands, "README.md: no `gradlab report reports/...` command for the committed runs' pages"
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [p for p in tracked if p.endswith("report.html")]  # the README's way, not committed copies of the pages
    copy = tmp_path / "reports" / "cliff-quick"
    shutil.copytree(ROOT / "reports" / "cliff-quick", copy, ignore=shutil.ignore_patterns("points", "report.html"))
    command = commands[0].replace("reports/NAME", "reports/cliff-quick").split()
    r = subprocess.run([sys.executable, "-m", "gradlab.cli", *command[1:]], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (copy / "report.html").stat().st_size > 10_000


# 15: a page's opening words name no optimiser its run did not use

OPTIMISERS = {"sgd": r"\bSGD\b", "adam": r"\bAdam\b", "adamw": r"\bAdamW\b", "rmsprop": r"\bRMSProp\b"}


@pytest.fixture(scope="module")
def lyrics_pages(tmp_path_factory) -> dict:
    """The committed lyrics runs whose profiles leave the book's settings, drawn from their tables."""
    out = {}
    for name in ("lyrics-counting", "lyrics-generalise"):
        folder = tmp_path_factory.mktemp("lyrics") / name
        shutil.copytree(ROOT / "reports" / name, folder, ignore=shutil.ignore_patterns("points", "report.html"))
        out[name] = render(folder).read_text(encoding="utf-8")
    return out


@pytest.mark.parametrize("name", ["lyrics-counting", "lyrics-generalise"])
def test_a_pages_opening_names_only_the_optimiser_its_run_used(lyrics_pages, name):
    used = set(json.loads((ROOT / "reports" / name / "manifest.json").read_text())["resolved"]["optimizer"])
    named = {opt for opt, word in OPTIMISERS.items() if re.search(word, _lede(lyrics_pages[name]), re.IGNORECASE)}
    assert named <= used, f"{name}: its opening names {sorted(named - used)}; the run used {sorted(used)}"


def test_no_study_description_names_an_optimiser_a_profile_of_it_replaces():
    """The study's description heads every profile's page: a setting named there holds in every profile."""
    import tomllib

    for path in sorted((ROOT / "studies").glob("*.toml")):
        study = tomllib.loads(path.read_text(encoding="utf-8"))
        used = {study.get("settings", {}).get("optimizer")} | {p.get("settings", {}).get("optimizer") for p in study.get("profiles", {}).values()}
        named = {opt for opt, word in OPTIMISERS.items() if re.search(word, study["description"], re.IGNORECASE)}
        assert not named or used - {None} <= named, f"{path.name}: the description names {sorted(named)}; profiles use {sorted(used - {None})}"


# 16: claims the code keeps

def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.;])\s+", " ".join(text.split()))


def test_every_claim_that_an_ensemble_equals_its_solo_runs_bit_for_bit_says_at_what_threads():
    from gradlab.training import ensemble

    texts = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8"), "gradlab/training/ensemble.py": ensemble.__doc__ or ""}
    texts |= {f"docs/{p.name}": p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")}
    texts |= {f"ensemble.{name}": fn.__doc__ or "" for name, fn in vars(ensemble).items() if callable(fn) and getattr(fn, "__module__", "") == ensemble.__name__}
    claims = [(where, s) for where, text in texts.items() for s in _sentences(text)
              if re.search(r"bit for bit|bitwise|to float tolerance", s) and re.search(r"ensemble|solo", s)]
    assert claims  # the claim is made (docs/ensembles.md): it must say when it holds
    for where, sentence in claims:
        assert "thread" in sentence, f"{where}: {sentence!r} does not say at what thread count it holds"


@pytest.mark.parametrize("cell, dtype", [("lstm", "float32"), ("gru", "float64"), ("rnn", "float32")])
def test_an_ensemble_on_two_threads_is_its_members_solo_runs_on_one_bit_for_bit(cell, dtype):
    """What docs/ensembles.md says: the ensemble's thread count does not change its numbers, and they are the solo
    runs' at one thread."""
    from gradlab.measures.train import Config
    from gradlab.training import train
    from gradlab.training.ensemble import train_ensemble

    cfgs = [Config(task="adding", cell=cell, seq_len=12, hidden_size=48, batch_size=16, steps=15, eval_every=5, eval_size=64, seed=s, dtype=dtype)
            for s in range(3)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = train_ensemble(cfgs)
        torch.set_num_threads(1)
        alone = [train(c) for c in cfgs]
    finally:
        torch.set_num_threads(threads)
    for ens, solo in zip(together, alone):
        assert [(r["loss"], r["grad_norm_pre"], r["update_norm"]) for r in ens.steps] == [(r["loss"], r["grad_norm_pre"], r["update_norm"]) for r in solo.steps]
        assert [r["val_loss"] for r in ens.history] == [r["val_loss"] for r in solo.history]


def test_the_adding_docstring_quotes_the_spread_of_its_default_held_out_set():
    from gradlab.tasks.adding import Adding

    said = re.search(r"([\d,]+) of them \(the default\) score ([\d.]+) to ([\d.]+) x 1/6", " ".join(Adding.__doc__.split()))
    assert said, "the docstring quotes no spread of the held-out baseline at the default size"
    size, lo, hi = int(said[1].replace(",", "")), float(said[2]), float(said[3])
    assert size == Adding().eval_size
    ratios = []
    for seed in range(1000):  # held-out sets of the default size, as many eval seeds would draw them
        task = Adding(eval_seed=seed)
        ratios.append(task.data_baseline(task.held_out(250, 8, "cpu"), 8)[0] * 6)
    q = np.quantile(ratios, [0.025, 0.975])  # the middle 95% of the draws, which the docstring's range says
    assert abs(q[0] - lo) <= 0.01 and abs(q[1] - hi) <= 0.01, (q, lo, hi)


def test_the_by_frequency_footer_adds_up_its_own_rows():
    """The README's mean gap over all targets is the rows' band gaps (median over seeds) weighted by their shares, not
    another statistic (a median of each seed's total) beside them."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- numbers lyrics-counting-gap -->")[1].split("<!-- /numbers -->")[0]
    footer = dict(re.findall(r"(\w+) ([+-]\d\.\d{3})", block.split("the mean gap over all targets")[1]))
    b = pd.read_parquet(ROOT / "reports" / "lyrics-counting" / "by_frequency.parquet")
    per = b.assign(gap=b["net_loss"] - b["ngram_loss"]).groupby(["cell", "band"]).agg(share=("share", "first"), gap=("gap", "median"))
    rows = (per["share"] * per["gap"]).groupby(level="cell").sum()
    assert set(footer) == set(rows.index)
    for cell, value in footer.items():
        assert float(value) == pytest.approx(rows[cell], abs=5e-4), (cell, value, rows[cell])
    printed = [line.split("|")[1:-1] for line in block.splitlines() if line.startswith("| ") and "times" in line]
    head = [h.strip() for h in block.splitlines()[1].split("|")[1:-1]]
    for cell, value in footer.items():  # and the rows as printed (shares in whole percent, gaps to 0.01) come to it within their rounding
        col = head.index(f"{cell} - 5-gram")
        shares, gaps = [float(r[1].strip().rstrip("%")) / 100 for r in printed], [float(r[col]) for r in printed]
        rounding = sum(0.005 * abs(g) + 0.005 * sh for sh, g in zip(shares, gaps))  # half a percent of each share, 0.005 of each gap
        assert abs(sum(sh * g for sh, g in zip(shares, gaps)) - float(value)) <= rounding + 5e-4, (cell, value)


def test_the_by_frequency_key_point_adds_up_the_pages_own_rows(lyrics_pages):
    page = lyrics_pages["lyrics-counting"]
    said = dict(re.findall(r"(\w+) ([+-]\d\.\d{3}) nats in all", page))
    table = page.split("Where the gap to the 5-gram lies: per band")[1].split("</table>")[0]
    header = [html.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    body = [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)] for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    frame = pd.DataFrame(body, columns=header)
    parts = frame.assign(gap_part=frame["gap_part"].astype(float)).groupby("model")["gap_part"].sum()
    assert set(said) == set(parts.index)
    for model, value in said.items():  # the page's parts are printed to 4 digits: they add up to the sentence within 5e-4
        assert float(value) == pytest.approx(parts[model], abs=5e-4), (model, value, parts[model])
