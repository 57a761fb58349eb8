"""The sweep (resumable grid + results table) and demo commands, and method options."""
import json
from dataclasses import replace

import pytest

from gradalign_fast.cli import main
from gradalign_fast.training.methods import GradAlign
from gradalign_fast.studies.sweep import grid, markdown_table, parse_method, parse_options, summarize
from gradalign_fast.training.trainer import TrainConfig, resolve, train

TINY = ["--n-train", "256", "--epochs", "1", "--batch-size", "64", "--n-eval", "32",
        "--eval-attacks", "clean,pgd-2-1", "--monitor-every", "2"]


def test_parse_method_and_options():
    m = parse_method("gradalign:lam=2:fraction=0.25:mode=linearity:fast_layers=false")
    assert m.name == "gradalign" and m.label.startswith("gradalign:")
    assert m.options == {"lam": 2, "fraction": 0.25, "mode": "linearity", "fast_layers": False}
    assert parse_method("fgsm").options == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["fraction"])


def test_amp_in_a_method_label_is_the_runs_precision_policy(tmp_path):
    """gradalign:amp=bf16-reg-fp32 trains that label under the policy (TrainConfig.amp), not
    as a GradAlignLoss option; labels without amp= keep the sweep's --amp."""
    from gradalign_fast.studies.sweep import _config

    base = TrainConfig(amp="bf16")
    a, b = grid(["gradalign:lam=1:amp=bf16-reg-fp32", "gradalign:lam=1"], [0.1], [0])
    cfg = _config(base, a, tmp_path)
    assert cfg.amp == "bf16-reg-fp32" and cfg.method_options == {} and cfg.lam == 1
    assert _config(base, b, tmp_path).amp == "bf16"
    assert resolve(replace(cfg, dataset="mnist_subset", epochs=1)).amp == "bf16-reg-fp32"


def test_grid_puts_seeds_outside_methods():
    runs = grid(["fgsm", "gradalign:lam=1"], [0.1], [0, 1])
    assert [(r.method.name, r.seed) for r in runs] == [
        ("fgsm", 0), ("gradalign", 0), ("fgsm", 1), ("gradalign", 1)]


def test_summarize_means_stds_and_co_counts():
    finals = [
        {"label": "fgsm", "eps_255": 90.0, "accuracy": {"clean": 0.9, "pgd-50-10": 0.0},
         "train_time_s": 10.0, "co": True, "co_epoch": 5.25},
        {"label": "fgsm", "eps_255": 90.0, "accuracy": {"clean": 0.8, "pgd-50-10": 0.2},
         "train_time_s": 12.0, "co": False, "co_epoch": None},
    ]
    (row,) = summarize(finals)
    assert row["clean"] == pytest.approx(0.85) and row["clean_std"] == pytest.approx(0.0707, 1e-3)
    assert row["pgd-50-10"] == pytest.approx(0.1) and row["co_runs"] == 1
    assert row["co_epochs"] == "5.2" and row["collapsed_runs"] == 1
    md = markdown_table([row])
    assert "| fgsm | 90 | 2 | 85.0 ± 7.1 | 10.0 ± 14.1 |" in md and "1/2 (5.2) | 1/2 |" in md


