"""gradalign_fast: fast, exact GradAlign and an adversarial-training toolkit.

    from gradalign_fast import GradAlignLoss, has_ops
"""
from ._extension import has_cuda_ops, has_ops, ops_error
from . import attacks, ops, reference
from .gradalign import GradAlignLoss
from .checkpoint import load_checkpoint

__version__ = "0.1.0"
__all__ = ["GradAlignLoss", "attacks", "has_cuda_ops", "has_ops", "ops", "ops_error",
           "reference"]
