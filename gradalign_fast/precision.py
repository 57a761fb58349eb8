"""Precision of the GradAlign regulariser under mixed precision (torch.autocast).

`GradAlignLoss(precision=...)` chooses how the regulariser's own pass (the forward at
x + eta, the input gradient taken with create_graph, and therefore the double backward that
replays them) runs when the caller trains under autocast:

    "autocast"    as the caller's autocast says (bf16/fp16 convolutions and matmuls); the
                  default, and the only choice that costs nothing extra
    "float32"     autocast off for that pass: it runs in float32 while the FGSM step and the
                  training loss stay in mixed precision
    "bn_float32"  the model's BatchNorm layers run in float32 inside that pass (apex O1's
                  keep_batchnorm_fp32, which the GradAlign authors trained with); convolutions
                  and matmuls follow the caller's autocast

The cosine is float32 (or wider) under every choice: the input gradients have x's dtype, which
autocast does not change, and the cosine op accumulates in float32. Under float16 autocast the
regulariser's inner loss is multiplied by the batch size before its input gradient (loss
scaling: per-sample gradients of a batch-mean loss are O(1/B), where float16 loses them to
underflow; the cosine does not depend on their scale); the attacks' input gradients likewise
(gradalign_fast.attacks.input_gradient, unscaled afterwards in x's dtype). The training loss
is the caller's to scale (torch.amp.GradScaler; `train --amp fp16` does).

POLICIES names the training-step policies that `train --amp`, `fidelity --precision` and the
bench measure: an autocast dtype for the whole step and the regulariser's precision.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

REG_PRECISIONS = ("autocast", "float32", "bn_float32")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Policy:
    """A training step's precision: autocast dtype (`amp`, None: none) and GradAlignLoss's
    `precision` (methods without GradAlign's pass only take "autocast")."""

    name: str
    amp: str | None
    reg_precision: str
    text: str

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.amp)


POLICIES = {p.name: p for p in (
    Policy("float32", None, "autocast", "no autocast"),
    Policy("bf16", "bf16", "autocast", "bf16 autocast for the whole step"),
    Policy("bf16-reg-fp32", "bf16", "float32",
           "bf16 autocast; GradAlign's pass (forward at x+eta, input gradient, double backward) "
           "in float32"),
    Policy("bf16-bn-fp32", "bf16", "bn_float32",
           "bf16 autocast; BatchNorm in float32 inside GradAlign's pass"),
    Policy("fp16", "fp16", "autocast",
           "fp16 autocast with loss scaling (GradScaler; GradAlign's inner loss scaled by B)"),
)}


def check_precision(who: str, precision) -> None:
    if precision not in REG_PRECISIONS:
        raise ValueError(f"{who}: precision must be one of {', '.join(REG_PRECISIONS)}; got "
                         f"{precision!r}")


def policy(name: str) -> Policy:
    """POLICIES[name], with an error that lists them."""
    if name not in POLICIES:
        raise ValueError(f"unknown precision policy {name!r}; choose one of "
                         f"{', '.join(POLICIES)}")
    return POLICIES[name]


def _to_float32(module, args):
    """Forward pre-hook: the layer's tensor input(s) in float32."""
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                 for a in args)


@contextlib.contextmanager
def regulariser_precision(precision: str, model, device_type: str):
    """The context GradAlignLoss runs its pass in (see the module docstring)."""
    if precision == "float32":
        with torch.autocast(device_type, enabled=False):
            yield
        return
    hooks = []
    if precision == "bn_float32" and isinstance(model, nn.Module):
        hooks = [m.register_forward_pre_hook(_to_float32) for m in model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def inner_loss_scale(precision: str, x: torch.Tensor) -> float:
    """The factor of a loss whose input gradient is taken (GradAlign's inner loss, and the
    attacks' with precision "autocast"): the batch size under float16 autocast (unless the
    pass runs in float32), else 1."""
    dev = x.device.type
    if precision != "float32" and torch.is_autocast_enabled(dev) and \
            torch.get_autocast_dtype(dev) == torch.float16:
        return float(x.shape[0])
    return 1.0
