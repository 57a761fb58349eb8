"""ELLE, ELLE-A and adaptive GradAlign against the literal references, in float64."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradalign_fast.testing import authors_reference as ga_reference
from gradalign_fast.testing import elle_reference as reference
from gradalign_fast.training.methods import elle_error, make_method
from gradalign_fast.training.schedules import AdaptiveLambda, RunningMoments
from gradalign_fast.training.step import train_step
from helpers import batch, softplus_cnn

EPS = 0.1




# ---------------------------------------------------------------- ELLE
def test_elle_error_and_its_gradient_equal_the_authors_formula_with_the_same_noise():
    model, (x, y) = softplus_cnn(), batch()
    torch.manual_seed(3)
    err = elle_error(model, x, y, EPS)
    torch.manual_seed(3)
    ref = reference.elle_lin_err(model, x, y, EPS)
    assert ref.item() > 0
    torch.testing.assert_close(err, ref, rtol=1e-12, atol=0)
    for g, g_ref in zip(torch.autograd.grad(err, list(model.parameters())),
                        torch.autograd.grad(ref, list(model.parameters()))):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-14)


def test_elle_error_is_zero_where_the_loss_is_constant_in_the_input():
    x, y = batch()
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 5)).double()
    with torch.no_grad():
        model[1].weight.zero_()  # logits independent of x: l(x_a) = l(x_b) = l(x_c)
    assert elle_error(model, x, y, EPS).item() == pytest.approx(0, abs=1e-15)
    assert elle_error(softplus_cnn(), x, y, EPS).item() > 0


def test_elle_step_equals_the_authors_loss_and_gradient():
    model, (x, y) = softplus_cnn(), batch()
    before = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # so the update is minus the gradient
    torch.manual_seed(9)
    out = train_step(make_method("elle", EPS, lam=50.0), model, opt, x, y)
    torch.manual_seed(9)
    total, lin_err = reference.elle_loss(before, x, y, EPS, 50.0)
    torch.testing.assert_close(out["reg"], 50.0 * lin_err.detach())
    for p0, p1, g in zip(before.parameters(), model.parameters(),
                         torch.autograd.grad(total, list(before.parameters()))):
        torch.testing.assert_close(p0 - p1, g)


# ---------------------------------------------------------------- ELLE-A
def test_running_moments_equal_numpy_mean_and_population_std():
    rng = np.random.default_rng(0)
    values = list(1e4 + rng.standard_normal(500) * 1e-3)  # std << mean: sums would cancel
    m = RunningMoments()
    for v in values:
        m.add(float(v))
    assert m.n == 500
    assert m.mean == pytest.approx(np.mean(values), rel=1e-15)
    assert m.std == pytest.approx(np.std(values), rel=1e-9)


def test_adaptive_lambda_follows_the_authors_onoff_schedule():
    rng = np.random.default_rng(1)
    errors = np.exp(rng.standard_normal(300)).tolist()  # heavy tail: some exceed mean + 2 std
    ours, ref = AdaptiveLambda(4000.0, k=2.0, decay=0.99), reference.OnOffSchedule(4000.0)
    lams, fires = [], 0
    for e in errors:
        fires += ours.update(e)
        ref.step(e)
        lams.append(ours.lam)
        assert ours.lam == ref.lin_reg
    assert 0 < fires < 100 and lams[:3] == [0.0] * 3  # fired, and decayed in between
    assert any(0 < lam < 4000 for lam in lams)


def _elle_a_runs(steps, k, lam, seed=0):
    """ELLE-A by train_step and by the literal reference, from the same model, batches and
    noise; yields (ours, reference, method, schedule) after each step."""
    model = softplus_cnn()
    ref_model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05)
    method, sched = make_method("elle_a", EPS, lam=lam, k=k), reference.OnOffSchedule(lam, 0.99, k)
    for t in range(steps):
        x, y = batch(seed=100 + t)
        torch.manual_seed(seed + t)
        train_step(method, model, opt, x, y)
        torch.manual_seed(seed + t)
        total, lin_err = reference.elle_loss(ref_model, x, y, EPS, sched.lin_reg)
        ref_opt.zero_grad()
        total.backward()  # the authors: backward, then the lambda update, then one step
        sched.step(lin_err.item())
        ref_opt.step()
        yield model, ref_model, method, sched


def test_elle_a_training_equals_the_authors_schedule_step_by_step():
    lams = []
    for model, ref_model, method, sched in _elle_a_runs(steps=16, k=0.5, lam=20.0):
        assert method.lam_now == pytest.approx(sched.lin_reg, rel=1e-12)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        lams.append(method.lam_now)
    assert lams[0] == 0 and 20.0 in lams and any(0 < lam < 20.0 for lam in lams)


def test_elle_a_state_round_trips_and_resumes_bitwise():
    def run(steps, method=None, model=None):
        model = model or softplus_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        method = method or make_method("elle_a", EPS, lam=20.0, k=0.5)
        for t in steps:
            x, y = batch(seed=100 + t)
            torch.manual_seed(t)
            train_step(method, model, opt, x, y)
        return model, method

    full_model, full = run(range(12))
    half_model, half = run(range(6))
    resumed = make_method("elle_a", EPS, lam=20.0, k=0.5)
    resumed.load_state_dict(copy.deepcopy(half.state_dict()))
    assert resumed.state_dict() == half.state_dict()
    assert resumed.lam_now == half.lam_now
    resumed_model, resumed = run(range(6, 12), resumed, half_model)
    assert resumed.state_dict() == full.state_dict() and full.lam_now > 0
    for p, q in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_elle_a_logs_lambda_error_and_the_share_of_weighted_steps():
    method = make_method("elle_a", EPS, lam=20.0, k=0.0)  # fires whenever above the mean
    model = softplus_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lams = []
    for t in range(8):
        x, y = batch(seed=100 + t)
        lams.append(method.lam_now)
        train_step(method, model, opt, x, y)
    row = method.pop_log()
    assert row["lam"] == method.lam_now
    assert 0 < row["reg_share"] == sum(lam > 0 for lam in lams) / 8 < 1
    assert row["lin_err"] == pytest.approx(method._lam.stats.mean, rel=1e-6)  # all 8 steps
    assert method.pop_log() == {"lam": method.lam_now}  # the window starts again


# ---------------------------------------------------------------- adaptive GradAlign
def test_probe_equals_the_cosine_by_plain_autograd():
    model, (x, y) = softplus_cnn(), batch(n=12)
    method = make_method("gradalign_adaptive", EPS, lam=1.0, probe_size=5)
    _, grad_clean = ga_reference.fgsm(model, x, y, EPS)
    torch.manual_seed(4)
    probe = method.probe(model, x, y, grad_clean)
    torch.manual_seed(4)
    eta = torch.empty_like(x[:5]).uniform_(-EPS, EPS)
    g_noisy = ga_reference.input_grad(model, x[:5], y[:5], delta=eta)
    g_clean = ga_reference.input_grad(model, x, y)[:5]
    expected = F.cosine_similarity(g_clean.flatten(1), g_noisy.flatten(1)).mean()
    assert 0 < expected < 1
    torch.testing.assert_close(probe, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("options, probes, lams", [
    # threshold 0.5: fire below it; decay 0.5, off below 0.2 lam
    ({"rule": "threshold", "threshold": 0.5, "decay": 0.5, "off_below": 0.2},
     [0.9, 0.4, 0.9, 0.9, 0.9, 0.3], [0, 2, 1, 0.5, 0, 2]),
    # decay 0 (default): on only at the step that fired
    ({"rule": "threshold", "threshold": 0.5}, [0.4, 0.9, 0.4, 0.6], [2, 0, 2, 0]),
    # std rule, k=1: fire below mean - std of the earlier probes (needs 3 of them)
    ({"k": 1.0}, [0.9, 0.8, 0.9, 0.85, 0.5, 0.87, 0.1], [0, 0, 0, 0, 2, 0, 2]),
    # period 2: one probe every two steps, its decision holds for both
    ({"rule": "threshold", "threshold": 0.5, "period": 2}, [0.4, 0.9, 0.3],
     [2, 2, 0, 0, 2, 2]),
])
def test_the_regulariser_is_on_exactly_when_the_rule_says(monkeypatch, options, probes, lams):
    model, (x, y) = softplus_cnn(), batch()
    method = make_method("gradalign_adaptive", EPS, lam=2.0, **options)
    seq = iter(probes)
    monkeypatch.setattr(method, "probe", lambda *a: torch.tensor(next(seq)))
    _, grad_clean = ga_reference.fgsm(model, x, y, EPS)
    for lam in lams:
        torch.manual_seed(7)
        reg = method.regularizer(model, x, y, grad_clean)
        assert method.lam_now == lam
        if lam == 0:
            assert reg is None
        else:
            torch.manual_seed(7)
            expected = ga_reference.gradalign_regularizer(model, x, y, EPS, lam, grad_clean)
            torch.testing.assert_close(reg, expected)
    assert next(seq, None) is None  # every probe was used, none more
    row = method.pop_log()
    assert row["reg_share"] == sum(lam > 0 for lam in lams) / len(lams)
    assert row["probe_cos"] == pytest.approx(np.mean(probes))


def test_adaptive_state_round_trips_and_resumes_bitwise():
    def run(steps, method=None, model=None):
        model = model or softplus_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        method = method or make_method("gradalign_adaptive", EPS, lam=2.0, k=0.0, decay=0.5,
                                       period=2, probe_size=4)
        on = []
        for t in steps:
            x, y = batch(seed=100 + t)
            torch.manual_seed(t)
            train_step(method, model, opt, x, y)
            on.append(method.lam_now > 0)
        return model, method, on

    full_model, full, on = run(range(12))
    assert any(on) and not all(on)
    half_model, half, _ = run(range(5))  # stops between a probe and its held step
    resumed = make_method("gradalign_adaptive", EPS, lam=2.0, k=0.0, decay=0.5, period=2,
                          probe_size=4)
    resumed.load_state_dict(copy.deepcopy(half.state_dict()))
    assert resumed.state_dict() == half.state_dict()
    resumed_model, resumed, _ = run(range(5, 12), resumed, half_model)
    assert resumed.state_dict() == full.state_dict()
    for p, q in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------- options
@pytest.mark.parametrize("name, options, match", [
    ("elle", {"lam": -1.0}, "`lam` must be a number in \\[0, inf\\)"),
    ("elle", {"lam": math.nan}, "`lam`"),
    ("elle", {"lam": math.inf}, "`lam`"),
    ("elle_a", {"lam": -5}, "elle_a: `lam`"),
    ("elle_a", {"k": -1}, "`k` must be"),
    ("elle_a", {"decay": 1.5}, "`decay` must be a number in \\[0, 1\\]"),
    ("gradalign_adaptive", {"lam": -1.0}, "`lam` must be >= 0"),
    ("gradalign_adaptive", {"lam": 1.0, "probe_size": 0}, "`probe_size` must be an integer"),
    ("gradalign_adaptive", {"lam": 1.0, "probe_size": 2.5}, "`probe_size` must be an integer"),
    ("gradalign_adaptive", {"lam": 1.0, "period": 0}, "`period`"),
    ("gradalign_adaptive", {"lam": 1.0, "rule": "ema"}, "`rule` must be one of"),
    ("gradalign_adaptive", {"lam": 1.0, "rule": "threshold"}, "`threshold` must be a number"),
    ("gradalign_adaptive", {"lam": 1.0, "rule": "threshold", "threshold": 2}, "in \\[-1, 1\\]"),
    ("gradalign_adaptive", {"lam": 1.0, "threshold": 0.5}, "`threshold` is for rule="),
    ("gradalign_adaptive", {"lam": 1.0, "decay": 1.0}, "`decay` must be a number in \\[0, 1\\)"),
    ("gradalign_adaptive", {"lam": 1.0, "off_below": -0.1}, "`off_below`"),
    ("gradalign_adaptive", {"lam": 1.0, "every": 2}, "`every` is not an option"),
])
def test_bad_options_are_refused_with_the_option_named(name, options, match):
    with pytest.raises(ValueError, match=match):
        make_method(name, EPS, **options)


@pytest.mark.parametrize("method, options, fields", [
    ("elle_a", {"lam": 50.0, "k": 0.0}, {"lam", "reg_share", "lin_err"}),
    ("gradalign_adaptive", {"k": 0.0}, {"lam", "reg_share", "probe_cos"}),
])
def test_the_trainer_logs_the_methods_fields_in_every_row(tmp_path, method, options, fields):
    from gradalign_fast.training.trainer import TrainConfig, train
    from test_trainer import TINY, _rows

    train(TrainConfig(method=method, method_options=options, epochs=1, out_dir=str(tmp_path),
                      **TINY))
    rows = _rows(tmp_path)
    assert [r["kind"] for r in rows] == ["iter", "epoch"]  # 4 steps, a row every 2
    for r in rows:
        assert fields <= set(r) and 0 <= r["reg_share"] <= 1 and r["lam"] >= 0
