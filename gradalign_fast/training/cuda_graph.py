"""Opt-in CUDA-graph capture of one whole training step (static shapes; GPU only).

    method = methods.GradAlign(eps, lam, check_finite=False)
    step = CapturedStep(method, model, optimizer, x, y)   # warm-up, then capture
    for x, y in loader:                                   # every batch of the same shape
        stats = step(x, y)                                # copy in, replay: one launch

Replaying removes the CPU cost of launching the ~1000 kernels of an exact GradAlign step
(Python, autograd engine, dispatcher), which dominates at small batches on fast GPUs.

What can be captured: step.train_step of FGSM, FGSM-RS, N-FGSM, and GradAlign in exact
mode (also with fraction < 1: randperm is a device op) built with check_finite=False (its check
is a host sync). Not `every` > 1: its step counter is Python state that the graph would freeze.
The random numbers (GradAlign's noise, random starts) are drawn anew at each replay: PyTorch's
and gradalign_fast's random ops take their Philox offsets from the graph-safe generator state.
The optimizer must allow capture (SGD; Adam/AdamW with capturable=True).

Untested on this project's CPU-only machines: its tests (tests/test_gradalign.py, marked cuda)
are skipped without a GPU.
"""
from __future__ import annotations

import torch

from .step import train_step


def _check_capturable(method, x) -> None:
    if x.device.type != "cuda":
        raise ValueError(f"CapturedStep needs CUDA tensors, got {x.device}")
    loss = getattr(method, "_loss", None)
    if loss is None:
        return
    if loss.check_finite:
        raise ValueError("CapturedStep: build GradAlign with check_finite=False (the check "
                         "syncs with the host, which a CUDA graph cannot do)")
    if loss.every > 1:
        raise ValueError("CapturedStep: every > 1 cannot be captured (a graph replays one "
                         "fixed branch); capture every=1, or run eagerly")


class CapturedStep:
    """step.train_step(method, model, optimizer, x, y, amp_dtype) as one CUDA graph.

    The constructor runs `warmup` eager steps on (x, y) on a side stream (cuDNN autotuning,
    lazy state such as momentum buffers), restores the model's parameters and buffers and zeroes
    the optimizer's state tensors in place, then captures one step. __call__(x, y) copies the
    batch into the static input buffers and replays; it returns the step's stats dict, whose
    tensors are overwritten by the next replay.
    """

    def __init__(self, method, model, optimizer, x, y, amp_dtype=None, warmup=3):
        _check_capturable(method, x)
        self.static_x, self.static_y = x.detach().clone(), y.detach().clone()
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                train_step(method, model, optimizer, self.static_x, self.static_y, amp_dtype)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # in place: the graph must keep these very tensors
            for k, v in model.state_dict().items():
                v.copy_(saved[k])
            for state in optimizer.state.values():
                for t in state.values():
                    if torch.is_tensor(t) and t.is_floating_point():
                        t.zero_()
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # gradients get allocated in the graph's pool
        with torch.cuda.graph(self.graph):
            self.stats = train_step(method, model, optimizer, self.static_x, self.static_y,
                                    amp_dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        if x.shape != self.static_x.shape or y.shape != self.static_y.shape:
            raise ValueError(f"CapturedStep: captured for x {tuple(self.static_x.shape)}, "
                             f"y {tuple(self.static_y.shape)}; got {tuple(x.shape)}, "
                             f"{tuple(y.shape)} (use drop_last=True)")
        self.static_x.copy_(x, non_blocking=True)
        self.static_y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.stats
