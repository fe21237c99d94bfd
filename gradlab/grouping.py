"""Which of a study's runnable points train together as one ensemble (`--ensemble auto|off|N`): points of
one shape (the measure's ensemble_key) join, up to N at a time; a point that cannot join runs solo and says why."""

from __future__ import annotations

import math
from dataclasses import dataclass

AUTO_LARGEST = {"cpu": 8, "cuda": 64}  # CPU: 8 models already make each matmul compute-bound (tests/benchmarks); a GPU wants more


@dataclass(frozen=True)
class Mode:
    """off, or ensembles of at most `largest` points (auto: at most 8 on CPU, 64 on a GPU, each shape split over the workers)."""

    largest: int
    auto: bool = False

    @property
    def off(self) -> bool:
        return not self.auto and self.largest <= 1

    def __str__(self) -> str:
        return "off" if self.off else ("auto" if self.auto else str(self.largest))


def parse_mode(value: str | int | None) -> Mode:
    """'auto' (the default), 'off', or N >= 1 (the largest ensemble; 1 is off); a ValueError names what is allowed."""
    text = "auto" if value is None else str(value).strip().lower()
    if text == "auto":
        return Mode(0, auto=True)
    if text == "off":
        return Mode(1)
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or str(n) != text:
        raise ValueError(f"--ensemble takes auto, off or a whole number N >= 1 (the largest ensemble), got {value!r}.")
    return Mode(n)


def joins(module, config) -> tuple[object, str | None]:
    """(the point's ensemble key, None), or (None, why it runs solo)."""
    if not hasattr(module, "run_ensemble"):
        return None, "its measure trains no ensembles"
    reason = module.ensemble_reason(config)
    return (None, reason) if reason else (module.ensemble_key(config), None)


def shape_counts(configs: list, module) -> dict:
    """How many of these points share each ensemble shape: what auto shares out over the workers."""
    counts: dict = {}
    for cfg in configs:
        key, why = joins(module, cfg)
        if not why:
            counts[key] = counts.get(key, 0) + 1
    return counts


def groups(items: list, configs: list, module, mode: Mode, workers: int = 1, counts: dict | None = None) -> list[tuple[list, str | None]]:
    """items (in grid order) and their measure configs -> [(items of one group, why solo or None)], in the
    order of each group's first item. Auto sizes a shape's groups by `counts` (shape_counts of the whole run,
    so that groups keep their size as points finish; default: these items)."""
    if mode.off:
        return [([item], "--ensemble off") for item in items]
    buckets: dict[object, list] = {}
    solo: list[tuple[int, list, str]] = []
    first: dict[object, int] = {}
    for pos, (item, cfg) in enumerate(zip(items, configs)):
        key, why = joins(module, cfg)
        if why:
            solo.append((pos, [item], why))
            continue
        buckets.setdefault(key, []).append((pos, item))
        first.setdefault(key, pos)
    out: list[tuple[int, list, str | None]] = list(solo)
    for key, members in buckets.items():
        largest = mode.largest
        alone = "no other runnable point of its shape"
        if mode.auto:
            device = str(getattr(configs[first[key]], "device", "cpu")).split(":")[0]
            total = (counts or {}).get(key, len(members))
            spread = math.ceil(total / workers)  # each shape shared out over the workers: no one ensemble the critical path
            largest = max(1, min(AUTO_LARGEST.get(device, AUTO_LARGEST["cpu"]), spread))
            if spread < total:
                alone = f"its shape's {total} points shared out over {workers} workers"
        for start in range(0, len(members), largest):
            chunk = members[start : start + largest]
            out.append((chunk[0][0], [item for _, item in chunk], None if len(chunk) > 1 else alone))
    return [(chunk, why) for _, chunk, why in sorted(out, key=lambda o: o[0])]


def summary(configs: list, module, mode: Mode) -> str | None:
    """One line on what the mode makes of the study's points, for the run's opening lines (None: nothing to say)."""
    if not hasattr(module, "run_ensemble"):
        return None
    if mode.off:
        return f"ensembles off: {len(configs)} points train one at a time"
    decided = [joins(module, cfg) for cfg in configs]  # (key, why) each, once
    shapes = {key for key, why in decided if not why}
    reasons: dict[str, int] = {}
    for _, why in decided:
        if why:
            reasons[why] = reasons.get(why, 0) + 1
    joined = len(configs) - sum(reasons.values())
    line = f"ensembles {mode}: {joined} of {len(configs)} points can train batched, in {len(shapes)} shape{'s' * (len(shapes) != 1)}"
    if reasons:
        line += "; solo: " + "; ".join(f"{n} because {why}" for why, n in reasons.items())
    return line
