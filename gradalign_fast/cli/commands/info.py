"""`python -m gradalign_fast info`: what is installed, what the ops were built with, and a
self-check (like `python -m xformers.info` and `torch.utils.collect_env`).

Prints the versions (gradalign_fast; the torch running and the torch the compiled ops were
built against, from gradalign_fast/_build_info.py, which setup.py writes; the CUDA toolkit and
architectures of the build; Python, platform, GPUs), which op has a compiled kernel on which
device (`ops.has_kernel`), then a self-check: every op on every available device against the
pure-PyTorch reference (`gradalign_fast.ops.reference`, evaluated in float64 on the CPU) on
every sample of the op's list (gradalign_fast.testing.op_samples: awkward shapes and layouts,
zero-norm samples; random_delta against its contract), and
one GradAlignLoss value and parameter gradient against the authors' formulation
(`testing.authors_reference.gradalign_regularizer`) in float64. The last line says whether all
agree or which disagree; the exit status is 1 when one disagrees. `--json` prints one JSON
object instead.
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import os
import platform
import re
import sys

DEVICE_TYPES = ("cpu", "cuda")
DTYPES = ("float32", "float64")
GRADALIGN_TOL = 1e-8  # GradAlignLoss vs the authors' formulation, both float64


EXAMPLES = """examples:
  python -m gradalign_fast info
  python -m gradalign_fast info --json
"""

def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-check", action="store_true",
                        help="versions and kernels only, no self-check")
    parser.add_argument("--device", action="append", default=None,
                        help="self-check only this device type (repeatable; default: cpu and, "
                             "when available, cuda)")


# ----------------------------------------------------------------------------- versions
def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_info() -> dict | None:
    """What setup.py recorded when the compiled ops were built (None: not recorded)."""
    try:
        from ..._build_info import BUILD_INFO
    except ImportError:
        return None
    return dict(BUILD_INFO)


def compiled_archs(info: dict | None) -> dict:
    """{'sm': [90, ...], 'ptx': [120]} from the build's -gencode flags."""
    flags = " ".join((info or {}).get("cuda_arch_flags") or [])
    return {"sm": sorted({int(a) for a in re.findall(r"code=sm_(\d+)", flags)}),
            "ptx": sorted({int(a) for a in re.findall(r"code=compute_(\d+)", flags)})}


def _gpu_runs(cap: int, archs: dict) -> str:
    """Whether the build's kernels run on a GPU of compute capability `cap` (e.g. 90)."""
    if cap in archs["sm"]:
        return "yes"
    if any(p <= cap for p in archs["ptx"]):
        return "via PTX (JIT-compiled at first use)"
    same_major = [a for a in archs["sm"] if a // 10 == cap // 10 and a <= cap]
    return f"yes (sm_{max(same_major)} code)" if same_major else "no"


def versions() -> dict:
    import torch

    import gradalign_fast as gf

    info = build_info()
    archs = compiled_archs(info)
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            cap = 10 * major + minor
            gpus.append({"index": i, "name": torch.cuda.get_device_name(i),
                         "capability": f"{major}.{minor}",
                         "kernels_run": _gpu_runs(cap, archs) if gf.has_cuda_ops() else "no"})
    so = getattr(sys.modules.get("gradalign_fast._C"), "__file__", None)
    return {
        "gradalign_fast": {"version": gf.__version__,
                           "path": os.path.dirname(os.path.abspath(gf.__file__))},
        "compiled_ops": {"loaded": gf.has_ops(), "error": gf.ops_error(), "file": so,
                         "cuda_version": gf.cuda_version()},
        "build": info,
        "compiled_archs": archs,
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                  "matches_build": None if info is None
                  else info.get("torch_version") == torch.__version__},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "gpus": gpus,
        "packages": {n: _package_version(n) for n in
                     ("numpy", "torchvision", "torchattacks", "scipy", "ninja")},
    }


def kernels() -> dict:
    """{op: {device type: compiled kernel registered}}."""
    from ... import ops

    return {op: {d: ops.has_kernel(op, d) for d in DEVICE_TYPES} for op in ops.TENSOR_OPS}


