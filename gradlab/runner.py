"""Runs a study: grid expansion, checks before work, seeding, cache by config hash, resume, executors, progress."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import subprocess
import sys
import uuid
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from . import measures
from .dask_executor import worker_address
from .executors import InlineExecutor, check_choice, default_executor, make_executor
from .cells import check_device, check_seed
from .env import code_identity
from .assemble import assemble, collect, lags_behind, read_plan
from .folder import NAME_MAX, FolderLock, check_links, foreign, holds_run, not_gradlabs, recover, state_name
from .grouping import Mode, groups, parse_mode, shape_counts, summary as ensemble_summary
from .ladder import RUN, SKIP, decide, succeeded_in
from .store import PLAN_FILE, FolderError, PointStore, read_json, write_json_atomic
from .study import Dropped, Resolved, Study, StudyError, expand, load_study, resolve


@dataclass
class PointOutcome:
    key: str
    config: dict
    tables: dict[str, list[dict]] | None
    error: str | None
    seconds: float
    env: dict = field(default_factory=dict)


@dataclass
class RunSummary:
    out: Path
    points: int
    cached: int
    computed: int
    failed: list[dict]
    rows: int
    report: Path | None
    stale: int = 0  # of the computed: finished before, by other code (source digest or torch version)
    corrupt: int = 0  # of the computed: saved before, but failed their checksums
    skipped: int = 0  # left out by the study's ladder (longer lags after a failing streak)


def point_key(measure: str, config: dict) -> str:
    """A hash of the resolved config (and of the code of any plugin the point runs): the cache key of a point."""
    from .plugins import code_digests, entry_points

    if measure == "train" and entry_points("tasks"):  # a plugin task's parameters, unset, are no part of another point's key
        unset = {k for k in _plugin_params() if config.get(k) is None}
        config = {k: v for k, v in config.items() if k not in unset}
    keyed = {"measure": measure, "config": config}
    plugins = code_digests(measure, config)
    if plugins:  # absent for gradlab's own measures and tasks: their keys stay what they were
        keyed["plugins"] = plugins
    text = json.dumps(keyed, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _plugin_params() -> frozenset:
    from .tasks import plugin_params

    return frozenset(plugin_params())


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to `threads` for the block and restored after: a point run inline must not leave
    the calling process (a notebook, a test session, the benchmarks after it) on another thread count."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def execute_point(measure_name: str, config: dict, threads: int | None = None, progress: bool = False) -> PointOutcome:
    """Run one point (in this process or a worker) on `threads` torch threads. Its failure is returned, never raised."""
    with torch_threads(threads):
        return _execute_point(measure_name, config, progress)


def _execute_point(measure_name: str, config: dict, progress: bool) -> PointOutcome:
    import torch

    module = measures.load(measure_name)
    cfg = module.Config(**config)
    seed_everything(int(config.get("seed", 0)))
    start = time.perf_counter()
    key = point_key(measure_name, config)
    env = {"code": code_identity(), "torch_threads": torch.get_num_threads(), "pid": os.getpid(), "worker": worker_address()}
    try:
        tables = module.run(cfg, progress=progress)
        return PointOutcome(key, config, tables, None, time.perf_counter() - start, env)
    except Exception as exc:  # a failing point is a result: record it, go on with the study
        error = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=-3))
        return PointOutcome(key, config, None, error, time.perf_counter() - start, env)


def execute_group(measure_name: str, configs: list[dict], threads: int | None = None, progress: bool = False,
                  solo_because: str | None = None) -> list[PointOutcome]:
    """Run points as one ensemble (or one point solo, saying why): an outcome per point, failures returned, never raised."""
    with torch_threads(threads):
        return _execute_group(measure_name, configs, progress, solo_because)


def _execute_group(measure_name: str, configs: list[dict], progress: bool, solo_because: str | None) -> list[PointOutcome]:
    import torch

    if len(configs) == 1:
        outcome = execute_point(measure_name, configs[0], None, progress)  # on the threads set above
        outcome.env["ensemble"] = {"size": 1, "solo": solo_because}
        return [outcome]
    module = measures.load(measure_name)
    cfgs = [module.Config(**c) for c in configs]
    keys = [point_key(measure_name, c) for c in configs]
    start = time.perf_counter()
    env = {"code": code_identity(), "torch_threads": torch.get_num_threads(), "pid": os.getpid(), "worker": worker_address()}
    group = {"size": len(configs), "group": keys[0], "members": keys}  # named by its first point's key
    try:
        tables = module.run_ensemble(cfgs, progress=progress)
        seconds = time.perf_counter() - start
        return [PointOutcome(k, c, t, None, seconds, env | {"ensemble": group | {"index": i}})
                for i, (k, c, t) in enumerate(zip(keys, configs, tables))]
    except Exception as exc:  # a failing ensemble fails each of its points: recorded, and rerun whole next time
        error = f"{type(exc).__name__} (in an ensemble of {len(configs)}): {exc}\n" + "".join(traceback.format_exc(limit=-3))
        seconds = time.perf_counter() - start
        return [PointOutcome(k, c, None, error, seconds, env | {"ensemble": group | {"index": i}})
                for i, (k, c) in enumerate(zip(keys, configs))]


@dataclass
class Plan:
    """A study made concrete and checked: its points in grid order, their cache keys, and what the
    study's exclusion rules dropped."""

    resolved: Resolved
    points: list
    keys: list[str]
    module: object
    dropped: list[Dropped]

    @property
    def study(self) -> Study:
        return self.resolved.study

    def describe_drops(self) -> list[str]:
        return [str(d) for d in self.dropped]

    @property
    def coords(self) -> list[dict]:
        """Each point's grid coordinates (and the ladder's axes, which the ladder groups points by)."""
        ladder = self.resolved.ladder
        names = list(dict.fromkeys([*self.resolved.axes, *((ladder.axis, ladder.over) if ladder else ())]))
        return [{a: getattr(pt, a) for a in names} for pt in self.points]


