"""Name lookup in plain-dict registries, with a "did you mean" error on a wrong name."""

from __future__ import annotations

import difflib
from typing import Mapping, TypeVar

V = TypeVar("V")


def suggest(name: str, known: list[str] | Mapping[str, object]) -> str:
    """A sentence naming what exists, and the closest match if there is one."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Known: {', '.join(names)}.{hint}"


def lookup(registry: Mapping[str, V], name: str, what: str) -> V:
    """registry[name], or a ValueError that says what exists."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"Unknown {what} {name!r}. {suggest(name, registry)}") from None
