import sys

import pytest
import torch
import torch.nn as nn

from gradalign_fast.testing import authors_reference as reference
from gradalign_fast.training import autoattack, evaluation
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


def _authors_robust(model, x, y, eps, steps, init):
    """Per restart r: correct at the end of the authors' PGD from the start init[r]."""
    out = []
    for d0 in init:
        delta = d0.clone()
        for _ in range(steps):
            g = reference.input_grad(model, x, y, delta=delta)
            delta = reference.attack_step(x, delta, g, eps / 4, eps, 0.0, 1.0, True)
        with torch.no_grad():
            out.append(model(x + delta).argmax(1) == y)
    return torch.stack(out)


def _starts(x, eps, restarts, seed=5):
    g = torch.Generator().manual_seed(seed)
    d = torch.empty((restarts, *x.shape), dtype=x.dtype).uniform_(-eps, eps, generator=g)
    return (x + d).clamp(0, 1) - x


@pytest.fixture
def model64(setup):
    model, ds = setup
    return model.double().eval(), ds.x.double(), ds.y


def test_pgd_robust_is_robust_to_every_restart(model64):
    """A point fooled at the end of any restart (or at x) is not robust."""
    model, x, y = model64
    eps, steps, restarts = 0.15, 5, 3
    init = _starts(x, eps, restarts)
    robust = evaluation.pgd_robust(model, x, y, eps, eps / 4, steps, restarts,
                                   init=init.flatten(0, 1))
    per_restart = _authors_robust(model, x, y, eps, steps, init)
    assert not (robust & ~per_restart.all(0)).any()
    clean = model(x).argmax(1) == y
    assert not (robust & ~clean).any()
    assert 0 < robust.sum() and per_restart.all(0).sum() < clean.sum()  # a non-trivial case


def test_restarts_batched_equal_sequential_and_early_stop_changes_nothing(model64):
    model, x, y = model64
    eps, steps, restarts = 0.15, 6, 4
    init = _starts(x, eps, restarts, seed=9)
    batched = evaluation.pgd_robust(model, x, y, eps, eps / 4, steps, restarts,
                                    init=init.flatten(0, 1))
    sequential = torch.stack([evaluation.pgd_robust(model, x, y, eps, eps / 4, steps, 1,
                                                    init=d0) for d0 in init]).all(0)
    full = evaluation.pgd_robust(model, x, y, eps, eps / 4, steps, restarts,
                                 init=init.flatten(0, 1), early_stop=False)
    assert torch.equal(batched, sequential) and torch.equal(batched, full)
    assert 0 < batched.sum() < len(y)


def test_early_stop_never_raises_accuracy(setup):
    model, ds = setup
    for seed in range(3):
        kw = dict(n=None, steps=8, restarts=3, batch_size=16, seed=seed, progress=False)
        any_ = evaluation.pgd_accuracy(model, ds, 0.1, **kw)
        authors = evaluation.pgd_accuracy(model, ds, 0.1, pgd_select="max_loss", **kw)
        assert any_ <= authors <= 0.75


def test_pgd_accuracy_matches_the_attack(setup):
    model, ds = setup
    assert evaluation.pgd_accuracy(model, ds, 0.0, n=None, steps=2, restarts=1,
                                   progress=False) == 0.75
    eps = 0.1
    acc = evaluation.pgd_accuracy(model, ds, eps, n=None, steps=10, restarts=2, batch_size=40,
                                  seed=3, progress=False, pgd_select="max_loss")
    gen = torch.Generator().manual_seed(3)
    delta = reference.pgd(model.eval(), ds.x, ds.y, eps, eps / 4, 10, 2, generator=gen)
    ref = (model(ds.x + delta).argmax(1) == ds.y).float().mean().item()
    assert acc <= 0.75 and acc == pytest.approx(ref, abs=1 / 40)
    again = evaluation.pgd_accuracy(model, ds, eps, n=None, steps=10, restarts=2,
                                    batch_size=40, seed=3, progress=False,
                                    pgd_select="max_loss")
    assert again == acc  # seeded restarts
    new = [evaluation.pgd_accuracy(model, ds, eps, n=None, steps=10, restarts=2, seed=3,
                                   progress=False) for _ in range(2)]
    assert new[0] == new[1] <= acc


def test_evaluate_reports_each_attack_and_times(setup):
    model, ds = setup
    out = evaluation.evaluate(model, ds, 0.05, "clean,pgd-3-2,pgd-3-2+clean@10", n=20,
                              progress=False)
    assert out["n"] == 20 and set(out["time_s"]) == {"clean", "pgd-3-2", "pgd-3-2+clean@10"}
    assert out["points"] == {"clean": 20, "pgd-3-2": 20, "pgd-3-2+clean@10": 10}
    assert 0 <= out["pgd-3-2"] <= out["clean"] <= 1 and out["masking"] == []


