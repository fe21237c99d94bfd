"""The gradlab command line: a thin shell over the library."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click


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


@main.command()
@click.option("--cell", default="gru", show_default=True, help="rnn, gru or lstm (linear too, in scratch).")
@click.option("--impl", default="scratch", show_default=True, help="scratch or cudnn.")
@click.option("--variant", default=None, help="GRU: reset_after (default) or reset_before.")
@click.option("--hidden-size", default=256, show_default=True)
@click.option("--epochs", default=160, show_default=True)
@click.option("--num-steps", default=35, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--optimizer", default="sgd", show_default=True, help="sgd or adam.")
@click.option("--lr", default=1e2, show_default=True)
@click.option("--clip", "clip_method", default="norm", show_default=True, help="none, norm or value.")
@click.option("--clip-threshold", default=1e-2, show_default=True)
@click.option("--sampling", default="consecutive", show_default=True, help="consecutive or random.")
@click.option("--init", default="normal", show_default=True, help="normal (the seed's N(0, 0.01)), xavier, orthogonal.")
@click.option("--setting", default="book", show_default=True, help="book (first 10,000 characters) or full.")
@click.option("--val-fraction", default=0.1, show_default=True, help="Share of the corpus's lines held out.")
@click.option("--oov", default="drop", show_default=True, help="Held-out characters outside the vocabulary: drop or unk.")
@click.option("--eval-every", default=10, show_default=True, help="Epochs between metric rows.")
@click.option("--prefix", "prefixes", multiple=True, default=("分开", "不分开"), show_default=True)
@click.option("--pred-len", default=50, show_default=True)
@click.option("--temperature", "sample_temperature", default=1.0, show_default=True, help="Sampling temperature (greedy samples are drawn too).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--dtype", default="float32", show_default=True)
@click.option("--corpus", type=click.Path(path_type=Path), default=None, help="The corpus zip or its folder (else $GRADLAB_DATA, then the user cache, then a download).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write history.csv, samples.csv, steps.csv, meta.json here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly
def lyrics(corpus: Path | None, out: Path | None, quiet: bool, device: str, prefixes: tuple[str, ...], clip_method: str, **options) -> None:
    """Train the character language model on the Jay Chou lyrics (the book's GRU/LSTM chapter)."""
    from .lyrics_run import run_lyrics

    from .train import LyricsConfig

    cfg = LyricsConfig(device=resolve_device(device), prefixes=tuple(prefixes), clip=clip_method, **options)
    cfg.validate()
    run_lyrics(cfg, corpus, out, progress=not quiet, echo=click.echo)


@main.command()
@click.argument("study")
@click.option("--profile", "-p", default=None, help="A profile of the study file (quick, full, gpu, ...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=V1,V2", help="Override an axis or setting; repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="The run's folder (default reports/STUDY-PROFILE); rerunning resumes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: the study's own setting, else auto.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Points run in parallel processes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-report", is_flag=True, help="Write the tables and manifest only.")
@_friendly
def run(study: str, profile: str | None, overrides: tuple[str, ...], out: Path | None, device: str | None, workers: int, quiet: bool, no_report: bool) -> None:
    """Run STUDY (a name from `gradlab list`, or a path to a TOML file): tables, figures, report.

    Exits 1 when some points failed (each is recorded with its error; the rest of the study ran)."""
    from .report import render
    from .runner import run_study

    summary = run_study(
        study, profile, list(overrides), out, None if device is None else resolve_device(device), workers,
        progress=not quiet, argv=sys.argv, render=None if no_report else render,
    )
    click.echo(f"{summary.points} points: {summary.cached} cached, {summary.computed} computed, {len(summary.failed)} failed; {summary.rows} rows")
    click.echo(f"tables and manifest in {summary.out}" + (f"; report {summary.report}" if summary.report else ""))
    for fail in summary.failed[:5]:
        click.echo(f"failed {fail['key']}: {fail['error'].splitlines()[0]}", err=True)
    if summary.failed:
        sys.exit(1)


@main.command("list")
def list_things() -> None:
    """Studies (with profiles), cells, impls, tasks and measures."""
    from .cells import CELLS, IMPLS
    from .config import builtin_studies, load_study
    from .measures import MEASURES

    click.echo("studies:")
    for name in sorted(builtin_studies()):
        study = load_study(name)
        profiles = ", ".join(study.profiles) or "-"
        click.echo(f"  {name:16} measure {study.measure}; profiles: {profiles}")
    click.echo("cells:")
    for name, text in CELLS.items():
        click.echo(f"  {name:16} {text}")
    click.echo("impls:")
    for name, text in IMPLS.items():
        click.echo(f"  {name:16} {text}")
    click.echo("tasks:")
    click.echo(f"  {'lyrics':16} Jay Chou lyrics, character level (the book's GRU/LSTM chapter)")
    click.echo("measures:")
    for name, text in MEASURES.items():
        click.echo(f"  {name:16} {text}")


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
    from .speed import compare_epoch_speed
    from .tasks.corpus import locate, read_text
    from .tasks.lyrics import prepare
    from .train import LyricsConfig

    cfg = LyricsConfig(cell=cell, device=resolve_device(device))
    cfg.validate()
    result = compare_epoch_speed(cfg, prepare(read_text(locate(corpus)), cfg.setting), epochs)
    for key, value in result.items():
        click.echo(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
