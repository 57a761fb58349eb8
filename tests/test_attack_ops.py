"""Fused attack steps and random starts against the reference."""
import math

import pytest
import torch

import gradalign_fast as gf
from gradalign_fast import ops
from gradalign_fast.ops import reference

from conftest import layouts

INF = math.inf
CASES = [  # alpha, eps, lo, hi, project
    (0.3, 0.3, 0.0, 1.0, True),     # FGSM from zero
    (0.125, 0.1, 0.0, 1.0, True),   # FGSM-RS / PGD
    (0.1, 0.1, 0.0, 1.0, False),    # N-FGSM: no eps-ball
    (0.05, 0.1, -INF, INF, True),   # no input box
    (0.0, 0.0, 0.0, 1.0, True),     # eps = 0
]


def _inputs(shape, dtype=torch.float64, device="cpu"):
    x = torch.rand(shape, dtype=dtype, device=device)
    x.view(-1)[::7] = 0.0   # exact box edges, as in MNIST
    x.view(-1)[1::11] = 1.0
    delta = (torch.rand(shape, dtype=dtype, device=device) - 0.5) * 0.4
    grad = torch.randn(shape, dtype=dtype, device=device)
    grad.view(-1)[::5] = 0.0  # sign(0) = 0
    return x, delta, grad


