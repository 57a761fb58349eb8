"""relu_affine_backward (the ReLU mask of low_memory GradAlign): what the sample-driven tests
of test_op_contracts.py do not cover (it is the ReLU backward; half/bfloat16 masks exact)."""
import pytest
import torch

from gradalign_fast import ops
from gradalign_fast.ops import reference
from gradalign_fast.testing.op_samples import LOW, sample

OP = "relu_affine_backward"


def test_equals_relu_backward_of_the_recomputed_output():
    """What fast_double_backward relies on: the op is threshold_backward(g, relu(x*a + b)),
    and the samples exercise both branches of the mask."""
    grad, x, scale, shift = sample(OP, "odd").args
    r = torch.relu(torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1)))
    assert 0 < (r > 0).sum() < r.numel()
    torch.testing.assert_close(ops.relu_affine_backward(grad, x, scale, shift),
                               torch.ops.aten.threshold_backward(grad, r, 0), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", ["odd", "large", "channels_last", "sliced"])
def test_low_precision_masks_like_float64(name, dtype, device):
    """The pre-activation is formed in float from the `dtype` values: the mask is the float64
    one of those values, and the output is grad itself or 0 (no rounding to compare)."""
    grad, x, scale, shift = sample(OP, name, device, dtype).args
    want = reference.relu_affine_backward(grad.double(), x.double(), scale.double(),
                                          shift.double())
    got = ops.relu_affine_backward(grad, x, scale, shift)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=0, atol=0)
