"""Installed gradlab finds its studies (the top-level studies/ folder) from any folder, installed from a
wheel or in editable mode; and the wheel's package list matches the package folders."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import json, gradlab, gradlab.study as s, gradlab.env as e; print(gradlab.__file__); print(s.studies_dir()); "
         "print(sorted(s.builtin_studies())); print(json.dumps(e.git_state()))")


def test_every_package_folder_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "gradlab").rglob("__init__.py")}
    assert listed == folders | {"gradlab.studies"}


def _venv_with_gradlab(tmp_path: Path, editable: bool) -> Path:
    """A fresh virtual environment holding only gradlab (no dependencies: the study files need none).
    The wheel, or the editable wheel (PEP 660), is built offline by this environment's setuptools."""
    build = tmp_path / "build"
    code = f"import setuptools.build_meta as b; print(b.build_{'editable' if editable else 'wheel'}({str(build)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wheel = build / done.stdout.split()[-1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return python


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_studies_are_found_outside_the_checkout(tmp_path, editable):
    python = _venv_with_gradlab(tmp_path, editable)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(python), "-c", PROBE], cwd=elsewhere, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    module, studies, names, git = done.stdout.splitlines()
    shipped = {p.stem for p in (ROOT / "studies").glob("*.toml")}
    assert names == str(sorted(shipped)) and {"gradient-decay", "lyrics"} <= shipped
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    git = json.loads(git)
    if editable:  # the checkout's own folders, its commit read live
        assert Path(module).parent == ROOT / "gradlab" and Path(studies) == ROOT / "studies"
        assert git["from"] == "checkout"
    else:  # copies inside the environment, and the commit the wheel was built from
        assert str(tmp_path / "venv") in module and Path(studies) == Path(module).parent / "studies"
        status = lambda *a: subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
        changed = bool(status("--untracked-files=no", "--", ".", ":(exclude)reports") or status("--", "gradlab", "studies", "scripts"))
        assert git["from"] == "build" and git["dirty"] is changed  # the checkout's rule: run folders under reports/ never count
    assert git["commit"] == (head or None)  # every manifest names the code that ran


def test_a_checkout_is_dirty_for_changed_code_never_for_run_folders(tmp_path):
    """The manifest's dirty flag: a changed tracked file or a new file in gradlab/, studies/ or scripts/
    makes a checkout dirty; rewritten or new run folders under reports/ do not (they are committed runs)."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "gradlab", repo / "gradlab", ignore=shutil.ignore_patterns("__pycache__", "_build.json"))
    (repo / "reports" / "old").mkdir(parents=True)
    (repo / "reports" / "old" / "manifest.json").write_text("{}")
    (repo / "studies").mkdir()
    (repo / "README.md").write_text("gradlab\n")
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    probe = "import json, gradlab.env as e; print(json.dumps(e.git_state()))"
    state = lambda: json.loads(subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True).stdout)  # noqa: E731
    assert state()["dirty"] is False and state()["from"] == "checkout"
    (repo / "reports" / "old" / "manifest.json").write_text('{"rerun": 1}')
    (repo / "reports" / "new").mkdir()
    (repo / "reports" / "new" / "results.parquet").write_text("")
    assert state()["dirty"] is False
    (repo / "studies" / "mine.toml").write_text("")
    assert state()["dirty"] is True
    (repo / "studies" / "mine.toml").unlink()
    (repo / "README.md").write_text("changed\n")
    assert state()["dirty"] is True