@pytest.mark.parametrize("shape", [(1, 1, 28, 28), (7, 3, 5, 5), (5, 17), (2, 3, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_attack_step_bitwise_equal_to_reference(shape, dtype, case, device):
    x, delta, grad = _inputs(shape, dtype, device)
    want = reference.attack_step(x, delta, grad, *case)
    for name in layouts(x):
        lx, ld, lg = layouts(x)[name], layouts(delta)[name], layouts(grad)[name]
        got = ops.attack_step(lx, ld, lg, *case)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
        inplace = ld.clone()
        assert ops.attack_step_(lx, inplace, lg, *case) is inplace
        torch.testing.assert_close(inplace, want, rtol=0, atol=0, msg=name)
    if case[4]:
        assert (want.abs() <= case[1] + 2 * torch.finfo(dtype).eps).all()  # x+d-x rounds
    if math.isfinite(case[2]):
        assert ((x + want) >= case[2]).all() and ((x + want) <= case[3]).all()


def test_attack_step_keeps_channels_last():
    x, delta, grad = (t.contiguous(memory_format=torch.channels_last)
                      for t in _inputs((2, 3, 4, 4)))
    out = ops.attack_step(x, delta, grad, 0.1, 0.1)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_attack_step_nan_gradient_takes_no_step_like_torch_sign(device):
    """sign(NaN) = 0 (torch.sign): a NaN gradient element leaves delta (then the box) as is."""
    x, delta, grad = _inputs((2, 5), device=device)
    grad[0, 0] = float("nan")
    got = ops.attack_step(x, delta, grad, 0.1, 0.1, 0.0, 1.0, True)
    want = reference.attack_step(x, delta, grad, 0.1, 0.1, 0.0, 1.0, True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.isfinite(got).all()
    assert got[0, 0] == torch.clamp(x[0, 0] + delta[0, 0].clamp(-0.1, 0.1), 0, 1) - x[0, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attack_step_low_precision(dtype, device):
    """Within PyTorch's own error: the same formula in eager `dtype` vs its float64 value."""
    x, delta, grad = (t.to(dtype) for t in _inputs((4, 3, 8, 8), torch.float32, device))
    truth = reference.attack_step(x.double(), delta.double(), grad.double(), 8 / 255, 8 / 255,
                                  0.0, 1.0, True)
    torch_err = (reference.attack_step(x, delta, grad, 8 / 255, 8 / 255, 0.0, 1.0, True).double()
                 - truth).abs().max()
    got = ops.attack_step(x, delta, grad, 8 / 255, 8 / 255, 0.0, 1.0, True)
    assert got.dtype == dtype
    assert (got.double() - truth).abs().max() <= torch_err + torch.finfo(dtype).eps


def test_random_delta_range_box_and_distribution(device):
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16, device=device)
    d = ops.random_delta(x, 0.25, 0.0, 1.0, clip_to_box=False)
    assert d.shape == x.shape and d.dtype == x.dtype
    assert d.min() >= -0.25 and d.max() <= 0.25
    assert abs(d.mean().item()) < 0.005
    assert abs(d.var().item() - 0.25 ** 2 / 3) < 0.002
    hist = torch.histc(d.float().cpu(), bins=10, min=-0.25, max=0.25)
    assert (hist / hist.sum() - 0.1).abs().max() < 0.01  # uniform
    c = ops.random_delta(x, 0.25, 0.0, 1.0, clip_to_box=True)
    assert ((x + c) >= 0).all() and ((x + c) <= 1).all() and (c.abs() <= 0.25).all()


def test_random_delta_reproducible_with_manual_seed_and_generator(device):
    x = torch.rand(8, 3, 5, 5, device=device)
    torch.manual_seed(123)
    a = ops.random_delta(x, 0.1)
    torch.manual_seed(123)
    b = ops.random_delta(x, 0.1)
    assert torch.equal(a, b)
    g1 = torch.Generator(device=device).manual_seed(7)
    g2 = torch.Generator(device=device).manual_seed(7)
    assert torch.equal(ops.random_delta(x, 0.1, generator=g1), ops.random_delta(x, 0.1, generator=g2))
    assert not torch.equal(ops.random_delta(x, 0.1), ops.random_delta(x, 0.1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_random_delta_dtypes_and_layouts(dtype):
    x = torch.rand(3, 3, 4, 4, dtype=dtype).contiguous(memory_format=torch.channels_last)
    d = ops.random_delta(x, 0.5, 0.0, 1.0, True)
    assert d.dtype == dtype and d.is_contiguous(memory_format=torch.channels_last)
    assert ((x + d).double() >= -torch.finfo(dtype).eps).all()
    assert ops.random_delta(torch.empty(0, 3), 0.1).shape == (0, 3)


def test_opcheck_attack_ops():
    if not gf.has_ops():
        pytest.skip("compiled ops not loaded")
    x, delta, grad = _inputs((3, 2, 4, 4))
    cl = tuple(t.contiguous(memory_format=torch.channels_last) for t in (x, delta, grad))
    for args in [(x, delta, grad), cl]:
        torch.library.opcheck(torch.ops.gradalign_fast.attack_step,
                              args + (0.1, 0.2, 0.0, 1.0, True))
        torch.library.opcheck(torch.ops.gradalign_fast.attack_step_,
                              (args[0], args[1].clone(), args[2], 0.1, 0.2, 0.0, 1.0, False))
    # random: outputs differ between runs, so the checks that compare two runs are left out
    torch.library.opcheck(torch.ops.gradalign_fast.random_delta, (x, 0.1, 0.0, 1.0, True),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


@pytest.mark.parametrize("call, match", [
    (lambda x: ops.attack_step(x, x, x[:, :2], 0.1, 0.1), "shape"),
    (lambda x: ops.attack_step(x, x.double(), x, 0.1, 0.1), "dtype"),
    (lambda x: ops.attack_step(x, x, x, -0.1, 0.1), "alpha"),
    (lambda x: ops.attack_step(x, x, x, 0.1, -0.1), "eps"),
    (lambda x: ops.attack_step(x, x, x, 0.1, 0.1, 1.0, 0.0), "lo <= hi"),
    (lambda x: ops.random_delta(x, -1.0), "radius"),
    (lambda x: ops.random_delta(x.long(), 1.0), "floating"),
])
def test_attack_bad_input(call, match):
    if not gf.has_ops():
        pytest.skip("messages checked on the compiled ops")
    with pytest.raises(RuntimeError, match=match):
        call(torch.rand(2, 3, 4))
