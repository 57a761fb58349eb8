"""Catastrophic-overfitting (CO) monitoring during training.

On a fixed held-out batch: PGD accuracy (PGD-10, alpha = eps/4, one restart), FGSM accuracy and
the gradient alignment E cos(grad_x l(x), grad_x l(x + eta)), eta ~ U([-eps, eps]^d).

A CO event is a measurement where the model is robust to a single-step attack but not to a
multi-step one, either
  (a) PGD accuracy collapses, below (1 - rel_drop) times its best so far (once that best has
      reached min_best), while FGSM accuracy stays high (no lower than at the best PGD point
      minus fgsm_tol); or
  (b) with the training eps at its full value (after any warm-up), FGSM accuracy is at least
      min_fgsm while PGD accuracy is below fgsm_ratio times it (CO before any robustness).
Random starts and noise come from generators seeded at every measurement, so measuring neither
changes nor depends on the global RNG.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import attacks
from ..alignment import alignment_sum
from .evaluation import eval_mode


class COMonitor:
    """Measures a model on (x, y) and tracks the best PGD accuracy and CO events.

    Args:
        x, y: the held-out batch (on the model's device).
        eps: the attack radius, input units.
        pgd_steps, pgd_alpha: PGD of the measurement (alpha = eps/4 by default).
        rel_drop, fgsm_tol, min_best, min_fgsm, fgsm_ratio: the CO rule (module doc).
        batch_size: chunk size of the measurement.
        bounds: the input box of x (see gradalign_fast.attacks).

    From your own training loop::

        monitor = COMonitor(x_held_out, y_held_out, eps=8 / 255)
        if step % 200 == 0:
            row = monitor.check(model)  # clean / FGSM / PGD accuracy, grad_align, co
            if row["co"]:
                print("catastrophic overfitting at step", step, row)
    """

    def __init__(self, x, y, eps: float, pgd_steps: int = 10, pgd_alpha: float | None = None,
                 rel_drop: float = 0.5, fgsm_tol: float = 0.05, min_best: float = 0.2,
                 min_fgsm: float = 0.3, fgsm_ratio: float = 0.1, batch_size: int = 256,
                 seed: int = 0, bounds=attacks.BOUNDS):
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"monitor batch: need as many labels as images (> 0), got "
                             f"{len(x)} and {len(y)}")
        if not 0 < rel_drop < 1:
            raise ValueError(f"rel_drop must be in (0, 1), got {rel_drop}")
        self.bounds = attacks.check_bounds("COMonitor", bounds)
        self.x, self.y = x, y
        self.eps = attacks.check_eps("COMonitor", eps, self.bounds)
        self.pgd_steps = int(pgd_steps)
        self.pgd_alpha = self.eps / 4 if pgd_alpha is None else float(pgd_alpha)
        self.rel_drop, self.fgsm_tol, self.min_best = rel_drop, fgsm_tol, min_best
        self.min_fgsm, self.fgsm_ratio = min_fgsm, fgsm_ratio
        self.batch_size, self.seed = batch_size, seed
        self.best_pgd = -1.0
        self.fgsm_at_best = 0.0
        self.co_event: dict | None = None  # the first row flagged as CO

    def measure(self, model) -> dict:
        """{"clean_acc", "fgsm_acc", "pgd_acc", "grad_align"} on the held-out batch, the model
        in eval mode; grad_align is gradalign_fast.alignment's (NaN when no sample is valid)."""
        gen = torch.Generator(self.x.device).manual_seed(self.seed)
        sums = torch.zeros(5, dtype=torch.float64, device=self.x.device)
        with eval_mode(model):
            for x, y in zip(self.x.split(self.batch_size), self.y.split(self.batch_size)):
                d_fgsm, g_clean = attacks.fgsm(model, x, y, self.eps, bounds=self.bounds)
                d_pgd = attacks.pgd(model, x, y, self.eps, self.pgd_alpha, self.pgd_steps,
                                    bounds=self.bounds, generator=gen)
                cos_sum, n_valid = alignment_sum(model, x, y, self.eps, grad_clean=g_clean,
                                                 generator=gen)
                with torch.no_grad():
                    sums += torch.stack([(model(x + d).argmax(1) == y).sum().double()
                                         for d in (0 * x, d_fgsm, d_pgd)]
                                        + [cos_sum.double(), n_valid.double()])
        clean, fgsm, pgd, cos_sum, n_valid = sums.tolist()
        n = len(self.x)
        return {"clean_acc": clean / n, "fgsm_acc": fgsm / n, "pgd_acc": pgd / n,
                "grad_align": cos_sum / n_valid if n_valid else math.nan}

    def check(self, model, eps: float | None = None) -> dict:
        """measure() then update(): one call from a training loop every k steps. eps: the
        training eps now, when it is ramped up (the rule's case (b) waits for the full eps).
        Returns the row with "co" (this measurement shows CO) and "best"; the first CO row
        stays in `co_event`."""
        row = self.measure(model)
        if eps is not None:
            row["eps"] = float(eps)
        return self.update(row)

    def update(self, row: dict) -> dict:
        """Adds to a measured row "co" (this row is a CO event) and "best" (new best PGD
        accuracy); returns the row. row["eps"], when given, is the current training eps."""
        pgd, fgsm = row["pgd_acc"], row["fgsm_acc"]
        collapsed = (self.best_pgd >= self.min_best and pgd < (1 - self.rel_drop) * self.best_pgd
                     and fgsm >= self.fgsm_at_best - self.fgsm_tol)
        full_eps = row.get("eps", self.eps) >= self.eps * (1 - 1e-6)
        fgsm_only = full_eps and fgsm >= self.min_fgsm and pgd < self.fgsm_ratio * fgsm
        co = collapsed or fgsm_only
        best = pgd > self.best_pgd
        if best:
            self.best_pgd, self.fgsm_at_best = pgd, fgsm
        if co and self.co_event is None:
            self.co_event = dict(row)
        row.update(co=bool(co), best=bool(best))
        return row

    def state_dict(self) -> dict:
        return {"best_pgd": self.best_pgd, "fgsm_at_best": self.fgsm_at_best,
                "co_event": json.dumps(self.co_event)}

    def load_state_dict(self, state: dict) -> None:
        self.best_pgd = float(state["best_pgd"])
        self.fgsm_at_best = float(state["fgsm_at_best"])
        self.co_event = json.loads(state["co_event"])


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as rows come."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def keep_until(self, iteration: int) -> None:
        """Drops the rows after `iteration` (those of an interrupted epoch, before a resume)."""
        rows = [r for r in self.read() if r["iteration"] <= iteration]
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
