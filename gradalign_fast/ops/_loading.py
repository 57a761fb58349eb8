"""Loading of the compiled ops (gradalign_fast._C) and the choice of kernel per op and device.

torchvision's pattern (`_has_ops()`, `_cuda_version()`): the extension registers the schemas
and the kernels it was built with; `kernel(name, device)` returns the op's `.default` overload
where a compiled kernel exists for the device, else None, and the wrappers of
gradalign_fast.ops then use the pure-PyTorch reference. Each fallback is announced once.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings

import torch  # loads libc10/libtorch, which the extension links against

_LOAD_ERROR: str | None = None
_LOADED = False
# Dispatch key of the compiled kernels per device type; other devices use the reference.
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_OPS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _load() -> None:
    global _LOADED, _LOAD_ERROR
    if os.environ.get("GRADALIGN_FAST_DISABLE_OPS", "0") == "1":
        _LOAD_ERROR = "disabled by GRADALIGN_FAST_DISABLE_OPS=1"
    else:
        try:
            from .. import _C  # noqa: F401  (registers the torch.ops.gradalign_fast schemas)

            _LOADED = True
        except ImportError as e:  # not built, or built against another torch
            _LOAD_ERROR = (f"{e} (installed torch {torch.__version__}; rebuild with "
                           "`pip install --no-build-isolation -e .`)")
    if not _LOADED:
        warnings.warn(
            "gradalign_fast: compiled ops unavailable, using the pure-PyTorch reference "
            f"(slower, same results): {_LOAD_ERROR}",
            RuntimeWarning,
            stacklevel=4,
        )


def has_ops() -> bool:
    """True when the compiled gradalign_fast ops are loaded and in use."""
    return _LOADED


def ops_error() -> str | None:
    """Why the compiled ops are not in use, or None when they are."""
    return _LOAD_ERROR


def cuda_version() -> int:
    """CUDA toolkit version the compiled ops were built with (e.g. 13000); -1 for a CPU-only
    build or when the ops are not loaded."""
    return int(torch.ops.gradalign_fast._cuda_version()) if _LOADED else -1


def has_cuda_ops() -> bool:
    """True when the compiled ops include CUDA kernels (built with a CUDA toolkit)."""
    return cuda_version() > 0


def has_kernel(name: str, device_type: str) -> bool:
    """Whether gradalign_fast::`name` has a compiled kernel for `device_type` ("cpu", ...)."""
    key = _DISPATCH_KEYS.get(device_type)
    return (_LOADED and key is not None
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"gradalign_fast::{name}", key))


@functools.lru_cache(maxsize=None)
def _kernel(name: str, device_type: str):
    if has_kernel(name, device_type):
        return getattr(torch.ops.gradalign_fast, name).default
    if _LOADED and device_type != "meta":
        _warn_no_kernel(device_type)
    return None


@functools.lru_cache(maxsize=None)
def _warn_no_kernel(device_type: str) -> None:
    """Once per device type: the compiled ops have no kernel there."""
    why = (f"this build has no CUDA kernels (cuda_version() = {cuda_version()}; rebuild with "
           "a CUDA toolkit and a CUDA build of torch for them)" if device_type == "cuda"
           else f"no compiled kernels exist for {device_type!r} tensors")
    warnings.warn(f"gradalign_fast: {why}; {device_type} tensors use the pure-PyTorch "
                  "reference ops (same results, slower)", RuntimeWarning,
                  stacklevel=_stacklevel_outside_ops())


def _stacklevel_outside_ops() -> int:
    """The warnings.warn stacklevel, for the function calling this, of the first caller outside
    gradalign_fast/ops: the line that called an op (through a wrapper or kernel())."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_OPS_DIR):
        level, frame = level + 1, frame.f_back
    return level


def kernel(name: str, device: torch.device):
    """torch.ops.gradalign_fast.`name`.default where a compiled kernel exists for `device`,
    else None (the caller uses the reference; announced once per device type)."""
    return _kernel(name, device.type)


_load()
