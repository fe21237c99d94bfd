"""Where a study's points run: inline in this process, or in worker processes (names.EXECUTORS)."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

from .names import EXECUTORS, lookup


class InlineExecutor(cf.Executor):
    """Runs each submitted call at once in this process: the executor for --workers 1."""

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


class ExecutorError(ValueError):
    """Points cannot run where they were asked to (an executor that does not fit the options, a scheduler
    that cannot be reached): said in one line, before anything in the run folder changes."""

    exit_code = 2


def default_executor(workers: int, scheduler: str | None = None) -> str:
    if scheduler:
        return "dask"
    return "inline" if workers <= 1 else "processes"


def check_choice(name: str | None, scheduler: str | None) -> None:
    """--executor and --scheduler agree (a scheduler is Dask's), and the scheduler's address is well formed."""
    if name is not None:
        lookup(EXECUTORS, name, "executor")
    if scheduler is not None:
        if name not in (None, "dask"):
            raise ExecutorError(f"--scheduler {scheduler} is a Dask scheduler's address, but --executor {name} runs the points on this "
                                "machine: drop --executor (or say --executor dask) to use the scheduler, or drop --scheduler.")
        from .dask_executor import check_address

        check_address(scheduler)


def make_executor(name: str, workers: int, scheduler: str | None = None) -> cf.Executor:
    check_choice(name, scheduler)
    if name == "inline":
        return InlineExecutor()
    if name == "dask":
        from .dask_executor import DaskExecutor

        return DaskExecutor(workers, scheduler)
    # spawn: a clean interpreter per worker (fork and torch's thread pools do not mix)
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
