"""bench --epoch on the CPU: the table's structure, and times that come from real timing."""
import time

import pytest
import torch

from gradalign_fast.benchmarking import epoch_time
from gradalign_fast.cli import main

TINY = dict(model="preact_resnet18_narrow", batch_size=2, iters=8, blocks=2, warmup=1)


def test_rows_are_timed_and_extrapolated(monkeypatch):
    """A step made 20 ms slower is timed at least 20 ms slower per iteration, and the minutes
    are the per-iteration seconds times the iterations of 30 epochs."""
    make_step = epoch_time.make_step

    def slow_fgsm(name, *a):
        step = make_step(name, *a)
        if name != "fgsm":
            return step

        def slow(*args):
            time.sleep(0.02)
            return step(*args)
        return slow

    monkeypatch.setattr(epoch_time, "make_step", slow_fgsm)
    res = epoch_time.run_epoch_bench(names=("fgsm", "nfgsm"), **TINY)
    fgsm, nfgsm = res["rows"]
    assert len(fgsm["s_per_iter"]) == 2 and all(t >= 0.02 for t in fgsm["s_per_iter"])
    assert all(t > 0 for t in nfgsm["s_per_iter"])
    steps = res["meta"]["steps_per_epoch"]
    assert steps == 25000  # 50,000 images at batch 2
    for row in res["rows"]:
        per = sorted(row["s_per_iter"])
        assert row["min_30ep_lo"] == pytest.approx(per[0] * steps * 30 / 60)
        assert row["min_30ep_lo"] <= row["min_30ep"] <= row["min_30ep_hi"]
    assert fgsm["x_fgsm"] == 1.0 and fgsm["authors_v100_min"] == 9.5
    assert nfgsm["x_fgsm"] == pytest.approx(nfgsm["min_30ep"] / fgsm["min_30ep"])
    assert "synthetic" in res["meta"]["data"]


def test_bad_options_fail_first():
    with pytest.raises(ValueError, match="multiple of 8"):
        epoch_time.run_epoch_bench(**{**TINY, "iters": 4})
    with pytest.raises(ValueError, match="unknown methods"):
        epoch_time.run_epoch_bench(names=("pgd",), **TINY)
    with pytest.raises(ValueError, match="float16"):
        epoch_time.run_epoch_bench(amp_dtype=torch.float16, **TINY)


def test_bench_epoch_dry_run_prints_the_table(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(epoch_time, "DRY_RUN", TINY)
    out = tmp_path / "epoch.json"
    assert main(["bench", "--epoch", "--dry-run", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("DRY RUN") and "synthetic CIFAR-10-shaped" in text
    assert "extrapolated to 25000 iterations an epoch and 30 epochs" in text
    lines = text.splitlines()
    for name, (label, authors) in epoch_time.METHODS.items():
        row = next(line for line in lines if line.startswith(label + " "))
        cells = row[40:].split()
        assert float(cells[0]) > 0, row  # minutes per 30 epochs
        assert cells[-2:] == (["-", "-"] if authors is None else
                              [f"{authors:.1f}", f"{authors / 9.5:.2f}"]), row
    assert out.is_file()
