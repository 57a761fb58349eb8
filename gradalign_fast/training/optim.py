"""The optimizer of a recipe: SGD with momentum and weight decay (the authors' ResNets) or Adam
(the authors' CNNs, Wong et al.'s MNIST). The learning rate is set by the trainer at every
iteration (recipe.lr_at), so it is built with lr 0."""
from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "adam")
# The momentum an optimizer takes when a recipe of the other optimizer gives none that fits.
DEFAULT_MOMENTUM = {"sgd": 0.9, "adam": None}


def check(optimizer: str, momentum: float | None) -> None:
    """ValueError for an unknown optimizer or a momentum that does not apply to it."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if optimizer == "sgd" and not (isinstance(momentum, (int, float)) and momentum >= 0):
        raise ValueError(f"SGD needs a momentum >= 0, got {momentum!r}")
    if optimizer == "adam" and momentum is not None:
        raise ValueError(f"Adam takes no momentum (its betas are torch's (0.9, 0.999)); got "
                         f"momentum={momentum!r}: give none")


def build_optimizer(optimizer: str, params, momentum: float | None, wd: float):
    """torch.optim.SGD(params, momentum, weight_decay=wd) or torch.optim.Adam(params,
    weight_decay=wd), at lr 0."""
    check(optimizer, momentum)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=0.0, momentum=momentum, weight_decay=wd)
    return torch.optim.Adam(params, lr=0.0, weight_decay=wd)
