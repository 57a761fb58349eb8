"""`bench` and `profile`: run_bench/format_table and the commands, on tiny sizes (no timing
claims here: speed lives in benchmarks/)."""
import json
import sys

import pytest
import torch

from gradalign_fast.benchmarking import step_bench as bench
from gradalign_fast.cli import main

TINY = dict(model_names=("mnist_cnn",), batch_sizes=(4,), reps=1, warmup=0)


def test_run_bench_rows_and_table():
    rows = bench.run_bench(**TINY, steps=["gradalign", "ga_every4", "gradalign_plain"])
    assert [r["step"] for r in rows] == ["fgsm", "gradalign_plain", "gradalign", "ga_every4"]
    fgsm = rows[0]
    assert fgsm["ratio"] == 1.0 and fgsm["mem_ratio"] == 1.0 and fgsm["minutes"] is None
    for r in rows:
        assert r["ms"] > 0 and r["peak_mib"] >= r["step_peak_mib"] > 0
    table = bench.format_table(rows, bench.metadata("cpu"))
    assert "x FGSM" in table and "plain PyTorch" in table and "approx: every=4" in table
    assert len(table.splitlines()) == 5 + len(rows)


def test_cifar_rows_project_the_authors_minutes():
    rows = bench.run_bench(model_names=("preact_resnet18_narrow",), batch_sizes=(2,), reps=1,
                           warmup=0, steps=["fgsm_rs"])
    assert rows[0]["minutes"] == bench.AUTHORS_FGSM_MINUTES
    assert rows[1]["minutes"] == pytest.approx(rows[1]["ratio"] * 9.5, abs=0.06)


def test_peak_memory_counts_live_tensors():
    def fn():
        a = torch.empty(2**20, dtype=torch.uint8)
        b = torch.empty(2**20, dtype=torch.uint8)
        del a, b
        torch.empty(2**20, dtype=torch.uint8)
    assert bench.peak_memory(torch.device("cpu"), fn) == 2 * 2**20


