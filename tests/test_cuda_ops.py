"""The CUDA kernels against the CPU kernels and the float64 reference.

Everything marked `cuda` needs a GPU (skipped otherwise, see conftest.py). The first tests run
anywhere: the CUDA kernels must be compiled in whenever a toolkit is, and their host-side
argument checks run without a GPU (redispatched to the CUDA kernel with CPU tensors).
"""
import copy
import math
import os
import shutil

import pytest
import torch

import gradalign_fast as gf
from gradalign_fast import GradAlignLoss, attacks, ops
from gradalign_fast.ops import reference

from conftest import layouts

OPS = ["cosine", "cosine_backward", "attack_step", "attack_step_", "random_delta"]
LOW = [torch.float16, torch.bfloat16]
cuda = pytest.mark.cuda


@pytest.fixture
def gpu():
    """The CUDA device, after checking that the compiled CUDA kernels are the ones under test."""
    assert gf.has_cuda_ops(), f"CUDA kernels not compiled in: {gf.ops_error()}"
    return torch.device("cuda")


def _views(t: torch.Tensor, device):
    """{layout: (cpu view, device view)} of one logical tensor: conftest's layouts, a sliced
    view, and the same layouts built on the device (.to() would make them contiguous)."""
    def extra(u):
        out = layouts(u)
        if u.dim() >= 2:  # every other element of an interleaved copy: last-dim stride 2
            out["sliced"] = torch.stack([u, u], -1).flatten(-2)[..., ::2]
        return out
    c, d = extra(t), extra(t.to(device))
    return {k: (c[k], d[k]) for k in c}


def _cpu(ts):
    return [t.cpu() for t in ts]


# ------------------------------------------------------------------------- runs without a GPU
def test_cuda_sources_compiled():
    """Built with a toolkit and a CUDA torch: every schema has a CUDA kernel."""
    if os.environ.get("GRADALIGN_FAST_REQUIRE_OPS") != "1":
        pytest.skip("only checked after the README set-up")
    toolkit = shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")
    if torch.version.cuda is None or not toolkit:
        pytest.skip("no CUDA toolkit or CPU-only torch: CPU-only build")
    if os.environ.get("GRADALIGN_FAST_FORCE_CUDA", "1").strip() in ("0", "", "false", "False"):
        pytest.skip("CUDA disabled by GRADALIGN_FAST_FORCE_CUDA")
    assert gf.has_cuda_ops(), gf.ops_error()
    missing = [n for n in OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"gradalign_fast::{n}",
                                                                     "CUDA")]
    assert not missing, f"no CUDA kernel registered for {missing}"


@pytest.mark.skipif(not gf.has_cuda_ops(), reason="CUDA kernels not compiled in")
@pytest.mark.parametrize("name, args", [
    ("cosine", lambda x: (x, x)),
    ("cosine_backward", lambda x: (x[:, 0], x, x, x[:, 0], x[:, 0], x[:, 0])),
    ("attack_step", lambda x: (x, x, x, 0.1, 0.1, 0.0, 1.0, True)),
    ("attack_step_", lambda x: (x, x.clone(), x, 0.1, 0.1, 0.0, 1.0, True)),
    ("random_delta", lambda x: (x, 0.1, 0.0, 1.0, True, None)),
])
def test_cuda_kernels_reject_cpu_tensors(name, args):
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    op = getattr(torch.ops.gradalign_fast, name).default
    with pytest.raises(RuntimeError, match=f"gradalign_fast::{name}: .* must be a CUDA tensor"):
        op.redispatch(keys, *args(torch.rand(2, 3)))


# ------------------------------------------------------------------------- cosine
COSINE_SHAPES = [(1, 3, 5, 5), (7, 3, 5, 5), (5, 17), (3, 1), (1, 1), (4, 2, 3, 7),
                 (2, 3, 32, 32), (33, 3, 7, 9), (300, 5)]
