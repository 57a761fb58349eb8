"""Adversarial-training methods as one training step each, sharing `train_step`.

A method says which perturbation the model trains on (`perturb`) and which regulariser is
added to the loss (`regularizer`); `train_step` does the rest identically for all of them.
eps and step sizes are in input units ([0, 1] pixels).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import attacks, ops
from ..gradalign import GradAlignLoss


class Method:
    """Base: plain training on clean inputs."""

    name = "standard"
    double_backprop = False

    def __init__(self, eps: float = 0.0, lo: float = 0.0, hi: float = 1.0):
        if eps < 0:
            raise ValueError(f"{self.name}: eps must be >= 0, got {eps}")
        self.eps, self.lo, self.hi = float(eps), lo, hi

    def perturb(self, model, x, y):
        """-> (delta, grad at x or None). delta is detached."""
        return torch.zeros_like(x), None

    def regularizer(self, model, x, y, grad_clean):
        return None

    def state_dict(self) -> dict:
        """What a resumed run needs besides eps and the options (checkpointed by the trainer)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self):
        opts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


class FGSM(Method):
    """FGSM from zero, step alpha = eps (Goodfellow et al. 2015)."""

    name = "fgsm"

    def perturb(self, model, x, y):
        return attacks.fgsm(model, x, y, self.eps, lo=self.lo, hi=self.hi)


class FGSMRS(Method):
    """FGSM from a uniform random start, alpha = 1.25 eps (Wong et al. 2020)."""

    name = "fgsm_rs"

    def __init__(self, eps, alpha=None, **kw):
        super().__init__(eps, **kw)
        self.alpha = 1.25 * self.eps if alpha is None else float(alpha)

    def perturb(self, model, x, y):
        return attacks.fgsm_rs(model, x, y, self.eps, self.alpha, lo=self.lo, hi=self.hi), None


class NFGSM(Method):
    """N-FGSM (de Jorge et al. 2022): noise U(+-2 eps), alpha = eps, no eps-ball projection."""

    name = "nfgsm"

    def __init__(self, eps, alpha=None, noise_mult=2.0, **kw):
        super().__init__(eps, **kw)
        self.alpha = self.eps if alpha is None else float(alpha)
        self.noise_mult = float(noise_mult)

    def perturb(self, model, x, y):
        return attacks.nfgsm(model, x, y, self.eps, self.alpha, self.noise_mult, lo=self.lo,
                             hi=self.hi), None


class PGD(Method):
    """PGD-k adversarial training (Madry et al. 2018), alpha = 2.5 eps / k by default."""

    name = "pgd"

    def __init__(self, eps, steps=10, alpha=None, **kw):
        super().__init__(eps, **kw)
        self.steps = int(steps)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else float(alpha)

    def perturb(self, model, x, y):
        return attacks.pgd(model, x, y, self.eps, self.alpha, self.steps, lo=self.lo,
                           hi=self.hi), None


class GradAlign(FGSM):
    """FGSM + GradAlign (Andriushchenko & Flammarion 2020): the FGSM gradient is reused as the
    clean gradient of the regulariser. Extra keyword options go to GradAlignLoss."""

    name = "gradalign"
    double_backprop = True

    def __init__(self, eps, lam, **kw):
        lo, hi = kw.pop("lo", 0.0), kw.pop("hi", 1.0)
        super().__init__(eps, lo=lo, hi=hi)
        self.lam = float(lam)
        self._loss = GradAlignLoss(self.eps, self.lam, **kw)

    @property
    def last_cos(self):
        return self._loss.last_cos

    def set_eps(self, eps: float) -> None:
        """Changes eps in place (the trainer's eps warm-up), keeping the regulariser's state
        (its `every` call counter)."""
        self.eps = float(eps)
        self._loss.eps = self.eps

    def regularizer(self, model, x, y, grad_clean):
        return self._loss(model, x, y, grad_clean=grad_clean)

    def state_dict(self) -> dict:
        return dict(self._loss.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self._loss.load_state_dict(state)


def _per_sample_input_grad(model, x, y, create_graph):
    """Input gradient of the summed loss (so each row is that sample's own gradient)."""
    xin = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xin), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xin, create_graph=create_graph)
    return g, loss


