"""gradalign_fast::cosine and cosine_backward: what the sample-driven tests of
test_op_contracts.py do not cover (gradients through zero-norm samples, grad_cos dtypes, the
CUDA reduction paths for large samples)."""
import pytest
import torch
import torch.nn.functional as F

import gradalign_fast as gf
from gradalign_fast import ops
from gradalign_fast.ops import reference
from gradalign_fast.testing.layouts import layouts
from gradalign_fast.testing.op_samples import LOW


def _pair(shape, dtype=torch.float64, device="cpu"):
    return (torch.randn(shape, dtype=dtype, device=device),
            torch.randn(shape, dtype=dtype, device=device))


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


def test_autograd_is_the_cpp_function_and_differentiates_only_what_needs_it(device):
    """The compiled op's autograd is registered in C++ (csrc/autograd/cosine_autograd.cpp: no
    Python per call); with a detached `a` (GradAlign's clean gradient) only b gets a gradient,
    and the norms carry none."""
    if not gf.has_ops():
        pytest.skip(f"compiled ops not loaded: {gf.ops_error()}")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("gradalign_fast::cosine", "Autograd")
    a, b = _pair((3, 2, 5), device=device)
    b.requires_grad_(True)
    cos, na, nb = ops.cosine(a, b)
    assert type(cos.grad_fn).__name__ == "CppFunction"
    assert not na.requires_grad and not nb.requires_grad
    cos.sum().backward()
    rb = b.detach().clone().requires_grad_()
    reference.cosine(a, rb)[0].sum().backward()
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-12, atol=1e-12)
    assert a.grad is None


def test_second_backward_raises_a_clear_error(device):
    """cosine_backward is not differentiable: a graph built through the cosine's backward
    (create_graph=True) refuses its own backward instead of giving a silent zero; a single
    backward with create_graph=True still works (GradAlign's step)."""
    if not gf.has_ops():
        pytest.skip(f"compiled ops not loaded: {gf.ops_error()}")
    a, b = _pair((3, 2, 5), device=device)
    a.requires_grad_(True)
    b.requires_grad_(True)
    (grad_b,) = torch.autograd.grad(ops.cosine(a, b)[0].sum(), b, create_graph=True)
    rb = b.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(reference.cosine(a.detach(), rb)[0].sum(), rb)
    torch.testing.assert_close(grad_b, want, rtol=1e-12, atol=1e-12)
    assert grad_b.requires_grad
    with pytest.raises(RuntimeError, match="gradalign_fast::cosine_backward is not "
                                           "differentiable: a second backward"):
        grad_b.sum().backward()
    with pytest.raises(RuntimeError, match="cosine_backward is not differentiable"):
        ops.cosine_backward(torch.ones(3, dtype=torch.float64, device=device,
                                       requires_grad=True), a, b,
                            *(v.detach() for v in ops.cosine(a, b))).sum().backward()


@pytest.mark.parametrize("scale", [1e-10, 1e-18, 1e-22, 1e-25, 1e-30])
def test_tiny_gradients_give_finite_float32_results_like_float64(scale, device):
    """Input gradients of a confident model reach norms of 1e-19 and below, where the product
    of two float32 norms underflows: the old 1 / (|a| |b|) made d cos / d b infinite and an
    exact-GradAlign MNIST run NaN. With one norm per division the float32 op agrees with
    float64 on the same inputs, down to norms near float32's smallest normal number."""
    torch.manual_seed(0)
    a64, b64 = (scale * t for t in _pair((4, 1, 28, 28), device=device))
    w = torch.arange(1.0, 5.0, dtype=torch.float64, device=device)
    grads = []
    for dtype in (torch.float32, torch.float64):
        a, b = a64.to(dtype), b64.to(dtype).requires_grad_(True)
        cos, na, nb = ops.cosine(a, b)
        (cos * w.to(cos.dtype)).sum().backward()
        assert torch.isfinite(cos).all() and torch.isfinite(b.grad).all()
        grads.append((cos.double(), b.grad.double()))
    (c32, g32), (c64, g64) = grads
    if device == "cuda" and scale < 1e-18:
        return  # CUDA sums float32 squares in float32: below ~1e-19 they underflow (finite)
    torch.testing.assert_close(c32, c64, rtol=1e-5, atol=1e-6)
    # relative to the whole gradient's norm (it scales as 1 / scale)
    assert (g32 - g64).norm() <= 1e-5 * g64.norm()


def test_all_zero_batch(device):
    a = torch.zeros(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.zeros(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    cos, na, nb = ops.cosine(a, b)
    assert torch.all(cos == 0) and torch.all(na == 0) and torch.all(nb == 0)
    cos.sum().backward()
    assert torch.all(a.grad == 0) and torch.all(b.grad == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_half_grad_cos_equals_float32(dtype, device):
    """grad_cos of any floating dtype is converted to the accumulation dtype (CPU as CUDA):
    a half grad_cos gives the result of its float32 value."""
    a, b = (t.to(dtype) for t in _pair((5, 3, 4, 4), device=device))
    cos, na, nb = ops.cosine(a, b)
    g = torch.randn(5, device=device).half()
    torch.testing.assert_close(ops.cosine_backward(g, a, b, cos, na, nb),
                               ops.cosine_backward(g.float(), a, b, cos, na, nb), rtol=0, atol=0)


# ------------------------------------------------------------------------- large samples
def _correlated(shape, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    b = 0.6 * a + 0.8 * torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    return a.to(dtype), b.to(dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (2, 3, 224, 224), (16, 3, 224, 224),
                                   (3, 1_000_003)])
def test_cuda_split_samples_match_float64(shape, dtype):
    """B small, samples large: several blocks per sample (partial sums + finalize kernel),
    against the float64 truth of the same rounded inputs."""
    a, b = _correlated(shape, dtype, "cuda")
    b[0] = 0  # a zero-norm sample in a split sample
    lays = ["contiguous", "batch_strided"] + (["channels_last"] if len(shape) == 4 else [])
    want = reference.cosine(a.double(), b.double())
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for lay in lays:
        got = ops.cosine(layouts(a)[lay], layouts(b)[lay])
        for g, w in zip(got, want):
            assert g.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol, msg=lay)
        assert got[0][0].item() == 0.0 and got[2][0].item() == 0.0


def test_large_batch_and_large_samples_within_pytorch_error(device):
    """B and S large. On CUDA, B large enough that each sample gets one block (B >= one wave of
    resident blocks): every thread sums S / 256 terms in float; on the CPU (double
    accumulation) a smaller case of the same kind. Error against the float64 truth at most
    twice that of PyTorch's own float32 F.cosine_similarity."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        shape = (props.multi_processor_count * (props.max_threads_per_multi_processor // 256),
                 524_291)
    else:
        shape = (64, 131_075)
    a, b = _correlated(shape, torch.float32, device)
    truth = reference.cosine(a.double(), b.double())
    torch_err = (F.cosine_similarity(a, b, dim=1).double() - truth[0]).abs().max().item()
    cos, na, nb = ops.cosine(a, b)
    assert (cos.double() - truth[0]).abs().max().item() <= 2 * torch_err + 1e-7
    norm_err = (torch.linalg.vector_norm(a, dim=1).double() - truth[1]).abs().max().item()
    assert (na.double() - truth[1]).abs().max().item() <= 2 * norm_err + 1e-7 * truth[1].max()
