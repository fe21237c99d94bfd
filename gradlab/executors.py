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


def default_executor(workers: int, scheduler: str | None = None) -> str:
    if scheduler:
        return "dask"
    return "inline" if workers <= 1 else "processes"


def make_executor(name: str, workers: int, scheduler: str | None = None) -> cf.Executor:
    lookup(EXECUTORS, name, "executor")
    if name == "inline":
        return InlineExecutor()
    if name == "dask":
        from .dask_executor import DaskExecutor

        return DaskExecutor(workers, scheduler)
    # spawn: a clean interpreter per worker (fork and torch's thread pools do not mix)
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
