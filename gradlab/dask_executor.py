"""Points on a Dask cluster (the optional extra gradlab[dask]): an existing scheduler, or a local cluster
of worker processes. The client writes the run folder from what the workers return, so workers need no
shared file system: each point ships its config (a dict) out and its rows (lists of dicts) back."""

from __future__ import annotations

import concurrent.futures as cf


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ValueError("the dask executor needs Dask's distributed scheduler: pip install 'gradlab[dask]' "
                         "(or pip install distributed).") from None
    return distributed


class DaskExecutor(cf.Executor):
    """A concurrent.futures executor over a Dask client. Points that ask for device 'cuda' go only to
    workers that declare a GPU resource (dask worker ADDRESS --resources GPU=1, one worker per GPU)."""

    def __init__(self, workers: int = 2, scheduler: str | None = None):
        distributed = _distributed()
        self.cluster = None
        if scheduler:
            self.client = distributed.Client(scheduler, timeout="10s")  # also how long it tries to reconnect to a lost one
        else:  # a local cluster: one single-threaded worker process per point in flight
            self.cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            self.client = distributed.Client(self.cluster)
        self.address = self.client.scheduler.address
        self._cpu = self.client.get_executor()
        self._gpu = self.client.get_executor(resources={"GPU": 1})

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        config = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        target = self._gpu if str(config.get("device", "cpu")).startswith("cuda") else self._cpu
        return target.submit(fn, *args, **kwargs)

    def lost(self) -> bool:
        """The client has lost its scheduler (reconnecting, or given up): its futures are cancelled, not failed."""
        return self.client.status != "running"

    def workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def check_everywhere(self, fn, *args) -> dict[str, str]:
        """fn(*args) on every worker; the workers where it raised, with the error."""
        results = self.client.run(fn, *args, on_error="return")
        return {w: f"{type(r).__name__}: {r}" for w, r in results.items() if isinstance(r, BaseException)}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def worker_address() -> str | None:
    """The Dask worker running this code, if any (recorded with each point)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None
