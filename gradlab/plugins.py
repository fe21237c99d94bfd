"""Tasks, measures and studies from other installed packages, named under the entry-point groups
gradlab.tasks (a Task class), gradlab.measures (a measure module) and gradlab.studies (a package holding
NAME.toml). No plugin is imported until it is used; a built-in name always wins."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

GROUPS = {"tasks": "gradlab.tasks", "measures": "gradlab.measures", "studies": "gradlab.studies"}
MEASURE_NEEDS = ("Config", "run", "derive", "COLUMNS")  # what gradlab calls on a measure module (gradlab.measures)
KIND = {"tasks": "task", "measures": "measure", "studies": "study"}
IMPORT_SECONDS = 20.0  # a plugin's import that takes longer is taken to hang: left out (GRADLAB_PLUGIN_TIMEOUT changes it)


class PluginError(ValueError):
    """An installed plugin that does not give gradlab what its entry point promises."""


class PluginWarning(UserWarning):
    """A broken plugin, said once: everything that does not need it goes on working."""


broken: dict[tuple[str, str], str] = {}  # (kind, name) -> why that plugin is left out


def warn_broken(kind: str, name: str, why: str) -> None:
    """Say once per process that a plugin cannot be used, and why (using it by name is an error of its own)."""
    if (kind, name) not in broken:
        broken[(kind, name)] = why
        warnings.warn(f"the {GROUPS[kind]} plugin {name!r} is left out: {why}. Everything else works; using {name!r} "
                      "by name is an error until its package is mended or uninstalled.", PluginWarning, stacklevel=3)


def builtin_names(kind: str) -> dict[str, str]:
    """gradlab's own names of a kind (gradlab.names; studies: the files in studies/)."""
    from .names import MEASURES, TASKS

    if kind == "studies":
        from .study import builtin_studies

        return {name: str(path) for name, path in builtin_studies().items()}
    return {"tasks": TASKS, "measures": MEASURES}.get(kind, {})


def guarded(load: Callable[[], object], what: str, failed: Callable[[BaseException], str]) -> object:
    """A plugin's code run apart from gradlab's own: `load()` in a thread of its own, so that whatever the plugin does
    at import (raise SystemExit or KeyboardInterrupt, fail, hang) is a PluginError naming it, never the end or the hang
    of a gradlab command. A plugin that has not finished after IMPORT_SECONDS is left for good (a half-imported module
    is never imported again). A real Ctrl-C reaches the main thread, which is waiting here, and stops the command."""
    done: dict[str, object] = {}

    def target() -> None:
        try:
            done["value"] = load()
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt raised by the plugin: its failure, not ours
            done["error"] = exc

    seconds = float(os.environ.get("GRADLAB_PLUGIN_TIMEOUT", IMPORT_SECONDS))
    thread = threading.Thread(target=target, name=f"gradlab plugin {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise PluginError(f"{what} did not finish importing in {seconds:g} s (it hangs, or waits for something); set "
                          "GRADLAB_PLUGIN_TIMEOUT to give it longer")
    if "error" in done:
        exc = done["error"]
        raise PluginError(failed(exc)) from (exc if isinstance(exc, Exception) else None)
    return done["value"]


