"""The input box, the eps and label checks shared by the attacks and GradAlignLoss, and the one
definition of gradient alignment (gradalign_fast.alignment) behind the regulariser, the CO
monitor, the adaptive probe and the public gradient_alignment."""
import math

import pytest
import torch
import torch.nn as nn

import gradalign_fast as gf
from gradalign_fast import alignment, attacks
from gradalign_fast.training import COMonitor
from gradalign_fast.training.methods import GradAlignAdaptive

MEAN, STD = 0.1307, 0.3081  # MNIST's normalisation, done by a user outside the model


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


def _xy(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("attack", ["fgsm", "fgsm_rs", "nfgsm", "pgd"])
def test_attacks_refuse_inputs_outside_their_box(attack):
    """Normalised inputs (about [-0.42, 2.82]) are refused under the default box with a line
    naming `bounds` and the convention; under their own bounds every delta stays in the
    eps-ball (the [0, 1] clamp moved 77% of the coordinates out of it before)."""
    model, (x, y) = _cnn(), _xy()
    x_norm = (x - MEAN) / STD
    eps = 0.3 / STD
    fn = getattr(attacks, attack)
    args = (eps / 4, 3) if attack == "pgd" else ()
    with pytest.raises(ValueError, match=r"outside bounds=\(0, 1\).*bounds=\(lo, hi\).*"
                                         r"normalise inside the model"):
        fn(model, x_norm, y, eps, *args)
    bounds = (-MEAN / STD, (1 - MEAN) / STD)
    out = fn(model, x_norm, y, eps, *args, bounds=bounds)
    delta = out[0] if attack == "fgsm" else out
    limit = eps * (1 + 1e-6) * (2 if attack == "nfgsm" else 1) + (eps if attack == "nfgsm" else 0)
    assert delta.abs().max() <= limit
    assert (x_norm + delta).min() >= bounds[0] - 1e-6 and (x_norm + delta).max() <= bounds[1] + 1e-6


def test_gradalign_loss_takes_the_box_and_its_eps_advice_names_it():
    model, (x, y) = _cnn(), _xy()
    with pytest.raises(ValueError, match=r"eps=8 is wider than the whole input box "
                                         r"bounds=\(0, 1\).*eps=8/255"):
        gf.GradAlignLoss(eps=8, lam=1.0)
    bounds = (-MEAN / STD, (1 - MEAN) / STD)
    reg = gf.GradAlignLoss(eps=0.3 / STD, lam=1.0, bounds=bounds)  # 0.97 in normalised units
    x_norm = (x - MEAN) / STD
    assert torch.isfinite(reg(model, x_norm, y))
    with pytest.raises(ValueError, match=r"outside bounds=\(0, 1\)"):
        gf.GradAlignLoss(eps=0.3, lam=1.0)(model, x_norm, y)
    with pytest.raises(ValueError, match=r"bounds=\(-0.4242, 2.8215\).*multiply it by the width"):
        gf.GradAlignLoss(eps=8, lam=1.0, bounds=(-0.4242, 2.8215))
    with pytest.raises(ValueError, match="lo < hi"):
        gf.GradAlignLoss(eps=0.1, lam=1.0, bounds=(1, 0))


@pytest.mark.parametrize("call", [
    lambda m, x, y: attacks.fgsm(m, x, y, 8),
    lambda m, x, y: attacks.fgsm_rs(m, x, y, 8),
    lambda m, x, y: attacks.nfgsm(m, x, y, 8),
    lambda m, x, y: attacks.pgd(m, x, y, 8, 2, 1),
    lambda m, x, y: gf.gradient_alignment(m, x, y, 8),
])
def test_every_attack_refuses_an_eps_in_255_units(call):
    model, (x, y) = _cnn(), _xy()
    with pytest.raises(ValueError, match=r"eps=8 is wider .*pass eps=8/255"):
        call(model, x, y)


@pytest.mark.parametrize("call", [
    lambda m, x, y: attacks.fgsm(m, x, y, 0.1),
    lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.05, 2),
    lambda m, x, y: gf.GradAlignLoss(0.1, 1.0)(m, x, y),
    lambda m, x, y: gf.gradient_alignment(m, x, y, 0.1),
])
def test_labels_out_of_range_are_refused_up_front(call):
    """Labels 5..14 for a 10-class model: one clear line, not an IndexError from inside
    cross_entropy (or a device-side assert on a GPU)."""
    model, (x, _) = _cnn(), _xy()
    y = torch.arange(5, 13)
    with pytest.raises(ValueError, match=r"label 12 but the model has 10 outputs"):
        call(model, x, y)
    with pytest.raises(ValueError, match=r"holds the label -1"):
        call(model, x, torch.full((8,), -1))


