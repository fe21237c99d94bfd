"""Every committed reference run re-renders in a clean clone to the same state: `gradlab report` on each, from the
committed files alone (git keeps the step rows and the raw spectra out), changes no tracked file: no figure is lost,
none drawn differently, no table or manifest touched. A view that lacks an input says which figures it could not
draw and keeps them (tests/test_safety.py and below)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradlab.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def _same_picture(clone: Path, path: str) -> bool:
    """The re-drawn PNG shows what the committed one does: the same size, and no more than 1 pixel in 100,000 apart by
    more than a quarter of the range (another PNG encoder, faint antialiasing; one changed digit moves dozens)."""
    import io

    import numpy as np
    from matplotlib import image

    if not (clone / path).exists():
        return False
    before = image.imread(io.BytesIO(subprocess.run(["git", "show", f"HEAD:{path}"], cwd=clone, capture_output=True, check=True).stdout), format="png")
    after = image.imread(clone / path)
    if before.shape != after.shape:
        return False
    apart = np.abs(before.astype(float) - after.astype(float)).max(axis=-1) > 0.25
    return apart.mean() <= 1e-5


def _report(run: Path) -> tuple[str, int, str]:
    """`gradlab report RUN` in a process of its own, from this checkout's code."""
    r = subprocess.run([sys.executable, "-c", "from gradlab.cli import main; main()", "report", str(run)], cwd=ROOT,
                       capture_output=True, text=True)
    return run.name, r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing committed to re-render")
    where = tmp_path_factory.mktemp("clone") / "gradlab"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
    return where


def test_every_committed_run_rerenders_in_a_clean_clone_and_changes_no_tracked_file(clone):
    runs = sorted(p.parent for p in clone.glob("reports/*/manifest.json"))
    assert len(runs) >= 10
    said = {}
    with ThreadPoolExecutor(max_workers=2) as pool:  # two folders at a time, each its own process: half the wall time on 2 cores
        for name, code, output in pool.map(_report, runs):
            assert code == 0, (name, output)
            said[name] = output
    changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no", cwd=clone).splitlines()]
    # A figure is the same when its pixels are (bytes can differ with another matplotlib's PNG encoder); every other
    # tracked file (tables, manifests) byte for byte, and none deleted.
    changed = [path for path in changed if not (path.endswith(".png") and _same_picture(clone, path))]
    assert changed == [], "re-rendering changed tracked files:\n" + "\n".join(changed)
    assert not any("could not be drawn" in text for text in said.values()), {k: v for k, v in said.items() if "could not" in v}


def test_a_view_that_lacks_an_input_keeps_the_figures_it_cannot_redraw(clone, tmp_path):
    run = tmp_path / "clipping"
    shutil.copytree(clone / "reports" / "clipping-quick", run)
    before = {p.name: p.read_bytes() for p in (run / "figures").glob("*.png")}
    (run / "norm_histogram.parquet").unlink()  # the compact step rows the norm figures are drawn from, gone
    import json

    manifest = json.loads((run / "manifest.json").read_text())
    manifest["table_digests"].pop("norm_histogram")
    manifest["files"].remove("norm_histogram.parquet")
    (run / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(main, ["report", str(run)], catch_exceptions=False)
    assert r.exit_code == 0 and "could not be drawn" in r.output and "norms-" in r.output, r.output
    after = {p.name: p.read_bytes() for p in (run / "figures").glob("*.png")}
    assert set(after) == set(before)  # the norm histograms it could not redraw are still there
    assert all(after[n] == before[n] for n in before if n.startswith("norms-"))
    assert "Not redrawn here" in (run / "report.html").read_text(encoding="utf-8")