class ExecutorLost(RuntimeError):
    """The executor itself is gone (a Dask client that lost its scheduler): every finished point is saved."""

    def __init__(self, out: Path, saved: int, total: int, cause: BaseException):
        super().__init__(f"lost the executor ({type(cause).__name__}: {cause}): {saved} of {total} points saved in {out}; "
                         "rerun the same command, on any executor, to resume")


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a kill) during a run: every point that finished is saved; rerunning resumes."""

    def __init__(self, out: Path, saved: int, total: int):
        super().__init__(f"interrupted: {saved} of {total} points saved in {out}; rerun the same command to resume")
        self.out, self.saved, self.total = out, saved, total


def plan(study_ref: str | Path, profile: str | None, overrides: list[str], device: str | None) -> Plan:
    """Load, resolve and expand a study, and check every point before any work."""
    study = load_study(study_ref)
    module = measures.load(study.measure)
    resolved = resolve(study, module.Config, profile, overrides)
    has_device = "device" in {f.name for f in dataclasses.fields(module.Config)}
    if has_device and (device is not None or "device" not in resolved.values):
        import torch  # no device named anywhere: auto

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        resolved = resolve(study, module.Config, profile, [*overrides, f"device={device}"])
    points, dropped = expand(resolved, module.Config)
    if not points:
        raise StudyError(f"study {study.name!r} ({resolved.profile}) has no points left after its exclusions: "
                         + "; ".join(map(str, dropped)) + ". Change the --set values.")
    if any(str(getattr(cfg, "device", "cpu")).startswith("cuda") for cfg in points):
        import torch

        if not torch.cuda.is_available():
            raise StudyError(
                f"study {study.name!r} ({resolved.profile}) asks for device 'cuda', but torch sees no CUDA device "
                "here. Use --device cpu, or run it on a machine with a GPU."
            )
    problems: dict[str, list] = {}  # message -> the points it concerns
    for cfg in points:
        try:
            if hasattr(cfg, "seed"):  # every measure's seed and device, checked here once
                check_seed(cfg.seed)
            if hasattr(cfg, "device"):
                check_device(cfg.device)
            cfg.validate()
        except ValueError as exc:
            problems.setdefault(str(exc), []).append({a: getattr(cfg, a) for a in resolved.axes})
    if problems:
        lines = [f"  {msg} (e.g. {cfgs[0]}; {len(cfgs)} points)" for msg, cfgs in problems.items()]
        n_bad = sum(len(c) for c in problems.values())
        raise StudyError(
            f"{n_bad} of {len(points)} points of study {study.name!r} cannot run:\n" + "\n".join(lines)
            + "\nChange the --set values, or add an 'exclude' rule to the study file."
        )
    if resolved.ladder is not None and not hasattr(module, "succeeded"):
        raise StudyError(f"study {study.name!r} has a ladder, but measure {study.measure!r} says of no point whether it succeeded: "
                         "a ladder needs a measure with succeeded() (train). Remove the [ladder] table.")
    if hasattr(module, "preflight"):
        module.preflight(points)
    keys = [point_key(study.measure, dataclasses.asdict(p)) for p in points]
    return Plan(resolved, points, keys, module, dropped)


def _preflight(measure_name: str, configs: list[dict]) -> None:
    """The measure's preflight where this runs (a worker): its inputs are there, or an error says which."""
    module = measures.load(measure_name)
    module.preflight([module.Config(**c) for c in configs])


