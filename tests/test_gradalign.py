"""GradAlignLoss against the authors' formulation (reference.gradalign_regularizer)."""
import contextlib
import copy
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradalign_fast import GradAlignLoss, attacks
from gradalign_fast.testing import authors_reference as reference


def small_cnn(dtype=torch.float64, channels=1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(10),
    ).to(dtype)


def _batch(n=8, c=1, s=12, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, c, s, s, generator=g, dtype=dtype).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    return x, y


def _both(model, x, y, eps, lam, **kw):
    """(ours, reference): regulariser values and parameter gradients from identical models."""
    m1, m2 = model, copy.deepcopy(model)
    r1 = GradAlignLoss(eps, lam)(m1, x, y, **kw)
    r1.backward()
    kw2 = {k: v for k, v in kw.items()}
    r2 = reference.gradalign_regularizer(m2, x, y, eps, lam, **kw2)
    r2.backward()
    return (r1, [p.grad for p in m1.parameters()], m1), (r2, [p.grad for p in m2.parameters()], m2)


@pytest.mark.parametrize("reuse_grad", [False, True])
def test_matches_reference_float64_with_batchnorm(reuse_grad, device):
    x, y = _batch(device=device)
    model = small_cnn().to(device)
    model(x)  # materialise the lazy layer
    model.train()
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    kw = {"noise": noise}
    if reuse_grad:
        _, kw["grad_clean"] = attacks.fgsm(model, x, y, 0.3)
    (r1, g1, m1), (r2, g2, m2) = _both(model, x, y, 0.3, 0.7, **kw)
    assert abs(r1.item() - r2.item()) <= 1e-10
    assert r1.item() > 0
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(m1.buffers(), m2.buffers()):  # BatchNorm saw the same forwards
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_regulariser_reaches_parameters():
    """A GradAlign without create_graph is a silent no-op: the parameters must get a gradient
    from the regulariser alone, and it must be the exact double-backprop gradient."""
    x, y = _batch()
    model = small_cnn()
    model(x)
    reg = GradAlignLoss(0.3, 1.0)(model, x, y)
    grads = torch.autograd.grad(reg, list(model.parameters()), allow_unused=True)
    weight_grads = [g for g, p in zip(grads, model.parameters()) if p.dim() > 1]
    assert all(g is not None and g.abs().sum() > 0 for g in weight_grads)
    # the gradient is the derivative of the value: finite difference along a random direction
    p = next(model.parameters())
    d = torch.randn_like(p)
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    m_eval = copy.deepcopy(model).eval()
    g_clean = attacks.input_gradient(m_eval, x, y)  # detached in GradAlign: held fixed here
    f = lambda: GradAlignLoss(0.3, 1.0)(m_eval, x, y, noise=noise, grad_clean=g_clean)
    r = f()
    (gp,) = torch.autograd.grad(r, next(m_eval.parameters()))
    h = 1e-6
    with torch.no_grad():
        next(m_eval.parameters()).add_(h * d)
    rp = f().item()
    with torch.no_grad():
        next(m_eval.parameters()).sub_(2 * h * d)
    rm = f().item()
    assert abs((rp - rm) / (2 * h) - (gp * d).sum().item()) < 1e-5 * max(1.0, abs(rp - rm) / h)