# B small, samples large: the split-sample path (partial sums + finalize kernel).
SPLIT_SHAPES = [(1, 3, 224, 224), (2, 3, 224, 224), (16, 3, 224, 224), (3, 1_000_003)]


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = 0.6 * a + 0.8 * torch.randn(shape, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


def _cos_tol(dtype):
    # CPU accumulates float in double, CUDA in float: float agrees to float rounding.
    return 1e-12 if dtype == torch.float64 else 1e-5


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", COSINE_SHAPES)
def test_cosine_matches_cpu(shape, dtype, gpu):
    a, b = _pair(shape, dtype)
    va, vb = _views(a, gpu), _views(b, gpu)
    for name in va:
        want = ops.cosine(va[name][0], vb[name][0])
        got = ops.cosine(va[name][1], vb[name][1])
        for g, w in zip(got, want):
            assert g.is_cuda and g.dtype == w.dtype and g.shape == w.shape
            tol = _cos_tol(dtype)
            torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol, msg=name)


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32] + LOW)
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_cosine_split_samples_match_cpu(shape, dtype, gpu):
    a, b = _pair(shape, dtype)
    b[0] = 0  # a zero-norm sample in a split sample
    for layout in ["contiguous", "channels_last", "batch_strided"] if len(shape) == 4 else [
            "contiguous", "batch_strided"]:
        ga, gb = layouts(a.to(gpu))[layout], layouts(b.to(gpu))[layout]
        got = _cpu(ops.cosine(ga, gb))
        # against the float64 truth of the same (rounded) inputs: the CPU kernel sums half and
        # bfloat16 sequentially in float, less accurately than the CUDA tree
        want = reference.cosine(a.double(), b.double())
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        for g, w in zip(got, want):
            assert g.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol, msg=layout)
        assert got[0][0].item() == 0.0 and got[2][0].item() == 0.0


@cuda
def test_cosine_strided_paths_match_cpu(gpu):
    """Layouts that are not one stride-1 run per sample: mixed layouts, a strided slice, and an
    8-D permuted view with more merged dims than the kernels take (contiguous copy)."""
    a, b = _pair((3, 4, 5, 6), torch.float64)
    cases = {
        "mixed": (a, b.contiguous(memory_format=torch.channels_last)),
        "slice": (a[:, :, ::2], b[:, :, ::2]),
        "mixed_slice": (a[:, 1:, :, ::3],
                        b.transpose(2, 3).contiguous().transpose(2, 3)[:, 1:, :, ::3]),
    }
    inner = (2, 3, 2, 3, 2, 3, 2, 3)
    p, q = _pair((2,) + inner, torch.float64)
    q_rev = q.permute(0, *range(8, 0, -1)).contiguous().permute(0, *range(8, 0, -1))
    assert q_rev.shape == q.shape and not q_rev.is_contiguous()
    cases["eight_dims"] = (p, q_rev)
    for name, (x, y) in cases.items():
        gx = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=gpu).copy_(x)
        gy = torch.empty_strided(y.shape, y.stride(), dtype=y.dtype, device=gpu).copy_(y)
        assert gx.stride() == x.stride() and gy.stride() == y.stride()
        want = reference.cosine(x, y)
        for g, w in zip(ops.cosine(gx, gy), want):
            torch.testing.assert_close(g.cpu(), w, rtol=1e-12, atol=1e-12, msg=name)
        gc = torch.randn(x.shape[0], dtype=torch.float64)
        cos, na, nb = want
        got = ops.cosine_backward(gc.to(gpu), gx, gy, cos.to(gpu), na.to(gpu), nb.to(gpu))
        torch.testing.assert_close(got.cpu(), reference.cosine_backward(gc, x, y, cos, na, nb),
                                   rtol=1e-12, atol=1e-12, msg=name)


@cuda
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape", [(16, 3, 32, 32), (5, 17), (2, 3, 224, 224)])
def test_cosine_low_precision_matches_cpu(shape, dtype, gpu):
    """half/bfloat16: the forward (float accumulation) within float rounding of the float64
    truth, the backward within one rounding of the dtype of the CPU result."""
    a, b = _pair(shape, dtype)
    truth = reference.cosine(a.double(), b.double())
    got = _cpu(ops.cosine(a.to(gpu), b.to(gpu)))
    for g, w in zip(got, truth):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=2e-5)
    cos, na, nb = ops.cosine(a, b)
    gc = torch.linspace(-1, 1, shape[0])
    want_b = ops.cosine_backward(gc, a, b, cos, na, nb)
    got_b = ops.cosine_backward(gc.to(gpu), a.to(gpu), b.to(gpu), cos.to(gpu), na.to(gpu),
                                nb.to(gpu))
    assert got_b.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got_b.cpu().double(), want_b.double(), rtol=eps,
                               atol=eps * want_b.double().abs().max().item())