def _workers_of(executor) -> list[str] | None:
    try:
        return executor.workers() if hasattr(executor, "workers") else None
    except Exception:  # noqa: BLE001 - a lost scheduler: the manifest says none
        return None


def point_states(p: Plan, out: Path | None) -> list[str]:
    """Each point's state in `out` ('done', 'stale', 'corrupt' or 'todo'), for this code."""
    store = PointStore(Path(out) if out is not None else default_out(p), code_identity())
    return [store.state(k) for k in p.keys]


RUNS_DIR = Path("runs")  # where a run lands without --out (git ignores it); reference runs live in reports/


def default_out(p: Plan) -> Path:
    return RUNS_DIR / f"{p.study.name}-{p.resolved.profile}"


def previous_run(out: Path, p: Plan) -> str | None:
    """What reusing `out` for this plan replaces, in a sentence; None when it held this very grid (or nothing)."""
    out = Path(out)
    try:
        before = read_plan(out)
        if before is None and (out / "manifest.json").exists():  # a folder whose plan is gone (git keeps only the manifest)
            m = read_json(out / "manifest.json")
            before = {"study": m.get("study"), "profile": m.get("profile"), "argv": m.get("argv"), "keys": [pt.get("key") for pt in m.get("points", [])]}
    except FolderError:
        return f"{out} held a run whose plan or manifest is damaged; its tables are replaced by this grid's {len(p.keys)} points."
    if before is None or before.get("keys") == p.keys:
        return None
    shared = len(set(before.get("keys", [])) & set(p.keys))
    return (f"{out} held a run of study {before.get('study')!r} ({before.get('profile')}, {len(before.get('keys', []))} points, "
            f"{' '.join(before.get('argv') or [])!r}); its tables are replaced by this grid's {len(p.keys)} points, "
            f"{shared} of which it had computed (they are reused if made by this code).")


