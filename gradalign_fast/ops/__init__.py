"""The gradalign_fast ops: the compiled kernel for the tensors' device where one exists
(see `kernel`, `has_ops()`), else the pure-PyTorch reference (`gradalign_fast.ops.reference`),
which has the same contracts. Schemas and the exact contracts: csrc/gradalign_fast.cpp.
"""
from __future__ import annotations

import torch

from . import reference
from ._loading import cuda_version, has_cuda_ops, has_kernel, has_ops, kernel, ops_error

if has_ops():
    from . import _registrations  # noqa: F401  (fake kernels and autograd of the compiled ops)

__all__ = ["attack_step", "attack_step_", "cosine", "cosine_backward", "cuda_version",
           "has_cuda_ops", "has_kernel", "has_ops", "kernel", "ops_error", "random_delta",
           "reference", "relu_affine_backward"]


def cosine(a: torch.Tensor, b: torch.Tensor):
    """Per-sample cosine of two batches, differentiable in a and b.

    Args:
        a, b: [B, ...] tensors of one shape, dtype and device (any strides).
    Returns:
        (cos, norm_a, norm_b), each [B] in float32 (float64 for float64 inputs); cos is 0
        where a norm is 0. The norms carry no gradient.
    """
    k = kernel("cosine", a.device)
    return k(a, b) if k is not None else reference.cosine(a, b)


def cosine_backward(grad_cos, a, b, cos, norm_a, norm_b) -> torch.Tensor:
    """Gradient of sum_i grad_cos[i] * cos[i] with respect to a (swap a/b and the norms for b).

    Args:
        grad_cos: [B] (any floating dtype; converted to cos's dtype).
        a, b: [B, ...]; cos, norm_a, norm_b: [B], as returned by `cosine(a, b)`.
    Returns:
        [B, ...] shaped, typed and laid out like a; 0 for samples with a zero norm.
    """
    k = kernel("cosine_backward", a.device)
    f = k if k is not None else reference.cosine_backward
    return f(grad_cos, a, b, cos, norm_a, norm_b)


def attack_step(x, delta, grad, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
                project: bool = True) -> torch.Tensor:
    """One signed-gradient step: delta + alpha * sign(grad), clamped to [-eps, eps] if
    `project`, then so that x + delta lies in [lo, hi].

    Args:
        x, delta, grad: tensors of one shape, dtype and device (any strides).
    Returns:
        The new delta, a new tensor like x.
    """
    k = kernel("attack_step", x.device)
    f = k if k is not None else reference.attack_step
    return f(x, delta, grad, float(alpha), float(eps), float(lo), float(hi), bool(project))


def attack_step_(x, delta, grad, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
                 project: bool = True) -> torch.Tensor:
    """`attack_step` written into delta in place (same arguments); returns delta."""
    k = kernel("attack_step_", x.device)
    if k is None:
        return delta.copy_(reference.attack_step(x, delta, grad, alpha, eps, lo, hi, project))
    k(x, delta, grad, float(alpha), float(eps), float(lo), float(hi), bool(project))
    return delta


def random_delta(x, radius: float, lo: float = 0.0, hi: float = 1.0, clip_to_box: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random perturbation U([-radius, radius]^d) shaped like x.

    Args:
        x: the input the perturbation is for (its shape, dtype and device are used).
        clip_to_box: make x + delta lie in [lo, hi].
        generator: the random generator (default: the device's).
    Returns:
        delta, a new tensor like x.
    """
    k = kernel("random_delta", x.device)
    f = k if k is not None else reference.random_delta
    return f(x, float(radius), float(lo), float(hi), bool(clip_to_box), generator)


def relu_affine_backward(grad, x, scale, shift) -> torch.Tensor:
    """The backward of relu(x * scale + shift) (a ReLU after BatchNorm) without its output.

    Args:
        grad, x: [B, C, ...] of one dtype; scale, shift: [C] of x's dtype (channel = dim 1).
    Returns:
        grad where x * scale[c] + shift[c] > 0, else 0; like grad. Differentiable in grad.
    """
    k = kernel("relu_affine_backward", x.device)
    f = k if k is not None else reference.relu_affine_backward
    return f(grad, x, scale, shift)