@cuda
def test_cosine_zero_norms_and_empty(gpu):
    a, b = _pair((6, 3, 4, 4), torch.float64)
    a[1] = 0
    b[2] = 0
    a[3] = 0
    b[3] = 0
    ga, gb = a.to(gpu).requires_grad_(True), b.to(gpu).requires_grad_(True)
    cos, na, nb = ops.cosine(ga, gb)
    assert cos[1].item() == 0 and cos[2].item() == 0 and cos[3].item() == 0
    assert na[1].item() == 0 and nb[2].item() == 0
    w = torch.arange(1.0, 7.0, dtype=torch.float64, device=gpu)
    (cos * w).sum().backward()
    ra, rb = (t.detach().clone().requires_grad_(True) for t in (a, b))
    (reference.cosine(ra, rb)[0] * w.cpu()).sum().backward()
    torch.testing.assert_close(ga.grad.cpu(), ra.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb.grad.cpu(), rb.grad, rtol=1e-12, atol=1e-12)
    # all-zero batch
    z = torch.zeros(4, 3, 8, 8, device=gpu, requires_grad=True)
    cz, nz, _ = ops.cosine(z, z)
    assert torch.all(cz == 0) and torch.all(nz == 0)
    cz.sum().backward()
    assert torch.all(z.grad == 0)
    # empty batch, empty samples
    for shape in [(0, 3, 4), (3, 0), (2, 3, 0, 4)]:
        e = torch.randn(shape, device=gpu)
        c, n1, n2 = ops.cosine(e, e)
        assert c.shape == (shape[0],) and c.is_cuda
        assert torch.all(c == 0) and torch.all(n1 == 0) and torch.all(n2 == 0)
        g = ops.cosine_backward(c, e, e, c, n1, n2)
        assert g.shape == e.shape and g.is_cuda


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 1), (5, 17), (2, 3, 224, 224)])
def test_cosine_backward_matches_cpu_and_keeps_layout(shape, dtype, gpu):
    a, b = _pair(shape, dtype)
    cos, na, nb = ops.cosine(a, b)
    gc = torch.randn(shape[0], dtype=cos.dtype)
    want = ops.cosine_backward(gc, a, b, cos, na, nb)
    # the two terms of an element are up to |g| / |a| each and may cancel
    scale = (2 * gc.abs() / na).max().item()
    eps = 1e-15 if dtype == torch.float64 else 1e-6
    va, vb = _views(a, gpu), _views(b, gpu)
    for name in va:
        got = ops.cosine_backward(gc.to(gpu), va[name][1], vb[name][1], cos.to(gpu), na.to(gpu),
                                  nb.to(gpu))
        assert got.stride() == torch.empty_like(va[name][1]).stride(), name
        torch.testing.assert_close(got.cpu(), want, rtol=10 * eps, atol=eps * scale, msg=name)


@cuda
@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (5, 17), (3, 1), (2, 3, 5, 5)])
def test_cosine_gradcheck_cuda(shape, gpu):
    a, b = (t.to(gpu).requires_grad_(True) for t in _pair(shape, torch.float64))
    assert torch.autograd.gradcheck(lambda p, q: ops.cosine(p, q)[0], (a, b))
    cl = [t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
          for t in (a, b)] if len(shape) == 4 else [a, b]
    assert torch.autograd.gradcheck(lambda p, q: ops.cosine(p, q)[0], tuple(cl))


# ------------------------------------------------------------------------- attack steps
ATTACK_CASES = [  # alpha, eps, lo, hi, project
    (0.3, 0.3, 0.0, 1.0, True),
    (0.125, 0.1, 0.0, 1.0, True),
    (0.1, 0.1, 0.0, 1.0, False),
    (0.05, 0.1, -math.inf, math.inf, True),
    (0.0, 0.0, 0.0, 1.0, True),
]


