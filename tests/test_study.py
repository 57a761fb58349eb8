"""The study protocol: intervals, the verdict rules, and the gradient-fidelity instrument."""
import json
import math

import pytest
import torch
from scipy import stats as scipy_stats

from gradalign_fast.cli import main
from gradalign_fast.studies import fidelity, study
from gradalign_fast.studies.stats import bootstrap_mean_ci, fisher_greater, wilson


def test_wilson_matches_the_closed_form_and_edges():
    lo, hi = wilson(4, 5)
    assert (round(lo, 4), round(hi, 4)) == (0.3755, 0.9638)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(6, 5)


@pytest.mark.parametrize("table", [(4, 5, 0, 5), (5, 5, 1, 5), (1, 5, 0, 5), (3, 10, 2, 7)])
def test_fisher_greater_matches_scipy(table):
    k1, n1, k2, n2 = table
    want = scipy_stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater")
    assert fisher_greater(*table) == pytest.approx(want.pvalue)


def test_bootstrap_interval_holds_the_mean_and_shrinks_to_a_point():
    m, lo, hi = bootstrap_mean_ci([0.01, 0.03, -0.02, 0.05, 0.0])
    assert lo < m < hi
    assert bootstrap_mean_ci([0.02] * 5)[1:] == pytest.approx((0.02, 0.02))


def _final(label, seed, aa, pgd=None):
    return {"label": label, "eps_255": 76.5, "seed": seed, "train_time_s": 10.0,
            "accuracy": {"clean": 0.95, "pgd-50-10": pgd if pgd is not None else aa + 0.05,
                         "autoattack": aa}}


def _verdict(ref_aa, mode_aa):
    finals = ([_final("exact", s, a) for s, a in enumerate(ref_aa)]
              + [_final("mode", s, a) for s, a in enumerate(mode_aa)])
    rows = {r["method"]: r for r in study.compare(finals, "exact")}
    return rows["mode"]["verdict"], rows


def test_verdict_rules_are_applied_in_order():
    ref = [0.40, 0.42, 0.38, 0.41, 0.39]
    assert _verdict(ref, [a + 0.01 for a in ref])[0] == "equivalent"
    assert _verdict(ref, [a - 0.10 for a in ref])[0] == "worse"
    assert _verdict(ref, [a + 0.10 for a in ref])[0] == "better"
    assert _verdict(ref, [0.01, 0.02, 0.0, 0.03, 0.45])[0] == "collapses more"
    assert _verdict(ref, [0.30, 0.52, 0.28, 0.51, 0.40])[0] == "inconclusive"
    assert _verdict(ref[:4], [a + 0.01 for a in ref[:4]])[0] == "too few seeds"
    assert _verdict(ref[:4], [0.0, 0.01, 0.02, 0.0])[0] == "collapses more"  # p = 0.014
    verdict, rows = _verdict(ref, ref)
    assert rows["exact"]["verdict"] == "reference"
    assert rows["mode"]["primary"] == "autoattack"
    assert "| `mode` |" in study.markdown(list(rows.values()), "exact")


def test_compare_needs_the_reference_at_each_eps():
    with pytest.raises(ValueError, match="no 'exact' runs"):
        study.compare([_final("mode", 0, 0.3)], "exact")


def test_fidelity_compare_removes_monte_carlo_noise():
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(500, generator=gen, dtype=torch.float64)
    ref = truth + 0.5 * torch.randn(64, 500, generator=gen, dtype=torch.float64)
    noisy = truth + 3.0 * torch.randn(64, 500, generator=gen, dtype=torch.float64)
    biased = 0.5 * truth + 0.5 * torch.randn(64, 500, generator=gen, dtype=torch.float64)
    unbiased = fidelity.compare(noisy, ref)
    assert unbiased["rel_bias"] < 0.1 and unbiased["cos"] < 0.95  # noisy, not biased
    assert fidelity.compare(biased, ref)["rel_bias"] == pytest.approx(0.5, abs=0.05)
    assert fidelity.compare(biased, ref)["norm_ratio"] == pytest.approx(0.5, abs=0.05)


