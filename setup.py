"""Build hook (the rest of the build is in pyproject.toml): a wheel records the git commit, and whether the
tree was dirty, in gradlab/_build.json, so an installed gradlab names the code that ran in every manifest."""

import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        commit = git("rev-parse", "HEAD") if git("rev-parse", "--show-toplevel") == str(HERE) else None
        # the same rule as gradlab.env: changed tracked files outside reports/ (committed run folders), new files where code lives
        dirty = None if commit is None else bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports")
            or git("status", "--porcelain", "--", "gradlab", "studies", "scripts"))
        target = Path(self.build_lib) / "gradlab" / "_build.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"commit": commit, "dirty": dirty}))


setup(cmdclass={"build_py": BuildPyWithCommit})