def _attack_inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x.view(-1)[::7] = 0.0
    x.view(-1)[1::11] = 1.0
    delta = (torch.rand(shape, generator=g) - 0.5) * 0.4
    grad = torch.randn(shape, generator=g)
    grad.view(-1)[::5] = 0.0
    return x.to(dtype), delta.to(dtype), grad.to(dtype)


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32] + LOW)
@pytest.mark.parametrize("shape", [(1, 1, 28, 28), (7, 3, 5, 5), (5, 17), (3, 1),
                                   (2, 3, 224, 224)])
@pytest.mark.parametrize("case", ATTACK_CASES)
def test_attack_step_bitwise_equal_to_cpu(shape, dtype, case, gpu):
    """Same formula (attack_math.h), same math type: bit for bit the CPU result."""
    x, delta, grad = _attack_inputs(shape, dtype)
    want = ops.attack_step(x, delta, grad, *case)
    vx, vd, vg = _views(x, gpu), _views(delta, gpu), _views(grad, gpu)
    for name in vx:
        gx, gd, gg = vx[name][1], vd[name][1], vg[name][1]
        got = ops.attack_step(gx, gd, gg, *case)
        assert got.stride() == torch.empty_like(gx).stride(), name
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0, msg=name)
        inplace = gd.clone()
        assert ops.attack_step_(gx, inplace, gg, *case) is inplace
        torch.testing.assert_close(inplace.cpu(), want, rtol=0, atol=0, msg=name)


@cuda
def test_attack_step_mixed_layouts_nan_and_empty(gpu):
    x, delta, grad = _attack_inputs((3, 3, 6, 5), torch.float32)
    grad[0, 0, 0, 0] = float("nan")
    want = ops.attack_step(x, delta, grad, 0.1, 0.1, 0.0, 1.0, True)
    gx = x.to(gpu).contiguous(memory_format=torch.channels_last)
    gd = delta.to(gpu).transpose(-1, -2).contiguous().transpose(-1, -2)
    gg = torch.stack([grad, grad], 1).flatten(0, 1).to(gpu)[::2]
    got = ops.attack_step(gx, gd, gg, 0.1, 0.1, 0.0, 1.0, True)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)
    for shape in [(0, 3), (2, 0, 4)]:
        e = torch.empty(shape, device=gpu)
        assert ops.attack_step(e, e, e, 0.1, 0.1).shape == shape
        ops.attack_step_(e, e.clone(), e, 0.1, 0.1)


# ------------------------------------------------------------------------- random_delta
def _poison_allocator(numel, dtype, device):
    """Leaves NaN in the caching allocator's next block, so unwritten outputs show up."""
    torch.full((numel + 1024,), float("nan"), dtype=dtype, device=device)


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32] + LOW)
@pytest.mark.parametrize("numel", [1, 3, 4, 5, 1023, 1024, 4095, 4096, 4097, 12_289, 1_000_003])
def test_random_delta_writes_every_element_in_range(numel, dtype, gpu):
    x = torch.rand(numel, dtype=dtype, device=gpu)
    for clip in (False, True):
        _poison_allocator(numel, dtype, gpu)
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
def test_random_delta_uniform_statistics(dtype, gpu):
    torch.manual_seed(0)
    n, r = 1 << 22, 0.25
    d = ops.random_delta(torch.zeros(n, dtype=dtype, device=gpu), r, -1.0, 1.0, False)
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
def test_random_delta_low_precision_statistics(dtype, gpu):
    torch.manual_seed(0)
    n, r = 1 << 20, 0.5
    d = ops.random_delta(torch.zeros(n, dtype=dtype, device=gpu), r, -1.0, 1.0, False)
    d = d.double().cpu()
    assert d.min() >= -r and d.max() <= r
    # torch.uniform_'s bound reversal moves the values that round to +r to -r (bfloat16: 1e-3
    # of them), which shifts the mean by about -1e-3
    assert abs(d.mean().item()) < 4e-3
    assert abs(d.var().item() - r * r / 3) < 0.02 * r * r / 3


