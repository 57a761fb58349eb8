"""Accuracy of a model under attack: clean, L-inf PGD with restarts (PGD-50-10 by default, the
paper's evaluation), AutoAttack (standard) and the gradient-free Square attack (both through the
optional `torchattacks` package), and worst cases over several attacks.

Attack specs (`parse_attacks`), comma-separated:

* `clean`; `pgd-STEPS-RESTARTS` (e.g. `pgd-50-10`); `autoattack`; `square` (5000 queries, as in
  AutoAttack) or `square-QUERIES`;
* `A+B+...`: the worst case, each attack run only on the points the ones before it left
  robust (e.g. `pgd-50-10+autoattack`: AutoAttack on the PGD-robust points only);
* a suffix `@N`: on the first N of the evaluated points only (e.g. `pgd-50-10+autoattack@500`).

PGD counts a point robust only if it is classified correctly at x and at every iterate of every
restart (the standard worst case); the restarts of a batch run as one batch, and a point stops
being attacked once any restart fooled it. `pgd_select="max_loss"` gives instead the authors'
attack_pgd: per point the final delta of the restart of highest loss, classified once.

When a gradient-free or AutoAttack spec exists next to PGD and PGD's accuracy on the same points
exceeds it by more than MASKING_GAP, `evaluate` flags possible gradient masking (`"masking"`).

Every function runs the model in eval mode (restoring its mode afterwards), in batches, on the
device of its parameters, on the first `n` test points (all with n=None). eps in [0, 1] units.
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import attacks, ops
from .datasets import first, make_loader

DEFAULT_ATTACKS = ("clean", "pgd-50-10")
PGD_SELECT = ("any", "max_loss")
MASKING_GAP = 0.05  # PGD accuracy this much above AutoAttack/Square's: possible gradient masking
SQUARE_QUERIES = 5000
_PART = re.compile(r"^(?:(clean|autoattack)|pgd-(\d+)-(\d+)|square(?:-(\d+))?)$")
_CHOICES = ("clean, pgd-STEPS-RESTARTS (e.g. pgd-50-10), autoattack, square[-QUERIES]; "
            "A+B for the worst case, @N for the first N points")


@dataclass(frozen=True)
class Attack:
    """One attack of a spec: kind (clean | pgd | autoattack | square) and its counts."""

    name: str
    kind: str
    steps: int = 0
    restarts: int = 0
    queries: int = 0


@dataclass(frozen=True)
class AttackSpec:
    """A parsed spec: its text, the chain of attacks (worst case over them), first-n limit."""

    name: str
    parts: tuple[Attack, ...]
    n: int | None = None


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


def _check_eps(eps):
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] (input units), got {eps}")


# ---------------------------------------------------------------- parsing
def _parse_part(text: str) -> Attack:
    m = _PART.match(text)
    if not m:
        raise ValueError(f"unknown attack {text!r}; choose from {_CHOICES}")
    named, steps, restarts, queries = m.groups()
    if named:
        return Attack(text, named)
    if steps is not None:
        steps, restarts = int(steps), int(restarts)
        if steps < 1 or restarts < 1:
            raise ValueError(f"attack {text!r}: PGD needs at least 1 step and 1 restart "
                             f"(pgd-STEPS-RESTARTS, e.g. pgd-50-10), got {steps} steps and "
                             f"{restarts} restarts")
        return Attack(text, "pgd", steps=steps, restarts=restarts)
    queries = SQUARE_QUERIES if queries is None else int(queries)
    if queries < 1:
        raise ValueError(f"attack {text!r}: Square needs at least 1 query")
    return Attack(text, "square", queries=queries)


def _parse_spec(text: str) -> AttackSpec:
    chain, at, n = text.partition("@")
    if at and not (n.isdigit() and int(n) > 0):
        raise ValueError(f"attack {text!r}: @N needs a positive number of points, got {n!r}")
    parts = tuple(_parse_part(p.strip()) for p in chain.split("+"))
    return AttackSpec(text, parts, int(n) if at else None)


def parse_attacks(spec) -> tuple[AttackSpec, ...]:
    """'clean,pgd-50-10,pgd-50-10+autoattack@500' (or a sequence of names) -> parsed specs."""
    names = [a.strip() for a in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [a for a in names if a]
    if not names:
        raise ValueError(f"no attack given; choose from {_CHOICES}")
    return tuple(_parse_spec(a) for a in names)


def needs_torchattacks(specs) -> bool:
    return any(p.kind in ("autoattack", "square") for s in specs for p in s.parts)


def torchattacks():
    try:
        import torchattacks
    except ImportError as e:
        raise ImportError("the autoattack and square evaluations need the optional package "
                          "torchattacks: pip install --no-deps torchattacks") from e
    return torchattacks


# ---------------------------------------------------------------- per-batch attacks
def pgd_robust(model, x, y, eps: float, alpha: float, steps: int, restarts: int = 1,
               generator=None, init=None, early_stop: bool = True, lo: float = 0.0,
               hi: float = 1.0) -> torch.Tensor:
    """bool [B]: True where `model` (in eval mode) classifies x and every PGD iterate x + delta
    of every restart correctly. The restarts run as one batch; with early_stop, every restart
    of a point stops once one of them fooled it (the result does not change: such a point is
    not robust whatever the other restarts do). init: the random starts, [restarts * B, ...]
    restart-major (default: U([-eps, eps]) clipped to the box, drawn from `generator`)."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    owner = torch.arange(len(x), device=x.device).repeat(restarts)
    xr = x.repeat(restarts, *([1] * (x.dim() - 1)))
    delta = ops.random_delta(xr, eps, lo, hi, True, generator) if init is None else init.clone()
    rows = robust[owner].nonzero().squeeze(1)  # attack only the points correct at x
    xr, yr, delta, owner = xr[rows], y.repeat(restarts)[rows], delta[rows], owner[rows]
    for step in range(steps + 1):
        xin = (xr + delta).requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps):
            logits = model(xin)
            robust[owner[logits.argmax(1) != yr]] = False
            if step == steps:
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, yr, reduction="sum"), xin)
        ops.attack_step_(xr, delta, grad, alpha, eps, lo, hi, True)
        if early_stop:
            keep = robust[owner].nonzero().squeeze(1)
            xr, yr, delta, owner = xr[keep], yr[keep], delta[keep], owner[keep]
    return robust


