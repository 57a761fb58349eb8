"""Loading of the compiled ops (gradalign_fast._C) and what they provide.

torchvision's pattern (`_has_ops()`, `_cuda_version()`, `_check_cuda_version()`): the extension
registers the schemas and the kernels it was built with; _registrations.py registers the
pure-PyTorch reference as each op's CompositeExplicitAutograd kernel, the dispatcher's own
fallback for a device without a compiled kernel (announced once per dispatch key, by
`announce_reference`). Where the extension does not load, gradalign_fast.ops calls the
reference directly (announced once, at import).
"""
from __future__ import annotations

import functools
import os
import sys
import warnings

import torch  # loads libc10/libtorch, which the extension links against

# The ops with tensor arguments (csrc/gradalign_fast.cpp), each with reference.<op>.
TENSOR_OPS = ("cosine", "cosine_backward", "attack_step", "attack_step_", "random_delta",
              "relu_affine_backward")
_LOAD_ERROR: str | None = None
_LOADED = False
# Dispatch key of the compiled kernels per device type; other devices have none.
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_OPS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PACKAGE_DIR = os.path.dirname(_OPS_DIR.rstrip(os.sep)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


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
    if _LOADED:
        check_cuda_version()
    else:
        warnings.warn(
            "gradalign_fast: compiled ops unavailable, using the pure-PyTorch reference "
            f"(slower, same results): {_LOAD_ERROR}",
            RuntimeWarning,
            stacklevel=_stacklevel_outside(_PACKAGE_DIR),  # the line importing gradalign_fast
        )


def has_ops() -> bool:
    """True when the compiled gradalign_fast ops are loaded and in use."""
    return _LOADED


def ops_error() -> str | None:
    """Why the compiled ops are not in use, or None when they are."""
    return _LOAD_ERROR


def cuda_version() -> int:
    """CUDA toolkit version the compiled ops were built with (CUDA_VERSION: 1000 * major +
    10 * minor, e.g. 13000); -1 for a CPU-only build or when the ops are not loaded."""
    return int(torch.ops.gradalign_fast._cuda_version()) if _LOADED else -1


def has_cuda_ops() -> bool:
    """True when the compiled ops include CUDA kernels (built with a CUDA toolkit)."""
    return cuda_version() > 0


def check_cuda_version() -> None:
    """Raise when the CUDA kernels were built with another CUDA (major.minor) than the torch
    running (torchvision's _check_cuda_version): such kernels may not load or run correctly."""
    built = cuda_version()
    if built <= 0 or torch.version.cuda is None:
        return
    ours = (built // 1000, built % 1000 // 10)
    theirs = tuple(int(p) for p in torch.version.cuda.split(".")[:2])
    if ours != theirs:
        raise RuntimeError(
            f"gradalign_fast: the compiled ops were built with CUDA {ours[0]}.{ours[1]} but "
            f"torch {torch.__version__} uses CUDA {torch.version.cuda}; rebuild them against "
            "this torch (`pip install --no-build-isolation -e .`), or set "
            "GRADALIGN_FAST_DISABLE_OPS=1 for the pure-PyTorch reference")


def has_kernel(name: str, device_type: str) -> bool:
    """Whether gradalign_fast::`name` has a compiled kernel for `device_type` ("cpu", ...);
    False where the dispatcher runs the reference (its CompositeExplicitAutograd kernel)."""
    key = _DISPATCH_KEYS.get(device_type)
    return _LOADED and key is not None and _registered_for(name, key)


def _registered_for(name: str, key: str) -> bool:
    """A kernel registered for dispatch key `key` itself (not one the dispatcher fills in from
    CompositeExplicitAutograd). Through OpOverload.has_kernel_for_dispatch_key, the public
    method of torch.ops' overloads (it reads the same dispatcher table as the private
    torch._C._dispatch_has_kernel_for_dispatch_key); torch.library has no query of its own."""
    return getattr(torch.ops.gradalign_fast, name).default.has_kernel_for_dispatch_key(key)


def announce_reference(dispatch_key: str) -> None:
    """Called by the reference kernels: warns once per dispatch key ("CUDA", "PrivateUse1",
    ...) that the dispatcher found no compiled kernel for it."""
    _warn_no_kernel(dispatch_key)


@functools.lru_cache(maxsize=None)
def _warn_no_kernel(dispatch_key: str) -> None:
    why = (f"this build has no CUDA kernels (cuda_version() = {cuda_version()}; rebuild with "
           "a CUDA toolkit and a CUDA build of torch for them)" if dispatch_key == "CUDA"
           else f"no compiled kernels exist for dispatch key {dispatch_key}")
    warnings.warn(f"gradalign_fast: {why}; its tensors use the pure-PyTorch reference ops "
                  "(same results, slower)", RuntimeWarning,
                  stacklevel=_stacklevel_outside(_OPS_DIR))  # the line calling the op


def _stacklevel_outside(*dirs: str) -> int:
    """The warnings.warn stacklevel, for the function calling this, of the first caller outside
    `dirs` and torch (the dispatcher calls the reference kernels from torch/_ops.py)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            frame = frame.f_back  # warnings skips these frames without counting them
            continue
        if not name.startswith((*dirs, _TORCH_DIR)):
            break
        level, frame = level + 1, frame.f_back
    return level


_load()