@cuda
def test_random_delta_reproducible_with_manual_seed_and_generator(gpu):
    x = torch.rand(8, 3, 33, 17, device=gpu)
    torch.manual_seed(123)
    a = ops.random_delta(x, 0.1)
    a2 = ops.random_delta(x, 0.1)
    torch.manual_seed(123)
    b = ops.random_delta(x, 0.1)
    b2 = ops.random_delta(x, 0.1)
    assert torch.equal(a, b) and torch.equal(a2, b2) and not torch.equal(a, a2)
    torch.cuda.manual_seed(7)
    c = ops.random_delta(x, 0.1)
    torch.cuda.manual_seed(7)
    assert torch.equal(c, ops.random_delta(x, 0.1))
    g1 = torch.Generator(device=gpu).manual_seed(7)
    g2 = torch.Generator(device=gpu).manual_seed(7)
    assert torch.equal(ops.random_delta(x, 0.1, generator=g1),
                       ops.random_delta(x, 0.1, generator=g2))
    # a generator does not touch the default one
    torch.manual_seed(5)
    ops.random_delta(x, 0.1, generator=g1)
    e = ops.random_delta(x, 0.1)
    torch.manual_seed(5)
    assert torch.equal(e, ops.random_delta(x, 0.1))


@cuda
def test_random_delta_clip_and_layouts(gpu):
    """The clip is the reference's formula on the unclipped draw; the draw for element e of the
    output's memory does not depend on x's layout."""
    x = torch.rand(5, 3, 9, 11, device=gpu) * 1.2 - 0.1
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
def test_random_delta_in_cuda_graph(gpu):
    """philox_cuda_state under capture: each replay draws new values."""
    x = torch.rand(4, 3, 16, 16, device=gpu)
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


# ------------------------------------------------------------------------- integration
def _opcheck_cases(gpu):
    """(op, args, test_utils or None for all) on CUDA tensors: every op, awkward layouts."""
    a, b = (t.to(gpu) for t in _pair((3, 2, 4, 4), torch.float64))
    ab_cl = tuple(t.contiguous(memory_format=torch.channels_last) for t in (a, b))
    ab_sliced = (a[:, :, ::2], b[:, :, ::2])
    cos, na, nb = reference.cosine(a, b)
    x, d, g = (t.to(gpu) for t in _attack_inputs((3, 2, 4, 4), torch.float32))
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, d, g)]
    step = (0.1, 0.2, 0.0, 1.0)
    lib = torch.ops.gradalign_fast
    cases = [(lib.cosine, tuple(t.clone().requires_grad_(True) for t in args), None)
             for args in [(a, b), ab_cl, ab_sliced, (a.float(), b.float()),
                          (a.half(), b.half())]]
    cases += [
        (lib.cosine_backward, (torch.randn_like(cos), a, b, cos, na, nb), None),
        (lib.cosine_backward, (torch.randn_like(cos), *ab_cl, cos, na, nb), None),
        (lib.attack_step, (x, d, g) + step + (True,), None),
        (lib.attack_step, (cl[0], d, cl[2]) + step + (True,), None),
        (lib.attack_step_, (x, d.clone(), g) + step + (False,), None),
        (lib.attack_step_, (cl[0], cl[1].clone(), cl[2]) + step + (True,), None),
        # random: two runs differ, so the checks that compare runs are left out
        (lib.random_delta, (x, 0.1, 0.0, 1.0, True),
         ("test_schema", "test_faketensor", "test_autograd_registration")),
        (lib.random_delta, (cl[0].half(), 0.1, 0.0, 1.0, False),
         ("test_schema", "test_faketensor", "test_autograd_registration")),
    ]
    return cases


@cuda
def test_opcheck_cuda(gpu):
    for op, args, utils in _opcheck_cases(gpu):
        kw = {} if utils is None else {"test_utils": utils}
        torch.library.opcheck(op, args, **kw)


