"""The optimisers gradlab trains with, each with its defaults and where they come from (names.OPTIMIZERS)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..names import OPTIMIZERS, lookup

FACTORIES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, weight_decay=wd),
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),  # torch's defaults are Kingma and Ba's
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),  # decoupled weight decay (Loshchilov and Hutter 2019)
    "rmsprop": lambda params, lr, wd: torch.optim.RMSprop(params, lr=lr, alpha=0.9, weight_decay=wd),  # decay 0.9: Arjovsky et al. 2016
}


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    lookup(OPTIMIZERS, name, "optimizer")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    return FACTORIES[name](params, lr, weight_decay)
