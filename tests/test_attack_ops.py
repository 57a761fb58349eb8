"""Fused attack steps and random starts: the NaN contract and the random draws (statistics,
seeding, CUDA graphs), which the sample-driven tests of test_op_contracts.py do not cover."""
import math

import pytest
import torch

from gradalign_fast import ops
from gradalign_fast.ops import reference
from gradalign_fast.testing.layouts import layouts
from gradalign_fast.testing.op_samples import LOW

cuda = pytest.mark.cuda


def _inputs(shape, dtype=torch.float64, device="cpu"):
    x = torch.rand(shape, dtype=dtype, device=device)
    x.view(-1)[::7] = 0.0   # exact box edges, as in MNIST
    x.view(-1)[1::11] = 1.0
    delta = (torch.rand(shape, dtype=dtype, device=device) - 0.5) * 0.4
    grad = torch.randn(shape, dtype=dtype, device=device)
    grad.view(-1)[::5] = 0.0  # sign(0) = 0
    return x, delta, grad


def test_attack_step_nan_gradient_takes_no_step_like_torch_sign(device):
    """sign(NaN) = 0 (torch.sign): a NaN gradient element leaves delta (then the box) as is."""
    x, delta, grad = _inputs((2, 5), device=device)
    grad[0, 0] = float("nan")
    got = ops.attack_step(x, delta, grad, 0.1, 0.1, 0.0, 1.0, True)
    want = reference.attack_step(x, delta, grad, 0.1, 0.1, 0.0, 1.0, True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.isfinite(got).all()
    assert got[0, 0] == torch.clamp(x[0, 0] + delta[0, 0].clamp(-0.1, 0.1), 0, 1) - x[0, 0]


def test_attack_step_inplace_mutates_its_first_argument(device):
    """The schema marks the first argument, delta, as written (the trailing underscore's
    `self`); the Python wrapper keeps attack_step's order and returns delta."""
    if not ops.has_ops():
        pytest.skip(f"compiled ops not loaded: {ops.ops_error()}")
    schema = torch.ops.gradalign_fast.attack_step_.default._schema
    assert [a.name for a in schema.arguments[:3]] == ["delta", "x", "grad"]
    assert [bool(a.alias_info and a.alias_info.is_write) for a in schema.arguments] == \
        [True] + [False] * (len(schema.arguments) - 1)
    x, delta, grad = _inputs((2, 5), device=device)
    want = reference.attack_step(x, delta, grad, 0.1, 0.1, 0.0, 1.0, True)
    x0, g0 = x.clone(), grad.clone()
    torch.ops.gradalign_fast.attack_step_(delta, x, grad, 0.1, 0.1, 0.0, 1.0, True)
    torch.testing.assert_close(delta, want, rtol=0, atol=0)
    assert torch.equal(x, x0) and torch.equal(grad, g0)
    d2 = torch.zeros_like(x)
    assert ops.attack_step_(x, d2, grad, 0.1, 0.1, 0.0, 1.0, True) is d2


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
    x = torch.rand(8, 3, 33, 17, device=device)
    torch.manual_seed(123)
    a, a2 = ops.random_delta(x, 0.1), ops.random_delta(x, 0.1)
    torch.manual_seed(123)
    b, b2 = ops.random_delta(x, 0.1), ops.random_delta(x, 0.1)
    assert torch.equal(a, b) and torch.equal(a2, b2) and not torch.equal(a, a2)
    g1 = torch.Generator(device=device).manual_seed(7)
    g2 = torch.Generator(device=device).manual_seed(7)
    assert torch.equal(ops.random_delta(x, 0.1, generator=g1),
                       ops.random_delta(x, 0.1, generator=g2))
    # a generator does not touch the default one
    torch.manual_seed(5)
    ops.random_delta(x, 0.1, generator=g1)
    e = ops.random_delta(x, 0.1)
    torch.manual_seed(5)
    assert torch.equal(e, ops.random_delta(x, 0.1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_random_delta_dtypes_and_layouts(dtype):
    x = torch.rand(3, 3, 4, 4, dtype=dtype).contiguous(memory_format=torch.channels_last)
    d = ops.random_delta(x, 0.5, 0.0, 1.0, True)
    assert d.dtype == dtype and d.is_contiguous(memory_format=torch.channels_last)
    assert ((x + d).double() >= -torch.finfo(dtype).eps).all()


# ------------------------------------------------------------------------- random_delta, CUDA
def _poison_allocator(numel, dtype, device):
    """Leaves NaN in the caching allocator's next block, so unwritten outputs show up."""
    torch.full((numel + 1024,), float("nan"), dtype=dtype, device=device)


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("numel", [1, 3, 4, 5, 1023, 1024, 4095, 4096, 4097, 12_289, 1_000_003])
def test_random_delta_writes_every_element_in_range(numel, dtype):
    x = torch.rand(numel, dtype=dtype, device="cuda")
    for clip in (False, True):
        _poison_allocator(numel, dtype, "cuda")
        d = ops.random_delta(x, 0.25, 0.0, 1.0, clip)
        assert d.shape == x.shape and d.dtype == dtype and torch.isfinite(d).all()
        eps = torch.finfo(dtype).eps
        if clip:  # clamp(x + d) - x and x + d round again
            assert d.abs().max() <= 0.25 * (1 + 2 * eps)
            s = (x + d).double()
            assert (s >= -eps).all() and (s <= 1 + eps).all()
        else:
            assert d.min() >= -0.25 and d.max() <= 0.25


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_delta_uniform_statistics(dtype):
    torch.manual_seed(0)
    n, r = 1 << 22, 0.25
    d = ops.random_delta(torch.zeros(n, dtype=dtype, device="cuda"), r, -1.0, 1.0, False)
    d = d.double().cpu()
    sd_mean = r / math.sqrt(3 * n)
    assert abs(d.mean().item()) < 6 * sd_mean
    assert abs(d.var().item() - r * r / 3) < 0.01 * r * r / 3
    bins = 64
    hist = torch.histc(d, bins=bins, min=-r, max=r)
    expect = n / bins
    chi2 = ((hist - expect) ** 2 / expect).sum().item()
    assert chi2 < bins + 8 * math.sqrt(2 * bins), chi2  # ~p < 1e-6 for chi2(63)
    # every lane of a 4-wide draw and every draw of a tile is uniform too
    for k in (4, 1024, 4096):
        cols = d.view(-1, k)
        assert (cols.mean(0).abs() < 6 * r / math.sqrt(3 * n / k)).all()
    # no repeated Philox subsequences: neighbouring packs, draws and tiles differ
    for k in (4, 1024, 4096):
        same = (d[k:] == d[:-k]).double().mean().item()
        assert same < 1e-3, (k, same)
    lag1 = torch.corrcoef(torch.stack([d[1:], d[:-1]]))[0, 1].item()
    assert abs(lag1) < 6 / math.sqrt(n)


@cuda
@pytest.mark.parametrize("dtype", LOW)
def test_random_delta_low_precision_statistics(dtype):
    torch.manual_seed(0)
    n, r = 1 << 20, 0.5
    d = ops.random_delta(torch.zeros(n, dtype=dtype, device="cuda"), r, -1.0, 1.0, False)
    d = d.double().cpu()
    assert d.min() >= -r and d.max() <= r
    # torch.uniform_'s bound reversal moves the values that round to +r to -r (bfloat16: 1e-3
    # of them), which shifts the mean by about -1e-3
    assert abs(d.mean().item()) < 4e-3
    assert abs(d.var().item() - r * r / 3) < 0.02 * r * r / 3


@cuda
def test_random_delta_clip_and_layouts():
    """The clip is the reference's formula on the unclipped draw; the draw for element e of the
    output's memory does not depend on x's layout."""
    x = torch.rand(5, 3, 9, 11, device="cuda") * 1.2 - 0.1
    torch.manual_seed(3)
    raw = ops.random_delta(x, 0.2, 0.0, 1.0, False)
    for name, lx in layouts(x).items():
        torch.manual_seed(3)
        d = ops.random_delta(lx, 0.2, 0.0, 1.0, True)
        assert d.stride() == torch.empty_like(lx).stride(), name
        torch.manual_seed(3)
        raw_l = ops.random_delta(lx, 0.2, 0.0, 1.0, False)
        torch.testing.assert_close(d, torch.clamp(lx + raw_l, 0.0, 1.0) - lx, rtol=0, atol=0,
                                   msg=name)
        if d.is_contiguous():  # same memory order as the contiguous x: same draws
            torch.testing.assert_close(raw_l, raw, rtol=0, atol=0, msg=name)
    with pytest.raises(RuntimeError, match="generator"):
        ops.random_delta(x, 0.1, generator=torch.Generator())


@cuda
def test_random_delta_in_cuda_graph():
    """philox_cuda_state under capture: each replay draws new values."""
    x = torch.rand(4, 3, 16, 16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.random_delta(x, 0.1)  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.random_delta(x, 0.1)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)
    assert out.abs().max() <= 0.1 * (1 + 1e-6) and ((x + out) >= 0).all() and (
        (x + out) <= 1).all()
