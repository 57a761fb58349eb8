"""The attention backend of the forwards that are differentiated twice.

GradAlign (and CURE, LLR) take an input gradient with create_graph=True and backpropagate
through it, so the backward of every op in that forward is itself differentiated. For
F.scaled_dot_product_attention (and nn.MultiheadAttention with need_weights=False, which
calls it) PyTorch picks a kernel at the forward, and only the math backend (SDPBackend.MATH)
can be differentiated twice: it is composed of matmul and softmax, whose backwards are
differentiable. The fused kernels (FLASH_ATTENTION on CPU and CUDA, EFFICIENT_ATTENTION,
CUDNN_ATTENTION, OVERRIDEABLE) have a backward op with no derivative of its own (torch 2.14
registers autograd nodes for their forwards only, e.g. ScaledDotProductFlashAttentionForCpu-
Backward0, none for their backward ops), so their double backward raises "derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented". Math is exact
(the same formula, no approximation); it keeps the [B, heads, L, L] attention matrix, which
the fused kernels do not.

nn.MultiheadAttention's fast path (eval mode, need_weights=False; torch._native_multi_head_
attention, no derivative at all) is never taken here: PyTorch takes it only when no input or
parameter requires grad under grad mode, and the input of such a forward always requires grad.
"""
from __future__ import annotations

import contextlib

from torch.nn.attention import SDPBackend, sdpa_kernel

# every SDPA backend whose backward is differentiable (see above)
DOUBLE_BACKWARD_BACKENDS = (SDPBackend.MATH,)


def double_backward_attention(enabled: bool = True):
    """Context manager: F.scaled_dot_product_attention runs only on backends that can be
    differentiated twice, within it (the caller's selection is restored on exit; like
    torch.nn.attention.sdpa_kernel, it sets PyTorch's process-wide flags). Wrap the
    forward whose input gradient is taken with create_graph=True; the backward passes need
    nothing (the backend is fixed when the forward runs). enabled=False: no change (for a
    forward differentiated once)."""
    return sdpa_kernel(list(DOUBLE_BACKWARD_BACKENDS)) if enabled else contextlib.nullcontext()
