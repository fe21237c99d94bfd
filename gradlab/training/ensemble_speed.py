"""Model-steps per second of an ensemble against the same models stepped one at a time (training.loop's
step), timed interleaved in one process at one shape; where the ensemble step's time goes, optionally."""

from __future__ import annotations

from ..memory import keep_freed_memory
from ..timeshare import time_shares
from ..timing import interleaved_medians
from .config import with_task_params, TrainConfig
from .ensemble import ensemble_step
from .loop import Run, train_step

ADDING_SHAPE = {"task": "adding", "seq_len": 100, "batch_size": 50, "hidden_size": 128}  # the long-range studies' own


def ensemble_speed(cell: str, size: int, rounds: int = 3, shares: bool = False, device: str = "cpu", fused: bool = False,
                   **settings) -> dict:
    """One row: an ensemble of `size` runs (seeds 0 .. size-1, the long-range studies' optimiser and clipping)
    against the same `size` runs stepped one after another (and, with `fused`, one torch.nn run, cuDNN on a
    GPU); medians over `rounds` interleaved rounds after one warm-up."""
    if device == "cpu":
        keep_freed_memory()  # as train_ensemble does (and the solo steps gain from it alike)
    Config = with_task_params(TrainConfig)
    base = ADDING_SHAPE | {"cell": cell, "device": device, "steps": 10**9, "eval_every": 10**9, "eval_size": 1} | settings
    ens_runs, solo_runs = ([Run(Config(seed=s, **base)) for s in range(size)] for _ in range(2))
    spec = ens_runs[0].task.spec

    def ensemble() -> None:
        ensemble_step(ens_runs, spec, [run.next_batch() for run in ens_runs])

    def solo() -> None:
        for run in solo_runs:
            train_step(run.model, spec, run.next_batch(), None, run.opt, run.clipper, run.params, measure_update=True)

    calls = {"ensemble": ensemble, "solo": solo}
    if fused:
        fused_run = Run(Config(seed=0, **(base | {"impl": "cudnn"})))

        def fused_step() -> None:
            train_step(fused_run.model, spec, fused_run.next_batch(), None, fused_run.opt, fused_run.clipper, fused_run.params,
                       measure_update=True)

        calls["fused"] = fused_step
    medians = interleaved_medians(calls, ens_runs[0].device, repeats=rounds, warmup=1)
    ens, one = medians["ensemble"], medians["solo"]
    row = {"cell": cell, "ensemble_size": size, **{k: base[k] for k in ADDING_SHAPE}, "device": device, "rounds": rounds,
           "ensemble_model_steps_per_s": size / ens, "solo_model_steps_per_s": size / one, "speedup": one / ens}
    if fused:
        row["fused_model_steps_per_s"] = 1 / medians["fused"]  # one torch.nn run stepped alone
    if shares:
        row |= {f"share_{k.replace(' ', '_').replace('-', '_')}": v for k, v in time_shares(ensemble, repeats=1, warmup=0).items()}
    return row