class CURE(FGSM):
    """FGSM + CURE (Moosavi-Dezfooli et al. 2019): lam * mean_i |grad l(x_i + h z_i) -
    grad l(x_i)|^2, z = sign(grad l(x)), h = eps by default; both gradients double-backpropagated."""

    name = "cure"
    double_backprop = True

    def __init__(self, eps, lam, h=None, **kw):
        super().__init__(eps, **kw)
        self.lam = float(lam)
        self.h = self.eps if h is None else float(h)

    def regularizer(self, model, x, y, grad_clean):
        z = torch.sign(grad_clean)
        g0, _ = _per_sample_input_grad(model, x, y, True)
        g1, _ = _per_sample_input_grad(model, x + self.h * z, y, True)
        return self.lam * (g1 - g0).flatten(1).pow(2).sum(1).mean()


class LLR(Method):
    """Local linearity regularisation (Qin et al. 2019) on clean training:
    lam * gamma + mu * |delta^T grad l(x)|, gamma = |l(x+delta) - l(x) - delta^T grad l(x)|,
    delta maximising gamma over the eps-ball by `steps` signed steps from a random start."""

    name = "llr"
    double_backprop = True

    def __init__(self, eps, lam=4.0, mu=3.0, steps=2, **kw):
        super().__init__(eps, **kw)
        self.lam, self.mu, self.steps = float(lam), float(mu), int(steps)

    def _gamma(self, model, x, y, delta, loss0, g0):
        loss_d = F.cross_entropy(model(x + delta), y, reduction="none")
        lin = (delta * g0).flatten(1).sum(1)
        return (loss_d - loss0 - lin).abs(), lin

    def regularizer(self, model, x, y, grad_clean):
        xin = x.detach().requires_grad_(True)
        loss0 = F.cross_entropy(model(xin), y, reduction="none")
        (g0,) = torch.autograd.grad(loss0.sum(), xin, create_graph=True)
        delta = ops.random_delta(x, self.eps, self.lo, self.hi, True)
        for _ in range(self.steps):  # inner maximisation, no graph to the parameters
            d = delta.detach().requires_grad_(True)
            gamma, _ = self._gamma(model, x, y, d, loss0.detach(), g0.detach())
            (gd,) = torch.autograd.grad(gamma.sum(), d)
            delta = ops.attack_step(x, delta, gd, self.eps / 2, self.eps, self.lo, self.hi, True)
        gamma, lin = self._gamma(model, x, y, delta, loss0, g0)
        return self.lam * gamma.mean() + self.mu * lin.abs().mean()


METHODS = {m.name: m for m in (Method, FGSM, FGSMRS, NFGSM, PGD, GradAlign, CURE, LLR)}


def make_method(name: str, eps: float, **kw) -> Method:
    """METHODS[name](eps, **kw), with a clear error for an unknown name."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name](eps, **kw)


def train_step(method: Method, model, optimizer, x, y, amp_dtype=None, scaler=None):
    """One training step of `method`: perturb, loss at x + delta (+ regulariser), update.

    The training loss is backpropagated before the regulariser's forward, so its activations
    are freed before the regulariser builds its graphs (GradAlign: the peak holds one of the
    two, not both). The parameter gradients are the same as one backward of loss + reg (their
    graphs are disjoint) and the forwards run in the same order (BatchNorm's running
    statistics see the same sequence of batches). Under DistributedDataParallel the two are
    summed and backpropagated once, as DDP reduces gradients on every backward.

    Returns detached 0-dim tensors (no device sync): loss, reg, correct (on x + delta).
    amp_dtype: torch.bfloat16 / torch.float16 for autocast; fp16 needs a GradScaler `scaler`.
    """
    model.train()
    dev = x.device.type
    amp = (torch.autocast(dev, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    scaled = scaler.scale if scaler is not None else (lambda t: t)
    split = not isinstance(model, torch.nn.parallel.DistributedDataParallel)
    with amp:
        delta, grad_clean = method.perturb(model, x, y)
        logits = model(x + delta)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    if split:
        scaled(loss).backward()
    with amp:
        reg = method.regularizer(model, x, y, grad_clean)
    if not split:
        scaled(loss if reg is None else loss + reg).backward()
    elif reg is not None and reg.requires_grad:
        scaled(reg).backward()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    zero = loss.detach() * 0
    return {"loss": loss.detach(), "reg": zero if reg is None else reg.detach(),
            "correct": (logits.argmax(1) == y).sum().detach()}
