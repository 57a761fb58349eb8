"""Accuracy of a model under attack: clean, L-inf PGD with restarts (PGD-50-10 by default, the
paper's evaluation), AutoAttack and the gradient-free Square attack (both through the optional
`torchattacks` package, see `autoattack`), and worst cases over several attacks.

Attack specs (`parse_attacks`), comma-separated:

* `clean`; `pgd-STEPS-RESTARTS` (e.g. `pgd-50-10`); `autoattack` (the standard version: APGD-CE,
  APGD-T, FAB-T with 100 iterations, Square with 5000 queries); `autoattack-fast` (10
  iterations); `square` (5000 queries, as in AutoAttack) or `square-QUERIES`;
* `A+B+...`: the worst case, each attack run only on the points the ones before it left
  robust (e.g. `pgd-50-10+autoattack`: AutoAttack on the PGD-robust points only);
* a suffix `@N`: on the first N of the evaluated points only (e.g. `pgd-50-10+autoattack@500`).

PGD counts a point robust only if it is classified correctly at x and at every iterate of every
restart (the standard worst case); the restarts of a batch run as one batch, and a point stops
being attacked once any restart fooled it. `pgd_select="max_loss"` gives instead the authors'
attack_pgd: per point the final delta of the restart of highest loss, classified once (its
starts come from one generator per evaluation, so they depend on the batches). The default PGD
draws each point's starts from a generator seeded with (seed, the point's index), so its robust
set does not depend on the batch size; AutoAttack and Square run on fixed blocks of points
(`autoattack.BLOCK`) for the same reason. `evaluate` reports each attack's configuration.

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
from . import autoattack
from .autoattack import torchattacks  # noqa: F401  (the trainer checks the install with it)
from .datasets import first, make_loader

DEFAULT_ATTACKS = ("clean", "pgd-50-10")
PGD_SELECT = ("any", "max_loss")
MASKING_GAP = 0.05  # PGD accuracy this much above AutoAttack/Square's: possible gradient masking
_PART = re.compile(r"^(?:(clean|autoattack|autoattack-fast)|pgd-(\d+)-(\d+)|square(?:-(\d+))?)$")
_CHOICES = ("clean, pgd-STEPS-RESTARTS (e.g. pgd-50-10), autoattack, autoattack-fast, "
            "square[-QUERIES]; A+B for the worst case, @N for the first N points")
_AUTOATTACK_STEPS = {"autoattack": autoattack.STANDARD_ITERATIONS,
                     "autoattack-fast": autoattack.FAST_ITERATIONS}
_BLOCKED = ("autoattack", "square")  # kinds run on fixed blocks of points (autoattack.BLOCK)


@dataclass(frozen=True)
class Attack:
    """One attack of a spec: kind (clean | pgd | autoattack | square) and its counts (steps:
    PGD's or AutoAttack's iterations)."""

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
    if named in _AUTOATTACK_STEPS:
        return Attack(text, "autoattack", steps=_AUTOATTACK_STEPS[named],
                      queries=autoattack.SQUARE_QUERIES)
    if named:
        return Attack(text, named)
    if steps is not None:
        steps, restarts = int(steps), int(restarts)
        if steps < 1 or restarts < 1:
            raise ValueError(f"attack {text!r}: PGD needs at least 1 step and 1 restart "
                             f"(pgd-STEPS-RESTARTS, e.g. pgd-50-10), got {steps} steps and "
                             f"{restarts} restarts")
        return Attack(text, "pgd", steps=steps, restarts=restarts)
    queries = autoattack.SQUARE_QUERIES if queries is None else int(queries)
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
    return any(p.kind in _BLOCKED for s in specs for p in s.parts)


def attack_config(part: Attack, pgd_select: str = "any") -> dict:
    """What one part of a spec runs (iterations, restarts, targets, queries, chunk rule)."""
    if part.kind == "clean":
        return {"attack": "clean"}
    if part.kind == "pgd":
        starts = ("U([-eps, eps]) per point, seeded by (seed, point index)" if pgd_select == "any"
                  else "U([-eps, eps]) from one generator seeded by seed, batch after batch")
        return {"attack": "pgd", "steps": part.steps, "restarts": part.restarts,
                "alpha": "eps/4", "select": pgd_select, "starts": starts}
    return autoattack.config(part.kind, part.steps, part.queries)


def legend(names) -> list[str]:
    """One line per AutoAttack or Square configuration that the attack specs `names` (e.g. a
    table's columns, "pgd-50-10+autoattack@500") run: what a table reporting them must say."""
    seen, lines = set(), []
    for spec in parse_attacks([n for n in names if n != "clean"]):
        for part in spec.parts:
            if part.kind in ("clean", "pgd") or part.name in seen:
                continue
            seen.add(part.name)
            c = attack_config(part)
            if c["attack"] == "square":
                lines.append(f"{part.name}: Square, {c['queries']} queries, 1 restart "
                             f"({c['implementation']})")
                continue
            apgd, apgd_t, fab, square = c["components"]
            kind = "the standard AutoAttack" if c["standard"] else "a reduced AutoAttack"
            lines.append(f"{part.name}: {kind}: APGD-CE, APGD-T and FAB-T {apgd['iterations']} "
                         f"iterations (targeted: {apgd_t['targets']} targets), Square "
                         f"{square['queries']} queries, 1 restart each, on the points the "
                         f"earlier attacks left robust ({c['implementation']})")
    return lines


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


def point_starts(x, index, eps: float, restarts: int, seed: int) -> torch.Tensor:
    """PGD's random starts [restarts * B, ...] (restart-major) for the points x [B, ...] of
    dataset indices `index` [B]: per point U([-eps, eps]) from a generator seeded with
    (seed, index), clipped to the [0, 1] box; the same for a point whatever its batch."""
    per_point = [torch.empty((restarts, *x.shape[1:]), dtype=x.dtype).uniform_(
        -eps, eps, generator=torch.Generator().manual_seed((seed << 32) + int(i)))
        for i in index]
    d = torch.stack(per_point, 1).flatten(0, 1).to(x.device)  # [restarts * B, ...]
    xr = x.repeat(restarts, *([1] * (x.dim() - 1)))
    return (xr + d).clamp(0, 1) - xr


def _pgd_fn(model, part: Attack, eps: float, select: str, seed: int, device):
    alpha = eps / 4
    if select == "any":
        return lambda x, y, index: pgd_robust(
            model, x, y, eps, alpha, part.steps, part.restarts,
            init=point_starts(x, index, eps, part.restarts, seed))
    gen = torch.Generator(device).manual_seed(seed)

    def max_loss(x, y, index):
        delta = attacks.pgd(model, x, y, eps, alpha, part.steps, part.restarts, generator=gen)
        with torch.no_grad():
            return model(x + delta).argmax(1) == y

    return max_loss


def _torchattacks_fn(model, part: Attack, eps: float, seed: int):
    """fn(x, y) -> bool [B]: one block's robust mask under AutoAttack or Square."""
    return autoattack.robust_fn(model, part.kind, eps, seed, part.steps, part.queries)


def _robust_fn(model, part: Attack, eps: float, seed: int, select: str, device):
    """fn(x, y, index) -> bool [B] mask of the points `part` does not fool (index: the points'
    positions in the evaluated dataset)."""
    if part.kind == "clean":
        def clean(x, y, index):
            with torch.no_grad():
                return model(x).argmax(1) == y
        return clean
    if part.kind == "pgd":
        return _pgd_fn(model, part, eps, select, seed, device)
    fn = _torchattacks_fn(model, part, eps, seed)
    return lambda x, y, index: fn(x, y)


# ---------------------------------------------------------------- over a dataset
def _mask(model, dataset, robust_fn, alive, batch_size, device, desc, progress):
    """bool [len(dataset)]: alive & robust_fn, robust_fn run only on the alive points of each
    batch of `batch_size` consecutive points."""
    dev = _device(model, device)
    out = torch.zeros(len(dataset), dtype=torch.bool)
    start = 0
    with eval_mode(model):
        for x, y in tqdm(make_loader(dataset, batch_size), desc=desc, disable=not progress,
                         leave=False):
            todo = alive[start:start + len(y)].nonzero().squeeze(1)
            if len(todo):
                xa, ya = x[todo].to(dev), y[todo].to(dev)
                attacks.check_inputs("evaluation", model, xa, ya)
                out[start + todo] = robust_fn(xa, ya, start + todo).cpu()
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
        blocked = any(p.kind in _BLOCKED for p in parts)
        if known is not None and (len(known) == n or len(known) > n and (
                not blocked or n % autoattack.BLOCK == 0)):  # the same blocks: the same mask
            return known[:n]
        alive = self.get(parts[:-1], n) if len(parts) > 1 else torch.ones(n, dtype=torch.bool)
        part = parts[-1]
        fn = _robust_fn(self.model, part, self.eps, self.seed, self.pgd_select,
                        _device(self.model, self.device))
        batch = autoattack.BLOCK if part.kind in _BLOCKED else self.batch_size
        mask = _mask(self.model, first(self.dataset, n), fn, alive, batch,
                     self.device, "+".join(p.name for p in parts), self.progress)
        self.done[parts] = mask
        return mask


def _masking(specs, masks: _Masks, n_points: int) -> list[dict]:
    """Gradient-masking checks: each spec with AutoAttack or Square against PGD on its points
    (its own first attack when that is PGD, else the first PGD spec)."""
    pgd_specs = [s.parts for s in specs if len(s.parts) == 1 and s.parts[0].kind == "pgd"]
    out = []
    for s in specs:
        if not any(p.kind in _BLOCKED for p in s.parts):
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
    "points": {spec: points}, "time_s": {spec: seconds}, "masking": [checks],
    "attack_configs": {attack: what it runs}}. Clean accuracy is on the same n points; a spec
    with @N on the first min(N, n)."""
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
    configs = {p.name: attack_config(p, pgd_select) for s in specs for p in s.parts}
    out.update(points=points, time_s=times, masking=_masking(specs, masks, len(ds)),
               attack_configs=configs)
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
    """Accuracy under the standard L-inf AutoAttack (`autoattack`, from torchattacks)."""
    return evaluate(model, dataset, eps, "autoattack", n, batch_size, device, seed,
                    progress)["autoattack"]
