import sys

import pytest
import torch
import torch.nn as nn

from gradalign_fast.testing import authors_reference as reference
from gradalign_fast.training import evaluation
from gradalign_fast.training.monitor import COMonitor, MetricsLog


class Images(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    x = torch.rand(40, 3, 2, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:10] = (y[:10] + 1) % 5  # exactly 30 of 40 correct
    return model, Images(x, y)


def test_clean_accuracy_counts_and_respects_n(setup):
    model, ds = setup
    model.train()
    assert evaluation.clean_accuracy(model, ds, batch_size=7, progress=False) == 0.75
    assert evaluation.clean_accuracy(model, ds, n=10, progress=False) == 0.0
    assert model.training  # mode restored


def test_pgd_accuracy_matches_the_attack(setup):
    model, ds = setup
    assert evaluation.pgd_accuracy(model, ds, 0.0, n=None, steps=2, restarts=1,
                                   progress=False) == 0.75
    eps = 0.1
    acc = evaluation.pgd_accuracy(model, ds, eps, n=None, steps=10, restarts=2, batch_size=40,
                                  seed=3, progress=False)
    gen = torch.Generator().manual_seed(3)
    delta = reference.pgd(model.eval(), ds.x, ds.y, eps, eps / 4, 10, 2, generator=gen)
    ref = (model(ds.x + delta).argmax(1) == ds.y).float().mean().item()
    assert acc <= 0.75 and acc == pytest.approx(ref, abs=1 / 40)
    again = evaluation.pgd_accuracy(model, ds, eps, n=None, steps=10, restarts=2,
                                    batch_size=40, seed=3, progress=False)
    assert again == acc  # seeded restarts


def test_evaluate_reports_each_attack_and_times(setup):
    model, ds = setup
    out = evaluation.evaluate(model, ds, 0.05, "clean,pgd-3-2", n=20, progress=False)
    assert out["n"] == 20 and set(out["time_s"]) == {"clean", "pgd-3-2"}
    assert 0 <= out["pgd-3-2"] <= out["clean"] <= 1


@pytest.mark.parametrize("spec", ["", "clean,pgd-50", "fab"])
def test_bad_attack_names(spec):
    with pytest.raises(ValueError, match="attack"):
        evaluation.parse_attacks(spec)


def test_bad_eps_and_n(setup):
    model, ds = setup
    with pytest.raises(ValueError, match="eps must be in"):
        evaluation.pgd_accuracy(model, ds, 8.0, progress=False)
    with pytest.raises(ValueError, match="only 40 points"):
        evaluation.clean_accuracy(model, ds, n=41, progress=False)


def test_autoattack_without_torchattacks_says_how_to_install(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ImportError, match="pip install --no-deps torchattacks"):
        evaluation.autoattack_accuracy(setup[0], setup[1], 0.05, progress=False)


def test_autoattack_accuracy(setup):
    pytest.importorskip("torchattacks")
    model, ds = setup
    acc = evaluation.autoattack_accuracy(model, ds, 0.05, n=12, progress=False)
    pgd = evaluation.pgd_accuracy(model, ds, 0.05, n=12, steps=20, restarts=2, progress=False)
    assert 0 <= acc <= pgd + 1e-9


# ---------------------------------------------------------------- CO monitor
def test_monitor_measures_deterministically_without_touching_the_rng(setup):
    model, ds = setup
    mon = COMonitor(ds.x, ds.y, 0.05, pgd_steps=3, batch_size=16)
    state = torch.get_rng_state()
    a, b = mon.measure(model), mon.measure(model)
    assert torch.equal(state, torch.get_rng_state()) and a == b
    assert a["clean_acc"] == 0.75 and 0 <= a["pgd_acc"] <= 0.75 and 0 <= a["fgsm_acc"] <= 0.75
    assert -1 <= a["grad_align"] <= 1


def test_monitor_flags_co_only_when_pgd_collapses_and_fgsm_holds():
    mon = COMonitor(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), 0.1)
    rows = [mon.update({"pgd_acc": p, "fgsm_acc": f}) for p, f in
            [(0.2, 0.3), (0.4, 0.5), (0.3, 0.45), (0.1, 0.1), (0.05, 0.8)]]
    assert [r["co"] for r in rows] == [False, False, False, False, True]
    assert [r["best"] for r in rows] == [True, True, False, False, False]
    assert mon.co_event["pgd_acc"] == 0.05
    other = COMonitor(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), 0.1)
    other.load_state_dict(mon.state_dict())
    assert (other.best_pgd, other.co_event) == (0.4, mon.co_event)


def test_monitor_flags_co_without_prior_robustness_only_at_full_eps():
    mon = COMonitor(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), 0.3)
    rows = [mon.update({"pgd_acc": p, "fgsm_acc": f, "eps": e}) for p, f, e in
            [(0.02, 0.4, 0.15), (0.06, 0.5, 0.3), (0.03, 0.7, 0.3)]]
    assert [r["co"] for r in rows] == [False, False, True]


def test_metrics_log_keeps_rows_up_to_an_iteration(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for it in (5, 10, 15):
        log.append({"iteration": it})
    log.keep_until(10)
    assert log.read() == [{"iteration": 5}, {"iteration": 10}]
