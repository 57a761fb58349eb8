"""The compiled extension: loaded when built, and an announced (not silent) fallback."""
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import gradalign_fast as gf
from gradalign_fast.ops import _loading, reference

from op_samples import OPS


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
    if expect:  # every op with tensors has its CUDA kernel
        missing = [op for op in OPS if not gf.ops.has_kernel(op, "cuda")]
        assert not missing, f"no CUDA kernel registered for {missing}"


@pytest.fixture
def no_compiled_kernels(monkeypatch):
    """The lookup reports no compiled kernel for any op and device (as a CPU-only build does
    for CUDA tensors), with fresh once-per-device warnings; restored afterwards."""
    if not gf.has_ops():
        pytest.skip(f"compiled ops not loaded: {gf.ops_error()}")

    def clear():
        _loading._kernel.cache_clear()
        _loading._warn_no_kernel.cache_clear()

    clear()
    monkeypatch.setattr(_loading, "has_kernel", lambda name, device_type: False)
    yield
    monkeypatch.undo()
    clear()


def _spy(monkeypatch, name):
    """Counts the calls of reference.`name` (what the wrappers fall back to)."""
    calls = []
    real = getattr(reference, name)
    monkeypatch.setattr(reference, name, lambda *a, **k: calls.append(name) or real(*a, **k))
    return calls


def test_device_without_kernels_uses_the_reference_after_one_warning(no_compiled_kernels,
                                                                      monkeypatch):
    """A CPU-only build on a machine with a GPU: the ops on CUDA tensors use the reference,
    announced by one RuntimeWarning per device type (not per op or call), and give its results.
    Exercised here on CPU tensors through the wrappers, and for the "cuda" message through the
    lookup itself (CUDA tensors too where a GPU exists)."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    want = reference.cosine(a, b)
    calls = _spy(monkeypatch, "cosine")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for dev in devices:
            for _ in range(2):
                got = gf.ops.cosine(a.to(dev), b.to(dev))
                for g, r in zip(got, want):
                    torch.testing.assert_close(g.cpu(), r, rtol=0, atol=0)
                x = torch.rand(2, 5, device=dev)
                gf.ops.attack_step(x, torch.zeros_like(x), torch.randn_like(x), 0.1, 0.1)
        assert gf.ops.kernel("cosine", torch.device("cuda")) is None
        assert gf.ops.kernel("relu_affine_backward", torch.device("cuda")) is None
    assert calls == ["cosine"] * 2 * len(devices)
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 2, msgs  # one for cpu, one for cuda
    assert "no compiled kernels exist for 'cpu'" in msgs[0] and "cpu tensors use the " \
        "pure-PyTorch reference" in msgs[0]
    assert f"this build has no CUDA kernels (cuda_version() = {gf.ops.cuda_version()}" in msgs[1]
    assert "cuda tensors use the pure-PyTorch reference" in msgs[1]
    assert all(x.filename == __file__ for x in w), [x.filename for x in w]  # the caller's line


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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE_CHECK = """
import importlib.resources, os, sys, torch, torch.nn as nn
import gradalign_fast as gf
root, target = sys.argv[1], sys.argv[2]
assert os.path.realpath(gf.__file__).startswith(os.path.realpath(target)), gf.__file__
assert not any(os.path.realpath(p or '.') == os.path.realpath(root) for p in sys.path), sys.path
assert gf.has_ops(), gf.ops_error()
from gradalign_fast._build_info import BUILD_INFO
assert BUILD_INFO['torch_version'] == torch.__version__, BUILD_INFO
data = importlib.resources.files('gradalign_fast.training') / 'data' / 'mnist_subset.npz'
assert data.is_file(), data
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 6 * 6, 10))
x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
reg = gf.GradAlignLoss(eps=0.1, lam=1.0)(model, x, y)
reg.backward()
assert torch.isfinite(reg) and all(p.grad is not None for p in model.parameters())
print('ok', gf.__file__, float(reg))
"""


def _pip(*args, cwd=ROOT):
    out = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_wheel_and_non_editable_install(tmp_path):
    """`pip wheel --no-build-isolation .` and `pip install --no-build-isolation .` (not
    editable): the wheel holds the compiled ops, the build info, the packaged MNIST subset and
    the license, with complete metadata; the install imports and runs from outside the source
    tree. The objects in build/ are up to date after the set-up, so nothing is recompiled."""
    if os.environ.get("GRADALIGN_FAST_REQUIRE_OPS") != "1":
        pytest.skip("only after the README set-up (builds from its objects in build/)")
    import email.parser
    import zipfile

    _pip("wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path / "dist"), ".")
    (wheel,) = (tmp_path / "dist").glob("gradalign_fast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
    for want in ("gradalign_fast/training/data/mnist_subset.npz", "gradalign_fast/_build_info.py",
                 "gradalign_fast/cli/commands/info.py", "gradalign_fast/testing/__init__.py"):
        assert want in names, want
    assert any(n.startswith("gradalign_fast/_C.") and n.endswith(".so") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert meta["Name"] == "gradalign_fast" and meta["Version"] == gf.__version__
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta["Requires-Python"] == ">=3.10"
    requires = meta.get_all("Requires-Dist")
    for dep in ("torch>=2.4", "numpy>=1.22", "tqdm>=4.60", "matplotlib>=3.5"):
        assert dep in requires, requires
    assert any(u.startswith("Paper, https://arxiv.org/abs/2007.02617")
               for u in meta.get_all("Project-URL")), meta.get_all("Project-URL")
    assert len(meta.get_all("Classifier")) >= 5

    target = tmp_path / "site"
    _pip("install", "--no-build-isolation", "--no-deps", "--no-compile", "-q", "--target",
         str(target), ".")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", OUTSIDE_CHECK, ROOT, str(target)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok " + str(target))
