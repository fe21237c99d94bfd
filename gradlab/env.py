"""What a result needs to describe itself: versions, git state, the code's identity, device and backend."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import platform
import socket
import subprocess
from pathlib import Path

from . import __version__

PACKAGE = Path(__file__).resolve().parent
NOT_NUMBERS = ("report/", "derived/", "cli.py")  # source that draws, parses or derives tables from stored rows: never a point's rows


def code_of(source: str) -> str:
    """What a module computes, as text: its syntax tree without docstrings (comments and layout are not
    in a tree), so that an edit to prose alone leaves it unchanged."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@functools.lru_cache(maxsize=None)
def source_digest(root: Path = PACKAGE) -> str:
    """sha256 (16 hex digits) over the code of gradlab's modules that can change a point's rows, by
    relative path: any edit to what they compute makes every cached point stale, committed or not; an
    edit to comments or docstrings, or to report/, derived/ or cli.py, does not."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(NOT_NUMBERS):
            digest.update(rel.encode() + b"\0" + code_of(path.read_text(encoding="utf-8")).encode() + b"\0")
    return digest.hexdigest()[:16]


def code_identity() -> dict:
    """What computed a point: gradlab's version, source digest and commit, and torch's version. The
    source digest and torch's version decide whether a cached point is still valid (store.PointStore)."""
    import torch

    git = git_state()
    return {"gradlab": __version__, "source": source_digest(), "torch": torch.__version__,
            "commit": git["commit"], "dirty": git["dirty"], "host": socket.gethostname()}


def git_state() -> dict:
    """Commit and dirty flag of the code that runs: read live from the checkout gradlab runs from, else
    the ones recorded when the installed wheel was built (setup.py writes gradlab/_build.json). Dirty:
    tracked files changed outside reports/, or files not yet tracked in gradlab/, studies/ or scripts/."""
    return dict(_git_state())


@functools.lru_cache(maxsize=1)
def _git_state() -> dict:
    root = PACKAGE.parent
    built = PACKAGE / "_build.json"

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is not None and git("rev-parse", "--show-toplevel") == str(root):
        # changed tracked files, or new files where code lives; never run folders (reports/ holds committed runs)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports")
                     or git("status", "--porcelain", "--", "gradlab", "studies", "scripts"))
        return {"commit": commit, "dirty": dirty, "from": "checkout"}
    if built.is_file():
        return json.loads(built.read_text()) | {"from": "build"}
    return {"commit": None, "dirty": None, "from": "unknown"}


def environment(device: str = "cpu") -> dict:
    import numpy
    import pandas
    import torch

    info = {
        "gradlab": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "pandas": pandas.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(), "device": device,
        # float32 precision modes: TF32 in cuDNN's RNNs moves float32 results by ~1e-3 (measured)
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        info["cudnn_rnn_fp32_precision"] = rnn.fp32_precision
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
    return info | {"git": git_state()}
