"""L-inf attacks built on the fused ops (ops.attack_step_, ops.random_delta).

Inputs live in the box `bounds=(lo, hi)`, (0, 1) by default: pixels in [0, 1], the convention
of adversarial training, where normalisation belongs inside the model (its first layer) so
that eps is in pixel units. Every attack refuses an x outside its bounds (the box clamp would
otherwise move x + delta out of the eps-ball). eps and alpha are in the units of x. Every
function returns detached tensors.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .precision import inner_loss_scale

# loss_fn(logits, y) -> scalar loss: what every attack and GradAlignLoss differentiate.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BOUNDS = (0.0, 1.0)  # the default input box: pixels in [0, 1]


def check_bounds(who: str, bounds) -> tuple[float, float]:
    """`bounds` as (lo, hi) floats, lo < hi, both finite."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: `bounds` must be a pair (lo, hi) of numbers, got "
                        f"{bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{who}: `bounds` must be finite with lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


def check_eps(who: str, eps, bounds=BOUNDS, name: str = "eps") -> float:
    """eps (or another radius, `name`) as a float: finite, >= 0 and no wider than the input
    box; the advice for a value in /255 units names the box it assumed."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"{who}: `{name}` must be a finite number, got {eps!r}")
    if eps < 0:
        raise ValueError(f"{who}: `{name}` must be >= 0, got {eps}")
    lo, hi = check_bounds(who, bounds)
    if eps > hi - lo:
        hint = (f"for {eps:g}/255 pass {name}={eps:g}/255 (= {eps / 255:.4g})"
                if (lo, hi) == BOUNDS else
                "for a radius in pixel units of [0, 1] images, multiply it by the width of "
                "your box")
        raise ValueError(f"{who}: {name}={eps:g} is wider than the whole input box "
                         f"bounds=({lo:g}, {hi:g}); {name} is in the units of x: {hint}")
    return float(eps)


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


def check_inputs(who: str, model, x, y, check_values: bool = True, bounds=BOUNDS,
                 **like) -> int | None:
    """The input checks of every attack and of GradAlignLoss (`who` names the caller in the
    messages): x a non-empty floating batch of the model's dtype (unless autocast is on) and
    device, y one label per sample, the tensors in `like` shaped like x, and, with
    check_values, x free of NaN and inf and inside `bounds`, and integer labels >= 0 (one host
    sync; skipped while a CUDA graph is being captured, which cannot sync).

    Returns the largest integer label (model_loss checks it against the model's number of
    outputs at the first forward), or None (soft labels, or no value checks)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: `x` must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: `x` must be floating point (inputs in bounds, [0, 1] by "
                        f"default), got {x.dtype}")
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
    lo, hi = check_bounds(who, bounds)
    _check_model(who, model, x)
    for name, t in like.items():
        if t is not None:
            check_like(who, name, t, x)
    if not check_values or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        return None
    labels = not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
    stats = [*torch.aminmax(x.detach())] + ([*torch.aminmax(y)] if labels else [])
    x_min, x_max, *y_range = torch.stack([t.double() for t in stats]).tolist()  # one sync
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        raise ValueError(f"{who}: `x` contains NaN or inf")
    if x_min < lo or x_max > hi:
        raise ValueError(
            f"{who}: `x` has values in [{x_min:.4g}, {x_max:.4g}], outside bounds=({lo:g}, "
            f"{hi:g}); pass the box your inputs live in as bounds=(lo, hi), or keep x in "
            f"[0, 1] and normalise inside the model (then eps is in pixel units)")
    if y_range and y_range[0] < 0:
        raise ValueError(f"{who}: `y` holds the label {int(y_range[0])}; class labels are "
                         f"0, 1, ..., classes - 1")
    return int(y_range[1]) if y_range else None


def model_loss(model, xin, y, loss_fn: LossFn, who: str = "attacks",
               labels_max: int | None = None) -> torch.Tensor:
    """loss_fn(model(xin), y), with a clear error for a model whose output cross-entropy
    cannot take (a tuple or dict) and, given labels_max (check_inputs' result), for a label
    the model has no output for."""
    out = model(xin)
    if not isinstance(out, torch.Tensor) and loss_fn is F.cross_entropy:
        raise TypeError(f"{who}: the model returned a {type(out).__name__}, not a logits tensor;"
                        f" pass a `loss_fn` that takes it, e.g. loss_fn=lambda out, y: "
                        f"F.cross_entropy(out[0], y) (or out['logits'] for a dict)")
    if labels_max is not None and isinstance(out, torch.Tensor) and out.dim() == 2 \
            and labels_max >= out.shape[1]:
        raise ValueError(f"{who}: `y` holds the label {labels_max} but the model has "
                         f"{out.shape[1]} outputs (labels 0 to {out.shape[1] - 1})")
    return loss_fn(out, y)


