"""gradalign_fast::cosine and cosine_backward against the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import gradalign_fast as gf
from gradalign_fast import ops
from gradalign_fast.ops import reference

from conftest import layouts

SHAPES = [(1, 3, 5, 5), (7, 3, 5, 5), (5, 17), (3, 1), (4, 2, 3, 7), (2, 3, 32, 32)]


def _pair(shape, dtype=torch.float64, device="cpu"):
    return (torch.randn(shape, dtype=dtype, device=device),
            torch.randn(shape, dtype=dtype, device=device))


@pytest.mark.parametrize("shape", SHAPES)
def test_cosine_matches_reference_float64(shape, device):
    a, b = _pair(shape, device=device)
    for name, (la, lb) in {k: (v, layouts(b)[k]) for k, v in layouts(a).items()}.items():
        got = ops.cosine(la, lb)
        want = reference.cosine(a, b)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)


def test_cosine_mixed_layouts_match():
    a, b = _pair((3, 4, 5, 6))
    cl = b.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.cosine(a, cl)[0], reference.cosine(a, b)[0], rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (5, 17), (3, 1), (2, 3, 5, 5)])
def test_cosine_gradcheck(shape, device):
    a, b = _pair(shape, device=device)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: ops.cosine(p, q)[0], (a, b))


def test_cosine_gradcheck_channels_last():
    a, b = _pair((2, 3, 4, 4))
    a = a.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    b = b.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: ops.cosine(p, q)[0], (a, b))


def test_cosine_backward_matches_reference_and_keeps_layout(device):
    a, b = _pair((4, 3, 5, 5), device=device)
    cos, na, nb = reference.cosine(a, b)
    g = torch.randn(4, dtype=torch.float64, device=device)
    for name, la in layouts(a).items():
        got = ops.cosine_backward(g, la, b, cos, na, nb)
        torch.testing.assert_close(got, reference.cosine_backward(g, a, b, cos, na, nb),
                                   rtol=1e-12, atol=1e-12, msg=name)
        if name == "channels_last":
            assert got.is_contiguous(memory_format=torch.channels_last)


def test_zero_gradients_are_left_out(device):
    a, b = _pair((4, 2, 3, 3), device=device)
    a[1] = 0
    b[2] = 0
    a.requires_grad_(True)
    b.requires_grad_(True)
    cos, na, nb = ops.cosine(a, b)
    assert cos[1].item() == 0 and cos[2].item() == 0
    assert na[1].item() == 0 and nb[2].item() == 0
    cos.sum().backward()
    assert torch.all(a.grad[1] == 0) and torch.all(a.grad[2] == 0)
    assert torch.all(b.grad[1] == 0) and torch.all(b.grad[2] == 0)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # cos is discontinuous at a zero vector (no gradcheck there): compare with the reference
    ra, rb = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    w = torch.arange(1.0, 5.0, dtype=torch.float64, device=device)
    (reference.cosine(ra, rb)[0] * w).sum().backward()
    a.grad = b.grad = None
    (ops.cosine(a, b)[0] * w).sum().backward()
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-12, atol=1e-12)


def test_all_zero_batch(device):
    a = torch.zeros(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.zeros(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    cos, na, nb = ops.cosine(a, b)
    assert torch.all(cos == 0) and torch.all(na == 0) and torch.all(nb == 0)
    cos.sum().backward()
    assert torch.all(a.grad == 0) and torch.all(b.grad == 0)


def test_empty_batch():
    a = torch.randn(0, 3, 4)
    cos, na, nb = ops.cosine(a, a)
    assert cos.shape == (0,) and na.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cosine_low_precision_within_pytorch_error(dtype, device):
    """Error against the float64 truth of the same rounded inputs is at most what PyTorch's own
    F.cosine_similarity achieves in that dtype (plus float32 rounding)."""
    torch.manual_seed(0)
    a, b = _pair((16, 3, 32, 32), dtype=torch.float32, device=device)
    b = 0.6 * a + 0.8 * b  # correlated, as gradients at nearby points are
    a, b = a.to(dtype), b.to(dtype)
    truth = reference.cosine(a.double(), b.double())[0]
    torch_err = (F.cosine_similarity(a.flatten(1), b.flatten(1)).double() - truth).abs().max()
    got, _, _ = ops.cosine(a, b)
    assert got.dtype == torch.float32
    ours_err = (got.double() - truth).abs().max()
    assert ours_err <= max(torch_err.item(), 1e-6), (ours_err, torch_err)
    # backward: within the dtype's rounding of the float64 result
    cos, na, nb = reference.cosine(a.double(), b.double())
    g = torch.ones(16, dtype=torch.float64, device=device)
    want = reference.cosine_backward(g, a.double(), b.double(), cos, na, nb)
    got_b = ops.cosine_backward(g.float(), a, b, cos.float(), na.float(), nb.float())
    assert got_b.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got_b.double(), want, rtol=2 * eps, atol=2 * eps * want.abs().max())


def test_opcheck_cosine(device):
    a, b = _pair((3, 2, 4, 4), device=device)
    if not gf.has_ops():
        pytest.skip("compiled ops not loaded")
    cl = (a.contiguous(memory_format=torch.channels_last),
          b.contiguous(memory_format=torch.channels_last))
    for args in [(a, b), cl, (a[:, :, ::2], b[:, :, ::2]), (a.float(), b.float())]:
        torch.library.opcheck(torch.ops.gradalign_fast.cosine,
                              tuple(t.clone().requires_grad_(True) for t in args))
    cos, na, nb = reference.cosine(a, b)
    torch.library.opcheck(torch.ops.gradalign_fast.cosine_backward,
                          (torch.randn_like(cos), a, b, cos, na, nb))


@pytest.mark.parametrize("bad, match", [
    (lambda: ops.cosine(torch.randn(2, 3), torch.randn(2, 4)), "shape"),
    (lambda: ops.cosine(torch.randn(2, 3), torch.randn(2, 3).double()), "dtype"),
    (lambda: ops.cosine(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)),
     "floating"),
    (lambda: ops.cosine(torch.tensor(1.0), torch.tensor(1.0)), "batch"),
])
def test_cosine_bad_input(bad, match):
    if not gf.has_ops():
        pytest.skip("messages checked on the compiled ops")
    with pytest.raises(RuntimeError, match=match):
        bad()
