"""The pieces of GradAlignLoss's approximate modes (see GradAlignLoss's docstring).

* `check_options`: validation of mode / fraction / every, with clear errors.
* `random_subset`: the ceil(fraction * B) samples that a `fraction` < 1 regularises.
* `linearity_penalty`: the `mode="linearity"` regulariser, which needs no double backprop.
"""
from __future__ import annotations

import math

import torch

MODES = ("exact", "linearity")


def check_options(mode, fraction, every) -> None:
    if mode not in MODES:
        raise ValueError(f"GradAlignLoss: `mode` must be one of {MODES}, got {mode!r}")
    if (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
            or not 0.0 < fraction <= 1.0):
        raise ValueError(f"GradAlignLoss: `fraction` must be a number in (0, 1], got "
                         f"{fraction!r}")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"GradAlignLoss: `every` must be an integer >= 1, got {every!r}")


def random_subset(fraction: float, *tensors: torch.Tensor | None):
    """The same ceil(fraction * B) random rows of each tensor (None stays None); no host sync.

    fraction = 1 returns the tensors themselves (no copy, no random draw)."""
    batch = tensors[0].shape[0]
    keep = math.ceil(fraction * batch)
    if keep >= batch:
        return tensors
    idx = torch.randperm(batch, device=tensors[0].device)[:keep]
    return tuple(None if t is None else t.index_select(0, idx) for t in tensors)


def linearity_penalty(model, x, y, grad_clean, eps, batch_size, loss_fn) -> torch.Tensor:
    """mean_i | l_i(x_i + d_i) - l_i(x_i) - d_i . g_i |, d_i = eps * sign(g_i), g_i detached.

    The local-linearity condition that GradAlign enforces through gradient directions,
    measured instead with losses along the FGSM direction: if the loss is linear in the eps-ball
    the FGSM step raises it by exactly d . g; catastrophic overfitting is the regime where it
    does not. The linear term uses the clean gradient that FGSM already computed, held
    constant, so the penalty's parameter gradient is an ordinary first-order backward of one
    forward pass over [x; x + d] (2 rows per regularised sample): no double backprop.

    x, y, grad_clean: [b, ...] (a subset, possibly); grad_clean is the gradient of the mean
    loss over the full batch of `batch_size` samples (as attacks.fgsm returns it), so each
    sample's own gradient is batch_size * grad_clean. loss_fn must accept reduction="none".
    """
    g = grad_clean.detach()
    d = eps * torch.sign(g)
    # d . g_i with g_i = batch_size * g: [b]
    linear = (d * g).flatten(1).sum(1) * batch_size
    losses = loss_fn(model(torch.cat([x, x + d])), torch.cat([y, y]), reduction="none")
    l_clean, l_step = losses.chunk(2)
    return (l_step - l_clean - linear).abs().mean()
