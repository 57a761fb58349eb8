"""The compiled extension: loaded when built, and an announced (not silent) fallback."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import gradalign_fast as gf


def test_has_ops_after_setup():
    if os.environ.get("GRADALIGN_FAST_REQUIRE_OPS") == "1":
        assert gf.has_ops(), gf.ops_error()
    elif not gf.has_ops():
        pytest.skip(f"extension not built: {gf.ops_error()}")
    assert gf.ops_error() is None
    assert hasattr(torch.ops.gradalign_fast, "cosine")


def test_cuda_kernels_compiled_when_toolkit_present():
    """CUDA is decided from the toolkit and torch's build, not from a GPU being present."""
    if os.environ.get("GRADALIGN_FAST_REQUIRE_OPS") != "1":
        pytest.skip("only checked after the README set-up")
    toolkit = shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")
    forced = os.environ.get("GRADALIGN_FAST_FORCE_CUDA")
    expect = (toolkit and torch.version.cuda is not None) if forced is None else forced == "1"
    assert gf.has_cuda_ops() == bool(expect)


def test_fallback_is_announced_and_matches():
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import gradalign_fast as gf\n"
        "assert not gf.has_ops() and 'GRADALIGN_FAST_DISABLE_OPS' in gf.ops_error()\n"
        "assert sum('compiled ops unavailable' in str(x.message) for x in w) == 1, w\n"
        "torch.manual_seed(0)\n"
        "a = torch.randn(3, 4, dtype=torch.float64); b = torch.randn(3, 4, dtype=torch.float64)\n"
        "print(repr(gf.ops.cosine(a, b)[0].tolist()))\n"
    )
    env = dict(os.environ, GRADALIGN_FAST_DISABLE_OPS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    torch.manual_seed(0)
    a = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(eval(out.stdout.strip()), dtype=torch.float64),
                               gf.ops.cosine(a, b)[0], rtol=1e-12, atol=1e-12)
