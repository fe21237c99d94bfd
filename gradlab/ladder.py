"""A study's ladder rule: along one axis (a lag), a point is not run once every seed of its setting has
failed at `stop_after` shorter values in a row. Decided from the finished points alone, so it stays declarative."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

RUN, SKIP, WAIT = "run", "skip", "wait"


@dataclass(frozen=True)
class Ladder:
    axis: str  # walked from its smallest value up, e.g. seq_len
    stop_after: int  # values in a row at which every point of a setting failed; 0: the rule is off
    over: str = "seed"  # the axis whose points all have to fail at a value

    def __str__(self) -> str:
        return (f"along {self.axis}, a setting stops once every {self.over} has failed at {self.stop_after} "
                f"shorter {self.axis} values in a row")

    def record(self) -> dict:
        return {"axis": self.axis, "stop_after": self.stop_after, "over": self.over}


def from_record(record: dict | None) -> Ladder | None:
    return Ladder(record["axis"], int(record["stop_after"]), record.get("over", "seed")) if record else None


def _group(coords: dict, ladder: Ladder) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in coords.items() if k not in (ladder.axis, ladder.over)))


def decide(coords: list[dict], outcome: Callable[[int], bool | None], ladder: Ladder | None) -> list[tuple[str, str]]:
    """Per point (its grid coordinates, in order): RUN, SKIP or WAIT, with the reason of a skip.
    `outcome(i)`: True (point i succeeded), False (it finished and failed) or None (not finished yet).
    A value is skipped once `stop_after` shorter values in a row failed with every point; it waits while
    unfinished shorter values could still make such a streak; otherwise it runs."""
    if ladder is None or ladder.stop_after < 1:
        return [(RUN, "")] * len(coords)
    groups: dict[tuple, dict] = {}  # setting -> {axis value: [point indices]}
    for i, c in enumerate(coords):
        groups.setdefault(_group(c, ladder), {}).setdefault(c[ladder.axis], []).append(i)
    verdicts: list[tuple[str, str]] = [(RUN, "")] * len(coords)
    for by_value in groups.values():
        below: list[tuple[object, str]] = []  # (value, 'failed' | 'passed' | 'open') of the values done so far
        for v in sorted(by_value):
            streak = _streak(below, ladder.stop_after, ("failed",))
            if streak:
                verdict = (SKIP, f"every {ladder.over} failed at {ladder.axis} = {', '.join(map(str, streak))}")
            elif _streak(below, ladder.stop_after, ("failed", "open")):
                verdict = (WAIT, "")
            else:
                verdict = (RUN, "")
            for i in by_value[v]:
                verdicts[i] = verdict
            results = [False] * len(by_value[v]) if verdict[0] == SKIP else [outcome(i) for i in by_value[v]]
            below.append((v, "passed" if any(r is True for r in results) else "failed" if all(r is False for r in results) else "open"))
    return verdicts


def _streak(below: list[tuple[object, str]], length: int, failing: tuple[str, ...]) -> list:
    """The first `length` values in a row whose state is in `failing` ([] if none)."""
    run: list = []
    for value, state in below:
        run = run + [value] if state in failing else []
        if len(run) >= length:
            return run
    return []


def succeeded_in(store, key: str, module) -> bool | None:
    """Whether a saved point succeeded by its measure's own test (a failed point did not); None: not saved."""
    meta = store.read_meta(key)
    if meta is None:
        return None
    if meta.get("status") != "ok":
        return False
    return bool(module.succeeded(store.tables(key)))


def skipped(coords: list[dict], keys: list[str], outcome: Callable[[int], bool | None], ladder: Ladder | None) -> list[dict]:
    """The points the ladder leaves out, given what finished: their key, coordinates and why."""
    return [{"key": k, **c, "because": why} for k, c, (verdict, why) in zip(keys, coords, decide(coords, outcome, ladder)) if verdict == SKIP]
