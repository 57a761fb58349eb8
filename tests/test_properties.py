"""Property-based tests (hypothesis) of the ops' and GradAlignLoss's input space: shapes,
strides, dtypes and values (zeros, +-inf, NaN). Every case either matches the reference
(gradalign_fast.ops.reference; gradalign_fast.testing.authors_reference for GradAlignLoss) or
raises our own error (ValueError / TypeError naming the argument), never a crash or a silent
wrong value."""
import pytest
import torch
import torch.nn as nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from gradalign_fast import GradAlignLoss, ops  # noqa: E402
from gradalign_fast.ops import reference  # noqa: E402
from gradalign_fast.testing import authors_reference  # noqa: E402
from gradalign_fast.testing.layouts import layouts  # noqa: E402

FAST = settings(max_examples=40, deadline=None)
FLOATS = [torch.float32, torch.float64]
SPECIAL = [0.0, -0.0, float("inf"), float("-inf"), float("nan")]
# float32 against a float64 reference: the kernels' accumulation order differs
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-11)}


@st.composite
def shapes(draw, min_dims=1, max_dims=4):
    dims = draw(st.integers(min_dims, max_dims))
    return (draw(st.integers(1, 5)),) + tuple(draw(st.integers(1, 5)) for _ in range(dims - 1))


