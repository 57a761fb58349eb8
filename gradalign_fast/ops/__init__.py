"""The gradalign_fast ops: `torch.ops.gradalign_fast.*` where the compiled ops loaded (the
dispatcher picks the compiled kernel for the tensors' device, or the pure-PyTorch reference
where there is none: see `has_kernel`, `has_ops()`), else the reference itself
(`gradalign_fast.ops.reference`), which has the same contracts. Schemas and the exact
contracts: csrc/gradalign_fast.cpp.
"""
from __future__ import annotations

import types

import torch

from . import reference
from ._loading import TENSOR_OPS, cuda_version, has_cuda_ops, has_kernel, has_ops, ops_error

__all__ = ["TENSOR_OPS", "attack_step", "attack_step_", "cosine", "cosine_backward",
           "cuda_version", "has_cuda_ops", "has_kernel", "has_ops", "ops_error", "random_delta",
           "reference", "relu_affine_backward"]

# What the wrappers call, one function per op with the op's schema: the dispatcher's ops
# (their .default overloads), or the reference where the extension did not load.
if has_ops():
    from . import _registrations  # noqa: F401  (reference, fake and autograd kernels)

    _impl = types.SimpleNamespace(**{op: getattr(torch.ops.gradalign_fast, op).default
                                     for op in TENSOR_OPS})
else:
    _impl = reference


def cosine(a: torch.Tensor, b: torch.Tensor):
    """Per-sample cosine of two batches, differentiable in a and b.

    Args:
        a, b: [B, ...] tensors of one shape, dtype and device (any strides).
    Returns:
        (cos, norm_a, norm_b), each [B] in float32 (float64 for float64 inputs); cos is 0
        where a norm is 0. The norms carry no gradient.
    """
    return _impl.cosine(a, b)


def cosine_backward(grad_cos, a, b, cos, norm_a, norm_b) -> torch.Tensor:
    """Gradient of sum_i grad_cos[i] * cos[i] with respect to a (swap a/b and the norms for b).

    Args:
        grad_cos: [B] (any floating dtype; converted to cos's dtype).
        a, b: [B, ...]; cos, norm_a, norm_b: [B], as returned by `cosine(a, b)`.
    Returns:
        [B, ...] shaped, typed and laid out like a; 0 for samples with a zero norm.
    """
    return _impl.cosine_backward(grad_cos, a, b, cos, norm_a, norm_b)


def attack_step(x, delta, grad, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
                project: bool = True) -> torch.Tensor:
    """One signed-gradient step: delta + alpha * sign(grad), clamped to [-eps, eps] if
    `project`, then so that x + delta lies in [lo, hi].

    Args:
        x, delta, grad: tensors of one shape, dtype and device (any strides).
    Returns:
        The new delta, a new tensor like x.
    """
    return _impl.attack_step(x, delta, grad, float(alpha), float(eps), float(lo), float(hi),
                             bool(project))


def attack_step_(x, delta, grad, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
                 project: bool = True) -> torch.Tensor:
    """`attack_step` written into delta in place (attack_step's arguments, in its order);
    returns delta. The op itself, torch.ops.gradalign_fast.attack_step_, takes delta first
    (the tensor it mutates)."""
    _impl.attack_step_(delta, x, grad, float(alpha), float(eps), float(lo), float(hi),
                       bool(project))
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
    return _impl.random_delta(x, float(radius), float(lo), float(hi), bool(clip_to_box),
                              generator)


def relu_affine_backward(grad, x, scale, shift) -> torch.Tensor:
    """The backward of relu(x * scale + shift) (a ReLU after BatchNorm) without its output.

    Args:
        grad, x: [B, C, ...] of one dtype; scale, shift: [C] of x's dtype (channel = dim 1).
    Returns:
        grad where x * scale[c] + shift[c] > 0, else 0; like grad. Differentiable in grad.
    """
    return _impl.relu_affine_backward(grad, x, scale, shift)
