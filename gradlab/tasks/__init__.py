"""What the networks learn: one module per task (`gradlab/tasks/<name>.py`, its class in `TASK`), named
in `gradlab.names.TASKS`, or a Task class another package names under the entry-point group gradlab.tasks.
Task parameters are the task class's dataclass fields."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Any

from .. import plugins
from ..names import TASKS, lookup
from .base import Batch, Spec, Success, SyntheticTask, Task

__all__ = ["Batch", "Spec", "Success", "SyntheticTask", "Task", "task_class", "build", "param_fields", "plugin_params", "known_tasks"]


def known_tasks() -> dict[str, str]:
    """Every task's name and description: the built-in ones, then the installed plugins'."""
    return plugins.described("tasks")


def task_class(name: str) -> type[Task]:
    """The task's class (its module is imported on demand: torch loads only when a task is used)."""
    if name in TASKS:
        return importlib.import_module(f"{__name__}.{name}").TASK
    lookup(known_tasks(), name, "task")
    return plugins.load_task(name)


def param_fields() -> dict[str, Any]:
    """Every task parameter's type by name, over all tasks (a name two tasks share means the same thing); a
    plugin task that fails to load is left out, with a warning."""
    fields: dict[str, Any] = {}
    for name in known_tasks():
        try:
            cls = task_class(name)
        except plugins.PluginError as exc:  # a plugin task that cannot load takes no part: every other task works
            plugins.warn_broken("tasks", name, str(exc))
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                fields.setdefault(f.name, hints[f.name])
    return fields


def plugin_params() -> set[str]:
    """The task parameters only plugin tasks take: a training point that leaves them unset (None) does not carry
    them in its cache key, so installing a plugin leaves the keys of every other point as they were."""
    own = {f.name for name in TASKS for f in dataclasses.fields(task_class(name)) if f.init}
    return set(param_fields()) - own


def build(name: str, params: dict[str, Any]) -> Task:
    """The task with `params` set (None means the task's default); a parameter the task does not take
    is an error that names the ones it does."""
    cls = task_class(name)
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    given = {k: v for k, v in params.items() if v is not None}
    foreign = sorted(set(given) - own)
    if foreign:
        raise ValueError(
            f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to task {name!r}; "
            f"it takes: {', '.join(sorted(own)) or 'no parameters'}."
        )
    return cls(**given)
