"""What a result needs to describe itself: versions, git state, device and backend."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from . import __version__


def git_state() -> dict:
    """Commit and dirty flag of the checkout gradlab runs from; nulls for an installed package."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None or git("rev-parse", "--show-toplevel") != str(root):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


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