@functools.lru_cache(maxsize=None)
def entry_points(kind: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed entry points of one kind by name; one that reuses a built-in name is ignored, with a warning."""
    builtin = builtin_names(kind)
    found = {}
    try:
        eps = importlib.metadata.entry_points(group=GROUPS[kind])
    except Exception as exc:  # noqa: BLE001 - a damaged installed package's metadata: no plugins of this kind, gradlab itself works
        warn_broken(kind, "*", f"the installed packages' entry points could not be read ({type(exc).__name__}: {exc})")
        return {}
    for ep in eps:
        if ep.name in builtin:
            warnings.warn(f"the {GROUPS[kind]} entry point {ep.name!r} ({ep.value}, from {ep.dist.name if ep.dist else 'an installed package'}) "
                          f"is ignored: gradlab has a built-in {KIND[kind]} of that name, which always wins.", PluginWarning, stacklevel=2)
        else:
            found.setdefault(ep.name, ep)
    return found


def described(kind: str) -> dict[str, str]:
    """The built-in names and descriptions, then every plugin's (named by its entry point and package)."""
    return builtin_names(kind) | {name: f"{ep.value} (plugin from {ep.dist.name if ep.dist else 'an installed package'})"
                                  for name, ep in entry_points(kind).items()}


def _load(kind: str, name: str):
    ep = entry_points(kind)[name]
    if (kind, name) in broken:
        raise PluginError(f"{GROUPS[kind]} entry point {name!r} = {ep.value!r} cannot be used: {broken[(kind, name)]}")
    try:
        return guarded(ep.load, f"{GROUPS[kind]} entry point {name!r} = {ep.value!r}",
                       lambda exc: f"{GROUPS[kind]} entry point {name!r} = {ep.value!r} failed to load: {type(exc).__name__}: {exc}")
    except PluginError as exc:
        warn_broken(kind, name, str(exc))  # said once, and remembered: a plugin that hung is never imported again
        raise


def load_task(name: str):
    from .tasks.base import Task

    cls = _load("tasks", name)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise PluginError(f"gradlab.tasks entry point {name!r} must name a subclass of gradlab.tasks.Task, got {cls!r}.")
    return cls


def load_measure(name: str) -> ModuleType:
    module = _load("measures", name)
    missing = [attr for attr in MEASURE_NEEDS if not hasattr(module, attr)]
    if missing:
        raise PluginError(f"gradlab.measures entry point {name!r} ({getattr(module, '__name__', module)}) lacks {', '.join(missing)}: "
                          f"a measure module defines {', '.join(MEASURE_NEEDS)} (see gradlab.measures).")
    return module


def study_files() -> dict[str, tuple[Path, str]]:
    """Installed plugin studies: name -> (the file, how messages name it: 'PACKAGE/NAME.toml')."""
    return {name: found for name in entry_points("studies") if (found := study_file(name)) is not None}


def study_file(name: str) -> tuple[Path, str] | None:
    """One installed plugin study by name (None: no plugin has it); only its own package is imported."""
    ep = entry_points("studies").get(name)
    if ep is None or ("studies", name) in broken:
        return None
    try:
        package = guarded(lambda: importlib.resources.files(ep.value), f"its package {ep.value!r}",
                          lambda exc: f"its package {ep.value!r} failed to import ({type(exc).__name__}: {exc})")
        path = Path(str(package / f"{name}.toml"))
    except PluginError as exc:
        warn_broken("studies", name, str(exc))
        return None
    return path, f"{ep.value}/{name}.toml"


def _package_of(kind: str, name: str) -> str | None:
    """The top-level package of a plugin's entry point; None for a built-in name or an unknown one."""
    ep = entry_points(kind).get(name)
    return ep.value.split(":")[0].split(".")[0] if ep else None


@functools.lru_cache(maxsize=None)
def package_digest(package: str) -> str:
    """sha256 (16 hex digits) over the code of every module of an installed package (docstrings and comments
    aside, as gradlab's own source digest)."""
    from .env import code_of

    spec = importlib.util.find_spec(package)
    root = Path(spec.origin).parent if spec and spec.origin else None
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) if root else []:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + code_of(path.read_text(encoding="utf-8")).encode() + b"\0")
    return digest.hexdigest()[:16]


def code_digests(measure: str, config: dict) -> dict[str, str]:
    """The plugin packages a point runs (its measure, its task) by name, each with its code digest: part of
    the point's cache key, so an edit to a plugin recomputes its points and leaves every other point be."""
    used = {_package_of("measures", measure), _package_of("tasks", str(config.get("task", "")))} - {None}
    return {package: package_digest(package) for package in sorted(used)}
