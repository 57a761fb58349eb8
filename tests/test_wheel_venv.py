"""The package stands alone: the wheel, installed in a fresh virtual environment and run from a
directory outside the source tree, runs `demo`, `eval`, `bench` (the default step set, the plain
GradAlign baseline included) and `profile`, and writes only under the current directory:
nothing into the installed package, nothing into the checkout."""
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 900


def _run(cmd, cwd, env=None):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _files(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
            and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A new venv holding only the wheel; torch & co. come from this interpreter's
    site-packages through a .pth line (a path entry: that folder's own .pth files, among them
    the editable install of the checkout, are not run)."""
    if os.environ.get("GRADALIGN_FAST_REQUIRE_OPS") != "1":
        pytest.skip("only after the README set-up (builds from its objects in build/)")
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
          "-w", str(tmp / "dist"), "."], ROOT)
    (wheel,) = (tmp / "dist").glob("gradalign_fast-*.whl")
    env_dir = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], tmp)
    python = env_dir / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                            "['purelib'])"], tmp).stdout.strip())
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "outer_site.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], tmp)
    package = purelib / "gradalign_fast"
    assert package.is_dir()
    return python, package, tmp


def test_the_installed_wheel_runs_demo_bench_and_profile_from_elsewhere(venv):
    python, package, tmp = venv
    work = tmp / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    where = _run([str(python), "-c", "import gradalign_fast as g; print(g.__file__, "
                  "g.has_ops())"], work, env).stdout.split()
    assert Path(where[0]).parent == package and where[1] == "True", where
    package_before = _files(package)
    checkout_before = _files(ROOT / "benchmarks")
    gf = [str(python), "-m", "gradalign_fast"]
    demo = _run(gf + ["demo", "--epochs", "1", "--n-train", "512", "--n-eval", "20",
                      "--n-autoattack", "10", "--no-bench", "--out", "runs/wheel-demo"], work,
                env)
    assert "gradalign" in demo.stdout and (work / "runs" / "wheel-demo" / "fig_a.png").is_file()
    _run(gf + ["eval", "--checkpoint", "runs/wheel-demo/fgsm/checkpoint.pt", "--n", "20",
               "--attacks", "clean,pgd-5-1", "--out", "eval.json"], work, env)
    assert (work / "eval.json").is_file()
    bench = _run(gf + ["bench", "--model", "mnist_cnn", "--batch-sizes", "4", "--reps", "1",
                       "--warmup", "0", "--out"], work, env)
    assert "plain PyTorch" in bench.stdout  # the baseline ships with the package
    assert list((work / "bench").glob("cpu_*.json")), bench.stdout
    _run(gf + ["profile", "--model", "mnist_cnn", "--batch-size", "4", "--steps", "1"], work,
         env)
    assert (work / "bench" / "profile_cpu" / "phases.json").is_file()
    for out in (demo, bench):
        assert "gpuGetDeviceCount" not in out.stderr and "profiler_st" not in out.stderr
    assert _files(package) == package_before  # nothing written into the package
    assert _files(ROOT / "benchmarks") == checkout_before  # nor into the checkout
