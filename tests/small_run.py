"""The small study the run-folder tests run through the real command line (two cells, 10 steps: about a second),
and the two helpers they share."""

from __future__ import annotations

from click.testing import CliRunner

from gradlab.cli import main

STUDY = """
name = "small"
measure = "gradient_decay"
[grid]
cell = ["linear", "rnn"]
[settings]
seq_len = 10
hidden_size = 4
input_size = 2
batch_size = 2
device = "cpu"
"""


def invoke(*args):
    """`gradlab ARGS...` in this process, every argument as text (paths included); exceptions propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def said(result) -> str:
    """A command's output on one line (messages wrap)."""
    return " ".join(result.output.split())
