"""L-inf AutoAttack (Croce & Hein, 2020) and Square from the optional `torchattacks` package,
as per-block robust masks for `evaluation`.

* `autoattack`: the standard version: APGD-CE (100 iterations), APGD-T (100 iterations,
  9 target classes), FAB-T (100 iterations, 9 target classes), Square (5000 queries), one
  restart each, each attack on the points the ones before it left robust;
* `autoattack-fast`: the same with 10 iterations for APGD-CE, APGD-T and FAB-T (torchattacks'
  `AutoAttack(version="standard")` defaults), an upper bound on the standard version's accuracy.

Every call of a torchattacks attack seeds the global RNG with `seed` and draws its random starts
for the whole call, so a point's starts depend on the other points of the call. The attacks
therefore run on fixed blocks of BLOCK consecutive evaluated points (the points of a block that
earlier attacks left robust), whatever the evaluation batch size: the robust set depends only on
the model, the points, eps and the seed. The caller's global RNG state is restored afterwards.
"""
from __future__ import annotations

import torch

BLOCK = 250  # points per torchattacks call: the robust set depends on it, the batch size does not
STANDARD_ITERATIONS = 100
FAST_ITERATIONS = 10
SQUARE_QUERIES = 5000
MAX_TARGETS = 9  # APGD-T and FAB-T target the 9 most likely wrong classes (fewer if fewer exist)
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def torchattacks():
    try:
        import torchattacks
    except ImportError as e:
        raise ImportError("the autoattack and square evaluations need the optional package "
                          "torchattacks: pip install --no-deps torchattacks") from e
    return torchattacks


def num_classes(model, x) -> int:
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    if n_classes < 4:  # AutoAttack's targeted DLR loss reads the 4 largest logits
        raise ValueError(f"AutoAttack needs at least 4 classes, got {n_classes}")
    return n_classes


def config(kind: str, steps: int = 0, queries: int = SQUARE_QUERIES) -> dict:
    """What an `autoattack` (steps iterations) or `square` part runs, for final.json and tables."""
    rule = (f"blocks of {BLOCK} consecutive evaluated points, each attack on the points of its "
            f"block the earlier ones left robust; torchattacks seeds the global RNG with the "
            f"evaluation seed at each call; eps-ball and [0, 1] box checked")
    if kind == "square":
        return {"attack": "square", "queries": queries, "restarts": 1, "chunks": rule,
                "implementation": _implementation()}
    targets = f"min({MAX_TARGETS}, classes - 1)"
    return {"attack": "autoattack", "standard": steps == STANDARD_ITERATIONS,
            "components": [
                {"name": "apgd-ce", "iterations": steps, "restarts": 1},
                {"name": "apgd-t", "iterations": steps, "restarts": 1, "targets": targets},
                {"name": "fab-t", "iterations": steps, "restarts": 1, "targets": targets},
                {"name": "square", "queries": queries, "restarts": 1}],
            "chunks": rule, "implementation": _implementation()}


def _implementation() -> str:
    try:
        return f"torchattacks {torchattacks().__version__}"
    except ImportError:
        return "torchattacks (not installed)"


def build(model, eps: float, n_classes: int, seed: int, steps: int,
          queries: int = SQUARE_QUERIES):
    """torchattacks' MultiAttack of APGD-CE, APGD-T, FAB-T (`steps` iterations) and Square
    (`queries`)."""
    ta = torchattacks()
    targets = min(MAX_TARGETS, n_classes - 1)
    apgdt = ta.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                     n_classes=n_classes)
    fab = ta.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                 multi_targeted=True, n_classes=n_classes)
    apgdt.n_target_classes = fab.n_target_classes = targets  # torchattacks: n_classes - 1
    return ta.MultiAttack([
        ta.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce"),
        apgdt, fab,
        ta.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=seed)])


def robust_fn(model, kind: str, eps: float, seed: int, steps: int = 0,
              queries: int = SQUARE_QUERIES):
    """fn(x, y) -> bool [B]: the points (one block's survivors) an `autoattack` part (`steps`
    iterations, Square with `queries`) or a `square` part (`queries`) does not fool."""
    ta = torchattacks()
    made = {}

    def robust(x, y):
        if "atk" not in made:
            made["atk"] = (build(model, eps, num_classes(model, x), seed, steps, queries)
                           if kind == "autoattack" else
                           ta.Square(model, norm="Linf", eps=eps, n_queries=queries,
                                     n_restarts=1, seed=seed))
        return run_checked(model, made["atk"], x, y, eps)

    return robust


def run_checked(model, atk, x, y, eps: float) -> torch.Tensor:
    """bool [B]: the points the torchattacks attack `atk` does not fool, its output trusted only
    inside the eps-ball and the [0, 1] box (else the clean point is scored); the caller's global
    RNG state is kept (torchattacks seeds it)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        x_adv = atk(x, y)
    return score(model, x, x_adv, y, eps)


def score(model, x, x_adv, y, eps: float) -> torch.Tensor:
    """bool [B]: model classifies x_adv correctly, x_adv counted only inside the eps-ball and
    the [0, 1] box (else x is classified: an attack's output is not trusted blindly)."""
    with torch.no_grad():
        dist = (x_adv - x).abs().flatten(1).amax(1)
        valid = (dist <= eps * (1 + 1e-5) + 1e-7) & (x_adv.flatten(1).amin(1) >= -1e-6) & (
            x_adv.flatten(1).amax(1) <= 1 + 1e-6)
        return model(torch.where(valid.view(-1, *[1] * (x.dim() - 1)), x_adv, x)).argmax(1) == y