# ----------------------------------------------------------------------------- self-check
def _check_op(op):
    """The op (through its public gradalign_fast.ops function) on every sample of the op
    (gradalign_fast.testing.op_samples) against the float64 reference: testing.op_agreement,
    the harness of the tests and the sanitizer driver."""
    def check(dev, dtype):
        from ...testing import op_agreement

        yield from ((op, name, err) for name, err in
                    op_agreement.agreement(op, op_agreement.wrapper(op), dev, dtype))

    check.__name__ = op
    return check


def _check_gradalign(dev):
    """GradAlignLoss (exact) against the authors' formulation, float64: value and parameter
    gradients of a small CNN with BatchNorm (train mode) on an odd-sized batch."""
    import torch
    import torch.nn as nn

    from ...gradalign import GradAlignLoss
    from ...testing import authors_reference, op_agreement

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    ).double().to(dev).train()
    x = torch.rand(7, 3, 9, 9, dtype=torch.float64).to(dev)
    y = torch.randint(0, 10, (7,)).to(dev)
    eps, lam = 0.3, 0.7
    noise = torch.empty_like(x).uniform_(-eps, eps)
    for name, xl in (("contiguous", x), ("channels_last",
                                          x.contiguous(memory_format=torch.channels_last))):
        m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
        r1 = GradAlignLoss(eps, lam)(m1, xl, y, noise=noise)
        r1.backward()
        r2 = authors_reference.gradalign_regularizer(m2, xl, y, eps, lam, noise=noise)
        r2.backward()
        err = op_agreement.max_error((r1, *(p.grad for p in m1.parameters())),
                                     (r2, *(p.grad for p in m2.parameters())))
        yield "GradAlignLoss", name, err


def self_check(devices) -> list[dict]:
    """One row per (device, dtype, op, layout): max error, tolerance, agreement."""
    import torch

    from ... import ops

    from ...testing.op_agreement import TOL

    rows = []
    state = torch.random.get_rng_state()
    try:
        for dev in devices:
            for dtype_name in DTYPES:
                dtype = getattr(torch, dtype_name)
                torch.manual_seed(0)
                for op in ops.TENSOR_OPS:
                    rows += _run(_check_op(op), dev, dtype, dtype_name, TOL[dtype], ops)
            torch.manual_seed(0)
            rows += _run(lambda d, _: _check_gradalign(d), dev, None, "float64",
                         GRADALIGN_TOL, ops)
    finally:
        torch.random.set_rng_state(state)
    return rows


def _run(check, dev, dtype, dtype_name, tol, ops) -> list[dict]:
    rows = []
    try:
        for op, layout, err in check(dev, dtype):
            kernel = ops.has_kernel(op, dev) if op in ops.TENSOR_OPS else None
            rows.append({"device": dev, "dtype": dtype_name, "op": op, "layout": layout,
                         "kernel": kernel, "max_err": err, "tol": tol, "ok": err <= tol})
    except Exception as e:  # an op that raises disagrees too
        rows.append({"device": dev, "dtype": dtype_name, "op": check.__name__, "layout": "-",
                     "kernel": None, "max_err": math.inf, "tol": tol, "ok": False,
                     "error": f"{type(e).__name__}: {e}"})
    return rows


def summary_line(rows: list[dict], devices) -> str:
    if not rows:
        return "self-check: not run"
    bad = {}
    for r in rows:
        if not r["ok"]:
            key = f"{r['op']} on {r['device']}"
            what = r.get("error") or (f"{r['dtype']} {r['layout']}: err {r['max_err']:.2g} > "
                                      f"{r['tol']:.0e}")
            bad.setdefault(key, []).append(what)
    if not bad:
        return (f"self-check: all agree ({len(rows)} checks on {', '.join(devices)}: every op "
                "against the reference, GradAlignLoss against the authors' formulation)")
    return "self-check: DISAGREE: " + "; ".join(
        f"{k} ({len(v)}x, e.g. {v[0]})" for k, v in bad.items())


