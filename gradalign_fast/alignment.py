"""Gradient alignment, defined once: what GradAlign regularises, what the catastrophic-
overfitting monitor measures and what the adaptive mode's probe reads.

    alignment = mean over the valid samples i of cos(grad_x l(x_i), grad_x l(x_i + eta_i))

with eta ~ U([-eps, eps]^d) (x + eta is not clipped to the input box, as in the authors' code).

A sample is *valid* when neither of its two input gradients is exactly zero: a zero gradient
has no direction (a dead ReLU network; a loss saturated in floating point). Invalid samples are
left out of the mean, as the authors' regulariser leaves them out (its `nnz` mask). With no
valid sample the alignment is undefined: `gradient_alignment` returns NaN (never 0, which
would read as total misalignment, nor 1) and GradAlignLoss's regulariser is 0 (it has nothing
to align). A NaN or inf in either gradient is never dropped as "not valid": it makes the
alignment NaN, and the regulariser with it, so that a training loop's loss check sees it.
(The authors' CO monitor counts a 0/0 cosine as 1; ours leaves the sample out.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .attacks import BOUNDS, LossFn, check_eps, check_inputs, input_gradient


def cosine_sum(grad_a: torch.Tensor, grad_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the per-sample cosines over the valid samples, number of valid samples), both
    0-dim; grad_a, grad_b: [B, ...] (grad_a is cast to grad_b's dtype). The sum is
    differentiable in both (ops.cosine); it is NaN when a gradient holds NaN or inf."""
    cos, norm_a, norm_b = ops.cosine(grad_a.to(grad_b.dtype), grad_b)  # each [B]
    n_valid = ((norm_a != 0) & (norm_b != 0)).sum()  # a NaN norm is != 0: counted, not dropped
    # ops.cosine gives 0 where a norm is not finite; 0 * (NaN or inf) = NaN puts it back.
    non_finite = ((norm_a + norm_b).sum() * 0).detach()
    return cos.sum() + non_finite, n_valid


def mean_cosine(grad_a: torch.Tensor, grad_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cosine over the valid samples, number of valid samples), both 0-dim; the mean is
    0 where no sample is valid (differentiable: the caller decides what that case means)."""
    total, n_valid = cosine_sum(grad_a, grad_b)
    return total / n_valid.clamp(min=1), n_valid


def alignment_sum(model, x, y, eps: float, noise=None, grad_clean=None,
                  loss_fn: LossFn = F.cross_entropy, generator=None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cosine_sum of the input gradients at x and x + noise (drawn U([-eps, eps]^d) from
    `generator` when None); grad_clean: the gradient at x when already known. No graph kept.
    For chunked measurements (the CO monitor sums over chunks); no input checks."""
    if noise is None:
        noise = ops.random_delta(x, eps, clip_to_box=False, generator=generator)
    if grad_clean is None:
        grad_clean = input_gradient(model, x, y, loss_fn)
    grad_noisy = input_gradient(model, x, y, loss_fn, delta=noise)
    with torch.no_grad():
        return cosine_sum(grad_clean, grad_noisy)


def gradient_alignment(model, x, y, eps: float, noise=None, bounds=BOUNDS,
                       loss_fn: LossFn = F.cross_entropy, grad_clean=None,
                       generator=None) -> float:
    """The gradient alignment of `model` on the batch (x, y) (module docstring): the mean
    cosine of the input gradients at x and at x + eta over the valid samples; NaN when no
    sample is valid or a gradient is not finite.

    eps: the radius of eta, in the units of x (e.g. 8/255); noise: eta itself, shaped like x
    (drawn from `generator` when None); bounds: the box x must lie in (checked); grad_clean:
    the gradient at x when already computed (e.g. the FGSM gradient). Keeps no graph, computes
    no parameter gradient, and works inside torch.no_grad(). The model runs in the mode it is
    in: call model.eval() first for a measurement that leaves BatchNorm statistics alone.
    One host sync (the float result), plus one for the input checks."""
    eps = check_eps("gradient_alignment", eps, bounds)
    labels_max = check_inputs("gradient_alignment", model, x, y, bounds=bounds,
                              noise=noise, grad_clean=grad_clean)
    if grad_clean is None:
        grad_clean = input_gradient(model, x, y, loss_fn, labels_max=labels_max)
    total, n_valid = alignment_sum(model, x, y, eps, noise, grad_clean, loss_fn, generator)
    n = int(n_valid)
    return float(total) / n if n else math.nan
