"""Pure-PyTorch reference of every op and of GradAlign itself.

This module is the tests' oracle (run it in float64) and the fallback when the compiled ops are
not available. It follows the authors' code (github.com/tml-epfl/understanding-fast-adv-training,
train.py) as closely as possible; each function says where it departs from it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- ops (same contracts as C++)
def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample cosine of a, b: [B, ...] -> (cos, norm_a, norm_b), each [B].

    cos is 0 where either norm is 0. Computed in float32 (float64 for float64 inputs).
    """
    acc = _acc_dtype(a.dtype)
    a2 = a.reshape(a.shape[0], -1).to(acc)
    b2 = b.reshape(b.shape[0], -1).to(acc)
    # vector_norm's backward is 0 (not NaN) at a zero vector.
    norm_a = torch.linalg.vector_norm(a2, dim=1)
    norm_b = torch.linalg.vector_norm(b2, dim=1)
    valid = (norm_a > 0) & (norm_b > 0)
    denom = torch.where(valid, norm_a * norm_b, torch.ones_like(norm_a))
    cos = torch.where(valid, (a2 * b2).sum(1) / denom, torch.zeros_like(norm_a))
    return cos, norm_a.detach(), norm_b.detach()


def cosine_backward(grad_cos, a, b, cos, norm_a, norm_b) -> torch.Tensor:
    """d(sum grad_cos * cos)/da, shaped like a; 0 for samples with a zero norm."""
    valid = (norm_a > 0) & (norm_b > 0)
    one = torch.ones_like(norm_a)
    inv_ab = torch.where(valid, 1.0 / torch.where(valid, norm_a * norm_b, one), 0 * one)
    cos_over_aa = torch.where(valid, cos / torch.where(valid, norm_a * norm_a, one), 0 * one)
    g = torch.where(valid, grad_cos.to(norm_a.dtype), 0 * one)
    view = (-1,) + (1,) * (a.dim() - 1)
    math = _acc_dtype(a.dtype)
    out = g.view(view) * (b.to(math) * inv_ab.view(view) - a.to(math) * cos_over_aa.view(view))
    return out.to(a.dtype)


def attack_step(x, delta, grad, alpha, eps, lo, hi, project) -> torch.Tensor:
    """One signed-gradient step: delta + alpha*sign(grad), [eps-ball], clipped so x+delta in box."""
    d = delta + alpha * torch.sign(grad)
    if project:
        d = torch.clamp(d, -eps, eps)
    return torch.clamp(x + d, lo, hi) - x


def random_delta(x, radius, lo, hi, clip_to_box, generator=None) -> torch.Tensor:
    """delta ~ U([-radius, radius]^d) shaped like x; optionally clipped so x+delta is in box."""
    d = torch.empty_like(x).uniform_(-radius, radius, generator=generator)
    return torch.clamp(x + d, lo, hi) - x if clip_to_box else d


# ---------------------------------------------------------------- attacks
def relu_affine_backward(grad, x, scale, shift) -> torch.Tensor:
    """grad where x * scale[c] + shift[c] > 0 (c = dim 1), else 0: the backward of
    relu(x * scale + shift) with respect to its input. x, grad: [B, C, ...]; scale, shift: [C]."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    pre = torch.addcmul(shift.view(view), x, scale.view(view))
    return torch.where(pre > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


def input_grad(model, x, y, loss_fn: LossFn = F.cross_entropy, delta=None,
               create_graph=False) -> torch.Tensor:
    """Gradient of loss_fn(model(x + delta), y) with respect to the input (authors'
    get_input_grad). With create_graph the result is differentiable in the parameters."""
    delta = torch.zeros_like(x) if delta is None else delta
    delta = delta.detach().clone().requires_grad_(True)
    loss = loss_fn(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def fgsm(model, x, y, eps, loss_fn=F.cross_entropy, lo=0.0, hi=1.0):
    """FGSM with zero init, step eps: returns (delta, grad at x)."""
    grad = input_grad(model, x, y, loss_fn)
    return attack_step(x, torch.zeros_like(x), grad, eps, eps, lo, hi, True), grad


def fgsm_rs(model, x, y, eps, alpha=None, loss_fn=F.cross_entropy, lo=0.0, hi=1.0,
            generator=None):
    """FGSM from a uniform random start (Wong et al. 2020), alpha = 1.25 eps by default."""
    alpha = 1.25 * eps if alpha is None else alpha
    delta = random_delta(x, eps, lo, hi, True, generator)
    grad = input_grad(model, x, y, loss_fn, delta)
    return attack_step(x, delta, grad, alpha, eps, lo, hi, True)


def nfgsm(model, x, y, eps, alpha=None, noise_mult=2.0, loss_fn=F.cross_entropy, lo=0.0,
          hi=1.0, generator=None):
    """N-FGSM (de Jorge et al. 2022): noise U(+-2 eps), step alpha = eps, no eps-ball
    projection; x + delta is kept in the input box."""
    alpha = eps if alpha is None else alpha
    delta = random_delta(x, noise_mult * eps, lo, hi, False, generator)
    grad = input_grad(model, x, y, loss_fn, delta)
    return attack_step(x, delta, grad, alpha, eps, lo, hi, False)


def pgd(model, x, y, eps, alpha, steps, restarts=1, loss_fn=F.cross_entropy, lo=0.0, hi=1.0,
        generator=None):
    """L-inf PGD with random start and restarts; keeps, per sample, the first delta that
    fools the model (authors' attack_pgd)."""
    best = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    for _ in range(restarts):
        delta = random_delta(x, eps, lo, hi, True, generator)
        for _ in range(steps):
            grad = input_grad(model, x, y, loss_fn, delta)
            delta = attack_step(x, delta, grad, alpha, eps, lo, hi, True)
        with torch.no_grad():
            loss = F.cross_entropy(model(x + delta), y, reduction="none")
        better = loss > best_loss
        best[better] = delta[better]
        best_loss = torch.where(better, loss, best_loss)
    return best


# ---------------------------------------------------------------- GradAlign
def gradalign_regularizer(model, x, y, eps, lam, grad_clean=None, noise=None,
                          loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """lam * (1 - mean_i cos(grad1_i, grad2_i)), exactly as the authors compute it.

    grad1 = input gradient at x (the FGSM gradient, detached); grad2 = input gradient at
    x + eta, eta ~ U([-eps, eps]^d), not clipped to the input box, with create_graph so the
    regulariser reaches the parameters. Samples where either gradient is zero are left out of
    the mean (boolean indexing, as in the authors' code). Departure: when no sample is left the
    authors' mean is NaN; here the regulariser is 0.
    """
    grad1 = input_grad(model, x, y, loss_fn) if grad_clean is None else grad_clean.detach()
    if noise is None:
        noise = torch.empty_like(x).uniform_(-eps, eps)
    grad2 = input_grad(model, x, y, loss_fn, delta=noise, create_graph=True)
    g1 = grad1.reshape(len(x), -1)
    g2 = grad2.reshape(len(x), -1)
    nnz = (g1.norm(dim=1) != 0) & (g2.norm(dim=1) != 0)
    if not bool(nnz.any()):
        return (grad2.sum() * 0.0) * lam
    g1, g2 = g1[nnz], g2[nnz]
    cos = ((g1 / g1.norm(dim=1, keepdim=True)) * (g2 / g2.norm(dim=1, keepdim=True))).sum(1)
    return lam * (1.0 - cos.mean())
