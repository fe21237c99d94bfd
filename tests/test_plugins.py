"""Extending an installed gradlab: the example plugin package (examples/gradlab-delay) built and installed
offline beside it, its task, measure and studies found through entry points, run and reported; a broken
plugin said plainly; a plugin's code part of its points' cache keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gradlab-delay"
GRADLAB = Path(sys.executable).parent / "gradlab"  # this environment's console script


@pytest.fixture(scope="module")
def beside(tmp_path_factory) -> dict:
    """The example package installed (no index, no build isolation: this environment's setuptools) into a
    folder of its own that is put on the path: installed beside gradlab, gradlab itself untouched."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = tmp / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                           "--target", str(site), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    env = dict(os.environ, PYTHONPATH=str(site))
    return {"env": env, "tmp": tmp, "site": site, "source": source}


def _gradlab(beside: dict, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRADLAB), *args], capture_output=True, text=True, env=beside["env"], cwd=cwd or beside["tmp"], timeout=300)


def test_the_installed_plugins_task_measure_and_studies_are_listed(beside):
    done = _gradlab(beside, "list")
    assert done.returncode == 0, done.stderr
    assert "(plugin: gradlab_delay.studies/delay.toml)" in done.stdout
    assert "weight-spectrum" in done.stdout
    assert "gradlab_delay.delay:Delay (plugin from gradlab-delay)" in done.stdout
    assert "gradlab_delay.weight_spectrum (plugin from gradlab-delay)" in done.stdout


def test_the_plugins_study_trains_on_its_task_by_name_and_its_parameter_is_a_key(beside):
    out = beside["tmp"] / "delay-run"
    done = _gradlab(beside, "run", "delay", "--profile", "quick", "--set", "delay=2,4", "--set", "cell=gru", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs["delay"]) == [2, 4] and set(runs["task"]) == {"delay"}
    assert (runs["baseline"] - 2.0794415).abs().max() < 1e-6  # ln 8: the task's own baseline
    again = _gradlab(beside, "run", "delay", "--profile", "quick", "--set", "delay=2,4", "--set", "cell=gru", "--out", str(out))
    assert "2 cached, 0 computed" in again.stdout, again.stdout  # the plugin's code digest is stable