def test_worst_case_runs_the_second_attack_only_on_survivors(setup, monkeypatch):
    model, ds = setup
    seen = []
    robust_fn = evaluation._robust_fn

    def spy(model, part, *a):
        fn = robust_fn(model, part, *a)
        return lambda x, y, index: (seen.append((part.name, len(y))), fn(x, y, index))[1]

    monkeypatch.setattr(evaluation, "_robust_fn", spy)
    out = evaluation.evaluate(model, ds, 0.1, "pgd-5-2,pgd-5-2+pgd-4-1", n=None,
                              batch_size=40, progress=False)
    survivors = round(out["pgd-5-2"] * 40)
    assert seen == [("pgd-5-2", 40), ("pgd-4-1", survivors)]  # PGD-5-2 ran once, reused
    assert out["pgd-5-2+pgd-4-1"] <= out["pgd-5-2"]


def test_masking_is_flagged_when_pgd_exceeds_the_other_attack(setup, monkeypatch):
    model, ds = setup
    monkeypatch.setattr(evaluation, "_torchattacks_fn",
                        lambda *a: lambda x, y: torch.zeros(len(y), dtype=torch.bool))
    out = evaluation.evaluate(model, ds, 0.01, "clean,pgd-2-1,square@20", n=None,
                              progress=False)
    (m,) = out["masking"]
    assert m["flag"] and m["n"] == 20 and m["attack_acc"] == 0 and m["pgd_acc"] > 0.05
    assert "possible gradient masking: pgd-2-1" in evaluation.masking_warnings(out)[0]
    out = evaluation.evaluate(model, ds, 0.01, "pgd-2-1+square", n=None, progress=False)
    assert out["masking"][0]["flag"]


@pytest.mark.parametrize("spec, match", [
    ("", "no attack"), ("clean,pgd-50", "unknown attack"), ("fab", "unknown attack"),
    ("pgd-50-0", "at least 1 step and 1 restart"), ("pgd-0-1", "at least 1 step and 1 restart"),
    ("square-0", "at least 1 query"), ("pgd-5-1@0", "positive number of points"),
    ("pgd-5-1@x", "positive number of points"),
])
def test_bad_attack_names(spec, match):
    with pytest.raises(ValueError, match=match):
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
        evaluation.autoattack_accuracy(setup[0], setup[1], 0.05, n=12, progress=False)


def test_autoattack_and_square_accuracy(setup):
    pytest.importorskip("torchattacks")
    model, ds = setup
    out = evaluation.evaluate(model, ds, 0.05, "pgd-20-2,autoattack,square-200,"
                              "pgd-20-2+autoattack", n=12, progress=False)
    assert 0 <= out["autoattack"] <= out["pgd-20-2"] + 1e-9
    assert 0 <= out["square-200"] <= 0.75 and out["pgd-20-2+autoattack"] <= out["autoattack"]
    assert [m["attack"] for m in out["masking"]] == ["autoattack", "square-200",
                                                       "pgd-20-2+autoattack"]


def _robust_set(model, ds, eps, spec, batch_size, seed=0):
    (s,) = evaluation.parse_attacks(spec)
    masks = evaluation._Masks(model, ds, eps, batch_size, None, seed, False, "any")
    return masks.get(s.parts, len(ds))


def test_pgd_robust_sets_do_not_depend_on_the_batch_size(setup):
    """The same points, model and seed give the same robust set in batches of 7 and of 40: PGD's
    starts are per point, and a chain's survivors are matched to their points in every batch."""
    model, ds = setup
    clean = _robust_set(model, ds, 0.1, "clean", 40)
    for spec in ("pgd-5-2", "pgd-5-2+pgd-4-1", "pgd-2-1+pgd-6-3"):
        small, large = (_robust_set(model, ds, 0.1, spec, b) for b in (7, 40))
        assert torch.equal(small, large), spec
        assert 0 < small.sum() < clean.sum() and not (small & ~clean).any()


def test_autoattack_robust_sets_do_not_depend_on_the_batch_size(setup):
    """AutoAttack and Square run on fixed blocks of points: batches of 3 and of 40 (AutoAttack
    given 1-3 PGD survivors per batch before the fix) give the same robust set."""
    pytest.importorskip("torchattacks")
    model, ds = setup
    for spec in ("pgd-2-1+autoattack-fast", "square-100"):
        small, large = (_robust_set(model, ds, 0.08, spec, b) for b in (3, 40))
        assert torch.equal(small, large), spec
        assert 0 < small.sum() < 30


