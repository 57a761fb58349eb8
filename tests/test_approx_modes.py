"""GradAlignLoss's approximate modes: fraction, every, mode="linearity"."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gradalign_fast import GradAlignLoss, attacks
from gradalign_fast.testing import authors_reference as reference
from test_gradalign import _batch, small_cnn


def _model_and_batch(n=8):
    x, y = _batch(n=n)
    model = small_cnn()
    model(x)
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    _, grad = attacks.fgsm(model, x, y, 0.3)
    return model, x, y, noise, grad


def _value_and_grads(loss, model, **kw):
    reg = loss(model, **kw)
    grads = torch.autograd.grad(reg, list(model.parameters()), allow_unused=True)
    return reg, grads


def test_fraction_one_and_every_one_equal_exact():
    model, x, y, noise, grad = _model_and_batch()
    kw = dict(x=x, y=y, noise=noise, grad_clean=grad)
    exact = _value_and_grads(GradAlignLoss(0.3, 0.7), copy.deepcopy(model), **kw)
    for opts in ({"fraction": 1.0}, {"every": 1}, {"fraction": 1, "every": 1}):
        other = _value_and_grads(GradAlignLoss(0.3, 0.7, **opts), copy.deepcopy(model), **kw)
        assert other[0].item() == exact[0].item(), opts
        for a, b in zip(exact[1], other[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_fraction_is_the_reference_on_a_random_subset(fraction):
    model, x, y, noise, grad = _model_and_batch()
    torch.manual_seed(5)
    reg = GradAlignLoss(0.3, 0.7, fraction=fraction)(copy.deepcopy(model), x, y,
                                                     grad_clean=grad, noise=noise)
    torch.manual_seed(5)
    idx = torch.randperm(len(x))[:math.ceil(fraction * len(x))]
    ref = reference.gradalign_regularizer(copy.deepcopy(model), x[idx], y[idx], 0.3, 0.7,
                                          grad_clean=grad[idx], noise=noise[idx])
    assert abs(reg.item() - ref.item()) < 1e-10


class _CountForwards(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_every_k_skips_without_passes_and_scales_lambda():
    model, x, y, noise, grad = _model_and_batch()
    counted = _CountForwards(model)
    loss = GradAlignLoss(0.3, 0.7, every=3)
    exact = GradAlignLoss(0.3, 0.7)(model, x, y, grad_clean=grad, noise=noise).item()
    values = []
    for step in range(7):
        before = counted.calls
        values.append(loss(counted, x, y, grad_clean=grad, noise=noise))
        assert counted.calls - before == (1 if step % 3 == 0 else 0)
    for step, v in enumerate(values):
        if step % 3:
            assert v.item() == 0.0 and not v.requires_grad
        else:
            assert abs(v.item() - 3 * exact) < 1e-10


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _graph_nodes(t):
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return {type(n).__name__ for n in seen}


def test_linearity_mode_value_and_no_double_backprop():
    model, x, y, noise, grad = _model_and_batch()
    loss = GradAlignLoss(0.3, 0.7, mode="linearity")
    with _OpLog() as log:
        reg = loss(model, x, y, grad_clean=grad)
    # no backward of any kind while building it, and a graph of forward ops only
    assert not [op for op in log.ops if "backward" in op]
    assert not [n for n in _graph_nodes(reg) if "BackwardBackward" in n]
    # its value: the formula with each sample's own loss and gradient
    m = copy.deepcopy(model)
    d = 0.3 * grad.sign()
    l0 = F.cross_entropy(m(torch.cat([x, x + d])), torch.cat([y, y]), reduction="none")
    lin = (d * grad * len(x)).flatten(1).sum(1)
    expected = 0.7 * (l0[len(x):] - l0[:len(x)] - lin).abs().mean()
    assert abs(reg.item() - expected.item()) < 1e-10
    reg.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert loss.last_cos is None


def test_linearity_mode_per_sample_gradient_scale():
    """batch_size * grad_clean is each sample's own gradient: for a loss that is linear in the
    eps-ball the linear prediction is exact and the penalty is 0."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1).double()
    with torch.no_grad():
        model.weight.abs_()
        model.bias.fill_(1.0)  # outputs > 0 on [0, 1]^6 + ball: |output| is linear there
    x = torch.rand(5, 6, dtype=torch.float64)
    y = torch.zeros(5, 1, dtype=torch.float64)
    l1 = lambda out, t, reduction="mean": F.l1_loss(out, t, reduction=reduction).flatten()
    grad = attacks.input_gradient(model, x, y, l1)
    reg = GradAlignLoss(0.01, 1.0, loss_fn=l1, mode="linearity")(model, x, y, grad_clean=grad)
    assert reg.item() < 1e-12


def test_combined_options_regularise_where_they_should():
    """fraction=0.5 with every=2: call 0 regularises half the batch (lambda x 2, a gradient
    reaching every parameter), call 1 is a constant 0; linearity with fraction=0.25 is a
    nonnegative penalty with a parameter gradient."""
    model, x, y, noise, grad = _model_and_batch()
    reg_fn = GradAlignLoss(0.3, 0.7, fraction=0.5, every=2)
    first = reg_fn(model, x, y, grad_clean=grad)
    first.backward()
    assert 0 < first.item() <= 2 * 0.7 * 2 and int(reg_fn.last_valid) == (len(x) + 1) // 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    second = reg_fn(model, x, y, grad_clean=grad)
    assert second.item() == 0.0 and not second.requires_grad
    model.zero_grad()
    lin = GradAlignLoss(0.3, 0.7, mode="linearity", fraction=0.25)(model, x, y, grad_clean=grad)
    lin.backward()
    assert lin.item() >= 0 and any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("opts, match", [
    ({"mode": "fast"}, "`mode` must be one of"),
    ({"fraction": 0.0}, r"`fraction` must be a number in \(0, 1\]"),
    ({"fraction": 1.5}, "`fraction`"),
    ({"fraction": "half"}, "`fraction`"),
    ({"every": 0}, "`every` must be an integer >= 1"),
    ({"every": 2.5}, "`every`"),
    ({"every": True}, "`every`"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        GradAlignLoss(0.1, 1.0, **opts)