def input_gradient(model, x, y, loss_fn: LossFn = F.cross_entropy, delta=None,
                   labels_max: int | None = None) -> torch.Tensor:
    """Gradient of loss_fn(model(x + delta), y) in the input; no graph kept, and no parameter
    gradients computed (autograd only walks the path to the input), also when called under
    torch.no_grad(). Under float16 autocast the loss is scaled by the batch size for the
    backward and the gradient unscaled in x's dtype (gradalign_fast.precision.inner_loss_scale):
    unscaled, the per-sample gradients of a batch-mean loss underflow in float16, and FGSM's
    sign() turns them into no step. labels_max: see model_loss."""
    with torch.enable_grad():
        xin = (x if delta is None else x + delta).detach().requires_grad_(True)
        loss = model_loss(model, xin, y, loss_fn, labels_max=labels_max)
        scale = inner_loss_scale("autocast", xin)
        if scale == 1.0:
            return torch.autograd.grad(loss, xin)[0]
        return torch.autograd.grad(loss * scale, xin)[0] / scale


def _checked(who, model, x, y, eps, alpha, bounds):
    """The checks every attack starts with: (eps, alpha, labels_max, lo, hi)."""
    eps = check_eps(who, eps, bounds)
    alpha = None if alpha is None else check_eps(who, alpha, bounds, "alpha")
    labels_max = check_inputs(who, model, x, y, bounds=bounds)
    return (eps, alpha, labels_max, *check_bounds(who, bounds))


def fgsm(model, x, y, eps, loss_fn: LossFn = F.cross_entropy, bounds=BOUNDS):
    """FGSM from zero, step eps. Returns (delta, grad at x): GradAlign reuses the gradient."""
    eps, _, labels_max, lo, hi = _checked("attacks.fgsm", model, x, y, eps, None, bounds)
    grad = input_gradient(model, x, y, loss_fn, labels_max=labels_max)
    delta = ops.attack_step(x, torch.zeros_like(x), grad, eps, eps, lo, hi, True)
    return delta, grad


def fgsm_rs(model, x, y, eps, alpha=None, loss_fn: LossFn = F.cross_entropy, bounds=BOUNDS,
            generator=None):
    """FGSM from a uniform random start in the eps-ball (Wong et al. 2020), alpha = 1.25 eps."""
    eps, alpha, labels_max, lo, hi = _checked("attacks.fgsm_rs", model, x, y, eps, alpha,
                                              bounds)
    alpha = 1.25 * eps if alpha is None else alpha
    delta = ops.random_delta(x, eps, lo, hi, True, generator)
    grad = input_gradient(model, x, y, loss_fn, delta, labels_max)
    return ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, True)


def nfgsm(model, x, y, eps, alpha=None, noise_mult=2.0, loss_fn: LossFn = F.cross_entropy,
          bounds=BOUNDS, generator=None):
    """N-FGSM (de Jorge et al. 2022): noise U(+-noise_mult*eps), step alpha = eps, no
    projection onto the eps-ball; x + delta stays in the input box."""
    eps, alpha, labels_max, lo, hi = _checked("attacks.nfgsm", model, x, y, eps, alpha, bounds)
    alpha = eps if alpha is None else alpha
    delta = ops.random_delta(x, noise_mult * eps, lo, hi, False, generator)
    grad = input_gradient(model, x, y, loss_fn, delta, labels_max)
    return ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, False)


def pgd(model, x, y, eps, alpha, steps, restarts=1, loss_fn: LossFn = F.cross_entropy,
        bounds=BOUNDS, generator=None):
    """L-inf PGD with uniform random start; over restarts keeps, per sample, the delta of
    highest loss (the authors' attack_pgd)."""
    eps, alpha, labels_max, lo, hi = _checked("attacks.pgd", model, x, y, eps, alpha, bounds)
    best = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    for _ in range(restarts):
        delta = ops.random_delta(x, eps, lo, hi, True, generator)
        for _ in range(steps):
            grad = input_gradient(model, x, y, loss_fn, delta, labels_max)
            labels_max = None  # checked at the first forward
            ops.attack_step_(x, delta, grad, alpha, eps, lo, hi, True)
        with torch.no_grad():
            loss = F.cross_entropy(model(x + delta), y, reduction="none").float()
        better = loss > best_loss
        best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), delta, best)
        best_loss = torch.where(better, loss, best_loss)
    return best