# ----------------------------------------------------------------------------- output
def _text(ver: dict, kern: dict, rows: list[dict], devices, line: str) -> str:
    b = ver["build"]
    t = ver["torch"]
    out = [f"gradalign_fast {ver['gradalign_fast']['version']} "
           f"({ver['gradalign_fast']['path']})"]
    co = ver["compiled_ops"]
    out.append("  compiled ops     " + (f"loaded ({co['file']})" if co["loaded"]
                                       else f"NOT loaded: {co['error']}"))
    if b is None:
        out.append("  built against    unknown (no gradalign_fast/_build_info.py: rebuild with "
                   "`bash scripts/setup.sh`)")
    else:
        cuda = (f"CUDA {b['torch_cuda']} torch, toolkit {b['cuda_toolkit']} ({b['cuda_home']}), "
                f"archs {b['torch_cuda_arch_list']}" if b["with_cuda"] else "CPU kernels only")
        out.append(f"  built against    torch {b['torch_version']}; {cuda}")
        out.append(f"  built with       {b['compiler']}, Python {b['python']}"
                   + (", debug" if b.get("debug") else ""))
    match = {None: "", True: " (the build's)", False: " (NOT the build's: rebuild)"}
    out.append(f"  torch running    {t['version']}{match[t['matches_build']]}, CUDA "
               f"{t['cuda'] or 'none'}" + (f", cuDNN {t['cudnn']}" if t["cudnn"] else ""))
    out.append(f"  python           {ver['python']['version']} ({ver['python']['executable']})")
    out.append(f"  platform         {ver['platform']}")
    gpus = ver["gpus"]
    out.append("  GPUs             " + ("; ".join(
        f"{g['index']}: {g['name']} (compute {g['capability']}, kernels run: {g['kernels_run']})"
        for g in gpus) if gpus else "none visible"))
    out.append("  packages         " + ", ".join(f"{k} {v or '-'}"
                                                for k, v in ver["packages"].items()))
    out.append("")
    out.append(f"  {'compiled kernel':<22}" + "".join(f"{d:>6}" for d in DEVICE_TYPES))
    for op, per in kern.items():
        out.append(f"  {op:<22}" + "".join(f"{'yes' if per[d] else 'no':>6}"
                                          for d in DEVICE_TYPES))
    if rows:
        out.append("")
        out.append(f"  self-check on {', '.join(devices)} (max error relative to "
                   "max(1, |reference|), per device, dtype and op):")
        groups = {}
        for r in rows:
            groups.setdefault((r["device"], r["dtype"], r["op"]), []).append(r)
        for (dev, dtype, op), rs in groups.items():
            worst = max(r["max_err"] for r in rs)
            src = {True: "kernel", False: "reference", None: ""}[rs[0]["kernel"]]
            ok = "ok" if all(r["ok"] for r in rs) else "DISAGREES"
            out.append(f"    {dev:<5} {dtype:<8} {op:<22} {src:<10} {len(rs):>3} cases  "
                       f"max err {worst:.1e}  {ok}")
            for r in rs:
                if not r["ok"]:
                    out.append(f"        {r['layout']}: "
                               + (r.get("error") or f"err {r['max_err']:.3g} > {r['tol']:.0e}"))
    out.append(line)
    return "\n".join(out)


def run(args) -> int:
    import warnings

    import torch

    with warnings.catch_warnings():  # the reference fallback's notice: reported below instead
        warnings.simplefilter("ignore", RuntimeWarning)
        ver = versions()
        kern = kernels()
        devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
        unknown = [d for d in devices if d not in DEVICE_TYPES]
        if unknown:
            print(f"error: unknown device type(s) {unknown} for --device; choose from "
                  f"{', '.join(DEVICE_TYPES)}", file=sys.stderr)
            return 2
        if "cuda" in devices and not torch.cuda.is_available():
            print("error: --device cuda, but no CUDA GPU is visible", file=sys.stderr)
            return 2
        rows = [] if args.no_check else self_check(devices)
    line = summary_line(rows, devices)
    ok = all(r["ok"] for r in rows)
    if args.json:
        print(json.dumps({"versions": ver, "kernels": kern, "self_check": rows,
                          "devices_checked": [] if args.no_check else devices,
                          "all_agree": ok, "summary": line}, indent=1, default=str))
    else:
        print(_text(ver, kern, rows, devices, line))
    return 0 if ok else 1
