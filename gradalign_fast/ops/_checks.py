"""The argument checks of csrc/op_checks.h (and relu_affine_iter.h) for the fake kernels, with
the same messages, so that opcheck, torch.compile and meta-tensor users get the errors the
compiled kernels raise. Keep the two in step: tests/test_op_contracts.py compares them.

The messages are formatted as c10 prints them: sizes as [2, 3], dtypes as ScalarType names
(Float, BFloat16, ...), devices as cpu / cuda:0, doubles with ostream's 6 significant digits.
"""
from __future__ import annotations

import functools

import torch

# The dtypes the kernels are compiled for (op_checks.h: is_kernel_dtype).
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _name(dtype: torch.dtype) -> str:
    """c10's ScalarType name of a dtype (torch.LongTensor -> Long), as TORCH_CHECK prints it."""
    return torch.empty(0, dtype=dtype).type()[len("torch."):-len("Tensor")]


def _sizes(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _num(v: float) -> str:
    return f"{v:g}"


def check_float_tensor(t: torch.Tensor, op: str, name: str) -> None:
    torch._check(t.dtype in KERNEL_DTYPES, lambda: (
        f"{op}: `{name}` must be a floating-point tensor (float, double, half or bfloat16), "
        f"got {_name(t.dtype)}"))


def check_like(t: torch.Tensor, ref: torch.Tensor, op: str, name: str, ref_name: str) -> None:
    torch._check(t.shape == ref.shape, lambda: (
        f"{op}: `{name}` must have the shape of `{ref_name}` {_sizes(ref)}, got {_sizes(t)}"))
    torch._check(t.dtype == ref.dtype, lambda: (
        f"{op}: `{name}` must have the dtype of `{ref_name}` ({_name(ref.dtype)}), got "
        f"{_name(t.dtype)}"))
    torch._check(t.device == ref.device,
                 lambda: f"{op}: `{name}` is on {t.device} but `{ref_name}` is on {ref.device}")


def cosine_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the cosine's per-sample outputs: float, or double for double inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_cosine_inputs(a: torch.Tensor, b: torch.Tensor, op: str) -> None:
    check_float_tensor(a, op, "a")
    check_float_tensor(b, op, "b")
    check_like(b, a, op, "b", "a")
    torch._check(a.dim() >= 1, lambda: f"{op}: inputs need a batch dimension, got a 0-dim tensor")


def check_cosine_backward_inputs(grad_cos, a, b, cos, norm_a, norm_b) -> None:
    op = "gradalign_fast::cosine_backward"
    check_cosine_inputs(a, b, op)
    acc = cosine_acc_dtype(a.dtype)
    for name, v in (("grad_cos", grad_cos), ("cos", cos), ("norm_a", norm_a),
                    ("norm_b", norm_b)):
        check_float_tensor(v, op, name)
        torch._check(v.dim() == 1 and v.shape[0] == a.shape[0], lambda: (
            f"{op}: `{name}` must have shape [{a.shape[0]}] (one value per sample), got "
            f"{_sizes(v)}"))
        torch._check(v.device == a.device,
                     lambda: f"{op}: `{name}` is on {v.device} but `a` is on {a.device}")
    torch._check(cos.dtype == acc and norm_a.dtype == acc and norm_b.dtype == acc, lambda: (
        f"{op}: cos, norm_a and norm_b must be {_name(acc)} (as returned by cosine)"))


def _check_box(lo: float, hi: float, op: str) -> None:
    torch._check(lo <= hi,
                 lambda: f"{op}: input box needs lo <= hi, got lo={_num(lo)} hi={_num(hi)}")


def check_attack_inputs(x, delta, grad, alpha, eps, lo, hi, op: str) -> None:
    check_float_tensor(x, op, "x")
    check_like(delta, x, op, "delta", "x")
    check_like(grad, x, op, "grad", "x")
    torch._check(alpha >= 0, lambda: f"{op}: step size `alpha` must be >= 0, got {_num(alpha)}")
    torch._check(eps >= 0, lambda: f"{op}: radius `eps` must be >= 0, got {_num(eps)}")
    _check_box(lo, hi, op)


def check_random_delta_inputs(x, radius, lo, hi) -> None:
    op = "gradalign_fast::random_delta"
    check_float_tensor(x, op, "x")
    torch._check(radius >= 0, lambda: f"{op}: `radius` must be >= 0, got {_num(radius)}")
    big = torch.finfo(x.dtype).max
    torch._check(2 * radius <= big, lambda: (
        f"{op}: 2 * `radius` must be <= the largest {_name(x.dtype)} ({_num(big)}), got "
        f"radius={_num(radius)}"))
    _check_box(lo, hi, op)


def check_relu_affine_inputs(grad, x, scale, shift) -> None:
    op = "gradalign_fast::relu_affine_backward"
    check_float_tensor(x, op, "x")
    check_float_tensor(grad, op, "grad")
    check_like(grad, x, op, "grad", "x")
    torch._check(x.dim() >= 2, lambda: (
        f"{op}: `x` must be [B, C, ...] (channels in dim 1), got shape {_sizes(x)}"))
    for name, v in (("scale", scale), ("shift", shift)):
        check_float_tensor(v, op, name)
        torch._check(v.dim() == 1 and v.shape[0] == x.shape[1], lambda: (
            f"{op}: `{name}` must have shape [{x.shape[1]}] (one value per channel of x), got "
            f"{_sizes(v)}"))
        torch._check(v.dtype == x.dtype, lambda: (
            f"{op}: `{name}` must have the dtype of `x` ({_name(x.dtype)}), got "
            f"{_name(v.dtype)}"))
        torch._check(v.device == x.device,
                     lambda: f"{op}: `{name}` is on {v.device} but `x` is on {x.device}")
