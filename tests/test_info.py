"""`python -m gradalign_fast info`: versions, kernels per device, self-check and its exit status."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import gradalign_fast as gf
from gradalign_fast import cli, ops
from gradalign_fast.cli.commands import info
from gradalign_fast.testing.op_samples import OPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_json(capsys, *args):
    code = cli.main(["info", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_info_reports_versions_kernels_and_agreement(capsys):
    code, out = _run_json(capsys)
    assert code == 0 and out["all_agree"], out["summary"]
    assert out["summary"].startswith("self-check: all agree")
    ver = out["versions"]
    assert ver["gradalign_fast"]["version"] == gf.__version__
    assert ver["torch"]["version"] == torch.__version__
    assert ver["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert set(out["kernels"]) == set(ops.TENSOR_OPS)
    for op, per in out["kernels"].items():
        assert per == {d: ops.has_kernel(op, d) for d in info.DEVICE_TYPES}
    checked = {(r["device"], r["op"]) for r in out["self_check"]}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    assert out["devices_checked"] == devices
    for dev in devices:
        assert {(dev, op) for op in ops.TENSOR_OPS + ("GradAlignLoss",)} <= checked
    for op in ops.TENSOR_OPS:  # every sample of the op list (gradalign_fast.testing.op_samples)
        names = {r["layout"] for r in out["self_check"] if r["op"] == op}
        assert names == {s.name for s in OPS[op].build("cpu", torch.float64)}, op
    if gf.has_ops():
        assert all(r["kernel"] for r in out["self_check"] if r["op"] in ops.TENSOR_OPS
                   and r["device"] == "cpu")


def test_build_info_describes_the_loaded_extension():
    if not gf.has_ops():
        pytest.skip(f"extension not built: {gf.ops_error()}")
    b = info.build_info()
    if b is None and os.environ.get("GRADALIGN_FAST_REQUIRE_OPS") != "1":
        pytest.skip("no gradalign_fast/_build_info.py (extension built by another route)")
    assert b is not None, "setup.py writes gradalign_fast/_build_info.py with the extension"
    assert b["torch_version"] == torch.__version__  # else the ops would not have loaded
    assert b["with_cuda"] == gf.has_cuda_ops()
    if b["with_cuda"]:
        archs = info.compiled_archs(b)
        assert archs["sm"] or archs["ptx"], b["cuda_arch_flags"]
        assert b["cuda_toolkit"] and str(gf.cuda_version() // 1000) == \
            b["cuda_toolkit"].split(".")[0]


def test_compiled_archs_and_whether_a_gpu_runs_them():
    b = {"cuda_arch_flags": ["-gencode=arch=compute_80,code=sm_80",
                             "-gencode=arch=compute_90,code=sm_90",
                             "-gencode=arch=compute_90,code=compute_90"]}
    archs = info.compiled_archs(b)
    assert archs == {"sm": [80, 90], "ptx": [90]}
    assert info._gpu_runs(90, archs) == "yes"
    assert info._gpu_runs(86, archs).startswith("yes (sm_80")
    assert info._gpu_runs(120, archs).startswith("via PTX")
    assert info._gpu_runs(75, archs) == "no"
    assert info.compiled_archs(None) == {"sm": [], "ptx": []}


def test_forced_disagreement_is_named_and_fails(capsys, monkeypatch):
    real = ops.cosine

    def wrong(a, b):
        cos, na, nb = real(a, b)
        return cos + 1e-3, na, nb

    monkeypatch.setattr(ops, "cosine", wrong)
    code, out = _run_json(capsys, "--device", "cpu")
    assert code == 1 and not out["all_agree"]
    assert out["summary"].startswith("self-check: DISAGREE: cosine on cpu")
    bad = {r["op"] for r in out["self_check"] if not r["ok"]}
    assert "cosine" in bad and "attack_step" not in bad  # (its users disagree too)
    # text output: one last line naming it
    assert cli.main(["info", "--device", "cpu"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("self-check: DISAGREE: cosine on cpu")


def test_an_op_that_raises_disagrees(capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no kernel image")

    monkeypatch.setattr(ops, "relu_affine_backward", broken)
    code, out = _run_json(capsys, "--device", "cpu")
    assert code == 1
    row = next(r for r in out["self_check"] if not r["ok"])
    assert "no kernel image" in row["error"] and math.isinf(row["max_err"])
    assert "relu_affine_backward on cpu" in out["summary"]


def test_gradalign_disagreement_fails(capsys, monkeypatch):
    from gradalign_fast.testing import authors_reference

    real = authors_reference.gradalign_regularizer
    monkeypatch.setattr(authors_reference, "gradalign_regularizer",
                        lambda *a, **k: real(*a, **k) * 1.01)
    code, out = _run_json(capsys, "--device", "cpu")
    assert code == 1 and "GradAlignLoss on cpu" in out["summary"]


def test_no_check_and_bad_device(capsys):
    code, out = _run_json(capsys, "--no-check")
    assert code == 0 and out["self_check"] == [] and out["summary"] == "self-check: not run"
    assert cli.main(["info", "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown device type(s) ['tpu']"), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_device_cuda_without_a_gpu_is_one_error_line(capsys):
    """The CLI's convention (gradalign_fast/cli/__init__.py): one `error: ...` line, exit 2."""
    assert cli.main(["info", "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err == ["error: --device cuda, but no CUDA GPU is visible"], err
    assert captured.out == ""


def test_info_command_line_exit_status():
    """The real command line (text output), from outside the source tree."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "gradalign_fast", "info"], cwd=os.path.dirname(ROOT),
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"gradalign_fast {gf.__version__}")
    assert lines[-1].startswith("self-check: all agree")
    assert "built against" in out.stdout and "compiled kernel" in out.stdout