def test_bench_command_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["bench", "--model", "mnist_cnn", "--batch-sizes", "4,8", "--reps", "1",
               "--warmup", "0", "--steps", "fgsm,ga_fraction0.25", "--device", "cpu",
               "--out", str(out), "--plot"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "approx: fraction=0.25" in printed
    data = json.loads(out.read_text())
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["device"]
    assert {r["batch"] for r in data["rows"]} == {4, 8}
    assert (tmp_path / "r.md").read_text().count("fraction=0.25") == 2
    assert (tmp_path / "r_ratios.png").stat().st_size > 1000


def test_bench_command_rejects_unknown_model(capsys):
    assert main(["bench", "--model", "nope", "--batch-sizes", "2", "--reps", "1", "--warmup",
                 "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown model" in err and err.count("\n") == 1


def test_profile_phases_and_command(tmp_path, capsys):
    from gradalign_fast.benchmarking import profiler

    rows = profiler.profile_step("mnist_cnn", 4, "cpu", steps=1, warmup=0)
    assert [r["phase"] for r in rows] == list(profiler.PHASES)
    assert all(r["ms"] > 0 for r in rows if "cosine" not in r["phase"])
    own = {r["phase"]: r["gradalign_only"] for r in rows}
    assert own["gradalign: double backward"] and own["gradalign: forward at x+eta"]
    assert not own["training backward"] and not own["attack fwd+bwd (FGSM)"]
    assert "GradAlign's own phases" in profiler.format_phases(rows)
    rc = main(["profile", "--model", "mnist_cnn", "--batch-size", "4", "--steps", "1",
               "--device", "cpu", "--out-dir", str(tmp_path)])
    assert rc == 0 and "double backward" in capsys.readouterr().out
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert any(e.get("name") == "gradalign: double backward" for e in trace["traceEvents"])
    assert (tmp_path / "phases.png").stat().st_size > 1000


def test_ratio_plot_takes_every_variant(tmp_path):
    from gradalign_fast.cli.commands.bench import plot_ratios

    rows = [{"model": "mnist_cnn", "batch": b, "step": v.name, "ratio": 1.0 + i / 10}
            for i, v in enumerate(bench.STEPS) for b in (32, 128)]
    plot_ratios(rows, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_ratio_interval_and_exact_vs_plain_line():
    """The bootstrap interval of a ratio of medians resamples paired rounds: a constant
    factor gives a degenerate interval at that factor; noise widens it around the ratio."""
    base = [10.0, 11.0, 9.0, 10.5, 9.5, 10.2, 9.8]
    assert bench.ratio_interval([2 * t for t in base], base) == pytest.approx((2.0, 2.0))
    noisy = [t * f for t, f in zip(base, (1.0, 1.2, 0.9, 1.1, 1.0, 0.95, 1.05))]
    lo, hi = bench.ratio_interval(noisy, base)
    assert lo < 1.0 < hi or lo <= 1.02 <= hi
    rows = [dict(model="m", batch=8, step=s, times_ms=t)
            for s, t in (("gradalign", [2 * t for t in base]), ("gradalign_plain", base))]
    assert bench.exact_vs_plain(rows) == ["m batch 8: exact / plain = 2.000 "
                                          "[95% CI 2.000, 2.000]"]


TIMM_VIT = "timm:vit_tiny_patch16_224:patch_size=8:depth=1"


def test_bench_times_timm_models(capsys):
    """timm:NAME: a ResNet (BatchNorm) and a ViT (fixed input size: img_size=32 is passed) on
    the CIFAR-shaped input; KEY=VALUE pairs reach timm.create_model; img_size sets the input."""
    pytest.importorskip("timm")
    assert bench.input_shape(TIMM_VIT) == (3, 32, 32)
    assert bench.input_shape("timm:vit_tiny_patch16_224:img_size=64") == (3, 64, 64)
    vit = bench._setup(TIMM_VIT, 2, torch.device("cpu"), False)[0]
    assert len(vit.blocks) == 1 and vit.patch_embed.img_size == (32, 32)
    rc = main(["bench", "--model", f"timm:resnet10t,{TIMM_VIT}", "--batch-sizes", "2",
               "--reps", "1", "--warmup", "0", "--steps", "gradalign_plain,gradalign",
               "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "timm:resnet10t batch 2: exact / plain" in printed
    assert f"{TIMM_VIT} batch 2: exact / plain" in printed


@pytest.mark.parametrize("name, message", [
    ("timm:no_such_net", "unknown timm model 'no_such_net'"),
    ("timm:resnet10t:depth", "'depth' is not KEY=VALUE"),
    ("timm:resnet10t:patch_size=4", "unexpected keyword argument 'patch_size'"),
])
def test_bench_rejects_a_bad_timm_model(name, message, capsys):
    pytest.importorskip("timm")
    assert main(["bench", "--model", name, "--batch-sizes", "2", "--reps", "1", "--warmup",
                 "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bench_says_how_to_install_timm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert main(["bench", "--model", "timm:resnet18", "--batch-sizes", "2", "--reps", "1",
                 "--warmup", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model 'timm:resnet18' needs timm") and "pip install" in err
    assert err.count("\n") == 1


def test_too_few_rounds_give_no_interval(capsys):
    """--reps 1 (or 2): no interval in the rows, the table or the exact/plain line."""
    rows = bench.run_bench(**{**TINY, "reps": 2}, steps=["gradalign", "gradalign_plain"])
    assert all(r["ratio_lo"] is None and r["ratio_hi"] is None for r in rows)
    table = bench.format_table(rows)
    assert "-" in table.splitlines()[2].split() and "CI" in table.splitlines()[0]
    assert not any(c.isdigit() and "-" in c and "." in c for c in table.split())
    (line,) = bench.exact_vs_plain(rows)
    assert "no interval: fewer than 3 rounds" in line and "CI" not in line
