"""Pure-PyTorch reference of every gradalign_fast op, one function per op with the op's schema
and contract (csrc/gradalign_fast.cpp): the tests' oracle (run it in float64), the dispatcher's
fallback wherever no compiled kernel exists for a tensor's device (registered as each op's
CompositeExplicitAutograd kernel by _registrations.py), and gradalign_fast.ops's
implementation when the compiled ops did not load."""
from __future__ import annotations

import math

import torch

from ._checks import cosine_acc_dtype


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample cosine of a, b: [B, ...] -> (cos, norm_a, norm_b), each [B].

    cos is 0 where either norm is 0. Computed in float32 (float64 for float64 inputs).
    """
    acc = cosine_acc_dtype(a.dtype)
    flat = (a.shape[0], math.prod(a.shape[1:]))  # [B, S]; not (B, -1), ambiguous for B = 0
    a2 = a.reshape(flat).to(acc)
    b2 = b.reshape(flat).to(acc)
    # vector_norm's backward is 0 (not NaN) at a zero vector.
    norm_a = torch.linalg.vector_norm(a2, dim=1)
    norm_b = torch.linalg.vector_norm(b2, dim=1)
    valid = (norm_a > 0) & (norm_b > 0)
    one = torch.ones_like(norm_a)
    # one norm per division: the product of two norms below ~1e-19 underflows in float32
    cos = torch.where(valid, (a2 * b2).sum(1) / torch.where(valid, norm_a, one)
                      / torch.where(valid, norm_b, one), torch.zeros_like(norm_a))
    return cos, norm_a.detach(), norm_b.detach()


def cosine_backward(grad_cos, a, b, cos, norm_a, norm_b) -> torch.Tensor:
    """d(sum grad_cos * cos)/da, shaped like a; 0 for samples with a zero norm (or a norm
    below the smallest normal number, whose reciprocal overflows). Written as
    (g / |a|) * (b / |b| - (cos / |a|) * a): one norm per division (csrc/cosine_math.h)."""
    tiny = torch.finfo(norm_a.dtype).tiny
    valid = (norm_a >= tiny) & (norm_b >= tiny)
    one = torch.ones_like(norm_a)
    na, nb = torch.where(valid, norm_a, one), torch.where(valid, norm_b, one)
    zero = torch.zeros_like(norm_a)
    g_over_a = torch.where(valid, grad_cos.to(norm_a.dtype) / na, zero)
    inv_b = torch.where(valid, 1.0 / nb, zero)
    cos_over_a = torch.where(valid, cos / na, zero)
    view = (-1,) + (1,) * (a.dim() - 1)
    math_t = cosine_acc_dtype(a.dtype)  # the kernels' element math type (opmath)
    out = g_over_a.view(view) * (b.to(math_t) * inv_b.view(view)
                                 - a.to(math_t) * cos_over_a.view(view))
    return out.to(a.dtype)


def attack_step(x, delta, grad, alpha, eps, lo, hi, project) -> torch.Tensor:
    """One signed-gradient step: delta + alpha*sign(grad), [eps-ball], clipped so x+delta in box."""
    d = delta + alpha * torch.sign(grad)
    if project:
        d = torch.clamp(d, -eps, eps)
    return torch.clamp(x + d, lo, hi) - x


def attack_step_(delta, x, grad, alpha, eps, lo, hi, project) -> None:
    """attack_step written into delta (the op's schema: the mutated tensor first)."""
    delta.copy_(attack_step(x, delta, grad, alpha, eps, lo, hi, project))


def random_delta(x, radius, lo, hi, clip_to_box, generator=None) -> torch.Tensor:
    """delta ~ U([-radius, radius]^d) shaped like x; optionally clipped so x+delta is in box."""
    d = torch.empty_like(x).uniform_(-radius, radius, generator=generator)
    return torch.clamp(x + d, lo, hi) - x if clip_to_box else d


def relu_affine_backward(grad, x, scale, shift) -> torch.Tensor:
    """grad where x * scale[c] + shift[c] > 0 (c = dim 1), else 0: the backward of
    relu(x * scale + shift) with respect to its input. x, grad: [B, C, ...]; scale, shift: [C]."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    pre = torch.addcmul(shift.view(view), x, scale.view(view))
    return torch.where(pre > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