def test_flat_inputs_and_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    x = torch.rand(5, 13, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    noise = torch.empty_like(x).uniform_(-0.1, 0.1)
    (r1, g1, _), (r2, g2, _) = _both(model, x, y, 0.1, 2.0, noise=noise)
    assert abs(r1.item() - r2.item()) <= 1e-10
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_batch_of_one():
    x, y = _batch(n=1)
    model = small_cnn()
    model(torch.cat([x, x]))
    model.eval()
    noise = torch.empty_like(x).uniform_(-0.2, 0.2)
    (r1, g1, _), (r2, g2, _) = _both(model, x, y, 0.2, 1.0, noise=noise)
    assert abs(r1.item() - r2.item()) <= 1e-10


class _Gated(nn.Module):
    """Linear model whose input gradient is exactly zero for the samples with gate 0."""

    def __init__(self, gate):
        super().__init__()
        self.lin = nn.Linear(6, 3).double()
        self.gate = gate

    def forward(self, x):
        return self.lin(torch.tanh(x) * self.gate[:, None])


def test_zero_gradient_samples_left_out():
    torch.manual_seed(0)
    x = torch.rand(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    model = _Gated(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    noise = torch.empty_like(x).uniform_(-0.5, 0.5)
    loss = GradAlignLoss(0.5, 1.0)
    (r1, g1, _), (r2, g2, _) = _both(model, x, y, 0.5, 1.0, noise=noise)
    assert abs(r1.item() - r2.item()) <= 1e-10
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    loss(model, x, y, noise=noise)
    assert loss.last_valid.item() == 3


def test_all_zero_gradients_give_zero_not_nan():
    model = _Gated(torch.zeros(3, dtype=torch.float64))
    x = torch.rand(3, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    reg = GradAlignLoss(0.1, 1.0)(model, x, y)
    assert reg.item() == 0.0
    reg.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_last_cos_exposed_and_in_range():
    x, y = _batch()
    model = small_cnn()
    model(x)
    loss = GradAlignLoss(0.1, 0.5)
    reg = loss(model, x, y)
    assert -1.0 <= loss.last_cos.item() <= 1.0
    assert abs(reg.item() - 0.5 * (1 - loss.last_cos.item())) < 1e-12


def test_float32_close_to_float64():
    x, y = _batch()
    m64 = small_cnn()
    m64(x)
    m32 = copy.deepcopy(m64).float()
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    r64 = GradAlignLoss(0.3, 1.0)(m64, x, y, noise=noise)
    r32 = GradAlignLoss(0.3, 1.0)(m32, x.float(), y, noise=noise.float())
    assert abs(r64.item() - r32.item()) < 1e-5


def test_autocast_bfloat16_cpu():
    x, y = _batch(dtype=torch.float32)
    model = small_cnn(torch.float32)
    model(x)
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    ref = GradAlignLoss(0.3, 1.0)(model, x, y, noise=noise).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reg = GradAlignLoss(0.3, 1.0)(model, x, y, noise=noise)
    reg.backward()
    assert torch.isfinite(reg) and abs(reg.item() - ref) < 0.05
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_lambda_zero_and_eps_zero():
    x, y = _batch()
    model = small_cnn()
    model(x)
    assert GradAlignLoss(0.3, 0.0)(model, x, y).item() == 0.0
    # eps = 0: the two gradients coincide (eval mode: BatchNorm does not change between calls)
    model.eval()
    assert abs(GradAlignLoss(0.0, 1.0)(model, x, y).item()) < 1e-12


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"eps": -0.1, "lam": 1.0}, ValueError, "eps"),
    ({"eps": 0.1, "lam": -1.0}, ValueError, "lam"),
    ({"eps": float("nan"), "lam": 1.0}, ValueError, "eps"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GradAlignLoss(**kwargs)


def test_bad_call_arguments():
    x, y = _batch(dtype=torch.float32)
    model = small_cnn(torch.float32)
    model(x)
    reg = GradAlignLoss(0.1, 1.0)
    cases = [
        (dict(x=x.long()), TypeError, "`x` must be floating"),
        (dict(x=torch.full_like(x, float("nan"))), ValueError, "NaN"),
        (dict(x=x.clone().fill_(float("inf"))), ValueError, "inf"),
        (dict(y=y[:3]), ValueError, "`y` has batch size"),
        (dict(grad_clean=x[:, :, :5]), ValueError, "`grad_clean` must have the shape"),
        (dict(noise=x[:2]), ValueError, "`noise` must have the shape"),
        (dict(noise=torch.empty_like(x, device="meta")), ValueError, "`noise` is on meta"),
        (dict(grad_clean=x.long()), TypeError, "`grad_clean` must be floating"),
        (dict(x=x[0, 0, 0, 0]), ValueError, "batch dimension"),
    ]
    for override, exc, match in cases:
        args = dict(x=x, y=y)
        args.update(override)
        with pytest.raises(exc, match=match):
            reg(model, **args)


# ---------------------------------------------------------------- fast double backward layers
def _fdb_layers(low_memory=True):
    """(name, fn(x, w, b), inputs) of each Function of fast_double_backward, float64.

    The last one is a pre-activation unit, BatchNorm -> ReLU -> conv, whose ReLU output is
    recomputed under low_memory (its conv weight is a constant: see test_low_memory_...)."""
    from gradalign_fast.double_backward import fast_double_backward

    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)
    conv_w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    fdb = fast_double_backward(low_memory)
    return fdb, [
        ("batch_norm", lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
         (r(3, 2, 3, 3), r(2), r(2))),
        ("batch_norm_1d", lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
         (r(6, 3), r(3), r(3))),
        ("relu", lambda x, w, b: F.relu(x) * w.sum() + b.sum(), (r(3, 4, 5), r(2), r(2))),
        ("conv2d", lambda x, w, b: F.conv2d(x, w, b, 2, 1), (r(2, 2, 5, 5), r(3, 2, 3, 3), r(3))),
        ("conv2d_groups", lambda x, w, b: F.conv2d(x, w, b, 1, (1, 0), 1, 2),
         (r(2, 4, 4, 4), r(4, 2, 3, 3), r(4))),
        ("bn_relu_conv", lambda x, w, b: F.conv2d(
            F.relu(F.batch_norm(x, None, None, w, b, True)), conv_w, None, 1, 1),
         (r(3, 2, 5, 5), r(2), r(2))),
    ]


LAYERS = [(i, low) for i in range(6) for low in (True, False)]


@pytest.mark.parametrize("i, low_memory", LAYERS)
def test_fast_double_backward_gradgradcheck(i, low_memory):
    fdb, layers = _fdb_layers(low_memory)
    name, fn, inputs = layers[i]

    def fast(*a):
        with fdb:
            return fn(*a)

    assert torch.autograd.gradcheck(fast, inputs, fast_mode=True), name
    assert torch.autograd.gradgradcheck(fast, inputs, fast_mode=True), name


@pytest.mark.parametrize("i, low_memory", LAYERS)
def test_fast_double_backward_equals_pytorch(i, low_memory):
    """Second derivatives of the GradAlign kind (input gradient, then all parameters)."""
    fdb, layers = _fdb_layers(low_memory)
    name, fn, inputs = layers[i]

    def second(fast):
        with fdb if fast else contextlib.nullcontext():
            y = fn(*inputs)
        with fdb.input_grad_only() if fast else contextlib.nullcontext():
            (gx,) = torch.autograd.grad((y.sin() * y).sum(), inputs[0], create_graph=True)
        return torch.autograd.grad((gx * gx.cos()).sum(), inputs, allow_unused=True)

    for a, b in zip(second(False), second(True)):
        if a is None:
            assert b is None or b.abs().max() == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_low_memory_keeps_no_relu_output_and_changes_no_value():
    """A BatchNorm -> ReLU -> conv unit: under low_memory neither the ReLU nor the conv keeps
    the ReLU output (fewer saved bytes); GradAlign's value and parameter gradients on a
    pre-activation ResNet are bitwise those of low_memory=False; a create_graph pass that asks
    for the conv's weight gradient raises instead of returning a wrong second derivative."""
    from gradalign_fast.training import models
    from gradalign_fast.double_backward import fast_double_backward

    bn, conv = nn.BatchNorm2d(4).double(), nn.Conv2d(4, 4, 3, padding=1).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    saved = {}
    for low in (True, False):
        ids = set()

        def pack(t, ids=ids):
            ids.add((t.data_ptr(), t.numel()))
            return t

        with fast_double_backward(low), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = conv(F.relu(bn(x)))
        saved[low] = sum(n for _, n in ids)
    assert saved[True] < saved[False] - x.numel() // 2

    torch.manual_seed(0)
    model = models.build_model("preact_resnet18_narrow").double()
    xb, yb = torch.rand(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    noise = torch.empty_like(xb).uniform_(-8 / 255, 8 / 255)
    out = {}
    for low in (True, False):
        m = copy.deepcopy(model)
        reg = GradAlignLoss(8 / 255, 1.0, low_memory=low)(m, xb, yb, noise=noise)
        reg.backward()
        out[low] = [reg.detach()] + [p.grad for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(out[True], out[False]))

    # an in-place op between BatchNorm and ReLU, or ReLU and conv: no recipe, plain Functions
    for between in ("bn", "relu"):
        with fast_double_backward(True):
            h = bn(x)
            if between == "bn":
                h.mul_(0.5)
            r = F.relu(h)
            if between == "relu":
                r.add_(1.0)
            y = conv(r)
        assert (r.grad_fn.name() == "_ReLUBackward") == (between == "bn")
        want = conv(F.relu(bn(x) * 0.5) if between == "bn" else F.relu(bn(x)) + 1.0)
        gx = torch.autograd.grad(y.square().sum(), x)[0]
        torch.testing.assert_close(gx, torch.autograd.grad(want.square().sum(), x)[0])

    fdb = fast_double_backward(True)
    with fdb:
        y = conv(F.relu(bn(x)))
    with pytest.raises(RuntimeError, match="input gradients only"):
        torch.autograd.grad(y.square().sum(), [x, conv.weight], create_graph=True)


def test_fast_double_backward_running_stats_and_fallbacks():
    """Running statistics update as PyTorch's; eval mode and in-place ReLU fall back."""
    from gradalign_fast.double_backward import fast_double_backward

    bn1, x = nn.BatchNorm2d(3).double(), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    bn2 = copy.deepcopy(bn1)
    with fast_double_backward():
        y = bn1(x)
        assert y.grad_fn.name().startswith("_BatchNormTrain")
        bn1.eval()
        assert "_BatchNorm" not in bn1(x).grad_fn.name()
        assert F.relu(x.requires_grad_() * 1, inplace=True).grad_fn.name() != "_ReLUBackward"
    torch.testing.assert_close(y, bn2(x))
    for a, b in zip(bn1.buffers(), bn2.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_fast_layers_under_autocast_match_pytorch():
    """bf16 autocast: conv2d runs in bf16 as autocast's policy, and the GradAlign value and
    parameter gradients are those of PyTorch's own second derivatives (up to bf16 rounding)."""
    x, y = _batch(dtype=torch.float32)
    model = small_cnn(torch.float32)
    model(x)
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    out = {}
    for fast in (True, False):
        m = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reg = GradAlignLoss(0.3, 1.0, fast_layers=fast)(m, x, y, noise=noise)
        reg.backward()
        out[fast] = reg.item(), [p.grad for p in m.parameters()]
    assert abs(out[True][0] - out[False][0]) < 2e-2
    flat = {k: torch.cat([g.flatten() for g in v[1]]) for k, v in out.items()}
    assert (flat[True] - flat[False]).norm() <= 0.1 * flat[False].norm()
    from gradalign_fast.double_backward import fast_double_backward

    with fast_double_backward(), torch.autocast("cpu", dtype=torch.bfloat16):
        c = F.conv2d(x, model[0].weight)
    assert c.dtype == torch.bfloat16 and c.grad_fn.name().startswith("_Conv2d")


# ---------------------------------------------------------------- CUDA-graph capture (GPU only)
def test_captured_step_needs_cuda():
    from gradalign_fast.training import methods
    from gradalign_fast.training.cuda_graph import CapturedStep

    x, y = _batch(dtype=torch.float32)
    model = small_cnn(torch.float32)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        CapturedStep(methods.FGSM(0.1), model, torch.optim.SGD(model.parameters(), 0.1), x, y)


def _cuda_setup():
    from gradalign_fast.training import methods

    x, y = _batch(n=16, dtype=torch.float32, device="cuda")
    model = small_cnn(torch.float32).cuda()
    model(x)
    return methods, x, y, model


@pytest.mark.cuda
def test_captured_fgsm_step_equals_eager():
    from gradalign_fast.training.cuda_graph import CapturedStep
    from gradalign_fast.training.step import train_step

    methods, x, y, model = _cuda_setup()
    eager = copy.deepcopy(model)
    opt_c = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    opt_e = torch.optim.SGD(eager.parameters(), 0.1, momentum=0.9)
    step = CapturedStep(methods.FGSM(0.1), model, opt_c, x, y)
    for _ in range(2):
        step(x, y)
        train_step(methods.FGSM(0.1), eager, opt_e, x, y)
    for a, b in zip(model.state_dict().values(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_captured_gradalign_step_redraws_noise_and_checks_options():
    from gradalign_fast.training.cuda_graph import CapturedStep

    methods, x, y, model = _cuda_setup()
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with pytest.raises(ValueError, match="check_finite=False"):
        CapturedStep(methods.GradAlign(0.1, 1.0, check_finite=True), model, opt, x, y)
    with pytest.raises(ValueError, match="every > 1"):
        CapturedStep(methods.GradAlign(0.1, 1.0, check_finite=False, every=2), model, opt, x, y)
    step = CapturedStep(methods.GradAlign(0.1, 1.0, check_finite=False), model, opt, x, y)
    regs = [step(x, y)["reg"].item() for _ in range(3)]
    assert all(r > 0 for r in regs) and len(set(regs)) == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="captured for x"):
        step(x[:8], y[:8])


@pytest.mark.parametrize("bn, train, used", [(True, True, True), (True, False, False),
                                             (False, True, False)])
def test_fast_layers_only_where_they_pay(bn, train, used, monkeypatch):
    """gradalign_fast.double_backward is used for models with a train-mode BatchNorm only
    (elsewhere PyTorch's own second derivatives are as fast); the value is the same."""
    from gradalign_fast import gradalign

    made = []
    real = gradalign.fast_double_backward
    monkeypatch.setattr(gradalign, "fast_double_backward",
                        lambda *a: made.append(1) or real(*a))
    x, y = _batch()
    model = small_cnn() if bn else nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                                 nn.LazyLinear(10)).double()
    model(x)
    model.train(train)
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    fast = GradAlignLoss(0.3, 1.0)(copy.deepcopy(model), x, y, noise=noise)
    assert bool(made) == used
    plain = GradAlignLoss(0.3, 1.0, fast_layers=False)(copy.deepcopy(model), x, y, noise=noise)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- input checks (shared)
ATTACKS = {
    "fgsm": lambda m, x, y: attacks.fgsm(m, x, y, 0.1),
    "fgsm_rs": lambda m, x, y: attacks.fgsm_rs(m, x, y, 0.1),
    "nfgsm": lambda m, x, y: attacks.nfgsm(m, x, y, 0.1),
    "pgd": lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.025, 2),
    "GradAlignLoss": lambda m, x, y: GradAlignLoss(0.1, 1.0)(m, x, y),
}


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5)).to(dtype)


def _xy(dtype=torch.float32):
    return torch.rand(4, 3, 2, 2, dtype=dtype), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("who", ATTACKS)
def test_attacks_and_gradalign_share_the_input_checks(who):
    call, (x, y) = ATTACKS[who], _xy()
    name = who if who == "GradAlignLoss" else f"attacks.{who}"
    cases = [
        (x.double(), y, _mlp(), TypeError,
         f"{name}: x is torch.float64 but the model's parameters are torch.float32"),
        (x, y, _mlp(torch.float64), TypeError, "x is torch.float32 but the model's parameters "
                                               "are torch.float64"),
        (torch.full_like(x, float("nan")), y, _mlp(), ValueError, "`x` contains NaN or inf"),
        (x.clone().fill_(float("inf")), y, _mlp(), ValueError, "`x` contains NaN or inf"),
        (x.long(), y, _mlp(), TypeError, "`x` must be floating point"),
        (x, y[:2], _mlp(), ValueError, "`y` has batch size 2 but x has 4"),
    ]
    for xi, yi, model, exc, match in cases:
        with pytest.raises(exc, match=re.escape(match)):
            call(model, xi, yi)
    call(_mlp(), x, y)  # and the valid call works


class _TupleModel(nn.Module):
    def __init__(self, as_dict=False):
        super().__init__()
        self.net, self.as_dict = _mlp(), as_dict

    def forward(self, x):
        out = self.net(x)
        return {"logits": out} if self.as_dict else (out, out.sum())


@pytest.mark.parametrize("who", ATTACKS)
@pytest.mark.parametrize("as_dict", [False, True])
def test_a_tuple_or_dict_output_points_at_loss_fn(who, as_dict):
    x, y = _xy()
    kind = "dict" if as_dict else "tuple"
    with pytest.raises(TypeError, match=f"the model returned a {kind}.*pass a `loss_fn`"):
        ATTACKS[who](_TupleModel(as_dict), x, y)
    key = "logits" if as_dict else 0
    reg = GradAlignLoss(0.1, 1.0, loss_fn=lambda out, y: F.cross_entropy(out[key], y))
    assert reg(_TupleModel(as_dict), x, y).item() >= 0


def test_eps_above_one_mentions_255():
    with pytest.raises(ValueError, match=r"eps=8 .*8/255"):
        GradAlignLoss(eps=8, lam=1.0)
    GradAlignLoss(eps=1.0, lam=1.0)  # the whole box is allowed


def _compiled(module):
    return torch.compile(module, backend="aot_eager")


def test_a_compiled_model_is_refused_up_front():
    x, y = _xy()
    for model in (_compiled(_mlp()), nn.Sequential(_compiled(_mlp())),):
        with pytest.raises(TypeError, match=r"torch\.compile cannot double-backward.*183603.*"
                                            r"_orig_mod.*CapturedStep"):
            GradAlignLoss(0.1, 1.0)(model, x, y)


def test_a_compiled_function_inside_the_model_fails_clearly_at_the_first_call():
    class Hidden(nn.Module):  # no compiled module to see: the compiled code is a function
        def __init__(self):
            super().__init__()
            self.net = _mlp()
            self.fn = torch.compile(lambda x: self.net(x), backend="aot_eager")

        def forward(self, x):
            return self.fn(x)

    x, y = _xy()
    with pytest.raises(RuntimeError, match=r"torch\.compile cannot double-backward") as e:
        GradAlignLoss(0.1, 1.0)(Hidden(), x, y)
    # torch's own words, from the input gradient (donated buffers) or the double backward
    assert re.search("donated buffer|double backward", str(e.value.__cause__))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_value_checks_find_every_nan_and_inf(dtype):
    """The input value check (one aminmax pass): one NaN/inf anywhere is found; the largest
    finite values of the dtype are accepted inside a box that holds them."""
    from gradalign_fast.attacks import check_inputs

    model = torch.nn.Flatten()
    y = torch.zeros(5, dtype=torch.long)
    x = torch.rand(5, 3, 7, dtype=torch.float64).to(dtype)
    check_inputs("t", model, x, y)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in ((0, 0, 0), (4, 2, 6), (2, 1, 3)):
            z = x.clone()
            z[where] = bad
            with pytest.raises(ValueError, match="t: `x` contains NaN or inf"):
                check_inputs("t", model, z, y)
    top = float(torch.finfo(dtype).max)
    big = torch.full((5, 2), top, dtype=dtype)
    check_inputs("t", model, big, y, bounds=(-top, top))
    check_inputs("t", model, -big, y, bounds=(-top, top))


def test_gradalign_loss_pickles_and_follows_a_new_model():
    """The per-model facts (module tree read once per model, one cache for the regulariser
    and train_step) follow each model passed: a train-mode BatchNorm model after a
    BatchNorm-free one still gets the fast layers' values (same as PyTorch's), a compiled one
    is refused, and the loss pickles."""
    import pickle

    from gradalign_fast.gradalign import model_facts

    reg = GradAlignLoss(0.1, 1.0)
    x, y = _xy()
    reg(_mlp(), x, y)
    pickle.loads(pickle.dumps(reg))(_mlp(), x, y)
    bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                       nn.Linear(16, 4))
    assert model_facts(bn).batchnorms == [bn[1]] and model_facts(bn) is model_facts(bn)
    with pytest.raises(TypeError, match="torch.compile cannot double-backward"):
        reg(torch.compile(bn), x, y)
