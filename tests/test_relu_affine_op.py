"""relu_affine_backward (the ReLU mask of low_memory GradAlign) against the reference."""
import pytest
import torch

import gradalign_fast as gf
from gradalign_fast import ops
from gradalign_fast.ops import reference

from conftest import layouts


def _inputs(shape, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    c = shape[1]
    scale = (torch.rand(c, generator=g, dtype=torch.float64) - 0.3).to(dtype=dtype, device=device)
    shift = torch.randn(c, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    if c > 1:
        scale[0] = 0.0  # a dead channel: the mask is then shift > 0 everywhere
    return grad, x, scale, shift


@pytest.mark.parametrize("shape", [(1, 1, 28, 28), (7, 3, 5, 5), (5, 17), (2, 16, 33, 31),
                                   (3, 4, 2, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bitwise_equal_to_reference_in_every_layout(shape, dtype, device):
    grad, x, scale, shift = _inputs(shape, dtype, device)
    want = reference.relu_affine_backward(grad, x, scale, shift)
    mask = torch.addcmul(shift.view((1, -1) + (1,) * (x.dim() - 2)), x,
                         scale.view((1, -1) + (1,) * (x.dim() - 2))) > 0
    assert 0 < mask.sum() < mask.numel()  # both branches are exercised
    for name in layouts(x):
        got = ops.relu_affine_backward(layouts(grad)[name], layouts(x)[name], scale, shift)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def test_equals_relu_backward_of_the_recomputed_output():
    """What fast_double_backward relies on: the op is threshold_backward(g, relu(x*a + b))."""
    grad, x, scale, shift = _inputs((4, 6, 7, 7))
    r = torch.relu(torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1)))
    torch.testing.assert_close(ops.relu_affine_backward(grad, x, scale, shift),
                               torch.ops.aten.threshold_backward(grad, r, 0), rtol=0, atol=0)


def test_keeps_channels_last():
    grad, x, scale, shift = (t.contiguous(memory_format=torch.channels_last) if t.dim() == 4
                             else t for t in _inputs((2, 3, 4, 4)))
    assert ops.relu_affine_backward(grad, x, scale, shift).is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_masks_like_float64(dtype, device):
    """The pre-activation is formed in float from the `dtype` values: the mask is the float64
    one of those values, and the output is grad itself or 0 (no rounding to compare)."""
    grad, x, scale, shift = (t.to(dtype) for t in _inputs((4, 3, 8, 8), torch.float32, device))
    want = reference.relu_affine_backward(grad.double(), x.double(), scale.double(),
                                          shift.double())
    got = ops.relu_affine_backward(grad, x, scale, shift)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=0, atol=0)


def test_empty_batch(device):
    grad, x, scale, shift = _inputs((0, 3, 4, 4), device=device)
    assert ops.relu_affine_backward(grad, x, scale, shift).shape == (0, 3, 4, 4)


def test_opcheck_and_gradient(device):
    if not gf.has_ops():
        pytest.skip("compiled ops not loaded")
    grad, x, scale, shift = _inputs((3, 2, 4, 4), device=device)
    cl = tuple(t.contiguous(memory_format=torch.channels_last) for t in (grad, x))
    for args in [(grad, x), cl, (grad[:, :, ::2], x[:, :, ::2])]:
        torch.library.opcheck(torch.ops.gradalign_fast.relu_affine_backward,
                              (args[0].clone().requires_grad_(True), args[1], scale, shift))
    g = grad.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.relu_affine_backward(t, x, scale, shift), (g,))


@pytest.mark.parametrize("bad, match", [
    (lambda g, x, a, b: (g[:, :1], x, a, b), "shape of `x`"),
    (lambda g, x, a, b: (g, x, a[:1], b), "`scale` must have shape"),
    (lambda g, x, a, b: (g, x, a, b.view(1, -1)), "`shift` must have shape"),
    (lambda g, x, a, b: (g, x, a.float(), b), "dtype of `x`"),
    (lambda g, x, a, b: (g, x[0, 0], a[:4], b[:4]), "shape of `x`"),
    (lambda g, x, a, b: (g.long(), x, a, b), "floating-point"),
])
def test_bad_input_has_a_clear_error(bad, match):
    if not gf.has_ops():
        pytest.skip("the messages are the compiled op's")
    with pytest.raises(RuntimeError, match=match):
        ops.relu_affine_backward(*bad(*_inputs((2, 3, 4, 4))))
