"""Each training method against the pure-PyTorch reference, in float64."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradalign_fast.testing import authors_reference as reference
from gradalign_fast.training.methods import METHODS, make_method
from gradalign_fast.training.step import train_step
from helpers import batch, softplus_cnn

EPS = 0.1
KW = {"gradalign": {"lam": 0.5}, "gradalign_adaptive": {"lam": 0.5}, "cure": {"lam": 0.5}}




def test_fgsm_matches_reference():
    model, (x, y) = softplus_cnn(), batch()
    delta, grad = make_method("fgsm", EPS).perturb(model, x, y)
    ref_delta, ref_grad = reference.fgsm(model, x, y, EPS)
    torch.testing.assert_close(delta, ref_delta, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("name, ref", [
    ("fgsm_rs", lambda m, x, y: reference.fgsm_rs(m, x, y, EPS)),
    ("nfgsm", lambda m, x, y: reference.nfgsm(m, x, y, EPS)),
    ("pgd", lambda m, x, y: reference.pgd(m, x, y, EPS, 2.5 * EPS / 10, 10)),
])
def test_random_start_methods_match_reference_with_the_same_seed(name, ref):
    model, (x, y) = softplus_cnn(), batch()
    torch.manual_seed(5)
    delta, grad = make_method(name, EPS).perturb(model, x, y)
    torch.manual_seed(5)
    torch.testing.assert_close(delta, ref(model, x, y), rtol=0, atol=1e-12)
    assert grad is None


def test_gradalign_step_equals_reference_loss_and_gradient():
    model, (x, y) = softplus_cnn(), batch()
    before = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # so the update is minus the gradient
    method = make_method("gradalign", EPS, lam=0.5)
    torch.manual_seed(9)
    out = train_step(method, model, opt, x, y)

    torch.manual_seed(9)
    delta, grad = reference.fgsm(before, x, y, EPS)
    reg = reference.gradalign_regularizer(before, x, y, EPS, 0.5, grad_clean=grad)
    total = F.cross_entropy(before(x + delta), y) + reg
    grads = torch.autograd.grad(total, list(before.parameters()))
    torch.testing.assert_close(out["reg"], reg.detach())
    for p0, p1, g in zip(before.parameters(), model.parameters(), grads):
        torch.testing.assert_close(p0 - p1, g)


class _CountInputGrads(torch.autograd.Function):
    """Identity that counts how often autograd differentiates through it (the model's input
    layer: every gradient with respect to an input passes here)."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _CountInputGrads.calls += 1
        return g * 1.0  # differentiable (GradAlign's input gradient keeps a graph)


@pytest.mark.parametrize("name", ["gradalign", "cure", "llr"])
def test_train_step_differentiates_only_towards_the_parameters(name):
    """The step's backward asks for the parameters' gradients only (backward(inputs=...)):
    without that, autograd also differentiates the regulariser with respect to its own input
    leaf (x + eta for GradAlign), input-side work that is then discarded (7% of an exact
    GradAlign step on the MNIST CNN). The parameter gradients are the same either way."""
    class Counted(nn.Module):
        def forward(self, x):
            return _CountInputGrads.apply(x)

    def grads(restrict):
        model = nn.Sequential(Counted(), *softplus_cnn())
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        method = make_method(name, EPS, **KW.get(name, {}))
        before = [p.detach().clone() for p in model.parameters()]
        _CountInputGrads.calls = 0
        torch.manual_seed(9)
        if restrict:
            train_step(method, model, opt, *batch())
        else:  # the same step with an unrestricted backward
            backward = torch.Tensor.backward
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch.Tensor, "backward",
                           lambda t, *a, inputs=None, **k: backward(t, *a, **k))
                train_step(method, model, opt, *batch())
        return _CountInputGrads.calls, [b - p for b, p in zip(before, model.parameters())]

    calls, g = grads(restrict=True)
    calls_all, g_all = grads(restrict=False)
    assert calls < calls_all  # the input-side derivatives of the last backward are skipped
    for a, b in zip(g, g_all):
        torch.testing.assert_close(a, b)


def test_gradalign_step_checks_x_for_nan_once_in_its_attack():
    """The method's regulariser skips its own NaN/inf check (a second host sync per step on a
    GPU): the step's FGSM attack has checked the same x, so a NaN still stops the step, with
    the attack's message; an explicit check_finite=True keeps the regulariser's check too."""
    model, (x, y) = softplus_cnn(), batch()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    method = make_method("gradalign", EPS, lam=0.5)
    assert method._loss.check_finite is False
    assert make_method("gradalign", EPS, lam=0.5, check_finite=True)._loss.check_finite
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="attacks.fgsm: `x` contains NaN"):
        train_step(method, model, opt, x, y)


def test_gradalign_step_with_batchnorm_equals_one_backward_in_the_authors_order():
    """train_step backpropagates the loss before the regulariser's forward (memory): the
    update and BatchNorm's running statistics must equal the authors' step, where the forwards
    run in the same order (attack, loss, regulariser) and one backward takes loss + reg."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double()
    x, y = batch()
    before = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    torch.manual_seed(9)
    out = train_step(make_method("gradalign", EPS, lam=0.5), model, opt, x, y)

    torch.manual_seed(9)
    before.train()
    delta, grad = reference.fgsm(before, x, y, EPS)
    loss = F.cross_entropy(before(x + delta), y)
    reg = reference.gradalign_regularizer(before, x, y, EPS, 0.5, grad_clean=grad)
    grads = torch.autograd.grad(loss + reg, list(before.parameters()))
    torch.testing.assert_close(out["reg"], reg.detach())
    for p0, p1, g in zip(before.parameters(), model.parameters(), grads):
        torch.testing.assert_close(p0 - p1, g)
    for b0, b1 in zip(before.buffers(), model.buffers()):
        torch.testing.assert_close(b1, b0, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_train_step_changes_the_parameters(name):
    model, (x, y) = softplus_cnn(), batch()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_step(make_method(name, EPS, **KW.get(name, {})), model, opt, x, y)
    assert torch.isfinite(out["loss"]) and 0 <= out["correct"] <= len(y)
    assert all(not torch.equal(p0, p1) for p0, p1 in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ["cure", "llr"])
def test_cure_and_llr_regularisers_are_nonnegative_and_reach_the_parameters(name):
    model, (x, y) = softplus_cnn(), batch()
    method = make_method(name, EPS, **KW.get(name, {}))
    _, grad_clean = reference.fgsm(model, x, y, EPS)
    reg = method.regularizer(model, x, y, grad_clean)
    assert reg.dim() == 0 and reg.item() >= 0
    grads = torch.autograd.grad(reg, list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