def _tracked_by_git(path: Path) -> bool:
    try:
        done = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", path.name],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def check_out(out: Path, reference: bool = False, share: bool = False) -> bool:
    """`out` can hold a run: a folder (or none yet) that is writable, not below a file, not a committed reference
    run unless `reference` (scripts/reference_runs.sh remakes those), without links among gradlab's own names
    (never followed), and, unless `share`, holding nothing but a gradlab run (a folder of someone else's files is
    refused: gradlab writes beside them only when asked, and never touches them). A FolderError says why not.
    Returns whether the folder was made here (a run that then fails to start removes it again)."""
    out = Path(out)
    if str(out).strip() in ("", "."):  # the current directory is nobody's run folder (Path('') is '.')
        raise FolderError("--out must name a folder for the run (e.g. runs/mine); the current directory is not one.")
    _check_name_lengths(out)
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise FolderError(f"--out {out}: {parent} is a file, not a folder. Name a folder (it is made if missing).")
        if parent.exists():
            break
    if (out / "manifest.json").exists() and not reference and _tracked_by_git(out / "manifest.json"):
        raise FolderError(f"--out {out} holds a committed reference run (git tracks its manifest.json), and a plain run never "
                          f"writes over one. Use another --out (runs land in {RUNS_DIR}/ by default), or pass --reference "
                          "to remake it as scripts/reference_runs.sh does.")
    existed = out.exists()
    if existed:
        check_links(out)
        theirs = not_gradlabs(out)  # a .next or .lock of someone else's: gradlab needs those names, with or without --share-folder
        if theirs:
            raise FolderError(f"--out {out} holds {' and '.join(theirs)}, which {'is' if len(theirs) == 1 else 'are'} not gradlab's (no mark of "
                              "gradlab's inside): gradlab stages a run's next state in .next and locks the folder with .lock, and never "
                              f"changes or removes what it did not make. Move {'it' if len(theirs) == 1 else 'them'} away, or use another --out.")
        others = [] if holds_run(out) else foreign(out)
        if others and not share:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise FolderError(f"--out {out} is not empty and holds no gradlab run ({shown}): gradlab writes a run into a new or empty "
                              "folder, or one a gradlab run made. Use another --out, or pass --share-folder to put the run beside "
                              "these files (gradlab never changes or removes them).")
        clash = [n for n in others if n == "plan.json" or state_name(n)]  # names a run's state may take: checked before any work
        if clash:
            shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
            raise FolderError(f"--out {out} holds {shown} of its own, with {'a name' if len(clash) == 1 else 'names'} a run's state may take "
                              "(manifest.json, report.html, plan.json, NAME.parquet, figures/NAME.png|svg): gradlab replaces only what a "
                              f"gradlab run wrote, and a run beside a user's files (--share-folder) goes beside files of other names. Move "
                              f"{'it' if len(clash) == 1 else 'them'} away, or use another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise FolderError(f"--out {out} cannot be written: {exc.strerror or exc}. Choose a folder you can write to.") from None
    return not existed


def _check_name_lengths(out: Path) -> None:
    """Every part of --out within what a file system allows, and room below it for the run's own names."""
    for part in Path(out).parts:
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise FolderError(f"--out {str(out)[:60]}...: the name {part[:40]}... is {len(part.encode('utf-8', 'surrogateescape'))} bytes long, "
                              f"and file systems allow at most {NAME_MAX}. Choose a shorter name.")
    try:
        limit = os.pathconf(next((p for p in [Path(out), *Path(out).parents] if p.exists()), Path(".")), "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return
    if len(os.fsencode(os.path.abspath(out))) + 64 > limit:  # a point's table: points/KEY.NAME.parquet and its temporary
        raise FolderError(f"--out {str(out)[:60]}... is {len(os.fsencode(os.path.abspath(out)))} bytes long as a full path, and this file "
                          f"system allows {limit} for a path with the run's own files below it. Choose a shorter --out.")


def plan_record(p: Plan, argv: list[str], code: dict, base: dict) -> dict:
    """plan.json: what a run is, written when it starts, so that the folder's tables can be rebuilt from
    its saved points whenever the run stops (`gradlab report` after a kill)."""
    columns = [f.name for f in dataclasses.fields(p.module.Config)]  # every setting: tables of any two runs stack
    return {"id": uuid.uuid4().hex, "study": p.study.name, "profile": p.resolved.profile, "measure": p.study.measure,
            "argv": argv, "keys": p.keys, "columns": columns, "code": code, "manifest": base | {"columns": columns},
            "ladder": p.resolved.ladder.record() if p.resolved.ladder else None, "coords": p.coords if p.resolved.ladder else None}


def run_study(
    study_ref: str | Path,
    profile: str | None = None,
    overrides: list[str] = (),
    out: Path | None = None,
    device: str | None = None,
    workers: int = 1,
    executor: cf.Executor | str | None = None,
    progress: bool = True,
    argv: list[str] | None = None,
    render: Callable[[Path, Path], Path] | None = None,  # draws a staged folder's page (report.draw)
    echo: Callable[[str], None] | None = None,
    planned: Plan | None = None,
    scheduler: str | None = None,
    reference: bool = False,
    ensemble: str | int | Mode | None = None,
    share: bool = False,
) -> RunSummary:
    """Run every point not already finished in `out`, then write the tables, manifest and report.
    `echo` hears what the run is about to do (profile, points, exclusions, a reused folder). `ensemble`:
    auto (default), off or N, how training points are grouped into batched ensembles (gradlab.grouping).
    `share`: `out` may hold files of someone else's (gradlab writes beside them, never over them). Nothing in
    `out` changes until the run has started (the executor made, every worker checked)."""
    mode = ensemble if isinstance(ensemble, Mode) else parse_mode(ensemble)
    p = planned or plan(study_ref, profile, list(overrides), device)
    argv = argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]  # the program's name, not its path
    out = Path(out) if out is not None else default_out(p)
    if not isinstance(executor, cf.Executor):
        check_choice(executor, scheduler)
    made = check_out(out, reference, share)
    try:
        with FolderLock(out, " ".join(argv), echo):
            note = recover(out)
            if note and echo:
                echo(f"  note: {note}")
            return _run_locked(p, profile, overrides, out, workers, executor, progress, argv, render, echo, scheduler, mode)
    finally:
        if made and out.is_dir() and not any(out.iterdir()):  # a folder made for a run that did not start
            out.rmdir()


def _run_locked(p: Plan, profile, overrides, out: Path, workers, executor, progress, argv, render, echo, scheduler, mode: Mode) -> RunSummary:
    resolved, points, module, keys, study = p.resolved, p.points, p.module, p.keys, p.study
    code = code_identity()
    store = PointStore(out, code)
    configs = [dataclasses.asdict(pt) for pt in points]
    states = [store.state(k) for k in keys]
    todo = [(k, c) for k, c, st in zip(keys, configs, states) if st != "done"]
    stale, corrupt = states.count("stale"), states.count("corrupt")
    cached = len(points) - len(todo)
    if echo:
        how = "asked for" if profile is not None else ("the study's default" if study.default_profile else "no profile: the study's own grid")
        echo(f"study {study.name!r}, profile {resolved.profile!r} ({how}): {len(points)} points, {cached} cached, {len(todo)} to compute"
             + (f" ({stale} made before by other code)" if stale else ""))
        if corrupt:
            bad = [k for k, st in zip(keys, states) if st == "corrupt"]
            echo(f"  note: {corrupt} saved point{'s' * (corrupt != 1)} failed {'their' if corrupt != 1 else 'its'} checksum (truncated or "
                 f"changed on disk) and {'are' if corrupt != 1 else 'is'} recomputed: {', '.join(bad[:5])}{' ...' if corrupt > 5 else ''}")
        for line in p.describe_drops():
            echo(f"  excluded: {line}")
        if resolved.ladder is not None:
            echo(f"  ladder: {resolved.ladder}")
        replaced = previous_run(out, p)
        if replaced:
            echo(f"  note: {replaced}")
        if holds_run(out) and not (out / "manifest.json").exists() and any(Path(out).glob("*.parquet")):
            echo(f"  note: {out} holds no manifest.json (deleted, or its run stopped before writing one): the tables gradlab wrote "
                 "there, known by its mark or their content, are replaced by this run's; any other file stays")
        said = ensemble_summary([pt for pt, st in zip(points, states) if st != "done"], module, mode) if todo else None
        if said:
            echo(f"  {said}")
        busy = machine_busy()
        if busy and todo:
            echo(f"  note: {busy}: every time this run measures (timings, seconds per epoch, wall time) will be off")
    started = datetime.now(timezone.utc).isoformat()
    own_executor = not isinstance(executor, cf.Executor)  # a name (or None): this run makes and closes it
    executor_name = (executor or default_executor(workers, scheduler)) if own_executor else type(executor).__name__
    base = {
        "study": study.name, "description": study.description, "source": study.source, "measure": study.measure,
        "profile_description": study.profiles.get(resolved.profile, {}).get("description", ""),
        "profile": resolved.profile, "argv": argv, "overrides": list(overrides),
        "resolved": {k: v for k, v in resolved.values.items()}, "axes": resolved.axes,
        "exclude": [str(r) for r in resolved.exclude], "dropped": p.describe_drops(),
        "seeds": resolved.values.get("seed", []), "workers": workers, "executor": executor_name, "started": started, "ensemble": str(mode),
        "points_cached": cached, "points_computed": len(todo), "points_stale": stale, "points_corrupt": corrupt, "code": code,
    }
    record = plan_record(p, argv, code, base)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    executor = make_executor(executor_name, workers, scheduler) if own_executor else executor  # before the folder changes at all
    if hasattr(executor, "check_everywhere") and hasattr(module, "preflight"):  # inputs the points need, on every worker
        missing = executor.check_everywhere(_preflight, study.measure, [c for _, c in todo])
        if missing:
            if own_executor:
                executor.shutdown()
            raise StudyError("some workers lack what the points need:\n" + "\n".join(f"  {w}: {e}" for w, e in sorted(missing.items())))
    try:  # the run has started: from here the folder is this run's (a failed start above left it as it was)
        write_json_atomic(record, Path(out) / PLAN_FILE)
    except BaseException:
        if own_executor:
            executor.shutdown()
        raise
    in_flight_max = 1 if isinstance(executor, InlineExecutor) else max(2, 2 * workers)
    bar = tqdm(total=len(points), initial=cached, desc=study.name, unit="point", disable=not progress)
    failed_now = 0
    in_flight: dict[cf.Future, list[tuple[str, dict]]] = {}  # a group of points (one, or an ensemble) per future
    cluster_workers = None

    def save(outcome: PointOutcome) -> None:
        try:
            store.write(outcome)
        except OSError as exc:  # a full disk or a folder gone read-only: what was saved before stays
            raise FolderError(f"could not save a point in {out}: {exc.strerror or exc}. The points saved before are kept: "
                              "free space (or fix the folder's permissions) and rerun the same command to resume.", exit_code=1) from None

    def save_finished() -> None:  # the points that finished while the run was being stopped
        for future in in_flight:
            if future.done() and not future.cancelled() and future.exception() is None:
                for outcome in future.result():
                    save(outcome)

    ladder, coords = resolved.ladder, p.coords
    success: dict[int, bool] = {}  # point index -> succeeded, for the ladder (points saved before, and this run's)
    if ladder is not None:
        for i, (k, st) in enumerate(zip(keys, states)):
            if st == "done":
                success[i] = bool(succeeded_in(store, k, module))
    index_of = {k: i for i, k in enumerate(keys)}
    pending = [index_of[k] for k, _ in todo]  # in grid order
    skipped_now = 0

    def next_items() -> list[tuple[str, dict]]:
        """The pending points the ladder lets run now, in grid order (its skips leave the queue)."""
        nonlocal pending, skipped_now
        verdicts = decide(coords, success.get, ladder)
        skips = [i for i in pending if verdicts[i][0] == SKIP]
        if skips:
            skipped_now += len(skips)
            bar.update(len(skips))
            bar.set_postfix(skipped=skipped_now, **({"failed": failed_now} if failed_now else {}))
        pending = [i for i in pending if verdicts[i][0] != SKIP]
        busy = {index_of[k] for group in in_flight.values() for k, _ in group}
        return [todo_of[i] for i in pending if verdicts[i][0] == RUN and i not in busy]

    todo_of = {index_of[k]: (k, c) for k, c in todo}
    counts = shape_counts([points[i] for i in todo_of], module) if mode.auto and hasattr(module, "run_ensemble") else None
    interrupted = False
    try:
        while True:
            ready = next_items()
            grouped = groups(ready, [points[index_of[k]] for k, _ in ready], module, mode, workers, counts) if ready else []
            for group, solo_because in grouped[: in_flight_max - len(in_flight)]:
                # a bar inside a point too, where the point runs in this process (worker processes stay quiet)
                future = executor.submit(execute_group, study.measure, [c for _, c in group], threads, progress and in_flight_max == 1, solo_because)
                in_flight[future] = group
            if not in_flight:
                if pending:  # points that wait on nothing that runs: a defect of the ladder, never a silent stop
                    raise RuntimeError(f"{len(pending)} points wait on the ladder with nothing running")
                break
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for future in done:
                group = in_flight.pop(future)
                try:
                    outcomes: list[PointOutcome] = future.result()
                except Exception as exc:  # the worker itself died (out of memory, a crash): failed points
                    if getattr(executor, "lost", lambda: False)():  # ... unless the whole executor is gone
                        raise ExecutorLost(out, sum(store.state(k) == "done" for k in keys), len(keys), exc) from exc
                    outcomes = [PointOutcome(key, config, None, f"{type(exc).__name__}: {exc} (the process running this point died)", 0.0)
                                for key, config in group]
                    if isinstance(exc, cf.BrokenExecutor) and own_executor:  # a broken pool takes no more work
                        executor.shutdown(wait=False, cancel_futures=True)
                        executor = make_executor(executor_name, workers)
                for outcome in outcomes:
                    save(outcome)
                    pending.remove(index_of[outcome.key])
                    if ladder is not None:
                        success[index_of[outcome.key]] = bool(succeeded_in(store, outcome.key, module))  # as saved: the same test assemble applies
                    failed_now += outcome.error is not None
                    bar.update(1)
                if failed_now or skipped_now:
                    bar.set_postfix(**({"skipped": skipped_now} if skipped_now else {}), **({"failed": failed_now} if failed_now else {}))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep every point that did finish, write the tables of those, stop
        interrupted = True
    except BaseException:
        save_finished()
        raise
    finally:
        bar.close()
        cluster_workers = _workers_of(executor)
        if own_executor:
            executor.shutdown(wait=not interrupted, cancel_futures=True)
    extra = {"ended": datetime.now(timezone.utc).isoformat(), "scheduler": getattr(executor, "address", None), "cluster_workers": cluster_workers}
    if interrupted:
        save_finished()
        try:  # the saved points' tables, so that the folder shows what it holds (a second Ctrl-C: the journal keeps it whole)
            assemble(out, record, module, extra)
        except KeyboardInterrupt:
            pass
        raise StudyInterrupted(out, sum(store.state(k) == "done" for k in keys), len(keys))
    try:
        manifest = assemble(out, record, module, extra, render)
    except KeyboardInterrupt:  # while the tables were written: the folder keeps its last whole state
        raise StudyInterrupted(out, sum(store.state(k) == "done" for k in keys), len(keys)) from None
    except OSError as exc:
        raise FolderError(f"could not write the tables of {out}: {exc.strerror or exc}. Every point is saved and the folder "
                          "keeps its previous state: free space and rerun the same command (it recomputes nothing).", exit_code=1) from None
    report = Path(out) / "report.html" if render is not None else None
    return RunSummary(out, len(points), cached, len(todo) - manifest["points_skipped"], manifest["failed_points"], manifest["row_count"],
                      report, stale, corrupt, manifest["points_skipped"])


def machine_busy() -> str | None:
    """A sentence when the machine's load exceeds its cores (other work is running), else None."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):
        return None
    return f"the machine is busy (load {load:.1f} on {cores} cores)" if load > cores else None


def report_folder(out: Path, echo: Callable[[str], None] | None = None, again: bool = False) -> tuple[Path, str | None]:
    """`gradlab report`: under the folder's lock, finish or drop a half-done write, rebuild the tables from
    the saved points when the last run stopped before writing them (or, `again`, after the points that kept their
    model were analysed anew from it), then draw the page anew. Returns the page and, for an unfinished run, a
    sentence saying so."""
    from .report import draw, render, unfinished_note

    out = Path(out)
    check_links(out)
    if not holds_run(out):
        raise FolderError(f"{out} holds no gradlab run (no manifest.json or plan.json a gradlab run wrote): there is nothing to "
                          "report, and gradlab changes nothing in it. Make a run with `gradlab run STUDY --out FOLDER`.")
    try:
        with FolderLock(out, f"gradlab report {out}", echo):
            note = recover(out)
            if note and echo:
                echo(f"note: {note}")
            behind, kept = lags_behind(out)
            if kept and echo:
                echo(f"note: {kept}")
            if again:  # the analyses made again from the points' kept weights: the tables are rebuilt from the points
                from .assemble import reanalyse

                count = reanalyse(out, echo)
                if echo:
                    echo(f"note: {count} points of {out} reanalysed from their kept weights")
                behind = behind or read_plan(out)
            if behind is not None:
                if echo and again:
                    echo(f"note: writing {out}'s tables from its saved points, reanalysed")
                elif echo and not (out / "manifest.json").exists():
                    echo(f"note: {out} holds no manifest.json (deleted, or the run stopped before writing its tables): writing its "
                         f"tables from the saved points of its last run ({' '.join(behind.get('argv') or [])})")
                elif echo:
                    echo(f"note: {out}'s last run ({' '.join(behind.get('argv') or [])}) stopped before writing its tables: "
                         "writing them from its saved points")
                manifest = collect(out, draw)
            else:
                if not (out / "manifest.json").exists():  # nothing saved to rebuild it from: say what would
                    plan = read_plan(out) or {}
                    raise FolderError(f"{out} holds no manifest.json, and no saved point of its last run to write one from (points/ is "
                                      "empty or gone): `gradlab report` cannot describe its tables again. Rerun the command that made it"
                                      + (f" ({' '.join(plan.get('argv') or [])})" if plan.get("argv") else "") + "; it recomputes the points "
                                      "and replaces the tables gradlab wrote there (known by its mark).")
                render(out, echo)
                manifest = read_json(out / "manifest.json")
    except FileNotFoundError:
        raise
    except OSError as exc:  # a read-only folder, a full disk: the journal keeps the folder whole
        raise FolderError(f"could not write the page of {out}: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "") + ". The folder keeps its previous state; free space "
                          "(or make the folder writable) and run `gradlab report` again.", exit_code=1) from None
    return out / "report.html", unfinished_note(manifest)
