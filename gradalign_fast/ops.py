"""The gradalign_fast ops: compiled kernels when loaded (see has_ops()), else the reference.

All functions take and return tensors of any layout; see csrc/gradalign_fast.cpp for the exact
contracts (the reference implements the same ones).
"""
from __future__ import annotations

import torch

from . import reference
from ._extension import has_ops

if has_ops():
    from . import _registrations  # noqa: F401

    _native = torch.ops.gradalign_fast
else:
    _native = None


def cosine(a: torch.Tensor, b: torch.Tensor):
    """Per-sample cosine (cos, norm_a, norm_b) of a, b: [B, ...]; differentiable in a and b."""
    if _native is not None:
        return _native.cosine(a, b)
    return reference.cosine(a, b)


def cosine_backward(grad_cos, a, b, cos, norm_a, norm_b) -> torch.Tensor:
    if _native is not None:
        return _native.cosine_backward(grad_cos, a, b, cos, norm_a, norm_b)
    return reference.cosine_backward(grad_cos, a, b, cos, norm_a, norm_b)


def attack_step(x, delta, grad, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
                project: bool = True) -> torch.Tensor:
    """delta + alpha*sign(grad), projected on the eps-ball if `project`, with x+delta in [lo, hi]."""
    if _native is not None:
        return _native.attack_step(x, delta, grad, float(alpha), float(eps), float(lo),
                                   float(hi), bool(project))
    return reference.attack_step(x, delta, grad, alpha, eps, lo, hi, project)


def attack_step_(x, delta, grad, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
                 project: bool = True) -> torch.Tensor:
    """In-place attack_step on delta; returns delta."""
    if _native is not None:
        _native.attack_step_(x, delta, grad, float(alpha), float(eps), float(lo), float(hi),
                             bool(project))
    else:
        delta.copy_(reference.attack_step(x, delta, grad, alpha, eps, lo, hi, project))
    return delta


def random_delta(x, radius: float, lo: float = 0.0, hi: float = 1.0, clip_to_box: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """U([-radius, radius]^d) shaped like x; with clip_to_box, x + delta stays in [lo, hi]."""
    if _native is not None:
        return _native.random_delta(x, float(radius), float(lo), float(hi), bool(clip_to_box),
                                    generator)
    return reference.random_delta(x, radius, lo, hi, clip_to_box, generator)


def relu_affine_backward(grad, x, scale, shift) -> torch.Tensor:
    """grad where x * scale[c] + shift[c] > 0 (c = dim 1), else 0; x, grad: [B, C, ...],
    scale, shift: [C] of x's dtype. Differentiable in grad (the op is linear in it)."""
    if _native is not None:
        return _native.relu_affine_backward(grad, x, scale, shift)
    return reference.relu_affine_backward(grad, x, scale, shift)
