"""Loading of the compiled ops (gradalign_fast._C), announced once when it fails."""
from __future__ import annotations

import os
import warnings

import torch  # loads libc10/libtorch, which the extension links against

_LOAD_ERROR: str | None = None
_LOADED = False


def _load() -> None:
    global _LOADED, _LOAD_ERROR
    if os.environ.get("GRADALIGN_FAST_DISABLE_OPS", "0") == "1":
        _LOAD_ERROR = "disabled by GRADALIGN_FAST_DISABLE_OPS=1"
    else:
        try:
            from . import _C  # noqa: F401  (registers the torch.ops.gradalign_fast schemas)

            _LOADED = True
        except ImportError as e:  # not built, or built against another torch
            _LOAD_ERROR = (f"{e} (installed torch {torch.__version__}; rebuild with "
                           "`pip install --no-build-isolation -e .`)")
    if not _LOADED:
        warnings.warn(
            "gradalign_fast: compiled ops unavailable, using the pure-PyTorch reference "
            f"(slower, same results): {_LOAD_ERROR}",
            RuntimeWarning,
            stacklevel=3,
        )


def has_ops() -> bool:
    """True when the compiled gradalign_fast ops are loaded and in use."""
    return _LOADED


def ops_error() -> str | None:
    """Why the compiled ops are not in use, or None when they are."""
    return _LOAD_ERROR


def has_cuda_ops() -> bool:
    """True when the compiled ops include CUDA kernels (built with a CUDA toolkit)."""
    if not _LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("gradalign_fast::cosine", "CUDA")


_load()