@st.composite
def tensors(draw, shape, dtype, specials=True, zero_rows=True):
    """A tensor of `shape` with values in [-10, 10], some exact zeros (whole rows too) and,
    with `specials`, some +-inf or NaN, seeded from hypothesis."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    t = (torch.rand(shape, generator=g, dtype=torch.float64) * 20 - 10)
    flat = t.view(-1)
    for _ in range(draw(st.integers(0, 3))):
        flat[draw(st.integers(0, flat.numel() - 1))] = 0.0
    if zero_rows and draw(st.booleans()):
        t[draw(st.integers(0, shape[0] - 1))] = 0.0
    if specials and draw(st.integers(0, 3)) == 0:
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(
            st.sampled_from(SPECIAL))
    return t.to(dtype)


def _layout(draw, t):
    options = layouts(t)
    return options[draw(st.sampled_from(sorted(options)))]


def _close(got, want, dtype, msg=""):
    torch.testing.assert_close(got.double(), want.double(), equal_nan=True, **TOL[dtype],
                               msg=msg)


# ---------------------------------------------------------------- ops
@FAST
@given(st.data())
def test_cosine_matches_the_float64_reference(data):
    shape = data.draw(shapes())
    dtype = data.draw(st.sampled_from(FLOATS))
    a = data.draw(tensors(shape, dtype))
    b = data.draw(tensors(shape, dtype))
    got = ops.cosine(_layout(data.draw, a), _layout(data.draw, b))
    want = reference.cosine(a.double(), b.double())
    assert all(g.shape == (shape[0],) for g in got)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for g, w, name in zip(got, want, ("cos", "norm_a", "norm_b")):
        _close(g, w, dtype, name)


@FAST
@given(st.data())
def test_cosine_backward_matches_the_reference(data):
    shape = data.draw(shapes())
    dtype = data.draw(st.sampled_from(FLOATS))
    a = data.draw(tensors(shape, dtype, specials=False))
    b = data.draw(tensors(shape, dtype, specials=False))
    g = data.draw(tensors((shape[0],), dtype, specials=False, zero_rows=False))
    cos, na, nb = reference.cosine(a, b)
    got = ops.cosine_backward(g, _layout(data.draw, a), b, cos, na, nb)
    assert got.shape == a.shape and got.dtype == a.dtype
    _close(got, reference.cosine_backward(g, a, b, cos, na, nb), dtype)


@FAST
@given(st.data())
def test_attack_step_equals_the_reference(data):
    shape = data.draw(shapes())
    dtype = data.draw(st.sampled_from(FLOATS))
    x = data.draw(tensors(shape, dtype, specials=False)).clamp(0, 1)
    delta = data.draw(tensors(shape, dtype)) / 10
    grad = data.draw(tensors(shape, dtype))  # NaN and +-inf too: sign(NaN) = 0, no step
    alpha = data.draw(st.sampled_from([0.0, 0.01, 0.3]))
    eps = data.draw(st.sampled_from([0.0, 0.05, 0.5]))
    project = data.draw(st.booleans())
    got = ops.attack_step(_layout(data.draw, x), _layout(data.draw, delta),
                          _layout(data.draw, grad), alpha, eps, 0.0, 1.0, project)
    want = reference.attack_step(x, delta, grad, alpha, eps, 0.0, 1.0, project)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    inplace = _layout(data.draw, delta).clone()
    ops.attack_step_(x, inplace, grad, alpha, eps, 0.0, 1.0, project)
    torch.testing.assert_close(inplace, want, rtol=0, atol=0, equal_nan=True)


@FAST
@given(st.data())
def test_random_delta_stays_in_the_ball_and_the_box(data):
    shape = data.draw(shapes())
    dtype = data.draw(st.sampled_from(FLOATS))
    x = _layout(data.draw, data.draw(tensors(shape, dtype, specials=False)).clamp(0, 1))
    radius = data.draw(st.sampled_from([0.0, 0.03, 0.5, 2.0]))
    clip = data.draw(st.booleans())
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    d = ops.random_delta(x, radius, 0.0, 1.0, clip, gen)
    assert d.shape == x.shape and d.dtype == x.dtype and torch.isfinite(d).all()
    assert (d.abs() <= radius).all()
    if clip:
        assert ((x + d >= 0) & (x + d <= 1)).all()


@FAST
@given(st.data())
def test_relu_affine_backward_matches_the_reference(data):
    shape = data.draw(shapes(min_dims=2))
    dtype = data.draw(st.sampled_from(FLOATS))
    x = data.draw(tensors(shape, dtype))
    grad = data.draw(tensors(shape, dtype))
    scale = data.draw(tensors((shape[1],), dtype, zero_rows=False))
    shift = data.draw(tensors((shape[1],), dtype, zero_rows=False))
    got = ops.relu_affine_backward(_layout(data.draw, grad), _layout(data.draw, x), scale, shift)
    want = reference.relu_affine_backward(grad, x, scale, shift)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------- GradAlignLoss
def _model(d: int, dtype, batchnorm: bool):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(d, 6)]
    layers += [nn.BatchNorm1d(6)] if batchnorm else []
    layers += [nn.ReLU(), nn.Linear(6, 4)]
    return nn.Sequential(*layers).to(dtype)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_gradalign_loss_matches_the_authors_or_refuses(data):
    shape = data.draw(shapes(min_dims=2))
    dtype = data.draw(st.sampled_from(FLOATS))
    x = data.draw(tensors(shape, dtype)).clamp(-1, 2)  # NaN survives clamp; inf is clamped
    if data.draw(st.integers(0, 4)) == 0:
        x.view(-1)[0] = data.draw(st.sampled_from([float("inf"), float("-inf"), float("nan")]))
    x = _layout(data.draw, x)
    y = torch.randint(0, 4, (shape[0],), generator=torch.Generator().manual_seed(1))
    d = x[0].numel()
    model = _model(d, dtype, batchnorm=shape[0] > 1 and data.draw(st.booleans()))
    eps = data.draw(st.sampled_from([0.0, 0.1, 1.0]))
    lam = data.draw(st.sampled_from([0.0, 0.5, 2.0]))
    noise = (torch.rand(shape, generator=torch.Generator().manual_seed(2), dtype=dtype) * 2 - 1
             ) * eps
    reuse = data.draw(st.booleans())
    grad_clean = authors_reference.input_grad(model, x, y) if reuse and torch.isfinite(x).all() \
        else None
    box = (-1.0, 2.0)  # the drawn inputs' box: the regulariser's own bounds
    if not torch.isfinite(x).all():
        with pytest.raises(ValueError, match="GradAlignLoss: `x` contains NaN or inf"):
            GradAlignLoss(eps, lam, bounds=box)(model, x, y, noise=noise)
        return
    if x.min() < 0 or x.max() > 1:  # outside the default [0, 1] box: refused, never clamped
        with pytest.raises(ValueError, match=r"outside bounds=\(0, 1\)"):
            GradAlignLoss(eps, lam)(model, x, y, noise=noise)
    import copy
    twin = copy.deepcopy(model)
    got = GradAlignLoss(eps, lam, bounds=box)(model, x, y, grad_clean=grad_clean, noise=noise)
    want = authors_reference.gradalign_regularizer(twin, x.contiguous(), y, eps, lam,
                                                   grad_clean=grad_clean, noise=noise)
    assert torch.isfinite(got)
    _close(got.detach(), want.detach(), dtype)
    params = [p for p in model.parameters()]
    g_got = torch.autograd.grad(got, params, allow_unused=True)
    g_want = torch.autograd.grad(want, list(twin.parameters()), allow_unused=True)
    for a, b in zip(g_got, g_want):
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        if a is None:
            continue
        assert torch.isfinite(a).all()
        # float32: where cos is near its maximum (eps = 0, 1-d inputs) the parameter gradient is
        # rounding noise scaled by 1 / |grad|; compared exactly in float64 only
        if dtype == torch.float64:
            _close(a, b, dtype)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_gradalign_loss_refuses_bad_arguments_with_its_own_errors(data):
    shape = data.draw(shapes(min_dims=2))
    x = torch.rand(shape)
    y = torch.randint(0, 4, (shape[0],))
    model = _model(x[0].numel(), torch.float32, False)
    bad = data.draw(st.sampled_from(["x_dtype", "x_int", "y_batch", "noise_shape",
                                     "grad_shape", "model_dtype", "eps"]))
    kwargs, exc = {}, TypeError
    if bad == "x_dtype":
        x = x.double()
    elif bad == "x_int":
        x = (x * 255).to(torch.uint8)
    elif bad == "y_batch":
        y, exc = torch.cat([y, y]), ValueError
    elif bad == "noise_shape":
        kwargs, exc = {"noise": torch.zeros(shape[0] + 1, *shape[1:])}, ValueError
    elif bad == "grad_shape":
        kwargs, exc = {"grad_clean": torch.zeros(shape[0], x[0].numel() + 1)}, ValueError
    elif bad == "model_dtype":
        model = model.double()
    if bad == "eps":
        with pytest.raises(ValueError, match="/255"):
            GradAlignLoss(data.draw(st.floats(1.001, 255)), 1.0)
        return
    with pytest.raises(exc, match="GradAlignLoss: "):
        GradAlignLoss(0.1, 1.0)(model, x, y, **kwargs)