def _pgd_fn(model, part: Attack, eps: float, select: str, gen):
    alpha = eps / 4
    if select == "any":
        return lambda x, y: pgd_robust(model, x, y, eps, alpha, part.steps, part.restarts, gen)

    def max_loss(x, y):
        delta = attacks.pgd(model, x, y, eps, alpha, part.steps, part.restarts, generator=gen)
        with torch.no_grad():
            return model(x + delta).argmax(1) == y

    return max_loss


def _num_classes(model, x) -> int:
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    if n_classes < 4:  # AutoAttack's targeted DLR loss reads the 4 largest logits
        raise ValueError(f"AutoAttack (standard) needs at least 4 classes, got {n_classes}")
    return n_classes


def _torchattacks_fn(model, part: Attack, eps: float, seed: int):
    """Per-batch robust mask of torchattacks' AutoAttack (standard, L-inf) or Square."""
    ta = torchattacks()
    made = {}

    def robust(x, y):
        if "atk" not in made:
            made["atk"] = (ta.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                         n_classes=_num_classes(model, x), seed=seed)
                           if part.kind == "autoattack" else
                           ta.Square(model, norm="Linf", eps=eps, n_queries=part.queries,
                                     n_restarts=1, seed=seed))
        x_adv = made["atk"](x, y)
        with torch.no_grad():
            # torchattacks' output is not trusted blindly: a point outside the eps-ball or the
            # input box is no adversarial example, and the clean point is scored instead
            dist = (x_adv - x).abs().flatten(1).amax(1)
            valid = (dist <= eps * (1 + 1e-5) + 1e-7) & (x_adv.flatten(1).amin(1) >= -1e-6) & (
                x_adv.flatten(1).amax(1) <= 1 + 1e-6)
            return model(torch.where(valid.view(-1, *[1] * (x.dim() - 1)), x_adv, x)).argmax(1) == y

    return robust


def _robust_fn(model, part: Attack, eps: float, seed: int, select: str, device):
    """fn(x, y) -> bool [B] mask of the points `part` does not fool."""
    if part.kind == "clean":
        def clean(x, y):
            with torch.no_grad():
                return model(x).argmax(1) == y
        return clean
    if part.kind == "pgd":
        return _pgd_fn(model, part, eps, select, torch.Generator(device).manual_seed(seed))
    return _torchattacks_fn(model, part, eps, seed)


# ---------------------------------------------------------------- over a dataset
def _mask(model, dataset, robust_fn, alive, batch_size, device, desc, progress):
    """bool [len(dataset)]: alive & robust_fn, robust_fn run only on the alive points."""
    dev = _device(model, device)
    out = torch.zeros(len(dataset), dtype=torch.bool)
    start = 0
    with eval_mode(model):
        for x, y in tqdm(make_loader(dataset, batch_size), desc=desc, disable=not progress,
                         leave=False):
            todo = alive[start:start + len(y)].nonzero().squeeze(1)
            if len(todo):
                x, y = x[todo].to(dev), y[todo].to(dev)
                attacks.check_inputs("evaluation", model, x, y)
                out[start + todo] = robust_fn(x, y).cpu()
            start += len(y)
    return out


