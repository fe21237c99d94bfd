"""The gradlab command line: a thin shell over the library."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .names import EXECUTORS, TABLES


def _friendly(fn):
    """Library ValueErrors (bad names, bad combinations) become usage errors, not tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .tasks.corpus import CorpusError

        try:
            return fn(*args, **kwargs)
        except (ValueError, CorpusError) as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device here. Use --device cpu or auto.")
    return device


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradlab")
def main() -> None:
    """gradlab: how gradients flow through recurrent networks, and how fast those networks run."""


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--set", "overrides", multiple=True, metavar="KEY=V1,V2", help="Change a setting of the book's run (cell=lstm, steps=..., corpus=PATH, ...); repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="The run's folder (default reports/lyrics-book).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def lyrics(ctx: click.Context, overrides: tuple[str, ...], out: Path | None, device: str, quiet: bool) -> None:
    """The book's scratch GRU on the Jay Chou lyrics: `gradlab run lyrics --profile book`, then the book's view.

    The lyrics study's settings are the book's; change any with --set (see `gradlab show lyrics`)."""
    ctx.invoke(run, study="lyrics", profile="book", overrides=overrides, out=out, device=device, quiet=quiet)


@main.command()
@click.argument("study")
@click.option("--profile", "-p", default=None, help="A profile of the study file (quick, full, gpu, ...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=V1,V2", help="Override an axis or setting; repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="The run's folder (default reports/STUDY-PROFILE); rerunning resumes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: the study's own setting, else auto.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Points run in parallel.")
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default=None, help="Where points run (default: inline, or processes with --workers > 1).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-report", is_flag=True, help="Write the tables and manifest only.")
@_friendly
def run(study: str, profile: str | None, overrides: tuple[str, ...], out: Path | None, device: str | None, workers: int = 1,
        executor: str | None = None, quiet: bool = False, no_report: bool = False) -> None:
    """Run STUDY (a name from `gradlab list`, or a path to a TOML file): tables, figures, report.

    Exits 1 when some points failed (each is recorded with its error; the rest of the study ran)."""
    from .report import render
    from .runner import run_study

    summary = run_study(
        study, profile, list(overrides), out, None if device is None else resolve_device(device), workers, executor,
        progress=not quiet, argv=sys.argv, render=None if no_report else render,
    )
    stale = f" ({summary.stale} of them made before by other code)" if summary.stale else ""
    click.echo(f"{summary.points} points: {summary.cached} cached, {summary.computed} computed{stale}, {len(summary.failed)} failed; {summary.rows} rows")
    click.echo(f"tables and manifest in {summary.out}" + (f"; report {summary.report}" if summary.report else ""))
    _echo_final(summary.out)
    for fail in summary.failed[:5]:
        click.echo(f"failed {fail['key']}: {fail['error'].splitlines()[0]}", err=True)
    if summary.failed:
        sys.exit(1)


@main.command("list")
def list_things() -> None:
    """Studies (with profiles) and every table of names: cells, tasks, measures, optimizers, ..."""
    from .study import builtin_studies, load_study

    click.echo("studies:")
    for name in builtin_studies():
        study = load_study(name)
        click.echo(f"  {name:16} measure {study.measure}; profiles: {', '.join(study.profiles) or '-'}")
    for title, table in TABLES.items():
        click.echo(f"{title}:")
        for name, text in table.items():
            click.echo(f"  {name:16} {text}")


FINAL_COLUMNS = ("step", "epoch", "final_train_loss", "final_val_loss", "baseline", "val_metric", "train_ppl", "val_ppl", "solved")


def _echo_final(out: Path) -> None:
    """A run's final table, and the last generated text where the task writes some."""
    import pandas as pd

    final = out / "final.parquet"
    if final.exists():
        df = pd.read_parquet(final)
        shown = [c for c in df.columns if c != "point" and df[c].nunique(dropna=False) > 1]
        shown += [c for c in FINAL_COLUMNS if c in df and c not in shown]
        click.echo(df[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    samples = out / "samples.parquet"
    if samples.exists():
        s = pd.read_parquet(samples)
        for row in s[s["epoch"] == s["epoch"].max()].head(8).itertuples():
            click.echo(f" - [T={row.temperature:g}] {row.text}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@_friendly
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR's figures and report.html from its tables alone."""
    from .report import render

    try:
        click.echo(f"wrote {render(run_dir)}")
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None


@main.command("lyrics-speed")
@click.option("--cell", default="gru", show_default=True, help="gru or lstm (the book's chapter).")
@click.option("--epochs", default=3, show_default=True, help="Timed epochs of each, alternating, after one warm-up each.")
@click.option("--device", default="auto", show_default=True)
@click.option("--corpus", type=click.Path(path_type=Path), default=None)
@_friendly
def lyrics_speed(cell: str, epochs: int, device: str, corpus: Path | None) -> None:
    """Seconds per epoch at the book's settings: gradlab's scratch model against the book's style of code."""
    from .baselines.speed import compare_epoch_speed, book_config
    from .tasks.lyrics import Lyrics

    cfg = book_config(cell=cell, device=resolve_device(device))
    result = compare_epoch_speed(cfg, Lyrics(corpus=None if corpus is None else str(corpus)), epochs)
    for key, value in result.items():
        click.echo(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
