"""Awkward memory layouts of one logical tensor, used by the op samples (op_samples.py, behind
the tests, the self-check of `python -m gradalign_fast info` and the sanitizer driver) and the
property tests."""
from __future__ import annotations

import torch


def layouts(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The awkward layouts of one logical tensor (same values): contiguous, channels_last
    (4-D), a batch-strided slice, a transposed (dense, non-contiguous) view, and a sliced view
    (last-dim stride 2)."""
    out = {"contiguous": t.contiguous()}
    if t.dim() == 4:
        out["channels_last"] = t.contiguous(memory_format=torch.channels_last)
    out["batch_strided"] = torch.stack([t, torch.zeros_like(t)], 1).flatten(0, 1)[::2]
    if t.dim() >= 2:
        out["transposed"] = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        out["sliced"] = torch.stack([t, t], -1).flatten(-2)[..., ::2]
    return out
