"""Build gradalign_fast._C: CPU kernels always, CUDA kernels when a toolkit and a CUDA torch exist.

Environment switches:
  GRADALIGN_FAST_FORCE_CUDA=0/1   override the toolkit-based CUDA decision
  TORCH_CUDA_ARCH_LIST            architectures to build (default: the visible NVIDIA GPUs'
                                  compute capabilities where nvcc supports them, else those of
                                  DEFAULT_CUDA_ARCHS that nvcc supports, plus PTX)
  GRADALIGN_FAST_DEBUG=1          -O0 -g builds
  MAX_JOBS                        parallel compile jobs (ninja; torch's default: all cores)

torch's headers are included as system headers (-isystem), so the compiler reports warnings
of this project's sources only.

Objects go to a persistent folder, build/temp-<python>-torch<version>, also under pip (whose
editable and wheel builds otherwise compile in a fresh temporary folder): ninja then recompiles
only the sources whose text, included headers or compile command changed. Each build writes
gradalign_fast/_build_info.py (torch built against, CUDA toolkit, architectures), which
`python -m gradalign_fast info` reports.
"""
import glob
import os
import platform
import re
import subprocess
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join("gradalign_fast", "_build_info.py")
# The CUDA architectures (compute capability x 10) built without a GPU and without
# TORCH_CUDA_ARCH_LIST, PTX added for the newest: Turing (sm_75) to Blackwell (sm_120).
# CMakeLists.txt reads this line too (keep it on one line).
DEFAULT_CUDA_ARCHS = (75, 80, 86, 89, 90, 100, 120)


def _cuda_home():
    from torch.utils import cpp_extension

    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    home = home or cpp_extension.CUDA_HOME
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


def _want_cuda():
    """Decide from the toolkit and torch's build, never from torch.cuda.is_available()."""
    import torch

    forced = os.environ.get("GRADALIGN_FAST_FORCE_CUDA")
    if forced is not None:
        return forced.strip() not in ("0", "", "false", "False")
    return torch.version.cuda is not None and _cuda_home() is not None