@cuda
@pytest.mark.parametrize("reuse_grad", [False, True])
def test_gradalign_loss_cuda_matches_cpu_float64(reuse_grad, gpu):
    from test_gradalign import _batch, small_cnn

    x, y = _batch()
    model = small_cnn()
    model(x)  # materialise the lazy layer
    model.train()
    noise = torch.empty_like(x).uniform_(-0.3, 0.3)
    m_gpu = copy.deepcopy(model).to(gpu)
    runs = []
    for m, dev in ((model, "cpu"), (m_gpu, gpu)):
        xd, yd = x.to(dev), y.to(dev)
        kw = {"noise": noise.to(dev)}
        if reuse_grad:
            _, kw["grad_clean"] = attacks.fgsm(m, xd, yd, 0.3)
        reg = GradAlignLoss(0.3, 0.7)(m, xd, yd, **kw)
        reg.backward()
        runs.append((reg.item(), [p.grad.cpu() for p in m.parameters()],
                     [t.cpu() for t in m.buffers()]))
    (r1, g1, b1), (r2, g2, b2) = runs
    assert r1 > 0 and abs(r1 - r2) <= 1e-10
    for p, q in zip(g1, g2):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-10)
    for p, q in zip(b1, b2):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)


@cuda
def test_ops_run_on_the_current_stream(gpu):
    """Each op must queue behind work on the current (side) stream: the inputs are written on
    the side stream after a long sleep, so an op on any other stream reads zeros."""
    a_cpu, b_cpu = _pair((64, 3, 32, 32), torch.float64)
    a_src, b_src = a_cpu.to(gpu), b_cpu.to(gpu)
    a, b = torch.zeros_like(a_src), torch.zeros_like(b_src)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms: the launches below return long before
        a.copy_(a_src)
        b.copy_(b_src)
        cos, na, nb = ops.cosine(a, b)
        ga = ops.cosine_backward(torch.ones_like(cos), a, b, cos, na, nb)
        step = ops.attack_step(a, b, a, 0.1, 0.2, -1.0, 1.0, True)
        inplace = b.clone()
        ops.attack_step_(a, inplace, a, 0.1, 0.2, -1.0, 1.0, True)
        torch.manual_seed(11)
        rd = ops.random_delta(a, 0.1, -1.0, 1.0, True)
    side.synchronize()
    cos_w, na_w, nb_w = ops.cosine(a_cpu, b_cpu)
    torch.testing.assert_close(cos.cpu(), cos_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga.cpu(), ops.cosine_backward(torch.ones_like(cos_w), a_cpu, b_cpu,
                                                             cos_w, na_w, nb_w),
                               rtol=1e-12, atol=1e-12)
    step_w = ops.attack_step(a_cpu, b_cpu, a_cpu, 0.1, 0.2, -1.0, 1.0, True)
    torch.testing.assert_close(step.cpu(), step_w, rtol=0, atol=0)
    torch.testing.assert_close(inplace.cpu(), step_w, rtol=0, atol=0)
    torch.manual_seed(11)
    raw = ops.random_delta(a, 0.1, -1.0, 1.0, False)
    torch.testing.assert_close(rd, torch.clamp(a + raw, -1.0, 1.0) - a, rtol=0, atol=0)


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ops_on_a_non_current_device(gpu):
    dev = torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
    a, b = _pair((4, 3, 8, 8), torch.float64)
    for g, w in zip(ops.cosine(a.to(dev), b.to(dev)), ops.cosine(a, b)):
        assert g.device == dev
        torch.testing.assert_close(g.cpu(), w, rtol=1e-12, atol=1e-12)
    d = ops.random_delta(a.to(dev), 0.1, generator=torch.Generator(device=dev).manual_seed(0))
    assert d.device == dev and d.abs().max() <= 0.1 * (1 + 1e-12)


@cuda
def test_mixed_devices_are_rejected(gpu):
    a = torch.randn(2, 3, device=gpu)
    with pytest.raises(RuntimeError, match="is on"):
        ops.cosine(a, a.cpu())
    with pytest.raises(RuntimeError, match="is on"):
        ops.attack_step(a, a.cpu(), a, 0.1, 0.1)
    cos, na, nb = ops.cosine(a, a)
    with pytest.raises(RuntimeError, match="is on"):
        ops.cosine_backward(cos.cpu(), a, a, cos, na, nb)
