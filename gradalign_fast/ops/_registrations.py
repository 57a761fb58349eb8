"""Python registrations of the compiled ops, imported only when they loaded: the reference
kernels, the fake (meta) kernels, and the autograd of relu_affine_backward.

Every op's CompositeExplicitAutograd kernel is its pure-PyTorch reference (reference.py): the
dispatcher runs it for a device with no compiled kernel (a CPU-only build's CUDA tensors, another
device type), so torch.ops.gradalign_fast.* and gradalign_fast.ops.* work, and agree, there too;
the first call per dispatch key warns (_loading.announce_reference).

The fake kernels run the kernels' argument checks (_checks.py, the messages of
csrc/op_checks.h) and return outputs shaped, typed and laid out as the kernels' are. The
autograd of `cosine`, the op every GradAlign step calls, and of `cosine_backward` (which
refuses a second backward) is registered in C++ (csrc/autograd/cosine_autograd.cpp): no
Python on their forward or backward.
"""
from __future__ import annotations

import torch

from . import _checks, _loading, reference
from ._loading import TENSOR_OPS


def _reference_kernel(op: str):
    ref = getattr(reference, op)

    def kernel(keyset, *args):  # keyset: the dispatch keys of this call (with_keyset=True)
        _loading.announce_reference(keyset.highestPriorityTypeId().name)
        return ref(*args)

    kernel.__name__ = f"{op}_reference"
    return kernel


_LIB = torch.library.Library("gradalign_fast", "IMPL")
for _op in TENSOR_OPS:
    _LIB.impl(_op, _reference_kernel(_op), "CompositeExplicitAutograd", with_keyset=True)


@torch.library.register_fake("gradalign_fast::cosine")
def _cosine_fake(a, b):
    _checks.check_cosine_inputs(a, b, "gradalign_fast::cosine")
    vec = a.new_empty((a.shape[0],), dtype=_checks.cosine_acc_dtype(a.dtype))
    return vec, torch.empty_like(vec), torch.empty_like(vec)


@torch.library.register_fake("gradalign_fast::cosine_backward")
def _cosine_backward_fake(grad_cos, a, b, cos, norm_a, norm_b):
    _checks.check_cosine_backward_inputs(grad_cos, a, b, cos, norm_a, norm_b)
    return torch.empty_like(a)


@torch.library.register_fake("gradalign_fast::attack_step")
def _attack_step_fake(x, delta, grad, alpha, eps, lo, hi, project):
    _checks.check_attack_inputs(x, delta, grad, alpha, eps, lo, hi, "gradalign_fast::attack_step")
    return torch.empty_like(x)


@torch.library.register_fake("gradalign_fast::attack_step_")
def _attack_step_inplace_fake(delta, x, grad, alpha, eps, lo, hi, project):
    _checks.check_attack_inputs(x, delta, grad, alpha, eps, lo, hi,
                                "gradalign_fast::attack_step_")


@torch.library.register_fake("gradalign_fast::random_delta")
def _random_delta_fake(x, radius, lo, hi, clip_to_box, generator=None):
    _checks.check_random_delta_inputs(x, radius, lo, hi)
    return torch.empty_like(x)


@torch.library.register_fake("gradalign_fast::relu_affine_backward")
def _relu_affine_backward_fake(grad, x, scale, shift):
    _checks.check_relu_affine_inputs(grad, x, scale, shift)
    return torch.empty_like(grad)


def _relu_affine_setup_context(ctx, inputs, output):
    _, x, scale, shift = inputs
    ctx.save_for_backward(x, scale, shift)


def _relu_affine_backward_backward(ctx, v):
    """Linear in grad: the same mask applied to v; zero (almost everywhere) in x, scale and
    shift, which only move the mask's boundary."""
    x, scale, shift = ctx.saved_tensors
    grad_v = None
    if ctx.needs_input_grad[0]:
        grad_v = torch.ops.gradalign_fast.relu_affine_backward(v, x, scale, shift)
    return grad_v, None, None, None


torch.library.register_autograd("gradalign_fast::relu_affine_backward",
                                _relu_affine_backward_backward,
                                setup_context=_relu_affine_setup_context)
