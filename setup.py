"""Build gradalign_fast._C: CPU kernels always, CUDA kernels when a toolkit and a CUDA torch exist.

Environment switches:
  GRADALIGN_FAST_FORCE_CUDA=0/1   override the toolkit-based CUDA decision
  TORCH_CUDA_ARCH_LIST            architectures to build (default: sm_75+ that nvcc supports)
  GRADALIGN_FAST_DEBUG=1          -O0 -g builds
"""
import glob
import os
import re
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


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


def _default_arch_list(cuda_home):
    """sm_75 and newer, as far as the installed nvcc supports them (PTX for the newest)."""
    out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"],
                         capture_output=True, text=True, check=False).stdout
    archs = sorted({int(m) for m in re.findall(r"compute_(\d+)", out)})
    archs = [a for a in archs if a >= 75 and a in (75, 80, 86, 89, 90, 100, 120)] or [75]
    return ";".join(f"{a // 10}.{a % 10}" for a in archs) + "+PTX"


def _extensions():
    from torch.utils import cpp_extension

    debug = os.environ.get("GRADALIGN_FAST_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    extra = {"cxx": opt + ["-std=c++20"]}
    include_dirs = [os.path.join(ROOT, "csrc")]
    use_cuda = _want_cuda() and bool(cuda_sources)
    if use_cuda:
        home = _cuda_home()
        if home:
            os.environ.setdefault("CUDA_HOME", home)
            cpp_extension.CUDA_HOME = home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _default_arch_list(home or "/usr/local/cuda"))
        # The pip CUDA wheels carry headers (cusparse.h, ...) that torch's headers include.
        import torch
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
    print(f"[gradalign_fast] building {'CPU+CUDA' if use_cuda else 'CPU-only'} extension"
          + (f" for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}" if use_cuda else ""))
    return [ext_cls("gradalign_fast._C", sources, include_dirs=include_dirs,
                    extra_compile_args=extra)]


def _build_ext():
    from torch.utils import cpp_extension

    return cpp_extension.BuildExtension.with_options(use_ninja=True)


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
