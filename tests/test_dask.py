"""Points on a Dask cluster: the same results as a serial run, resume across executors, a worker killed
mid-run, a scheduler lost mid-run, and inputs checked on every worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from gradlab.dask_executor import DaskExecutor  # noqa: E402
from gradlab.runner import ExecutorLost, run_study  # noqa: E402
from gradlab.study import StudyError  # noqa: E402

SLOW = """
name = "slow"
measure = "gradient_decay"
[grid]
cell = ["rnn", "lstm"]
init_scale = [0.8, 1.0, 1.2]
[settings]
probe = "jacobian"
seq_len = 150
hidden_size = 24
input_size = 4
batch_size = 2
jacobian_batch = 2
"""


@pytest.fixture
def slow(tmp_path):
    path = tmp_path / "slow.toml"
    path.write_text(SLOW)
    return path


def _rows(out) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet").sort_values(["point", "wrt", "t"]).reset_index(drop=True)


def test_same_numbers_as_serial_and_resume_across_executors(slow, tmp_path):
    serial = run_study(slow, out=tmp_path / "serial", device="cpu", progress=False)
    dask = run_study(slow, out=tmp_path / "dask", device="cpu", progress=False, executor="dask", workers=2)
    assert (serial.points, dask.computed, dask.failed) == (6, 6, [])
    pd.testing.assert_frame_equal(_rows(tmp_path / "serial"), _rows(tmp_path / "dask"))  # point for point
    import json

    manifest = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert manifest["executor"] == "dask" and manifest["scheduler"].startswith("tcp://") and len(manifest["cluster_workers"]) == 2
    assert {p["computed_by"]["worker"] for p in manifest["points"]} <= set(manifest["cluster_workers"])
    again = run_study(slow, out=tmp_path / "serial", device="cpu", progress=False, executor="dask", workers=2)
    assert (again.cached, again.computed) == (6, 0)  # the serial run's points, reused on Dask


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(slow, tmp_path):
    executor = DaskExecutor(workers=2)
    out = tmp_path / "run"
    pids = executor.client.run(os.getpid)

    def kill_one() -> None:  # once the first point is saved, a worker dies (its nanny starts another)
        while not list((out / "points").glob("*.json")) if (out / "points").exists() else True:
            time.sleep(0.05)
        os.kill(next(iter(pids.values())), signal.SIGKILL)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:
        summary = run_study(slow, out=out, device="cpu", progress=False, executor=executor)
    finally:
        executor.shutdown()
    killer.join(timeout=5)
    assert summary.failed == [] and summary.computed == 6  # the lost point was rescheduled, not lost
    rows = _rows(out)
    assert rows["point"].nunique() == 6 and len(rows) == 6 * 150 and not rows.duplicated(["point", "wrt", "t"]).any()
    pd.testing.assert_frame_equal(rows, _rows(_serial(slow, tmp_path)))


def _serial(slow, tmp_path):
    run_study(slow, out=tmp_path / "serial", device="cpu", progress=False)
    return tmp_path / "serial"


def test_a_lost_scheduler_ends_the_run_with_what_finished_saved(slow, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    env = os.environ | {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(scheduler_file),
                                  "--no-dashboard", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(200):
            if scheduler_file.exists():
                break
            time.sleep(0.1)
        import json

        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = tmp_path / "run"

        def kill_scheduler() -> None:
            while not (out / "points").exists() or not list((out / "points").glob("*.json")):
                time.sleep(0.05)
            scheduler.kill()

        threading.Thread(target=kill_scheduler, daemon=True).start()
        with pytest.raises(ExecutorLost, match=r"lost the executor .*: \d of 6 points saved .* rerun the same command, on any executor"):
            run_study(slow, out=out, device="cpu", progress=False, executor="dask", scheduler=address)
        saved = len(list((out / "points").glob("*.json")))
        assert 1 <= saved < 6  # only points that finished have markers: none was marked failed for the lost scheduler
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.kill()
    resumed = run_study(slow, out=out, device="cpu", progress=False)  # another executor picks up where it stopped
    assert resumed.cached == saved and resumed.computed == 6 - saved and resumed.failed == []


def test_inputs_are_checked_on_every_worker_before_any_work(tmp_path, corpus_zip):
    """A cluster whose workers cannot find the lyrics corpus: one error that names them, before any work."""
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache)}
    old = {k: os.environ.get(k) for k in ("GRADLAB_DATA", "XDG_CACHE_HOME")}
    os.environ.pop("GRADLAB_DATA")
    os.environ.update(env)
    try:
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        with pytest.raises(StudyError, match=r"some workers lack what the points need:\n  tcp://.*(corpus|could not download)"):
            run_study("lyrics", "quick", ["steps=2", "eval_every=1"], out=tmp_path / "run", device="cpu", progress=False,
                      executor="dask", scheduler=cluster.scheduler_address)
        assert not (tmp_path / "run" / "points").exists() or not list((tmp_path / "run" / "points").glob("*.json"))
    finally:
        cluster.close()


def test_points_that_ask_for_cuda_go_to_gpu_workers():
    executor = DaskExecutor(workers=1)
    try:
        chosen = []
        executor._cpu.submit = lambda *a, **k: chosen.append("cpu")
        executor._gpu.submit = lambda *a, **k: chosen.append("gpu")
        executor.submit(print, "measure", {"device": "cuda"}, None, False)
        executor.submit(print, "measure", {"device": "cpu"}, None, False)
        executor.submit(print, "measure", {"device": "cuda:1"}, None, False)
        assert chosen == ["gpu", "cpu", "gpu"]
        assert executor._gpu._kwargs == {"resources": {"GPU": 1}}  # only workers started with --resources GPU=1 take them
    finally:
        executor.shutdown()


def _where(measure, configs, *rest):
    from distributed import get_worker

    return get_worker().address


def test_an_ensembles_cuda_configs_reach_a_gpu_worker_on_a_real_cluster():
    """The runner hands a group's configs as a list: any that asks for cuda sends the group to a worker that
    declares a GPU (here a fake resource on a local cluster), others to any worker."""
    from distributed import Scheduler, SpecCluster, Worker

    cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                          workers={"cpu": {"cls": Worker, "options": {"nthreads": 1}},
                                   "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}})
    executor = DaskExecutor(scheduler=cluster.scheduler_address)
    try:
        gpu, cpu = cluster.workers["gpu"].address, cluster.workers["cpu"].address
        busy = executor._gpu.submit(time.sleep, 2)  # the GPU worker busy, the other idle: only a restriction keeps work off it
        cuda = [executor.submit(_where, "train", [{"device": "cpu"}, {"device": "cuda"}], None, False) for _ in range(3)]
        one = executor.submit(_where, "train", {"device": "cuda:0"}, None, False)  # one config, as a dict
        plain = executor.submit(_where, "train", [{"device": "cpu"}] * 2, None, False)
        assert plain.result(timeout=30) == cpu  # unrestricted: the idle worker takes it at once
        assert {f.result(timeout=30) for f in cuda} == {gpu} and one.result(timeout=30) == gpu
        busy.result(timeout=30)
    finally:
        executor.shutdown()
        cluster.close()


def test_a_worker_that_dies_during_the_pre_run_check_does_not_abort_the_run(slow, tmp_path):
    executor = DaskExecutor(workers=2)
    try:
        assert executor.check_everywhere(os._exit, 1) == {}  # every worker died while checking: no answer, not a failure
        summary = run_study(slow, out=tmp_path / "run", device="cpu", progress=False, executor=executor)  # their nannies start others
        assert summary.computed == 6 and summary.failed == []
        assert executor.check_everywhere(int, "not a number") and all("ValueError" in e for e in executor.check_everywhere(int, "x").values())
    finally:
        executor.shutdown()
