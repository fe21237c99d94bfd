"""Points on a Dask cluster (the optional extra gradlab[dask]): an existing scheduler, or a local cluster
of worker processes. The client writes the run folder from what the workers return, so workers need no
shared file system: each point ships its config (a dict) out and its rows (lists of dicts) back."""

from __future__ import annotations

import concurrent.futures as cf
import re

from .executors import ExecutorError


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ValueError("the dask executor needs Dask's distributed scheduler: pip install 'gradlab[dask]' "
                         "(or pip install distributed).") from None
    return distributed


_ADDRESS = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")


def check_address(address: str) -> str:
    """A scheduler address gradlab can reach: tcp://HOST:PORT (or HOST:PORT); anything else is an
    ExecutorError saying what is wrong with it."""
    found = _ADDRESS.fullmatch(address.strip())
    if not found or not 0 < int(found["port"]) < 65536:
        raise ExecutorError(f"--scheduler {address!r} is not a scheduler address: give tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786 "
                            "(what `dask scheduler` prints as 'Scheduler at').")
    scheme = found["scheme"] or "tcp"
    if scheme == "tls":
        raise ExecutorError(f"--scheduler {address}: a tls:// scheduler needs the client's certificates (a distributed Security "
                            "object), which gradlab does not take; reach the scheduler over tcp:// (through an SSH tunnel, say).")
    if scheme != "tcp":
        raise ExecutorError(f"--scheduler {address}: gradlab reaches a Dask scheduler over tcp:// only, not {scheme}://.")
    return address.strip()


class DaskExecutor(cf.Executor):
    """A concurrent.futures executor over a Dask client. Points that ask for device 'cuda' go only to
    workers that declare a GPU resource (dask worker ADDRESS --resources GPU=1, one worker per GPU)."""

    def __init__(self, workers: int = 2, scheduler: str | None = None):
        distributed = _distributed()
        self.cluster = None
        if scheduler:
            address = check_address(scheduler)
            try:
                self.client = distributed.Client(address, timeout="10s")  # also how long it tries to reconnect to a lost one
            except (OSError, TimeoutError) as exc:
                raise ExecutorError(f"could not reach the Dask scheduler at {address} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'}): "
                                    "is `dask scheduler` running there, and is its port open to this machine?") from None
        else:  # a local cluster: one single-threaded worker process per point in flight
            self.cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            self.client = distributed.Client(self.cluster)
        self.address = self.client.scheduler.address
        self._cpu = self.client.get_executor()
        self._gpu = self.client.get_executor(resources={"GPU": 1})

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """fn(measure, configs, ...) on a worker: a GPU worker when any of the configs (a list of them, an
        ensemble's or one point's, or one config) asks for device cuda."""
        configs = args[1] if len(args) > 1 else []
        configs = [configs] if isinstance(configs, dict) else configs if isinstance(configs, (list, tuple)) else []
        cuda = any(str(c.get("device", "cpu")).startswith("cuda") for c in configs if isinstance(c, dict))
        return (self._gpu if cuda else self._cpu).submit(fn, *args, **kwargs)

    def lost(self) -> bool:
        """The client has lost its scheduler (reconnecting, or given up): its futures are cancelled, not failed."""
        return self.client.status != "running"

    def workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def check_everywhere(self, fn, *args) -> dict[str, str]:
        """fn(*args) on every worker; the workers where it raised, with the error. A worker that died or
        left meanwhile is no answer (its points go to the others, or to its replacement, which the
        scheduler checks nothing on: the point itself then fails with the error, recorded)."""
        try:
            results = self.client.run(fn, *args, on_error="return")
        except Exception:  # noqa: BLE001 - the call itself failed (a worker lost mid-call): ask each worker alone
            results = {}
            for worker in self.workers():
                try:
                    results |= self.client.run(fn, *args, workers=[worker], on_error="return")
                except Exception:  # noqa: BLE001 - that worker is gone
                    continue
        alive = set(self.workers())
        return {w: f"{type(r).__name__}: {r}" for w, r in results.items() if isinstance(r, BaseException) and w in alive and not _lost(r)}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _lost(error: BaseException) -> bool:
    """Whether an error from client.run says the worker went away (rather than what ran there failing)."""
    from distributed.comm.core import CommClosedError

    return isinstance(error, (CommClosedError, ConnectionError)) or type(error).__name__ in ("KilledWorker", "CancelledError")


def worker_address() -> str | None:
    """The Dask worker running this code, if any (recorded with each point)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None