def test_a_blocked_mask_is_reused_for_fewer_points_only_on_a_block_boundary(setup, monkeypatch):
    monkeypatch.setattr(autoattack, "BLOCK", 8)
    model, ds = setup
    calls = []
    monkeypatch.setattr(evaluation, "_torchattacks_fn", lambda *a: lambda x, y: (
        calls.append(len(y)), torch.ones(len(y), dtype=torch.bool))[1])
    (s,) = evaluation.parse_attacks("square")
    masks = evaluation._Masks(model, ds, 0.1, 40, None, 0, False, "any")
    masks.get(s.parts, 40)
    masks.get(s.parts, 16)  # blocks 0-7, 8-15: reused
    assert calls == [8] * 5
    masks.get(s.parts, 20)  # the block 16-19 differs from 16-23: recomputed
    assert calls == [8] * 5 + [8, 8, 4]


def test_autoattack_is_the_standard_configuration(setup):
    ta = pytest.importorskip("torchattacks")
    model, ds = setup
    atk = autoattack.build(model, 0.1, 10, 0, autoattack.STANDARD_ITERATIONS)
    apgd, apgdt, fab, square = atk.attacks
    assert [type(a) for a in atk.attacks] == [ta.APGD, ta.APGDT, ta.FAB, ta.Square]
    assert apgd.steps == apgdt.steps == fab.steps == 100 and apgd.loss == "ce"
    assert apgdt.n_target_classes == fab.n_target_classes == 9 and fab.multi_targeted
    assert square.n_queries == 5000
    assert {a.n_restarts for a in atk.attacks} == {1}
    assert autoattack.build(model, 0.1, 100, 0, 10).attacks[1].n_target_classes == 9
    out = evaluation.evaluate(model, ds, 0.05, "clean,pgd-3-2+autoattack-fast", n=8,
                              progress=False)
    cfg = out["attack_configs"]
    assert cfg["pgd-3-2"]["restarts"] == 2 and cfg["clean"] == {"attack": "clean"}
    fast = cfg["autoattack-fast"]
    assert not fast["standard"] and [c["name"] for c in fast["components"]] == [
        "apgd-ce", "apgd-t", "fab-t", "square"]
    assert fast["components"][0]["iterations"] == 10 and fast["components"][3]["queries"] == 5000
    std = evaluation.attack_config(evaluation.parse_attacks("autoattack")[0].parts[0])
    assert std["standard"] and std["components"][2] == {
        "name": "fab-t", "iterations": 100, "restarts": 1, "targets": "min(9, classes - 1)"}
    assert "blocks of 250" in std["chunks"]


def test_final_json_names_the_attack_configuration(tmp_path):
    pytest.importorskip("torchattacks")
    import json

    from gradalign_fast.training.trainer import TrainConfig, train
    train(TrainConfig(method="fgsm", epochs=1, n_train=64, batch_size=32, eval_attacks=
                      "clean,pgd-2-1+autoattack-fast", n_eval=8, monitor_every=0,
                      progress=False, out_dir=str(tmp_path)))
    cfg = json.loads((tmp_path / "final.json").read_text())["attack_configs"]
    assert cfg["pgd-2-1"]["steps"] == 2 and not cfg["autoattack-fast"]["standard"]
    assert cfg["autoattack-fast"]["components"][1] == {
        "name": "apgd-t", "iterations": 10, "restarts": 1, "targets": "min(9, classes - 1)"}


def test_autoattack_leaves_the_global_rng_alone(setup):
    pytest.importorskip("torchattacks")
    model, ds = setup
    fn = autoattack.robust_fn(model.eval(), "autoattack", 0.05, 0, steps=2)
    state = torch.get_rng_state()
    assert fn(ds.x[:8], ds.y[:8]).dtype == torch.bool  # torchattacks seeds the global RNG
    assert torch.equal(state, torch.get_rng_state())


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


def test_an_out_of_ball_adversarial_example_is_no_certificate(monkeypatch):
    """AutoAttack's output counts as fooling a point only inside the eps-ball and the box."""
    import types

    def wild(x, y):  # points far outside the eps-ball
        return (x + 0.5).clamp(0, 1)

    monkeypatch.setattr(autoattack, "torchattacks",
                        lambda: types.SimpleNamespace(__version__="stub"))
    monkeypatch.setattr(autoattack, "build", lambda *a: wild)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    x, y = torch.rand(32, 1, 4, 4) * 0.5, torch.randint(0, 4, (32,))
    ds = torch.utils.data.TensorDataset(x, y)
    res = evaluation.evaluate(model, ds, 0.05, "clean,autoattack", n=None, progress=False)
    assert res["autoattack"] == res["clean"]
