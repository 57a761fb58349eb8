"""L-inf attacks built on the fused ops (ops.attack_step_, ops.random_delta).

Inputs live in the box [lo, hi] (pixels in [0, 1] by default: models normalise internally),
eps and alpha are in the same units. Every function returns detached tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .precision import inner_loss_scale

# loss_fn(logits, y) -> scalar loss: what every attack and GradAlignLoss differentiate.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_like(who: str, name: str, t, x: torch.Tensor) -> None:
    """`t` (an argument named `name`) must be a floating tensor shaped and placed like x."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{who}: `{name}` must be a tensor, got {type(t).__name__}")
    if t.shape != x.shape:
        raise ValueError(f"{who}: `{name}` must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{who}: `{name}` is on {t.device} but x is on {x.device}")
    if not t.is_floating_point():
        raise TypeError(f"{who}: `{name}` must be floating point, got {t.dtype}")


def _check_model(who: str, model, x: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(f"{who}: `model` must be an nn.Module or a callable")
        return
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is None:
        return
    if p.device != x.device:
        raise ValueError(f"{who}: the model is on {p.device} but x is on {x.device}")
    if p.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{who}: x is {x.dtype} but the model's parameters are {p.dtype}; "
                        f"convert one of them (x.to({p.dtype}) or model.to({x.dtype}))")


def check_inputs(who: str, model, x, y, check_finite: bool = True, **like) -> None:
    """The input checks of every attack and of GradAlignLoss (`who` names the caller in the
    messages): x a non-empty floating batch of the model's dtype (unless autocast is on) and
    device, y one label per sample, the tensors in `like` shaped like x, and, with
    check_finite, x free of NaN and inf (one host sync; skipped while a CUDA graph is being
    captured, which cannot sync)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: `x` must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: `x` must be floating point (inputs in [0, 1]), got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{who}: `x` needs a non-empty batch dimension, got shape "
                         f"{tuple(x.shape)}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{who}: `y` must be a tensor, got {type(y).__name__}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{who}: `y` has batch size {y.shape[0] if y.dim() else 0} but x has "
                         f"{x.shape[0]}")
    if y.device != x.device:
        raise ValueError(f"{who}: `y` is on {y.device} but x is on {x.device}")
    _check_model(who, model, x)
    for name, t in like.items():
        if t is not None:
            check_like(who, name, t, x)
    if check_finite and not (x.is_cuda and torch.cuda.is_current_stream_capturing()) \
            and not all_finite(x):
        raise ValueError(f"{who}: `x` contains NaN or inf")


def all_finite(x: torch.Tensor) -> bool:
    """Whether x holds no NaN and no inf (one host sync). One float64 sum first: it is finite
    when every element is (finite float32/16 values cannot overflow it), and costs one read of
    x, where torch.isfinite(x).all() costs four elementwise passes (0.2 ms per call on the
    MNIST CNN's batch of 32, 1% of a GradAlign step); only a non-finite sum (or float64 values
    large enough to overflow it) takes the elementwise check."""
    return bool(torch.isfinite(x.sum(dtype=torch.float64))) or bool(torch.isfinite(x).all())


def model_loss(model, xin, y, loss_fn: LossFn, who: str = "attacks") -> torch.Tensor:
    """loss_fn(model(xin), y), with a clear error for a model whose output cross-entropy
    cannot take (a tuple or dict)."""
    out = model(xin)
    if not isinstance(out, torch.Tensor) and loss_fn is F.cross_entropy:
        raise TypeError(f"{who}: the model returned a {type(out).__name__}, not a logits tensor;"
                        f" pass a `loss_fn` that takes it, e.g. loss_fn=lambda out, y: "
                        f"F.cross_entropy(out[0], y) (or out['logits'] for a dict)")
    return loss_fn(out, y)


def input_gradient(model, x, y, loss_fn: LossFn = F.cross_entropy, delta=None) -> torch.Tensor:
    """Gradient of loss_fn(model(x + delta), y) in the input; no graph kept, and no parameter
    gradients computed (autograd only walks the path to the input). Under float16 autocast
    the loss is scaled by the batch size for the backward and the gradient unscaled in x's
    dtype (gradalign_fast.precision.inner_loss_scale): unscaled, the per-sample gradients of
    a batch-mean loss underflow in float16, and FGSM's sign() turns them into no step."""
    xin = (x if delta is None else x + delta).detach().requires_grad_(True)
    loss = model_loss(model, xin, y, loss_fn)
    scale = inner_loss_scale("autocast", xin)
    if scale == 1.0:
        return torch.autograd.grad(loss, xin)[0]
    return torch.autograd.grad(loss * scale, xin)[0] / scale


def fgsm(model, x, y, eps, loss_fn: LossFn = F.cross_entropy, lo=0.0, hi=1.0):
    """FGSM from zero, step eps. Returns (delta, grad at x): GradAlign reuses the gradient."""
    check_inputs("attacks.fgsm", model, x, y)
    grad = input_gradient(model, x, y, loss_fn)
    delta = ops.attack_step(x, torch.zeros_like(x), grad, eps, eps, lo, hi, True)
    return delta, grad


def fgsm_rs(model, x, y, eps, alpha=None, loss_fn: LossFn = F.cross_entropy, lo=0.0, hi=1.0,
            generator=None):
    """FGSM from a uniform random start in the eps-ball (Wong et al. 2020), alpha = 1.25 eps."""
    check_inputs("attacks.fgsm_rs", model, x, y)
    alpha = 1.25 * eps if alpha is None else alpha
    delta = ops.random_delta(x, eps, lo, hi, True, generator)
    grad = input_gradient(model, x, y, loss_fn, delta)
    return ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, True)


def nfgsm(model, x, y, eps, alpha=None, noise_mult=2.0, loss_fn: LossFn = F.cross_entropy,
          lo=0.0, hi=1.0, generator=None):
    """N-FGSM (de Jorge et al. 2022): noise U(+-noise_mult*eps), step alpha = eps, no
    projection onto the eps-ball; x + delta stays in the input box."""
    check_inputs("attacks.nfgsm", model, x, y)
    alpha = eps if alpha is None else alpha
    delta = ops.random_delta(x, noise_mult * eps, lo, hi, False, generator)
    grad = input_gradient(model, x, y, loss_fn, delta)
    return ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, False)


def pgd(model, x, y, eps, alpha, steps, restarts=1, loss_fn: LossFn = F.cross_entropy, lo=0.0,
        hi=1.0, generator=None):
    """L-inf PGD with uniform random start; over restarts keeps, per sample, the delta of
    highest loss (the authors' attack_pgd)."""
    check_inputs("attacks.pgd", model, x, y)
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