def test_fidelity_command_trains_a_trajectory_and_writes_its_tables(tmp_path, capsys):
    run = tmp_path / "traj"
    assert main(["fidelity", "--run", str(run), "--n-train", "256", "--epochs", "1",
                 "--batch-size", "64", "--eps", "76.5", "--lam", "1", "--snapshot-every", "2",
                 "--eval-attacks", "clean", "--n-eval", "64", "--draws", "2",
                 "--ref-draws", "2", "--batch", "16", "--mode", "gradalign:fraction=0.5",
                 "--mode", "gradalign:every=2"]) == 0
    result = json.loads((run / "fidelity" / "fidelity.json").read_text())
    assert {r["iteration"] for r in result["rows"]} == {2, 4}
    assert {r["mode"] for r in result["rows"]} == {"gradalign", "gradalign:fraction=0.5",
                                                   "gradalign:every=2"}
    assert (run / "fidelity" / "fidelity.png").stat().st_size > 0
    assert "| `gradalign:every=2` | 2 |" in capsys.readouterr().out


def test_fidelity_refuses_modes_without_a_regulariser(tmp_path, capsys):
    run = tmp_path / "traj"
    args = ["fidelity", "--run", str(run), "--n-train", "128", "--epochs", "1",
            "--batch-size", "64", "--eps", "76.5", "--lam", "1", "--snapshot-every", "2",
            "--eval-attacks", "clean", "--n-eval", "32", "--draws", "2", "--ref-draws", "2",
            "--batch", "8", "--mode", "fgsm_rs"]
    assert main(args) == 1
    assert "error: mode 'fgsm_rs': method 'fgsm_rs' has no regulariser" in capsys.readouterr().err


def test_seeds_are_paired_across_methods(tmp_path):
    """The same seed gives every method the same initial weights and data order."""
    from gradalign_fast.training import distributed, trainer

    def setup(method):
        cfg = trainer.resolve(trainer.TrainConfig(method=method, n_train=256, epochs=1,
                                                  batch_size=64, out_dir=str(tmp_path / method),
                                                  seed=3, progress=False))
        run = trainer._Run(cfg, distributed.setup("cpu"))
        run._setup()
        return run.net.state_dict(), [y for _, y in run.loader]

    (w1, order1), (w2, order2) = setup("fgsm_rs"), setup("gradalign")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert all(torch.equal(a, b) for a, b in zip(order1, order2))


def test_one_seed_has_no_interval():
    """A 1-seed comparison gives no interval (it printed [+0.0, +0.0] before)."""
    m, lo, hi = bootstrap_mean_ci([0.03])
    assert m == 0.03 and math.isnan(lo) and math.isnan(hi)
    rows = study.compare([_final("exact", 0, 0.4), _final("mode", 0, 0.5)], "exact")
    table = study.markdown(rows, "exact")
    assert "+10.0 [no interval: 1 seed]" in table and "[+10.0, +10.0]" not in table


def test_tables_name_the_autoattack_they_report():
    """A table with an AutoAttack column says which AutoAttack it ran (iterations, targets,
    queries, restarts)."""
    _, rows = _verdict([0.40, 0.42, 0.38, 0.41, 0.39], [0.41, 0.43, 0.39, 0.42, 0.40])
    table = study.markdown(list(rows.values()), "exact")
    assert ("autoattack: the standard AutoAttack: APGD-CE, APGD-T and FAB-T 100 iterations"
            in table and "Square 5000 queries, 1 restart each" in table)
    from gradalign_fast.studies.sweep import markdown_table

    summary = markdown_table([{"method": "m", "eps_255": 76.5, "seeds": 1, "train_time_s": 1.0,
                               "train_time_s_std": 0.0, "co_runs": 0, "co_epochs": "",
                               "collapsed_runs": 0, "pgd-50-10+autoattack-fast": 0.1,
                               "pgd-50-10+autoattack-fast_std": 0.0}])
    assert "autoattack-fast: a reduced AutoAttack: APGD-CE, APGD-T and FAB-T 10 iterations" in summary
