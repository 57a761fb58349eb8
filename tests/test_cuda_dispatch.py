"""The CUDA kernels beyond one op on one sample (those are in test_op_contracts.py and the
per-op files): device checks, streams, devices, and GradAlign end to end on CUDA against CPU.

Everything marked `cuda` needs a GPU (skipped otherwise, see conftest.py); the CPU-tensor
rejection runs without one wherever the CUDA kernels are compiled in (redispatched to the CUDA
kernel with CPU tensors).
"""
import copy

import pytest
import torch

import gradalign_fast as gf
from gradalign_fast import GradAlignLoss, attacks, ops

cuda = pytest.mark.cuda


@pytest.fixture
def gpu():
    """The CUDA device, after checking that the compiled CUDA kernels are the ones under test."""
    assert gf.has_cuda_ops(), f"CUDA kernels not compiled in: {gf.ops_error()}"
    return torch.device("cuda")


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = 0.6 * a + 0.8 * torch.randn(shape, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


@pytest.mark.skipif(not gf.has_cuda_ops(), reason="CUDA kernels not compiled in")
@pytest.mark.parametrize("name, args", [
    ("cosine", lambda x: (x, x)),
    ("cosine_backward", lambda x: (x[:, 0], x, x, x[:, 0], x[:, 0], x[:, 0])),
    ("attack_step", lambda x: (x, x, x, 0.1, 0.1, 0.0, 1.0, True)),
    ("attack_step_", lambda x: (x, x.clone(), x, 0.1, 0.1, 0.0, 1.0, True)),
    ("random_delta", lambda x: (x, 0.1, 0.0, 1.0, True, None)),
    ("relu_affine_backward", lambda x: (x, x, x[0], x[0])),
])
def test_cuda_kernels_reject_cpu_tensors(name, args):
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    op = getattr(torch.ops.gradalign_fast, name).default
    with pytest.raises(RuntimeError, match=f"gradalign_fast::{name}: .* must be a CUDA tensor"):
        op.redispatch(keys, *args(torch.rand(2, 3)))


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
