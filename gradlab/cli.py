"""The gradlab command line: a thin shell over the library."""

from __future__ import annotations

import functools
import os
import signal
import sys
import warnings
from pathlib import Path

import textwrap

import click

from .names import EXECUTORS, TABLES


def _friendly(fn):
    """Library ValueErrors (bad names, bad combinations) become usage errors, not tracebacks; a folder that
    cannot be used, or an executor that cannot be reached, is an error of its own (the message, no usage banner)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .executors import ExecutorError
        from .store import FolderError
        from .tasks.corpus import CorpusError

        try:
            return fn(*args, **kwargs)
        except (FolderError, ExecutorError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
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
    warnings.showwarning = _show_warning
    sys.stdout, sys.stderr = _PipeSafe.wrap(sys.stdout), _PipeSafe.wrap(sys.stderr)


class _PipeSafe:
    """A terminal stream whose reader may go away (`gradlab run ... | head`): once the pipe is closed, what is written is
    dropped quietly (the stream's descriptor now leads to os.devnull) and the work goes on; the command's exit status is
    its own. Every write is flushed, so a closed pipe is found at once, not when the process ends."""

    def __init__(self, stream):
        self._stream = stream

    @classmethod
    def wrap(cls, stream):
        return stream if isinstance(stream, cls) or stream is None else cls(stream)

    def _closed_pipe(self) -> None:
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)

    def _quietly(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            self._closed_pipe()
            try:
                return call(*args)
            except (BrokenPipeError, ValueError):
                return None

    def write(self, text: str):
        done = self._quietly(self._stream.write, text)
        self._quietly(self._stream.flush)
        return len(text) if done is None else done

    def flush(self) -> None:
        self._quietly(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """gradlab's own warnings (a broken plugin) as one line on stderr; any other as Python shows it."""
    from .plugins import PluginWarning

    if issubclass(category, PluginWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--set", "overrides", multiple=True, metavar="KEY=V1,V2", help="Change a setting of the book's run (cell=lstm, steps=..., corpus=PATH, ...); repeatable.")
@click.option("--out", callback=lambda ctx, param, value: _out_folder(value), default=None, metavar="FOLDER", help="The run's folder (default runs/lyrics-book).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def lyrics(ctx: click.Context, overrides: tuple[str, ...], out: Path | None, device: str, quiet: bool) -> None:
    """The book's scratch GRU on the Jay Chou lyrics: `gradlab run lyrics --profile book`, then the book's view.

    The lyrics study's settings are the book's; change any with --set (see `gradlab show lyrics`)."""
    ctx.invoke(run, study="lyrics", profile="book", overrides=overrides, out=out, device=device, quiet=quiet)


@main.command()
@click.argument("study")
@click.option("--profile", "-p", default=None, help="A profile of the study file (quick, full, gpu, ...); default: the study's own.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=V1,V2", help="Override an axis or setting; repeatable.")
@click.option("--out", callback=lambda ctx, param, value: _out_folder(value), default=None, metavar="FOLDER",
              help="The run's folder (default runs/STUDY-PROFILE); rerunning resumes. A new or empty folder, or one a gradlab run made.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: the study's own setting, else auto.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Points run in parallel.")
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default=None, help="Where points run (default: inline, or processes with --workers > 1).")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Run the points on this Dask scheduler (tcp://host:8786); needs gradlab[dask].")
@click.option("--dry-run", is_flag=True, help="Say which points would be computed and how many are cached; compute nothing.")
@click.option("--ensemble", default="auto", show_default=True, metavar="auto|off|N",
              help="Train points of one shape together as one batched ensemble, at most N at a time (auto: 8 on CPU, 64 on a GPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-report", is_flag=True, help="Write the tables and manifest only (an older page and figures are removed: they would describe another state).")
@click.option("--reference", is_flag=True, help="Allow writing over a committed reference run in reports/ (scripts/reference_runs.sh).")
@click.option("--share-folder", is_flag=True, help="--out may hold files that are not gradlab's: the run goes beside them and never changes them.")
@_friendly
def run(study: str, profile: str | None, overrides: tuple[str, ...], out: Path | None, device: str | None, workers: int = 1,
        executor: str | None = None, scheduler: str | None = None, dry_run: bool = False, quiet: bool = False, no_report: bool = False,
        reference: bool = False, ensemble: str = "auto", share_folder: bool = False) -> None:
    """Run STUDY (a name from `gradlab list`, or a path to a TOML file): tables, figures, report.

    Exits 1 when some points failed (each is recorded with its error; the rest of the study ran), 130 when
    interrupted (every finished point is saved: rerun the same command to resume)."""
    from .executors import check_choice
    from .report import draw
    from .grouping import parse_mode
    from .runner import ExecutorLost, StudyInterrupted, plan, point_states, run_study

    try:
        mode = parse_mode(ensemble)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ensemble") from None
    check_choice(executor, scheduler)
    planned = plan(study, profile, list(overrides), None if device is None else resolve_device(device))
    if dry_run:
        _echo_dry_run(planned, out, profile, point_states(planned, out), mode)
        return
    previous = signal.signal(signal.SIGTERM, _terminate)  # a kill ends like Ctrl-C: what finished is saved and shown
    try:
        summary = run_study(
            study, profile, list(overrides), out, workers=workers, executor=executor, progress=not quiet,
            argv=["gradlab", *sys.argv[1:]], render=None if no_report else draw, echo=click.echo, planned=planned, scheduler=scheduler,
            reference=reference, ensemble=mode, share=share_folder,
        )
    except StudyInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    except ExecutorLost as exc:  # the Dask scheduler went away: what finished is saved
        click.echo(str(exc), err=True)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    stale = f" ({summary.stale} of them made before by other code)" if summary.stale else ""
    stale += f" ({summary.corrupt} recomputed: they failed their checksums)" if summary.corrupt else ""
    skipped = f", {summary.skipped} left out by the ladder" if summary.skipped else ""
    click.echo(f"{summary.points} points: {summary.cached} cached, {summary.computed} computed{stale}{skipped}, {len(summary.failed)} failed; {summary.rows} rows")
    click.echo(f"tables and manifest in {summary.out}" + (f"; report {summary.report}" if summary.report else ""))
    if summary.rows:
        _echo_summary(summary.out)
    for fail in summary.failed[:5]:
        click.echo(f"failed {fail['key']}: {fail['error'].splitlines()[0]}", err=True)
    if summary.failed:
        sys.exit(1)


def _out_folder(value: str | None) -> Path | None:
    """--out as a folder; an empty value is an error (Path('') would be the current directory)."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("an empty folder name; name the run's folder (e.g. runs/mine).", param_hint="--out")
    return Path(value)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _echo_dry_run(planned, out: Path | None, profile: str | None, states: list[str], mode=None) -> None:
    import pandas as pd

    from .grouping import summary
    from .runner import default_out

    out = out or default_out(planned)
    todo = [pt for pt, st in zip(planned.points, states) if st != "done"]
    how = "asked for" if profile is not None else ("the study's default" if planned.study.default_profile else "no profile: the study's own grid")
    click.echo(f"study {planned.study.name!r}, profile {planned.resolved.profile!r} ({how}), into {out}: {len(states)} points, "
               f"{states.count('done')} cached, {len(todo)} to compute ({states.count('stale')} made before by other code)")
    for line in planned.describe_drops():
        click.echo(f"  excluded: {line}")
    if planned.resolved.ladder is not None:
        click.echo(f"  ladder: {planned.resolved.ladder}; of the points to compute, those it leaves out are known only as the shorter ones finish")
    said = summary(todo, planned.module, mode) if todo and mode is not None else None
    if said:
        click.echo(f"  {said}")
    if todo:
        axes = planned.resolved.axes or ["seed"]
        table = pd.DataFrame([{a: getattr(pt, a) for a in axes} for pt in todo])
        click.echo("points to compute:\n" + table.to_string(index=False, max_rows=40))


@main.command()
@click.argument("study")
@_friendly
def show(study: str) -> None:
    """What STUDY is: its measure, axes, settings, exclusion rules, and every profile with its point count."""
    from . import measures
    from .study import expand, load_study, resolve

    s = load_study(study)
    config = measures.load(s.measure).Config
    click.echo(f"{s.name} ({s.source}): measure {s.measure}")
    click.echo(s.description.strip())
    click.echo("grid:")
    for k, v in s.grid.items():
        click.echo(f"  {k} = {v}")
    click.echo("settings:")
    for k, v in s.settings.items():
        click.echo(f"  {k} = {v!r}")
    if s.exclude:
        click.echo("exclude:")
        for rule in resolve(s, config, None).exclude:
            click.echo(f"  {rule}")
    click.echo("profiles (points after exclusions):")
    for name in [None, *s.profiles]:
        points, dropped = expand(resolve(s, config, name if name else None) if name else _bare(s, config), config)
        prof = s.profiles.get(name, {}) if name else {}
        mark = " (default)" if name is not None and name == s.default_profile else ""
        label = name or "(no profile: the grid above)"
        click.echo(f"  {label}{mark}: {len(points)} points, {sum(d.count for d in dropped)} excluded. {prof.get('description', '')}".rstrip())
        for key in ("grid", "settings"):
            if prof.get(key):
                click.echo(f"      {key}: " + ", ".join(f"{k} = {v!r}" for k, v in prof[key].items()))


def _bare(study, config):
    """The study without any profile (not even its default)."""
    from dataclasses import replace

    from .study import resolve

    return resolve(replace(study, default_profile=None), config, None)


@main.command("list")
def list_things() -> None:
    """Studies (with profiles) and every table of names: cells, tasks, measures, optimizers, ..."""
    from .measures import known_measures
    from .study import known_studies, load_study
    from .tasks import known_tasks

    from .study import StudyError

    click.echo("studies:")
    for name, (_, source) in known_studies().items():
        plugin = "" if source.startswith("studies/") else f" (plugin: {source})"
        try:
            study = load_study(name)
        except StudyError as exc:  # a plugin's broken study file: said on its line, the others listed
            click.echo(f"  {name:16} cannot be read: {exc}{plugin}")
            continue
        click.echo(f"  {name:16} measure {study.measure}; profiles: {', '.join(study.profiles) or '-'}{plugin}")
    for title, table in (TABLES | {"tasks": known_tasks(), "measures": known_measures()}).items():
        click.echo(f"{title}:")
        for name, text in table.items():
            click.echo(f"  {name:16} {text}")


def _echo_summary(out: Path) -> None:
    """The run's key points and summary table, as the report's first screen has them."""
    from .report import summary_of

    section = summary_of(out)
    for point in section.key_points:
        click.echo(textwrap.fill(point, 110))
    for title, df in section.summaries:
        constant = [c for c in df.columns if len(df) > 1 and df[c].map(repr).nunique() == 1]
        click.echo(f"{title}:\n" + df.drop(columns=constant).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for title, df in section.tables:
        if "text" in df:  # generated text: a few lines, each with the run it came from
            runs = [c for c in df.columns if c not in ("epoch", "prefix", "temperature", "text")]
            for _, row in df.head(8).iterrows():
                click.echo(f" - {' '.join(str(row[c]) for c in runs)} [T={row['temperature']:g}] {row['text']}".replace("  [", " ["))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--reanalyse", is_flag=True, help="First make the analyses again from the points' kept weights (lyrics runs), by "
              "today's code, without training; the tables are then rebuilt from the points.")
@_friendly
def report(run_dir: Path, reanalyse: bool = False) -> None:
    """Re-render RUN_DIR's figures and report.html from its tables alone. A run that stopped early is
    rendered as far as it got, and says so; one killed before writing its tables gets them first, from
    its saved points."""
    from .runner import report_folder

    try:
        page, unfinished = report_folder(run_dir, echo=lambda text: click.echo(text, err=True), again=reanalyse)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    if unfinished:
        click.echo(unfinished, err=True)
    click.echo(f"wrote {page}")


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the table as CSV here.")
@_friendly
def compare(run_a: Path, run_b: Path, out: Path | None) -> None:
    """RUN_A and RUN_B side by side: the same summary table of each (decay rates, final evaluations), rows
    matched on the settings that vary, each value as A, B and B - A."""
    from .folder import locked_by_other
    from .report import check_finished, unfinished_note
    from .store import FolderError
    from .report.compare import compare as compare_runs

    if out is not None:  # where the CSV goes, checked before anything is read
        if out.is_dir() or not out.name or str(out).endswith(("/", os.sep)):
            raise click.BadParameter(f"{out} is a folder; name the CSV file to write (e.g. {out / 'compare.csv'}).", param_hint="--out")
        if not out.parent.is_dir():
            raise click.BadParameter(f"{out.parent} does not exist (or is not a folder): the CSV goes into an existing folder.", param_hint="--out")
        if not os.access(out.parent, os.W_OK):
            raise click.BadParameter(f"{out.parent} cannot be written: choose a folder you can write to.", param_hint="--out")
    for run_dir in (run_a, run_b):
        holder = locked_by_other(run_dir)
        if holder:
            raise click.ClickException(f"{run_dir} is being written (pid {holder.get('pid')}: {holder.get('command')}); compare it when that ends.")
        try:
            note = unfinished_note(check_finished(run_dir))
        except FileNotFoundError as exc:  # no run there (or one that never wrote its tables): said, not a traceback
            raise FolderError(str(exc)) from None
        if note:
            click.echo(f"{run_dir}: {note}", err=True)
    table, differing = compare_runs(run_a, run_b)
    for key, (va, vb) in differing.items():
        click.echo(f"{key}: {va} in A, {vb} in B")
    if len(table) and not (table["in"] == "both").any():  # no row of A has a row of B at the same settings
        keys = [c for c in table.columns if not c.endswith((" A", " B", " B-A")) and c != "in"]
        held = {side: {k: sorted(set(table.loc[table["in"] == f"{side} only", k].dropna().map(str))) for k in keys}
                for side in ("A", "B")}
        click.echo(f"A and B have no row at the same settings: nothing to subtract (every B - A is empty). A holds "
                   + "; ".join(f"{k} {', '.join(v)}" for k, v in held["A"].items() if v) + ". B holds "
                   + "; ".join(f"{k} {', '.join(v)}" for k, v in held["B"].items() if v) + ".", err=True)
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))  # 4 significant digits: what a timing or a loss can say
    for note in table.attrs.get("notes", []):  # what an empty value means, which rows are given once
        click.echo(f"note: {note}.")
    if out is not None:
        try:
            table.to_csv(out, index=False)
        except OSError as exc:
            raise FolderError(f"could not write {out}: {exc.strerror or exc}.", exit_code=1) from None
        click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
