"""L-inf attacks built on the fused ops (ops.attack_step_, ops.random_delta).

Inputs live in the box [lo, hi] (pixels in [0, 1] by default: models normalise internally),
eps and alpha are in the same units. Every function returns detached tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from typing import Callable

from . import ops

# loss_fn(logits, y) -> scalar loss: what every attack and GradAlignLoss differentiate.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def input_gradient(model, x, y, loss_fn: LossFn = F.cross_entropy, delta=None) -> torch.Tensor:
    """Gradient of loss_fn(model(x + delta), y) in the input; no graph kept, and no parameter
    gradients computed (autograd only walks the path to the input)."""
    xin = (x if delta is None else x + delta).detach().requires_grad_(True)
    loss = loss_fn(model(xin), y)
    (grad,) = torch.autograd.grad(loss, xin)
    return grad


def fgsm(model, x, y, eps, loss_fn: LossFn = F.cross_entropy, lo=0.0, hi=1.0):
    """FGSM from zero, step eps. Returns (delta, grad at x): GradAlign reuses the gradient."""
    grad = input_gradient(model, x, y, loss_fn)
    delta = ops.attack_step(x, torch.zeros_like(x), grad, eps, eps, lo, hi, True)
    return delta, grad


def fgsm_rs(model, x, y, eps, alpha=None, loss_fn: LossFn = F.cross_entropy, lo=0.0, hi=1.0,
            generator=None):
    """FGSM from a uniform random start in the eps-ball (Wong et al. 2020), alpha = 1.25 eps."""
    alpha = 1.25 * eps if alpha is None else alpha
    delta = ops.random_delta(x, eps, lo, hi, True, generator)
    grad = input_gradient(model, x, y, loss_fn, delta)
    return ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, True)


def nfgsm(model, x, y, eps, alpha=None, noise_mult=2.0, loss_fn: LossFn = F.cross_entropy,
          lo=0.0, hi=1.0, generator=None):
    """N-FGSM (de Jorge et al. 2022): noise U(+-noise_mult*eps), step alpha = eps, no
    projection onto the eps-ball; x + delta stays in the input box."""
    alpha = eps if alpha is None else alpha
    delta = ops.random_delta(x, noise_mult * eps, lo, hi, False, generator)
    grad = input_gradient(model, x, y, loss_fn, delta)
    return ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, False)


def pgd(model, x, y, eps, alpha, steps, restarts=1, loss_fn: LossFn = F.cross_entropy, lo=0.0,
        hi=1.0, generator=None):
    """L-inf PGD with uniform random start; over restarts keeps, per sample, the delta of
    highest loss (the authors' attack_pgd)."""
    best = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    for _ in range(restarts):
        delta = ops.random_delta(x, eps, lo, hi, True, generator)
        for _ in range(steps):
            grad = input_gradient(model, x, y, loss_fn, delta)
            ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, True)
        with torch.no_grad():
            loss = F.cross_entropy(model(x + delta), y, reduction="none").float()
        better = loss > best_loss
        best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), delta, best)
        best_loss = torch.where(better, loss, best_loss)
    return best