class HalfDead(nn.Module):
    """Logits lin(x) for samples whose first pixel is 1, zero logits (zero input gradient)
    for those whose first pixel is 0; tiny weights, so the valid samples' two gradients
    point the same way (cosine ~ 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(28 * 28, 10)
        with torch.no_grad():
            self.lin.weight.mul_(1e-3)

    def forward(self, x):
        x = x.flatten(1)
        return self.lin(x) * (x[:, :1] > 0.5)


def _half_dead_batch(n=16):
    x, y = _xy(n)
    x[:, 0, 0, 0] = torch.arange(n) % 2  # odd samples alive, even ones dead
    return x, y


def test_one_notion_of_a_valid_sample_everywhere():
    """Half the batch has zero input gradients. The regulariser, gradient_alignment, the CO
    monitor and the adaptive probe all average over the valid half (~1); the monitor used to
    average the dead samples in as 0 (~0.5)."""
    model, (x, y) = HalfDead(), _half_dead_batch()
    eps = 0.1
    reg = gf.GradAlignLoss(eps, 1.0)
    reg(model, x, y)
    assert reg.last_valid == 8
    values = {
        "GradAlignLoss.last_cos": float(reg.last_cos),
        "gradient_alignment": gf.gradient_alignment(model, x, y, eps),
        "COMonitor": COMonitor(x, y, eps).measure(model)["grad_align"],
        "probe": float(GradAlignAdaptive(eps, 1.0, probe_size=16).probe(
            model, x, y, attacks.input_gradient(model, x, y))),
    }
    for name, v in values.items():
        assert v == pytest.approx(1.0, abs=1e-4), (name, v)


def test_no_valid_sample_is_nan_not_zero():
    """Every gradient zero: the alignment is undefined (NaN), the regulariser 0 with a zero
    parameter gradient."""
    model = HalfDead()
    x, y = _xy()
    x[:, 0, 0, 0] = 0.0
    assert math.isnan(gf.gradient_alignment(model, x, y, 0.1))
    reg = gf.GradAlignLoss(0.1, 1.0)
    value = reg(model, x, y)
    assert value.item() == 0.0 and math.isnan(float(reg.last_cos)) and reg.last_valid == 0
    value.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


class SqrtAtZero(nn.Module):
    """A NaN input gradient for every sample whose first pixel is 0 (d sqrt(x)/dx = inf at 0,
    times 0)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(28 * 28, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.lin(x) + 0 * torch.sqrt(x[:, :1])


def test_a_nan_gradient_is_never_dropped():
    """Sample 0's gradients are NaN: the alignment and the regulariser are NaN (the loss
    check of a training loop sees it), not the mean over the other samples."""
    torch.manual_seed(0)
    model = SqrtAtZero()
    x, y = _xy()
    x[:, 0, 0, 0] = 0.5
    x[0, 0, 0, 0] = 0.0
    noise = torch.zeros_like(x)
    assert math.isnan(gf.gradient_alignment(model, x, y, 0.1, noise=noise))
    assert torch.isnan(gf.GradAlignLoss(0.1, 1.0)(model, x, y, noise=noise))
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.isfinite(alignment.mean_cosine(a, b)[0])
    for bad in (float("nan"), float("inf")):
        a[2, 3] = bad
        assert torch.isnan(alignment.mean_cosine(a, b)[0])


def test_gradient_alignment_needs_no_grad_mode_and_keeps_no_graph():
    model, (x, y) = _cnn(), _xy()
    noise = torch.empty_like(x).uniform_(-0.1, 0.1)
    reg = gf.GradAlignLoss(0.1, 1.0)
    reg(model, x, y, noise=noise)
    with torch.no_grad():
        got = gf.gradient_alignment(model, x, y, 0.1, noise=noise)
    assert got == pytest.approx(float(reg.last_cos), abs=1e-6)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        g = attacks.input_gradient(model, x, y)
    assert g.shape == x.shape and not g.requires_grad


def test_co_monitor_check_from_a_users_loop():
    """check() = measure() + update(): a CO flag and the first CO row kept."""
    model, (x, y) = _cnn(), _xy(32)
    monitor = COMonitor(x, y, eps=0.1, pgd_steps=2)
    row = monitor.check(model)
    assert set(row) >= {"clean_acc", "fgsm_acc", "pgd_acc", "grad_align", "co", "best"}
    assert row["best"] and monitor.best_pgd == row["pgd_acc"]
    row = monitor.check(model, eps=0.05)
    assert row["eps"] == 0.05
