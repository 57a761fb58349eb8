"""The training recipes: the authors' (Andriushchenko & Flammarion 2020, their repository
tml-epfl/understanding-fast-adv-training) for CIFAR-10 and SVHN, Wong et al.'s (2020) for
MNIST, and the project's own ones; the per-eps lambda tables of GradAlign, the cyclic /
piecewise learning rate per iteration and the linear warm-ups of eps and of FGSM's step.
docs/recipes.md gives every field beside the authors' value and its source (a test holds the
two together). eps is in input units ([0, 1] pixels) unless named `eps_255`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .models import INITS
from .optim import OPTIMIZERS

REPORTED_MODELS = ("final", "best")  # the final weights, or best.pt (early stopping)


@dataclass(frozen=True)
class Recipe:
    model: str
    eps: float  # [0, 1] units
    epochs: int
    batch_size: int
    lr_max: float
    optimizer: str = "sgd"  # one of optim.OPTIMIZERS
    momentum: float | None = 0.9  # SGD's; None for Adam (betas (0.9, 0.999))
    wd: float = 5e-4
    eps_warmup_epochs: float = 0.0
    lr_schedule: str = "cyclic"
    # The fields below are the recipe's own (TrainConfig has none of them).
    # FGSM's step alpha ramped linearly from 0 over these epochs, eps (its radius, and
    # GradAlign's eta) at full size from the start.
    alpha_warmup_epochs: float = 0.0
    normalize: bool = False  # a Normalize layer with the dataset's mean / std
    init: str = "authors"  # one of models.INITS
    lam_table: str = "cifar10"  # GradAlign's lambda per eps: a key of LAMBDA_TABLES
    reported_model: str = "final"  # the model the recipe's results are of (REPORTED_MODELS)

    def __post_init__(self):
        checks = [(self.optimizer, OPTIMIZERS, "optimizer"), (self.init, INITS, "init"),
                  (self.lam_table, LAMBDA_TABLES, "lam_table"),
                  (self.reported_model, REPORTED_MODELS, "reported_model")]
        for value, allowed, name in checks:
            if value not in allowed:
                raise ValueError(f"recipe {name} {value!r}: choose one of {sorted(allowed)}")


# The Recipe fields that are TrainConfig fields too: resolve() fills those left None.
CONFIG_FIELDS = ("model", "eps", "epochs", "batch_size", "lr_max", "optimizer", "momentum",
                 "wd", "eps_warmup_epochs", "lr_schedule")

# GradAlign's lambda on CIFAR-10 per eps (in /255), log-linear in eps between the points.
LAMBDA_TABLE = ((1, 0.027), (2, 0.036), (4, 0.063), (6, 0.112), (8, 0.2), (10, 0.356),
                (12, 0.632), (14, 1.124), (16, 2.0))


def _cifar10_lambda(eps_255: float) -> float:
    xs, lams = zip(*LAMBDA_TABLE)
    return float(np.exp(np.interp(eps_255, xs, np.log(lams))))


def _svhn_lambda(eps_255: float) -> float:
    return 1.5625 * 1.6 ** (eps_255 / 8)


LAMBDA_TABLES = {
    # log-linear interpolation of LAMBDA_TABLE, clamped to its end values outside [1, 16]
    "cifar10": _cifar10_lambda,
    # 1.5625 * 1.6^(eps/8): 1.657 at eps 1, 2.5 at 8, 3.162 at 12
    "svhn": _svhn_lambda,
}

RECIPES = {
    # The authors' CIFAR-10 runs: 30 epochs, cyclic lr peaking at 0.2 (0.3 for GradAlign,
    # see recipe_for), SGD, no input normalisation, their initialisation.
    "cifar10": Recipe("preact_resnet18", 8 / 255, 30, 128, 0.2),
    # The authors' SVHN runs: 15 epochs, peak 0.05, FGSM's step ramped over the first 5
    # epochs (PGD training ramps eps instead, see recipe_for); the early-stopped model.
    "svhn": Recipe("preact_resnet18", 8 / 255, 15, 128, 0.05, alpha_warmup_epochs=5,
                   lam_table="svhn", reported_model="best"),
    # Wong et al.'s fast ImageNet length (15 epochs) with a ResNet-50; their progressive
    # resizing is not reproduced. Ours.
    "imagenet": Recipe("resnet50", 2 / 255, 15, 256, 0.4, wd=5e-5, normalize=True,
                       init="torch"),
    # Wong et al.'s MNIST recipe (locuslab/fast_adversarial, mnist/train_mnist.py): Adam,
    # cyclic lr peaking at 5e-3, batch 100, 10 epochs, no eps ramp, no normalisation.
    "mnist": Recipe("mnist_cnn", 0.3, 10, 100, 5e-3, optimizer="adam", momentum=None, wd=0.0,
                    init="torch"),
    # The project's own MNIST recipe, the one of every committed MNIST study and of the demo:
    # at eps = 0.3 from scratch SGD needs the eps ramp (and the cyclic lr ramp), without
    # which the small CNN collapses to a constant predictor.
    "mnist_sgd_ramp": Recipe("mnist_cnn", 0.3, 10, 128, 0.05, wd=0.0, eps_warmup_epochs=4,
                             normalize=True, init="torch"),
}

# The recipe a dataset trains with when none is named.
DEFAULT_RECIPES = {"cifar10": "cifar10", "svhn": "svhn", "imagenet": "imagenet",
                   "mnist": "mnist", "mnist_subset": "mnist_sgd_ramp"}


def default_recipe(dataset: str) -> str:
    if dataset not in DEFAULT_RECIPES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULT_RECIPES)}")
    return DEFAULT_RECIPES[dataset]


def recipe_for(name: str, method: str) -> Recipe:
    """Recipe `name` for `method`: GradAlign on CIFAR-10 peaks at lr 0.3; PGD training on SVHN
    ramps eps over the first 5 epochs instead of FGSM's step."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    r = RECIPES[name]
    if name == "cifar10" and method == "gradalign":
        return replace(r, lr_max=0.3)
    if name == "svhn" and method == "pgd":
        return replace(r, eps_warmup_epochs=r.alpha_warmup_epochs, alpha_warmup_epochs=0.0)
    return r


def alpha_warmup_epochs(name: str, method: str, epochs: int) -> float:
    """The epochs over which recipe `name` ramps FGSM's step for `method` in an `epochs`-long
    run: the recipe's, or the same fraction of training for a run shorter than that ramp (as
    the trainer does with the eps warm-up)."""
    r = recipe_for(name, method)
    if r.alpha_warmup_epochs <= epochs:
        return r.alpha_warmup_epochs
    return r.alpha_warmup_epochs * epochs / r.epochs


def lambda_for_eps(eps_255: float, dataset: str = "cifar10") -> float:
    """GradAlign's lambda for eps (in /255) from the lambda table of `dataset` (a key of
    LAMBDA_TABLES: cifar10 or svhn)."""
    if not math.isfinite(eps_255) or eps_255 < 0:
        raise ValueError(f"eps_255 must be a finite number >= 0, got {eps_255}")
    if dataset not in LAMBDA_TABLES:
        raise ValueError(f"no lambda table for {dataset!r}; choose one of {sorted(LAMBDA_TABLES)}")
    return LAMBDA_TABLES[dataset](eps_255)


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
    """A linear warm-up (of eps, or of FGSM's step): `eps` ramped up from 0 over
    `warmup_steps` iterations, then constant."""
    if warmup_steps <= 0:
        return eps
    return eps * min(1.0, step / warmup_steps)
