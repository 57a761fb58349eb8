"""`train_step`: one training step of any method (perturb, loss, regulariser, update), the
same for all of them."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..gradalign import model_facts
from .methods import Method


def trained_parameters(optimizer) -> list:
    """The tensors `optimizer` updates that require grad: the only leaves whose gradient a
    training step needs. Given to backward(inputs=...), they keep autograd from also
    differentiating the regulariser with respect to its own input leaf (GradAlign's x + eta,
    CURE's and LLR's points: leaves that require grad for their input gradients), which it
    otherwise does: in the double backward that is the first layers' input-side derivatives,
    work the plain formulation does and discards (benchmarks/NOTES.md has its cost)."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def train_step(method: Method, model, optimizer, x, y, amp_dtype=None, scaler=None):
    """One training step of `method`: perturb, loss at x + delta (+ regulariser), update.

    For a model with a train-mode BatchNorm (deep convolutional nets, where activations
    dominate memory) the training loss is backpropagated before the regulariser's forward, so
    its activations are freed before the regulariser builds its graphs (GradAlign: the peak
    holds one of the two, not both). Elsewhere (e.g. the MNIST CNN, whose memory is mostly
    parameters) that split saves little and costs a second pass over the parameter gradients,
    so loss + reg are backpropagated once, as under
    DistributedDataParallel (which reduces gradients on every backward). The parameter
    gradients are the same either way (the graphs are disjoint) and the forwards run in the
    same order (BatchNorm's running statistics see the same sequence of batches).

    Returns detached 0-dim tensors (no device sync): loss, reg, correct (on x + delta).
    amp_dtype: torch.bfloat16 / torch.float16 for autocast; fp16 needs a GradScaler `scaler`.
    """
    model.train()
    dev = x.device.type
    amp = (torch.autocast(dev, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    scaled = scaler.scale if scaler is not None else (lambda t: t)
    split = not isinstance(model, torch.nn.parallel.DistributedDataParallel) and \
        bool(model_facts(model).batchnorms)
    with amp:
        delta, grad_clean = method.perturb(model, x, y)
        logits = model(x + delta)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    params = trained_parameters(optimizer)
    if split:
        scaled(loss).backward(inputs=params)
    with amp:
        reg = method.regularizer(model, x, y, grad_clean)
    if not split:
        scaled(loss if reg is None else loss + reg).backward(inputs=params)
    elif reg is not None and reg.requires_grad:
        scaled(reg).backward(inputs=params)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return {"loss": loss.detach(), "reg": loss.detach() * 0 if reg is None else reg.detach(),
            "correct": (logits.argmax(1) == y).sum().detach()}
