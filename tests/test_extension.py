"""The compiled extension: loaded when built, and an announced (not silent) fallback."""
import functools
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import gradalign_fast as gf
from gradalign_fast.ops import _loading, reference
from gradalign_fast.testing.op_samples import OPS, op_sample_params, sample


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _loaded():
    if not gf.has_ops():
        pytest.skip(f"compiled ops not loaded: {gf.ops_error()}")


# A backend key without a compiled gradalign_fast kernel: on it the dispatcher runs the op's
# CompositeExplicitAutograd kernel, the reference (CPU tensors redispatched there stand in for a
# device this CPU machine cannot have: a CPU-only build's CUDA tensors take the same path).
NO_KERNEL_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.PrivateUse1)


@pytest.mark.filterwarnings("ignore:gradalign_fast. no compiled kernels exist:RuntimeWarning")
@pytest.mark.parametrize("op, name", op_sample_params())
def test_dispatcher_runs_the_reference_where_no_kernel_exists(op, name):
    """torch.ops.gradalign_fast.<op> on a dispatch key without a kernel gives reference.<op>'s
    result, bit for bit, on every sample of every op."""
    _loaded()
    args = sample(op, name).args
    m = OPS[op].mutates  # the in-place op writes args[m]: the reference gets a copy of it
    copies = args if m is None else (*args[:m], args[m].clone(), *args[m + 1:])
    torch.manual_seed(0)
    got = getattr(torch.ops.gradalign_fast, op).default.redispatch(NO_KERNEL_KEYS, *args)
    torch.manual_seed(0)
    want = getattr(reference, op)(*copies)
    if m is not None:
        got, want = args[m], copies[m]
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("op", list(OPS))
def test_wrappers_call_the_dispatcher(op):
    """gradalign_fast.ops.<op> is torch.ops.gradalign_fast.<op> (so both agree on a device
    without a kernel too): the op reaches the dispatcher, with attack_step_'s delta first."""
    from torch.utils._python_dispatch import TorchDispatchMode

    _loaded()

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append((func, args))
            return func(*args, **(kwargs or {}))

    args = sample(op, OPS[op].build("cpu", torch.float64)[0].name).args
    public = args
    if op == "attack_step_":  # the wrapper keeps attack_step's order: (x, delta, grad, ...)
        public = (args[1], args[0], *args[2:])
    with Log() as log:
        getattr(gf.ops, op)(*public)
    ours = [(f, a) for f, a in log.calls if f.namespace == "gradalign_fast"]
    assert [f for f, _ in ours] == [getattr(torch.ops.gradalign_fast, op).default], log.calls
    assert ours[0][1][0] is args[0]


def test_reference_fallback_warns_once_per_dispatch_key_at_the_caller(monkeypatch):
    """A CPU-only build's CUDA tensors (here: the PrivateUse1 key): one RuntimeWarning per
    dispatch key, not per op or call, pointing at the line that called the op; the CUDA
    message says the build has no CUDA kernels."""
    _loaded()
    monkeypatch.setattr(_loading, "_warn_no_kernel",
                        functools.lru_cache(maxsize=None)(_loading._warn_no_kernel.__wrapped__))
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    x = torch.rand(2, 5)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(2):
            torch.ops.gradalign_fast.cosine.default.redispatch(NO_KERNEL_KEYS, a, b)
            torch.ops.gradalign_fast.attack_step.default.redispatch(
                NO_KERNEL_KEYS, x, torch.zeros_like(x), torch.randn_like(x), 0.1, 0.1, 0.0, 1.0,
                True)
        _loading.announce_reference("CUDA")
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 2, msgs
    assert "no compiled kernels exist for dispatch key PrivateUse1" in msgs[0]
    assert "its tensors use the pure-PyTorch reference" in msgs[0]
    assert w[0].filename == __file__, w[0].filename  # the caller's line
    assert f"this build has no CUDA kernels (cuda_version() = {gf.ops.cuda_version()}" in msgs[1]


def test_has_kernel_reports_compiled_kernels_only():
    """The reference registered for every dispatch key does not count as a compiled kernel."""
    _loaded()
    for op in OPS:
        assert gf.ops.has_kernel(op, "cpu"), op
        assert gf.ops.has_kernel(op, "cuda") == gf.has_cuda_ops(), op
        assert not gf.ops.has_kernel(op, "xpu") and not gf.ops.has_kernel(op, "meta"), op


@pytest.mark.parametrize("built, running, ok", [
    (13000, "13.0", True), (12080, "12.8", True), (-1, "13.0", True), (13000, None, True),
    (12080, "13.0", False), (13000, "13.1", False), (12060, "12.8", False)])
def test_cuda_version_of_the_build_must_match_torch(monkeypatch, built, running, ok):
    """torchvision's _check_cuda_version: CUDA kernels built with another CUDA major.minor than
    the running torch's are refused with a clear error (checked at load)."""
    monkeypatch.setattr(_loading, "cuda_version", lambda: built)
    monkeypatch.setattr(torch.version, "cuda", running)
    if ok:
        _loading.check_cuda_version()
        return
    with pytest.raises(RuntimeError, match=(
            rf"built with CUDA {built // 1000}\.{built % 1000 // 10} but torch .* uses CUDA "
            rf"{running}; rebuild")):
        _loading.check_cuda_version()


def test_a_failing_nvcc_stops_the_build(tmp_path):
    """setup.py with CUDA wanted and an nvcc that fails: a clear error naming the command, not
    a silent default architecture list."""
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'nvcc: broken install' >&2\nexit 3\n")
    nvcc.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    env.update(CUDA_HOME=str(tmp_path), GRADALIGN_FAST_FORCE_CUDA="1")
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"`{nvcc} --list-gpu-arch` exited 3: nvcc: broken install" in out.stderr, out.stderr
    assert "GRADALIGN_FAST_FORCE_CUDA=0" in out.stderr


def test_fallback_is_announced_and_matches():
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import gradalign_fast as gf\n"
        "assert not gf.has_ops() and 'GRADALIGN_FAST_DISABLE_OPS' in gf.ops_error()\n"
        "assert sum('compiled ops unavailable' in str(x.message) for x in w) == 1, w\n"
        "assert [x.filename for x in w if 'compiled ops unavailable' in str(x.message)] == "
        "['<string>'], w  # the importing line\n"
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
    for dep in ("torch<2.15,>=2.13", "numpy>=1.22", "tqdm>=4.60", "matplotlib>=3.5"):
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
