"""One source for every number: each measured block of README.md and docs/ is what scripts/readme_numbers.py makes
of the committed run it names. A quoted number its run does not hold, a block whose run is missing, or a block the
script does not know fails here, with the block named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def numbers():
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "scripts" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md", "docs/ensembles.md", "docs/library.md"])
def test_every_quoted_number_is_what_its_committed_run_holds(numbers, doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = [m["name"] for m in numbers.BLOCK.finditer(text)]
    if doc == "README.md":
        assert len(blocks) >= 12, blocks
    _, changed = numbers.rewrite(text, ROOT)
    assert changed == [], f"{doc}: blocks that differ from their runs (python scripts/readme_numbers.py --write after a rerun): {changed}"


def test_a_number_changed_by_hand_or_a_missing_run_is_caught(numbers, tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tampered = text.replace("<!-- numbers decay-quick -->\n", "<!-- numbers decay-quick -->\n| 0.999 |\n", 1)
    assert "decay-quick" in numbers.rewrite(tampered, ROOT)[1]
    empty = tmp_path / "root"
    (empty / "reports").mkdir(parents=True)
    _, changed = numbers.rewrite("<!-- numbers lyrics-full -->\n<!-- /numbers -->", empty)
    assert changed and "reports/lyrics-full is not there" in changed[0]
    assert "no such block" in numbers.rewrite("<!-- numbers nothing-like-it -->\n<!-- /numbers -->", ROOT)[1][0]
