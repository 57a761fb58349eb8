"""Accuracy of a model under attack: clean, L-inf PGD with restarts (PGD-50-10 by default, the
paper's evaluation) and AutoAttack (standard, through the optional `torchattacks` package).

Every function runs the model in eval mode (restoring its mode afterwards), in batches, on the
device of its parameters, on the first `n` test points (all with n=None). eps in [0, 1] units.
"""
from __future__ import annotations

import contextlib
import re
import time

import torch
from tqdm.auto import tqdm

from .. import attacks
from .datasets import first, make_loader

DEFAULT_ATTACKS = ("clean", "pgd-50-10")
_PGD = re.compile(r"^pgd-(\d+)-(\d+)$")


@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device(model, device):
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _accuracy(model, dataset, n, batch_size, device, desc, progress, perturb) -> float:
    """Fraction of the first n points classified correctly at x + perturb(x, y)."""
    ds = first(dataset, n)
    dev = _device(model, device)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    with eval_mode(model):
        for x, y in tqdm(make_loader(ds, batch_size), desc=desc, disable=not progress,
                         leave=False):
            x, y = x.to(dev), y.to(dev)
            x_adv = x if perturb is None else perturb(x, y)
            with torch.no_grad():
                correct += (model(x_adv).argmax(1) == y).sum()
    return correct.item() / len(ds)


def clean_accuracy(model, dataset, n: int | None = None, batch_size: int = 256, device=None,
                   progress: bool = True) -> float:
    return _accuracy(model, dataset, n, batch_size, device, "clean", progress, None)


def pgd_accuracy(model, dataset, eps: float, n: int | None = 1000, steps: int = 50,
                 restarts: int = 10, alpha: float | None = None, batch_size: int = 256,
                 device=None, seed: int = 0, progress: bool = True) -> float:
    """Accuracy under L-inf PGD-`steps`-`restarts` (step alpha = eps/4 by default), keeping per
    point the restart of highest loss (gradalign_fast.attacks.pgd). Random starts come from a
    generator seeded with `seed`, so the result is reproducible and the global RNG untouched."""
    _check_eps(eps)
    alpha = eps / 4 if alpha is None else alpha
    gen = torch.Generator(_device(model, device)).manual_seed(seed)

    def perturb(x, y):
        return x + attacks.pgd(model, x, y, eps, alpha, steps, restarts, generator=gen)

    return _accuracy(model, dataset, n, batch_size, device, f"pgd-{steps}-{restarts}",
                     progress, perturb)


def autoattack_accuracy(model, dataset, eps: float, n: int | None = 1000,
                        batch_size: int = 256, device=None, seed: int = 0,
                        progress: bool = True) -> float:
    """Accuracy under AutoAttack (standard version, L-inf) of the `torchattacks` package."""
    _check_eps(eps)
    try:
        import torchattacks
    except ImportError as e:
        raise ImportError("the autoattack evaluation needs the optional package torchattacks: "
                          "pip install --no-deps torchattacks") from e
    dev = _device(model, device)
    with eval_mode(model), torch.no_grad():
        x0, _ = next(iter(make_loader(first(dataset, 1), 1)))
        n_classes = model(x0.to(dev)).shape[1]
    if n_classes < 4:  # its targeted DLR loss reads the 4 largest logits
        raise ValueError(f"AutoAttack (standard) needs at least 4 classes, got {n_classes}")
    atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                  n_classes=n_classes, seed=seed)
    return _accuracy(model, dataset, n, batch_size, device, "autoattack", progress,
                     lambda x, y: atk(x, y))


def _check_eps(eps):
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] (input units), got {eps}")


def parse_attacks(spec) -> tuple[str, ...]:
    """'clean,pgd-50-10,autoattack' (or a sequence) -> validated attack names."""
    names = tuple(a.strip() for a in (spec.split(",") if isinstance(spec, str) else spec)
                  if a.strip())
    if not names:
        raise ValueError("no attack given; choose from clean, pgd-STEPS-RESTARTS, autoattack")
    for a in names:
        if a not in ("clean", "autoattack") and not _PGD.match(a):
            raise ValueError(f"unknown attack {a!r}; choose from clean, pgd-STEPS-RESTARTS "
                             f"(e.g. pgd-50-10), autoattack")
    return names


def evaluate(model, dataset, eps: float, attacks=DEFAULT_ATTACKS, n: int | None = 1000,
             batch_size: int = 256, device=None, seed: int = 0, progress: bool = True) -> dict:
    """Accuracy under each attack: {"clean": acc, "pgd-50-10": acc, ..., "n": points,
    "time_s": {attack: seconds}}. Clean accuracy is on the same n points."""
    names = parse_attacks(attacks)
    n_points = len(first(dataset, n))
    out, times = {"n": n_points}, {}
    for name in names:
        t0 = time.perf_counter()
        if name == "clean":
            acc = clean_accuracy(model, dataset, n, batch_size, device, progress)
        elif name == "autoattack":
            acc = autoattack_accuracy(model, dataset, eps, n, batch_size, device, seed, progress)
        else:
            steps, restarts = map(int, _PGD.match(name).groups())
            acc = pgd_accuracy(model, dataset, eps, n, steps, restarts, None, batch_size, device,
                               seed, progress)
        out[name] = acc
        times[name] = time.perf_counter() - t0
    out["time_s"] = times
    return out
