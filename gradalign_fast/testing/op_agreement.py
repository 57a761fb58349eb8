"""Agreement of an implementation of a gradalign_fast op with its reference over the op's
samples (op_samples.OPS): the one harness behind tests/test_op_contracts.py, the self-check of
`python -m gradalign_fast info` and benchmarks/sanitizer_driver.py.

An implementation is called with the op's schema (torch.ops.gradalign_fast.<op>.default, or
`wrapper(op)` for the public gradalign_fast.ops function); its outputs are its results, or for
an in-place op the argument it writes. Errors are relative to max(1, |truth|), the truth being
the reference evaluated in float64 on the CPU on the same (rounded) input values; a random op
is checked against its contract instead (its draws come from another stream than the
reference's).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .. import ops
from .op_samples import OPS

# Tolerance per dtype, relative to max(1, |truth|): the low-precision kernels round their
# outputs (and inputs) to the dtype; an op that computes the wrong thing is off by O(1).
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
# A random op's draws span at least this share of [-radius, radius] on a sample this large.
SPREAD, SPREAD_MIN_NUMEL = 0.8, 500


def kernel(op: str) -> Callable:
    """The op as the dispatcher runs it: torch.ops.gradalign_fast.<op>.default."""
    return getattr(torch.ops.gradalign_fast, op).default


def wrapper(op: str) -> Callable:
    """gradalign_fast.ops.<op> (looked up at each call) with the op's schema: the public
    attack_step_ takes (x, delta, ...), the op (delta, x, ...)."""
    if op == "attack_step_":
        return lambda delta, x, *rest: ops.attack_step_(x, delta, *rest)
    return lambda *args: getattr(ops, op)(*args)


def outputs(op: str, result, args) -> tuple:
    """The op's outputs: its result(s), or the argument an in-place op writes."""
    if OPS[op].mutates is not None:
        return (args[OPS[op].mutates],)
    return result if isinstance(result, tuple) else (result,)


def run(op: str, fn: Callable, args) -> tuple:
    """fn's outputs on args (an in-place op writes one of them)."""
    return outputs(op, fn(*args), args)


def truth(op: str, args) -> tuple:
    """The reference's outputs in float64 on the CPU, on args' values."""
    f64 = tuple(a.detach().to("cpu", torch.float64, copy=True) if isinstance(a, torch.Tensor)
                else a for a in args)
    return outputs(op, OPS[op].reference(*f64), f64)


def max_error(got: tuple, want: tuple) -> float:
    """max |got - want| / max(1, max |want|) over the outputs, in float64 on the CPU; inf where
    the number of outputs, a shape or the NaN positions differ."""
    if len(got) != len(want):
        return math.inf
    worst = 0.0
    for g, w in zip(got, want):
        g, w = g.detach().double().cpu(), w.detach().double().cpu()
        if g.shape != w.shape or not torch.equal(g.isnan(), w.isnan()):
            return math.inf
        if w.numel():
            diff = float((g - w).abs().nan_to_num(nan=0.0).max())
            worst = max(worst, diff / max(1.0, float(w.abs().nan_to_num(nan=0.0).max())))
    return worst


def random_delta_error(fn: Callable, args) -> float:
    """0 where random_delta's contract holds on this sample, else inf: shaped, typed and placed
    like x; finite; reproducible with a seeded generator; |delta| <= radius, or x + delta in
    [lo, hi] with the clip; spread over the ball on a large unclipped sample."""
    x, radius, lo, hi, clip = args
    gen = torch.Generator(device=x.device)
    d1 = fn(x, radius, lo, hi, clip, gen.manual_seed(7))
    d2 = fn(x, radius, lo, hi, clip, gen.manual_seed(7))
    d, xd = d1.double().cpu(), (x + d1).double().cpu()
    bad = [d1.shape != x.shape, d1.dtype != x.dtype, d1.device != x.device,
           not torch.equal(d1, d2), not bool(torch.isfinite(d).all())]
    if d.numel() == 0:
        return math.inf if any(bad) else 0.0
    tol = 2 * torch.finfo(x.dtype).eps
    if clip:
        bad.append(bool((xd < lo - tol).any() or (xd > hi + tol).any()))
    else:
        bad.append(float(d.abs().max()) > radius * (1 + tol))
        if d.numel() >= SPREAD_MIN_NUMEL:
            bad += [float(d.max()) < SPREAD * radius, float(d.min()) > -SPREAD * radius]
    return math.inf if any(bad) else 0.0


RANDOM_CONTRACTS = {"random_delta": random_delta_error}


def agreement(op: str, fn: Callable, device, dtype) -> Iterator[tuple[str, float]]:
    """(sample name, error) of fn, with op's schema, on every sample of op built on device in
    dtype: against the float64 truth, or the contract of a random op."""
    for s in OPS[op].build(device, dtype):
        if OPS[op].random:
            yield s.name, RANDOM_CONTRACTS[op](fn, s.args)
        else:
            want = truth(op, s.args)  # first: an in-place op writes its sample
            yield s.name, max_error(run(op, fn, s.args), want)
