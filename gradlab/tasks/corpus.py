"""Find the Jay Chou lyrics corpus (path, $GRADLAB_DATA, user cache), or download it with a sha256 check."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import zipfile
from pathlib import Path

FILE_NAME = "jaychou_lyrics.txt.zip"
MEMBER = "jaychou_lyrics.txt"
SHA256 = "3cfedd7d174111cdad5a27eaffaa6a2432a2842cf2590a03dd8a97610ea07043"
# The book's public data folders; the first is pinned to a commit so it cannot drift.
URLS = (
    "https://raw.githubusercontent.com/d2l-ai/d2l-zh/89403b9792861d86a0f1735cdd4a3d60c423f5a2/data/jaychou_lyrics.txt.zip",
    "https://raw.githubusercontent.com/ShusenTang/Dive-into-DL-PyTorch/master/data/jaychou_lyrics.txt.zip",
)
ENV_VAR = "GRADLAB_DATA"
SETTING = "the corpus setting"  # how an explicit path (--set corpus=PATH) is named in messages


class CorpusError(RuntimeError):
    """The corpus could not be found, fetched or verified; the message says what was tried."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradlab"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_zip(path: Path) -> Path:
    return path / FILE_NAME if path.is_dir() else path


def candidates(path: str | Path | None) -> list[tuple[str, Path]]:
    """Where the zip is looked for, in order, each with how it was named."""
    out = []
    if path is not None:
        out.append((SETTING, _as_zip(Path(path))))
    if os.environ.get(ENV_VAR):
        out.append((f"${ENV_VAR}", _as_zip(Path(os.environ[ENV_VAR]))))
    out.append(("user cache", cache_dir() / FILE_NAME))
    return out


def download(dest: Path, urls: tuple[str, ...] = URLS, timeout_s: float = 30.0) -> Path:
    """Fetch the zip into dest, verify its sha256, and move it into place atomically."""
    errors = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        tmp = dest.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                tmp.write_bytes(response.read())
            digest = sha256_of(tmp)
            if digest != SHA256:
                raise CorpusError(f"sha256 {digest} != expected {SHA256}")
            os.replace(tmp, dest)
            return dest
        except Exception as exc:  # offline, HTTP error, or a wrong file: try the next source
            errors.append(f"  {url}: {exc}")
            tmp.unlink(missing_ok=True)
    raise CorpusError("could not download the corpus:\n" + "\n".join(errors))


def locate(path: str | Path | None = None, download: bool = True) -> Path | None:
    """The verified zip's path. Without download=True, None when it is nowhere local."""
    tried = candidates(path)
    for how, where in tried:
        if where.is_file():
            return verify(where, how)
        if how == SETTING:  # an explicit path that is not there is an error, not a fallback
            raise CorpusError(f"corpus={where} does not exist. Set corpus to the path of {FILE_NAME} or of its folder.")
    if not download:
        return None
    lines = [f"  {how}: {where} (absent)" for how, where in tried]
    try:
        return _download_to_cache()
    except CorpusError as exc:
        raise CorpusError(
            f"The lyrics corpus {FILE_NAME} was not found, and {exc}\nLooked in:\n" + "\n".join(lines)
            + f"\nSupply it with --set corpus=PATH, or set {ENV_VAR} to the zip or its folder, or put it in "
            f"{cache_dir()}. Its sha256 is {SHA256}."
        ) from None


def _download_to_cache() -> Path:
    return download(cache_dir() / FILE_NAME)


def verify(path: Path, how: str = "path") -> Path:
    digest = sha256_of(path)
    if digest != SHA256:
        raise CorpusError(f"{how} {path} is not the lyrics corpus: sha256 {digest}, expected {SHA256}.")
    return path.resolve()


def read_text(zip_path: Path) -> str:
    """The corpus text, UTF-8, as stored (63,282 characters)."""
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read(MEMBER).decode("utf-8")
