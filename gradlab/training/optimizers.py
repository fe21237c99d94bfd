"""The optimisers gradlab trains with, each with its defaults and where they come from (names.OPTIMIZERS)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..names import OPTIMIZERS, lookup

FACTORIES: dict[str, Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),  # torch's defaults are Kingma and Ba's
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr, alpha=0.9),  # decay 0.9: Arjovsky et al. 2016
}


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    lookup(OPTIMIZERS, name, "optimizer")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    return FACTORIES[name](params, lr)
