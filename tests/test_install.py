"""An installed gradlab finds its studies from any folder (package data, not the checkout)."""

from __future__ import annotations

import subprocess
import sys


def test_studies_resolve_outside_the_checkout(tmp_path):
    code = "import gradlab.config as c, gradlab; print(gradlab.__file__); print(sorted(c.builtin_studies()))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "'gradient-decay'" in done.stdout and "'lyrics'" in done.stdout