def test_the_plugins_measure_runs_and_its_own_view_draws_the_page(beside):
    out = beside["tmp"] / "spectrum-run"
    done = _gradlab(beside, "run", "weight-spectrum", "--set", "cell=rnn", "--set", "init=orthogonal", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    largest = pd.read_parquet(out / "largest.parquet")
    assert largest["largest"].tolist() == pytest.approx([1.0])  # an orthogonal matrix: every singular value 1
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Spectral norms" in page and "1 recurrent matrices measured." in page and (out / "figures" / "spectra.png").exists()
    assert json.loads((out / "manifest.json").read_text())["measure"] == "weight_spectrum"


def test_a_study_file_runs_by_path_and_a_wrong_name_suggests_the_plugin(beside):
    study = beside["source"] / "gradlab_delay" / "studies" / "delay.toml"
    done = _gradlab(beside, "show", str(study))
    assert done.returncode == 0 and "delay" in done.stdout, done.stderr
    done = _gradlab(beside, "run", "dealy")
    assert done.returncode != 0 and "Did you mean 'delay'?" in done.stderr


def test_a_broken_plugin_is_named_with_what_it_lacks(tmp_path):
    """A hand-made installed distribution whose measure entry point names a module without run/derive."""
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("Config = object\nCOLUMNS = {}\n")
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gradlab.measures]\nhalf = broken_plugin\n\n[gradlab.tasks]\nnot_a_task = broken_plugin:Config\n")
    code = ("from gradlab import measures, tasks\n"
            "for f, n in ((measures.load, 'half'), (tasks.task_class, 'not_a_task')):\n"
            "    try: f(n)\n"
            "    except ValueError as e: print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(site)))
    assert "entry point 'half' (broken_plugin) lacks run, derive" in done.stdout, done.stdout + done.stderr
    assert "'not_a_task' must name a subclass of gradlab.tasks.Task" in done.stdout


def test_a_plugins_code_is_in_its_points_keys_and_nowhere_else(beside):
    code = ("import json; from gradlab.runner import point_key; from gradlab.plugins import code_digests\n"
            "print(json.dumps([code_digests('train', {'task': 'delay'}), code_digests('train', {'task': 'adding'}), "
            "point_key('train', {'task': 'adding'}), point_key('train', {'task': 'delay'})]))")
    run = lambda env: json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout)  # noqa: E731
    with_plugin, adding, adding_key, delay_key = run(beside["env"])
    assert list(with_plugin) == ["gradlab_delay"] and adding == {}
    assert run({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})[2] == adding_key  # installing a plugin changes no built-in point
    task = beside["site"] / "gradlab_delay" / "delay.py"
    original = task.read_text()
    try:
        task.write_text(original.replace('"""Delayed echo', '"""Delayed echo, reworded'))  # prose: same code, same points
        assert run(beside["env"])[3] == delay_key
        task.write_text(original.replace("return math.log(self.n_symbols)", "return math.log(self.n_symbols) + 0.0"))
        edited = run(beside["env"])
        assert edited[0] != with_plugin and edited[3] != delay_key and edited[2] == adding_key  # its points recomputed, no other
    finally:
        task.write_text(original)


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> dict:
    """Installed plugins that are broken three ways: a studies package that raises at import, a study file
    that is not TOML, and a task whose module fails to import."""
    site = tmp_path_factory.mktemp("broken") / "site"
    for package, init in (("bad_pkg", "raise RuntimeError('boom at import')\n"), ("ugly_pkg", ""),
                          ("badtask_pkg", "import a_module_that_is_not_there\n")):
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text(init)
    (site / "ugly_pkg" / "ugly.toml").write_text("this is [ not toml\n")
    info = site / "broken_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gradlab.studies]\nbadstudy = bad_pkg\nugly = ugly_pkg\n\n[gradlab.tasks]\nbadtask = badtask_pkg:Task\n")
    return {"env": dict(os.environ, PYTHONPATH=str(site)), "tmp": site.parent}


def test_a_broken_plugin_is_one_warning_and_everything_else_works(broken_site):
    done = _gradlab(broken_site, "list")
    assert done.returncode == 0, done.stderr
    assert "gradient-decay" in done.stdout and "long-range" in done.stdout  # the built-in studies, listed
    assert "ugly             cannot be read: study file ugly_pkg/ugly.toml is not valid TOML" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the gradlab.studies plugin 'badstudy' is left out: its package 'bad_pkg' failed to import " \
        "(RuntimeError: boom at import)" in warnings[0], done.stderr
    assert "Traceback" not in done.stderr
    # a training study on a built-in task: the broken task plugin is said once, and the run plans
    done = _gradlab(broken_site, "run", "long-range", "--set", "task=adding", "--dry-run")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "plugin 'badtask'" in line]
    assert len(said) == 1 and "No module named 'a_module_that_is_not_there'" in said[0] and "Traceback" not in done.stderr
    assert _gradlab(broken_site, "run", "gradient-decay", "--dry-run").returncode == 0


@pytest.mark.parametrize("args, said", [
    (("run", "badstudy"), "study 'badstudy' is an installed plugin's, which cannot be used: its package 'bad_pkg' failed to import"),
    (("run", "ugly"), "study file ugly_pkg/ugly.toml is not valid TOML"),
    (("run", "long-range", "--set", "task=badtask", "--dry-run"), "gradlab.tasks entry point 'badtask' = 'badtask_pkg:Task' failed to load"),
])
def test_using_a_broken_plugin_by_name_is_a_clear_error(broken_site, args, said):
    done = _gradlab(broken_site, *args)
    assert done.returncode == 2 and said in " ".join(done.stderr.split()) and "Traceback" not in done.stderr, done.stderr