def _probe(cmd):
    """stdout of an optional tool (nvidia-smi, the compiler's --version), "" where it is
    missing or fails: the build does not depend on it."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _nvcc(cuda_home, *args):
    """stdout of `nvcc args`; a CUDA build needs it, so a failing nvcc stops the build."""
    cmd = [os.path.join(cuda_home, "bin", "nvcc"), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"gradalign_fast: `{' '.join(cmd)}` failed ({e}); fix the CUDA "
                           "toolkit, or build without CUDA: GRADALIGN_FAST_FORCE_CUDA=0") from e
    if out.returncode != 0:
        raise RuntimeError(f"gradalign_fast: `{' '.join(cmd)}` exited {out.returncode}: "
                           f"{out.stderr.strip()[-500:]}; fix the CUDA toolkit, or build without "
                           "CUDA: GRADALIGN_FAST_FORCE_CUDA=0")
    return out.stdout


def _nvcc_archs(cuda_home):
    out = _nvcc(cuda_home, "--list-gpu-arch")
    archs = sorted({int(m) for m in re.findall(r"compute_(\d+)", out)})
    if not archs:
        raise RuntimeError(f"gradalign_fast: `nvcc --list-gpu-arch` ({cuda_home}) listed no "
                           f"architecture: {out.strip()[:300]!r}; set TORCH_CUDA_ARCH_LIST")
    return archs


def _nvcc_version(cuda_home):
    out = _nvcc(cuda_home, "--version")
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    if not m:
        raise RuntimeError(f"gradalign_fast: no version in `nvcc --version` ({cuda_home}): "
                           f"{out.strip()[:300]!r}")
    return m.group(2)


def _gpu_capabilities():
    """Compute capabilities (e.g. 90) of the visible NVIDIA GPUs; empty without one."""
    out = _probe(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    caps = {int(round(float(v) * 10)) for v in re.findall(r"^\s*(\d+\.\d+)\s*$", out, re.M)}
    if not caps:
        import torch

        if torch.version.cuda is not None and torch.cuda.is_available():
            caps = {a * 10 + b for a, b in (torch.cuda.get_device_capability(i)
                                            for i in range(torch.cuda.device_count()))}
    return sorted(caps)


def _default_arch_list(cuda_home):
    """The visible GPUs' architectures where nvcc supports them (a build for this machine);
    without a GPU, those of DEFAULT_CUDA_ARCHS that nvcc supports, plus PTX for the newest."""
    supported = _nvcc_archs(cuda_home)
    gpus = [c for c in _gpu_capabilities() if c in supported]
    if gpus:
        return ";".join(f"{a // 10}.{a % 10}" for a in gpus), "the visible GPU(s)"
    archs = [a for a in DEFAULT_CUDA_ARCHS if a in supported]
    if not archs:
        raise RuntimeError(f"gradalign_fast: nvcc ({cuda_home}) supports none of the default "
                           f"CUDA architectures {DEFAULT_CUDA_ARCHS} (it lists {supported}); "
                           "set TORCH_CUDA_ARCH_LIST")
    return (";".join(f"{a // 10}.{a % 10}" for a in archs) + "+PTX",
            "no GPU visible: DEFAULT_CUDA_ARCHS that nvcc supports")


def _sources():
    cpu = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp")
                 + glob.glob("csrc/autograd/*.cpp"))
    cuda = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    headers = sorted(glob.glob("csrc/**/*.h", recursive=True)
                     + glob.glob("csrc/**/*.cuh", recursive=True))
    return cpu, cuda, headers


_INFO = {}  # what _build_info.py records, filled by _extensions()


def _extensions():
    import torch
    from torch.utils import cpp_extension

    debug = os.environ.get("GRADALIGN_FAST_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources, cuda_sources, headers = _sources()
    use_cuda = _want_cuda() and bool(cuda_sources)
    # GCC reports -Wmaybe-uninitialized inside c10::SmallVector when it inlines TensorIterator's
    # loops into a kernel, past the system-header rule: a false positive in torch's code.
    extra = {"cxx": opt + ["-std=c++20", "-Wno-maybe-uninitialized"]}
    include_dirs = [os.path.join(ROOT, "csrc")]
    arch_why = None
    if use_cuda:
        home = _cuda_home()
        if home:
            os.environ.setdefault("CUDA_HOME", home)
            cpp_extension.CUDA_HOME = home
        if os.environ.get("TORCH_CUDA_ARCH_LIST"):
            arch_why = "TORCH_CUDA_ARCH_LIST set by the user"
        else:
            archs, arch_why = _default_arch_list(home or "/usr/local/cuda")
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        # The pip CUDA wheels carry headers (cusparse.h, ...) that torch's headers include.
        site = os.path.dirname(os.path.dirname(torch.__file__))
        include_dirs += [d for d in glob.glob(os.path.join(site, "nvidia", "cu*", "include"))]
        # --extended-lambda: ATen/native/cuda/Loops.cuh (gpu_kernel) uses __device__ lambdas.
        extra["nvcc"] = opt + ["-std=c++20", "--expt-relaxed-constexpr", "--extended-lambda",
                               "-lineinfo"]
        sources += cuda_sources
        ext_cls = cpp_extension.CUDAExtension
        extra["cxx"].append("-DGRADALIGN_FAST_WITH_CUDA")
    else:
        ext_cls = cpp_extension.CppExtension
    # torch's headers as system headers: their warnings are not this project's (the compiler
    # ignores the -I that torch's BuildExtension adds for a directory also given as -isystem).
    for d in cpp_extension.include_paths("cuda" if use_cuda else "cpu"):
        for flags in extra.values():
            flags += ["-isystem", d]
    _INFO.update(_describe_build(use_cuda, debug))
    config = _config_stamp(repr((ext_cls.__name__, sources, include_dirs, extra, _INFO)))
    print(f"[gradalign_fast] building {'CPU+CUDA' if use_cuda else 'CPU-only'} extension"
          + (f" for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} ({arch_why})"
             if use_cuda else ""), flush=True)
    return [ext_cls("gradalign_fast._C", sources, include_dirs=include_dirs,
                    extra_compile_args=extra, depends=headers + [config])]


def _build_temp():
    import torch

    return os.path.join(ROOT, "build", f"temp-{sys.implementation.cache_tag}-torch{torch.__version__}")


def _config_stamp(text):
    """A file in the object folder that changes (mtime) only when the build's configuration
    does: a dependency of the extension, so that setuptools relinks on a changed configuration
    (architectures, flags, torch) and skips an up-to-date build (ninja decides per object)."""
    path = os.path.join(_build_temp(), "config.stamp")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)
    return path


def _describe_build(use_cuda, debug):
    import torch

    info = {
        "torch_version": torch.__version__,  # the torch the extension is compiled against
        "torch_cuda": torch.version.cuda,
        "with_cuda": bool(use_cuda),
        "cuda_toolkit": None,
        "cuda_home": None,
        "torch_cuda_arch_list": None,
        "cuda_arch_flags": [],
        "python": platform.python_version(),
        "platform": sysconfig.get_platform(),
        "compiler": (_probe([os.environ.get("CXX", "c++"), "--version"]).splitlines()
                     or ["unknown"])[0],
        "debug": debug,
    }
    if use_cuda:
        from torch.utils import cpp_extension

        home = cpp_extension.CUDA_HOME
        info.update(cuda_home=home, cuda_toolkit=_nvcc_version(home) if home else None,
                    torch_cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST"))
        try:
            info["cuda_arch_flags"] = list(cpp_extension._get_cuda_arch_flags())
        except Exception as e:  # private helper of torch: record why instead of failing
            info["cuda_arch_flags"] = [f"unknown: {e}"]
    return info


def _write_build_info(folder):
    text = ('"""Generated by setup.py when gradalign_fast._C was built; not in git."""\n'
            f"BUILD_INFO = {_INFO!r}\n")
    path = os.path.join(folder, BUILD_INFO)
    if not os.path.isdir(os.path.dirname(path)):
        return
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


def _build_ext():
    from torch.utils import cpp_extension

    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class BuildExt(base):
        def finalize_options(self):
            super().finalize_options()
            # One persistent object folder (pip's builds would use a fresh temporary one):
            # ninja's incremental build, per Python and torch version.
            self.build_temp = _build_temp()
            # torch's BuildExtension forces a relink on every run; the extension's depends
            # (headers, config.stamp) let setuptools skip an up-to-date one instead.
            self.force = False

        def run(self):
            super().run()
            _write_build_info(ROOT)  # the source tree (in-place and editable builds)
            if not self.inplace:  # the wheel's copy of the package
                _write_build_info(self.build_lib)

    return BuildExt


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
