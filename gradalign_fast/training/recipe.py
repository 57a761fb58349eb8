"""The paper's training recipes (Andriushchenko & Flammarion 2020, following Wong et al. 2020):
per-dataset defaults, the lambda-per-eps table of GradAlign, the cyclic / piecewise learning
rate per iteration and the eps warm-up. eps is in input units ([0, 1] pixels) unless named
`eps_255`."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Recipe:
    model: str
    eps: float  # [0, 1] units
    epochs: int
    batch_size: int
    lr_max: float
    momentum: float = 0.9
    wd: float = 5e-4
    eps_warmup_epochs: float = 0.0
    lr_schedule: str = "cyclic"


RECIPES = {
    # 30 epochs, cyclic lr peaking at 0.2 (0.3 for GradAlign, see recipe_for).
    "cifar10": Recipe("preact_resnet18", 8 / 255, 30, 128, 0.2),
    # 15 epochs, peak 0.05, eps ramped up linearly over the first 5 epochs (authors' SVHN runs).
    "svhn": Recipe("preact_resnet18", 8 / 255, 15, 128, 0.05, eps_warmup_epochs=5),
    # Wong et al.'s fast ImageNet length (15 epochs) with a ResNet-50; their progressive
    # resizing is not reproduced.
    "imagenet": Recipe("resnet50", 2 / 255, 15, 256, 0.4, wd=5e-5),
    # MNIST at eps = 0.3 from scratch needs the eps ramp (and the cyclic lr ramp): without
    # them the small CNN collapses to a constant predictor, which is not catastrophic
    # overfitting. Our own defaults (the paper gives none for SGD on MNIST).
    "mnist": Recipe("mnist_cnn", 0.3, 10, 128, 0.05, wd=0.0, eps_warmup_epochs=4),
}
RECIPES["mnist_subset"] = RECIPES["mnist"]

# GradAlign's lambda for CIFAR-10 per eps (in /255), log-linear in eps between the points.
LAMBDA_TABLE = ((1, 0.027), (2, 0.036), (4, 0.063), (6, 0.112), (8, 0.2), (10, 0.356),
                (12, 0.632), (14, 1.124), (16, 2.0))


def recipe_for(dataset: str, method: str) -> Recipe:
    """The defaults for `method` on `dataset` (GradAlign on CIFAR-10 peaks at lr 0.3)."""
    if dataset not in RECIPES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(RECIPES)}")
    r = RECIPES[dataset]
    if dataset == "cifar10" and method == "gradalign":
        return Recipe(**{**r.__dict__, "lr_max": 0.3})
    return r


def lambda_for_eps(eps_255: float) -> float:
    """GradAlign's lambda for eps (in /255): log-linear interpolation of LAMBDA_TABLE,
    clamped to its end values outside [1, 16]."""
    if not math.isfinite(eps_255) or eps_255 < 0:
        raise ValueError(f"eps_255 must be a finite number >= 0, got {eps_255}")
    xs, lams = zip(*LAMBDA_TABLE)
    return float(np.exp(np.interp(eps_255, xs, np.log(lams))))


LR_SCHEDULES = ("cyclic", "piecewise", "constant")


def lr_at(step: int, steps_per_epoch: int, epochs: float, lr_max: float,
          schedule: str = "cyclic") -> float:
    """Learning rate of iteration `step` (0-based), read at the end of that iteration
    (t = (step + 1) / steps_per_epoch epochs, as in the authors' code).

    cyclic: 0 -> lr_max linearly at 2/5 of training -> 0 at the end; piecewise: lr_max,
    /10 from 1/2, /100 from 3/4 of training; constant: lr_max.
    """
    t = (step + 1) / steps_per_epoch
    if schedule == "cyclic":
        return float(np.interp(t, [0, 0.4 * epochs, epochs], [0, lr_max, 0]))
    if schedule == "piecewise":
        return lr_max * (1.0 if t < 0.5 * epochs else 0.1 if t < 0.75 * epochs else 0.01)
    if schedule == "constant":
        return lr_max
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {LR_SCHEDULES}")


def eps_at(step: int, warmup_steps: int, eps: float) -> float:
    """eps ramped up linearly from 0 over `warmup_steps` iterations, then constant."""
    if warmup_steps <= 0:
        return eps
    return eps * min(1.0, step / warmup_steps)