def test_sweep_end_to_end_and_resumable(tmp_path, capsys):
    args = ["sweep", "--method", "fgsm", "--method", "gradalign:lam=1:every=2", "--eps", "76.5",
            "--seeds", "0,1", "--out", str(tmp_path), *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| gradalign:lam=1:every=2 | 76.5 | 2 |" in out
    assert (tmp_path / "results.csv").exists() and (tmp_path / "fig_a_eps76.5.png").exists()
    cfg = json.loads((tmp_path / "gradalign_lam1_every2" / "eps76.5" / "seed1" /
                      "config.json").read_text())
    assert cfg["method_options"] == {"every": 2} and cfg["lam"] == 1
    # a second call reads the finished runs back instead of training again
    finals = sorted(tmp_path.rglob("final.json"))
    stamps = [f.stat().st_mtime_ns for f in finals]
    assert main(args) == 0
    assert [f.stat().st_mtime_ns for f in finals] == stamps
    # a run interrupted before its first checkpoint starts again
    seed1 = tmp_path / "fgsm" / "eps76.5" / "seed1"
    for f in ("checkpoint.pt", "best.pt", "final.json"):
        (seed1 / f).unlink()
    assert main(args) == 0
    assert "seed1: interrupted before its first checkpoint" in capsys.readouterr().out
    assert (seed1 / "final.json").exists()
    finals = sorted(tmp_path.rglob("final.json"))
    # a report of what exists trains nothing new
    assert main(args[:-len(TINY)] + ["--seeds", "0,1,5", "--report-only", *TINY]) == 0
    assert sorted(tmp_path.rglob("final.json")) == finals


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    """A NaN loss in one run (lr 1e8) does not stop the study: the run's final.json says
    diverged, scores 0 everywhere (collapsed by the study's rule), and the next run trains."""
    args = ["sweep", "--method", "fgsm", "--eps", "76.5", "--seeds", "0,1", "--out",
            str(tmp_path), *TINY, "--lr-max", "1e8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Recorded as diverged" in out
    for seed in (0, 1):
        final = json.loads((tmp_path / "fgsm" / "eps76.5" / f"seed{seed}" /
                            "final.json").read_text())
        assert "training diverged" in final["diverged"]
        assert final["accuracy"] == {"clean": 0.0, "pgd-2-1": 0.0} and final["seed"] == seed
    assert "| fgsm | 76.5 | 2 | 0.0 ± 0.0 | 0.0 ± 0.0 |" in out


def test_sweep_errors_are_clear(tmp_path, capsys):
    assert main(["sweep", "--method", "gradalign:rho=1", "--eps", "8", "--out",
                 str(tmp_path), *TINY]) == 1
    assert "does not take the options" in capsys.readouterr().err


def test_every_counter_survives_the_eps_warmup(tmp_path, monkeypatch):
    """The trainer keeps one GradAlign object through the eps ramp, so `every=2` regularises
    exactly every second step (a new object per eps would restart its counter)."""
    regs = []
    orig = GradAlign.regularizer

    def spy(self, *a):
        r = orig(self, *a)
        regs.append(float(r.detach()))
        return r

    monkeypatch.setattr(GradAlign, "regularizer", spy)
    train(TrainConfig(method="gradalign", lam=1.0, method_options={"every": 2}, eps=0.3,
                      epochs=1, n_train=512, batch_size=64, eps_warmup_epochs=1.0,
                      eval_attacks="clean", n_eval=16, monitor_every=0, progress=False,
                      out_dir=str(tmp_path)))
    assert len(regs) == 8
    assert all(r == 0 for r in regs[1::2]) and all(r > 0 for r in regs[2::2])


def test_demo_runs_and_flags(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--n-train", "256", "--n-eval", "16", "--no-bench",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"{m}: per epoch" in out for m in ("fgsm", "fgsm_rs", "gradalign"))
    assert "PGD-50-10" in out and "PGD+AA (first 16)" in out and "masking?" in out
    assert (tmp_path / "fig_a.png").exists()
    final = json.loads((tmp_path / "gradalign" / "final.json").read_text())
    assert set(final["accuracy"]) == {"clean", "pgd-50-10", "pgd-50-10+autoattack@100"}
    assert final["eval_points"]["pgd-50-10+autoattack@100"] == 16
    assert main(["demo", "--eps", "0.3", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: --eps 0.3 looks like [0, 1] units")


def test_demo_bench_steps_are_bench_variants():
    from gradalign_fast.cli.commands.demo import DEMO_BENCH_STEPS
    from gradalign_fast.benchmarking.step_bench import STEPS

    assert set(DEMO_BENCH_STEPS) <= {v.name for v in STEPS}