class _Masks:
    """Per-point robust masks of chains of attacks, computed once and reused by longer chains
    and by specs on fewer points (the first points of a mask are the same points)."""

    def __init__(self, model, dataset, eps, batch_size, device, seed, progress, pgd_select):
        self.model, self.dataset, self.eps = model, dataset, eps
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.progress, self.pgd_select = progress, pgd_select
        self.done: dict[tuple, torch.Tensor] = {}

    def get(self, parts: tuple[Attack, ...], n: int) -> torch.Tensor:
        known = self.done.get(parts)
        if known is not None and len(known) >= n:
            return known[:n]
        alive = self.get(parts[:-1], n) if len(parts) > 1 else torch.ones(n, dtype=torch.bool)
        part = parts[-1]
        fn = _robust_fn(self.model, part, self.eps, self.seed, self.pgd_select,
                        _device(self.model, self.device))
        mask = _mask(self.model, first(self.dataset, n), fn, alive, self.batch_size,
                     self.device, "+".join(p.name for p in parts), self.progress)
        self.done[parts] = mask
        return mask


def _masking(specs, masks: _Masks, n_points: int) -> list[dict]:
    """Gradient-masking checks: each spec with AutoAttack or Square against PGD on its points
    (its own first attack when that is PGD, else the first PGD spec)."""
    pgd_specs = [s.parts for s in specs if len(s.parts) == 1 and s.parts[0].kind == "pgd"]
    out = []
    for s in specs:
        if not any(p.kind in ("autoattack", "square") for p in s.parts):
            continue
        ref = s.parts[:1] if s.parts[0].kind == "pgd" else (pgd_specs or [None])[0]
        if ref is None:
            continue
        n = min(s.n or n_points, n_points)
        pgd = masks.get(ref, n).float().mean().item()
        worst = masks.get(s.parts, n).float().mean().item()
        out.append({"pgd": ref[0].name, "attack": s.name, "n": n, "pgd_acc": pgd,
                    "attack_acc": worst, "gap": pgd - worst, "flag": pgd - worst > MASKING_GAP})
    return out


def masking_warnings(res: dict) -> list[str]:
    """One line per flagged gradient-masking check of an `evaluate` result (or final.json)."""
    return [f"possible gradient masking: {m['pgd']} {m['pgd_acc']:.2%} vs {m['attack']} "
            f"{m['attack_acc']:.2%} on the first {m['n']} points (gap "
            f"{100 * m['gap']:.1f} points > {100 * MASKING_GAP:g})"
            for m in res.get("masking", []) if m["flag"]]


def evaluate(model, dataset, eps: float, attacks=DEFAULT_ATTACKS, n: int | None = 1000,
             batch_size: int = 256, device=None, seed: int = 0, progress: bool = True,
             pgd_select: str = "any") -> dict:
    """Accuracy under each attack spec: {"clean": acc, "pgd-50-10": acc, ..., "n": points,
    "points": {spec: points}, "time_s": {spec: seconds}, "masking": [checks]}. Clean accuracy is
    on the same n points; a spec with @N on the first min(N, n)."""
    _check_eps(eps)
    if pgd_select not in PGD_SELECT:
        raise ValueError(f"pgd_select must be one of {PGD_SELECT}, got {pgd_select!r}")
    specs = parse_attacks(attacks)
    ds = first(dataset, n)
    masks = _Masks(model, ds, eps, batch_size, device, seed, progress, pgd_select)
    out, points, times = {"n": len(ds)}, {}, {}
    for s in specs:
        t0 = time.perf_counter()
        points[s.name] = min(s.n or len(ds), len(ds))
        out[s.name] = masks.get(s.parts, points[s.name]).float().mean().item()
        times[s.name] = time.perf_counter() - t0
    out.update(points=points, time_s=times, masking=_masking(specs, masks, len(ds)))
    return out


def clean_accuracy(model, dataset, n: int | None = None, batch_size: int = 256, device=None,
                   progress: bool = True) -> float:
    return evaluate(model, dataset, 0.0, "clean", n, batch_size, device, 0, progress)["clean"]


def pgd_accuracy(model, dataset, eps: float, n: int | None = 1000, steps: int = 50,
                 restarts: int = 10, batch_size: int = 256, device=None, seed: int = 0,
                 progress: bool = True, pgd_select: str = "any") -> float:
    """Accuracy under L-inf PGD-`steps`-`restarts` (alpha = eps/4; see the module doc for
    pgd_select). Random starts come from a generator seeded with `seed`, so the result is
    reproducible and the global RNG untouched."""
    name = f"pgd-{steps}-{restarts}"
    return evaluate(model, dataset, eps, name, n, batch_size, device, seed, progress,
                    pgd_select)[name]


def autoattack_accuracy(model, dataset, eps: float, n: int | None = 1000,
                        batch_size: int = 256, device=None, seed: int = 0,
                        progress: bool = True) -> float:
    """Accuracy under AutoAttack (standard version, L-inf) of the `torchattacks` package."""
    return evaluate(model, dataset, eps, "autoattack", n, batch_size, device, seed,
                    progress)["autoattack"]
