"""gradalign_fast: fast, exact GradAlign and an adversarial-training toolkit.

    import gradalign_fast as gf
    reg = gf.GradAlignLoss(eps=0.3, lam=1.0)

The top level holds the regulariser (GradAlignLoss, its approximate modes and the cheaper
double backward), the gradient alignment it optimises (gradient_alignment), the attacks and
the ops; the training toolkit is `gradalign_fast.training`,
the command line `gradalign_fast.cli` (`python -m gradalign_fast`).
"""
from ._version import __version__
from . import attacks, ops
from .alignment import gradient_alignment
from .gradalign import GradAlignLoss
from .ops import cuda_version, has_cuda_ops, has_ops, ops_error

__all__ = ["GradAlignLoss", "__version__", "attacks", "cuda_version", "gradient_alignment",
           "has_cuda_ops", "has_ops", "ops", "ops_error"]