def _site(root: Path, name: str, packages: dict[str, str], entry_points: str) -> dict:
    """An installed distribution made by hand: packages (name -> __init__.py text) and their entry points."""
    site = root / "site"
    for package, init in packages.items():
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text(init)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return {"env": dict(os.environ, PYTHONPATH=str(site), GRADLAB_PLUGIN_TIMEOUT="3"), "tmp": root, "site": site}


@pytest.mark.parametrize("init, why", [
    ("raise SystemExit(0)\n", "SystemExit: 0"),
    ("raise SystemExit('bye')\n", "SystemExit: bye"),
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    ("import time\ntime.sleep(600)\n", "did not finish importing in 3 s"),
])
def test_a_plugin_that_exits_is_interrupted_or_hangs_at_import_stops_nothing_else(tmp_path, init, why):
    site = _site(tmp_path, "rude-plugins", {"rude_pkg": init, "rude_task": init},
                 "[gradlab.studies]\nrude = rude_pkg\n\n[gradlab.tasks]\nrudetask = rude_task:Task\n")
    for args in (("run", "gradient-decay", "--dry-run"), ("show", "cliff")):  # studies of built-in measures import no plugin
        done = _gradlab(site, *args)
        assert done.returncode == 0 and "points" in done.stdout + done.stderr and "warning" not in done.stderr, (args, done.stderr)
    done = _gradlab(site, "list")  # finding the plugin's study file imports its package: left out, said once
    assert done.returncode == 0 and "gradient-decay" in done.stdout and "rudetask" in done.stdout, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(said) == 1 and "plugin 'rude' is left out" in said[0] and why in said[0] and "Traceback" not in done.stderr, done.stderr
    done = _gradlab(site, "run", "long-range", "--set", "task=adding", "--dry-run")  # a training study reads every task's parameters
    assert done.returncode == 0 and "'rudetask' is left out" in done.stderr, done.stderr
    done = _gradlab(site, "run", "rude")
    assert done.returncode == 2 and "study 'rude' is an installed plugin's, which cannot be used" in done.stderr and why in done.stderr


def test_a_plugin_study_named_like_a_built_in_one_is_warned_about_and_the_built_in_runs(tmp_path):
    site = _site(tmp_path, "shadow", {"shadow_pkg": ""}, "[gradlab.studies]\ngradient-decay = shadow_pkg\n")
    (site["site"] / "shadow_pkg" / "gradient-decay.toml").write_text('name = "gradient-decay"\nmeasure = "cliff"\n')
    done = _gradlab(site, "run", "gradient-decay", "--dry-run")
    assert done.returncode == 0 and "measure" not in done.stderr.split("warning:")[0], done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(said) == 1 and "'gradient-decay' (shadow_pkg, from shadow) is ignored: gradlab has a built-in study" in said[0], done.stderr
    assert "cliff" not in done.stdout


def test_a_plugin_task_whose_data_holds_nan_is_refused(tmp_path):
    task = ("import torch\nfrom dataclasses import dataclass\nfrom gradlab.tasks import Batch, Spec, SyntheticTask\n\n"
            "@dataclass\nclass Task(SyntheticTask):\n    name = 'nanny'\n\n"
            "    @property\n    def spec(self):\n        return Spec(1, 1, 'mse')\n\n"
            "    def baseline(self, length):\n        return 1.0\n\n    def guess_loss(self, length):\n        return 1.0\n\n"
            "    def sample(self, gen, batch_size, length, device='cpu'):\n"
            "        x = torch.rand(length, batch_size, 1, generator=gen)\n        x[0, 0, 0] = float('nan')\n"
            "        return Batch(x, torch.zeros(length, batch_size, 1))\n")
    site = _site(tmp_path, "nanny", {"nanny_pkg": task}, "[gradlab.tasks]\nnanny = nanny_pkg:Task\n")
    done = _gradlab(site, "run", "long-range", "--set", "task=nanny", "--set", "seq_len=10", "--dry-run")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "task 'nanny' (a plugin) gives 1 non-finite values (nan) in its inputs" in said, done.stderr
