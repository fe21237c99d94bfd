"""A model trained on a task: learning curves and held-out loss against the task's memoryless baseline,
per-step telemetry, and the task's own tables (generated text for lyrics)."""

from __future__ import annotations

import pandas as pd

from ..training import TrainConfig, train, with_task_params

KEY_COLUMNS = ("task", "cell", "impl", "seq_len", "seed")  # in every table, axes or not

Config = with_task_params(TrainConfig)


def preflight(configs: list) -> None:
    """Checks that need a task's data (the lyrics corpus found, the prefixes in its vocabulary), made
    once per distinct task before any work: one clear error, not a failure per point."""
    seen = set()
    for cfg in configs:
        task = cfg.make_task()
        key = (repr(task), cfg.batch_size, cfg.seq_len)
        if key not in seen and hasattr(task, "ready"):
            task.ready(cfg.batch_size, cfg.seq_len)
        seen.add(key)


def run(cfg) -> dict[str, list[dict]]:
    result = train(cfg)
    return {"results": result.history, "steps": result.steps, "runs": [result.run], **result.tables}


def derive(tables: dict[str, pd.DataFrame], axes: list[str]) -> dict[str, pd.DataFrame]:
    """Per run: the last evaluation, the best held-out loss, solved or not, and the training time."""
    results, runs = tables["results"], tables.get("runs")
    by = [a for a in axes if a in results.columns]
    last = results.groupby(by, dropna=False, sort=False).tail(1).set_index(by)  # rows come in step order, points in grid order
    final = last.drop(columns=[c for c in ("grad_norm_post", "seconds") if c in last]).rename(
        columns={"val_loss": "final_val_loss", "train_loss": "final_train_loss"})
    final["best_val_loss"] = results.groupby(by, dropna=False)["val_loss"].min()
    final["loss_over_baseline"] = final["final_val_loss"] / final["baseline"]
    if runs is not None and len(runs):
        r = runs.set_index(by)
        final["solved"] = r["solved_step"].notna()
        final["steps_to_solve"] = r["solved_step"]
        final["diverged_step"] = r["diverged_step"]
        final["train_seconds"] = r["train_seconds"]
        if "steps_per_epoch" in r and r["steps_per_epoch"].notna().all():
            final["seconds_per_epoch"] = r["train_seconds"] / (r["steps_done"] / r["steps_per_epoch"])
    return {"final": final.reset_index()}
