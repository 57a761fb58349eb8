"""Every gradalign_fast op on every sample of its list (gradalign_fast/testing/op_samples.py),
on every device: opcheck, gradcheck (float64), agreement with the reference (same dtype, and the
harness of gradalign_fast/testing/op_agreement.py against the float64 truth), half/bfloat16
within a small multiple of plain PyTorch's own error, CPU-vs-CUDA agreement, and the fake
kernels' errors equal to the kernels'. The ops are called directly
(torch.ops.gradalign_fast.*), not through the wrappers, so a missing kernel skips rather than
falls back.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import gradalign_fast as gf
from gradalign_fast import ops
from gradalign_fast.ops import reference
from gradalign_fast.testing import op_agreement
from gradalign_fast.testing.op_agreement import TOL, run, truth
from gradalign_fast.testing.op_samples import LOW, NOT_SAMPLED, OPS, op_sample_params, sample

from conftest import DEVICES

PARAMS = op_sample_params()
# Float tolerance of each op against the reference (same inputs); 0: bit for bit. float32:
# the CPU cosine accumulates in double, the CUDA one in float, the reference in float32.
REF_TOL = {"cosine": {torch.float64: 1e-12, torch.float32: 2e-5},
           "cosine_backward": {torch.float64: 1e-12, torch.float32: 1e-6}}


def _kernel(op: str, device: str):
    """The compiled kernel of op for device, or a skip where this build has none."""
    if not ops.has_kernel(op, torch.device(device).type):
        pytest.skip(f"no compiled {op} kernel for {device}: {gf.ops_error()}")
    return op_agreement.kernel(op)


def _clones(args) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def test_every_op_has_samples():
    if not gf.has_ops():
        pytest.skip(f"compiled ops not loaded: {gf.ops_error()}")
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("gradalign_fast::")}
    assert registered == set(OPS) | set(NOT_SAMPLED), registered ^ (set(OPS) | set(NOT_SAMPLED))
    assert set(ops.TENSOR_OPS) == set(OPS)
    for op in OPS:
        names = [s.name for s in OPS[op].build("cpu", torch.float64)]
        assert names and len(names) == len(set(names)), op
        assert ops.has_kernel(op, "cpu") and callable(getattr(ops, op)), op


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, name", PARAMS)
def test_opcheck(op, name, device):
    kernel = _kernel(op, device)
    args = list(sample(op, name, device, torch.float32).args)
    for i in OPS[op].grad_args:  # exercises the autograd registration
        args[i] = args[i].detach().requires_grad_(True)
    # random draws differ between runs: leave out the checks that compare two runs
    kw = {"test_utils": ("test_schema", "test_faketensor", "test_autograd_registration")} \
        if OPS[op].random else {}
    torch.library.opcheck(kernel, tuple(args), **kw)


GRAD_PARAMS = [(op, s.name) for op in OPS if OPS[op].grad_args
               for s in OPS[op].build("cpu", torch.float64)
               if s.smooth and s.args[0].numel() <= 400]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, name", GRAD_PARAMS)
def test_gradcheck_float64(op, name, device):
    kernel = _kernel(op, device)
    args = list(sample(op, name, device).args)
    diff = OPS[op].grad_args
    for i in diff:
        args[i] = args[i].detach().requires_grad_(True)

    def first_output(*ts):  # cosine's norms carry no gradient
        full = list(args)
        for i, t in zip(diff, ts):
            full[i] = t
        out = kernel(*full)
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(first_output, tuple(args[i] for i in diff))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, name", PARAMS)
def test_matches_reference(op, name, device, dtype):
    """Values, dtype, shape, and the layout promised: an output like an input is laid out as
    empty_like(that input)."""
    kernel = _kernel(op, device)
    if OPS[op].random and torch.device(device).type != "cpu":
        pytest.skip("CUDA draws from Philox, the reference from uniform_: "
                    "test_attack_ops.py checks the CUDA clip against the reference formula")
    args = sample(op, name, device, dtype).args
    torch.manual_seed(0)
    want = run(op, OPS[op].reference, _clones(args))  # an in-place kernel writes args
    torch.manual_seed(0)
    got = run(op, kernel, args)
    tol = REF_TOL.get(op, {}).get(dtype, 0.0)
    for g, w in zip(got, want, strict=True):
        assert g.device == w.device and g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)
    like = args[1] if op == "cosine_backward" else args[0]
    if OPS[op].mutates is None and op != "cosine":  # one output, shaped like an input
        assert got[0].stride() == torch.empty_like(like).stride()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(OPS))
def test_agreement_harness_accepts_the_kernels(op, device, dtype):
    """The harness that `info` and the sanitizer driver run: every sample within TOL of the
    float64 truth (a random op: its contract)."""
    kernel = _kernel(op, device)
    errors = dict(op_agreement.agreement(op, kernel, device, dtype))
    assert set(errors) == {s.name for s in OPS[op].build("cpu", torch.float64)}
    assert max(errors.values()) <= TOL[dtype], errors


def test_agreement_harness_catches_a_wrong_op():
    """An implementation off by one rounding step, writing nothing in place or drawing from the
    wrong range fails."""
    def off(*args):
        cos, na, nb = reference.cosine(*args)
        return cos + 1e-3, na, nb

    assert max(e for _, e in op_agreement.agreement("cosine", off, "cpu", torch.float32)) > \
        TOL[torch.float32]
    errors = dict(op_agreement.agreement("attack_step_", lambda *a: None, "cpu", torch.float64))
    assert max(errors.values()) > TOL[torch.float64]
    wide = lambda x, r, *rest: reference.random_delta(x, 2 * r + 0.01, *rest)  # noqa: E731
    assert math.isinf(max(e for _, e in op_agreement.agreement("random_delta", wide, "cpu",
                                                                torch.float64)))


# Plain PyTorch's formulation of each op in the low-precision dtype itself (eager, each op
# rounded to the dtype): what PyTorch achieves, the yardstick of the kernels' error.
def _plain_cosine(a, b):
    flat = (a.shape[0], math.prod(a.shape[1:]))
    a2, b2 = a.reshape(flat), b.reshape(flat)
    return (F.cosine_similarity(a2, b2, dim=1), torch.linalg.vector_norm(a2, dim=1),
            torch.linalg.vector_norm(b2, dim=1))


def _plain_cosine_backward(grad_cos, a, b, cos, norm_a, norm_b):
    valid = (norm_a > 0) & (norm_b > 0)
    inv_ab = torch.where(valid, 1 / (norm_a * norm_b).clamp_min(1e-30), 0).to(a.dtype)
    coa = torch.where(valid, cos / (norm_a * norm_a).clamp_min(1e-30), 0).to(a.dtype)
    g = torch.where(valid, grad_cos.to(norm_a.dtype), 0).to(a.dtype)
    view = (-1,) + (1,) * (a.dim() - 1)
    return g.view(view) * (b * inv_ab.view(view) - a * coa.view(view))


PLAIN = {"cosine": _plain_cosine, "cosine_backward": _plain_cosine_backward,
         "attack_step": reference.attack_step, "attack_step_": reference.attack_step_,
         "relu_affine_backward": reference.relu_affine_backward}
LOW_PARAMS = [(op, name) for op, name in PARAMS if op in PLAIN]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, name", LOW_PARAMS)
def test_low_precision_within_pytorch_error(op, name, device, dtype):
    """Error against the float64 truth of the same rounded inputs: at most twice plain
    PyTorch's in that dtype, plus one rounding of the output."""
    kernel = _kernel(op, device)
    args = sample(op, name, device, dtype).args
    want = truth(op, args)
    plain = run(op, PLAIN[op], _clones(args))
    got = run(op, kernel, args)
    for g, p, t in zip(got, plain, want, strict=True):
        assert g.shape == t.shape and g.dtype == (torch.float32 if op == "cosine" else dtype)
        if t.numel() == 0:
            continue
        # where plain PyTorch gives NaN (F.cosine_similarity of a zero half vector), the
        # kernel must be within one rounding
        plain_err = (p.double().cpu() - t).abs().nan_to_num(nan=0.0).max().item()
        floor = torch.finfo(g.dtype).eps * t.abs().max().item()
        assert (g.double().cpu() - t).abs().max().item() <= 2 * plain_err + floor, \
            (plain_err, floor)


CUDA_TOL = {"cosine": lambda dtype, cpu: 1e-12 if dtype == torch.float64 else 2e-5,
            "cosine_backward": lambda dtype, cpu: 4 * torch.finfo(dtype).eps * (
                cpu.abs().max().item() if cpu.numel() else 0.0)}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("op, name", [(op, n) for op, n in PARAMS if not OPS[op].random])
def test_cuda_matches_cpu(op, name, dtype):
    """Same samples (values and strides) on both devices. attack steps and relu_affine: bit for
    bit (same formula, same math type); the cosine: float accumulation on CUDA, double on CPU;
    its backward: one FMA contraction apart."""
    cpu_args = sample(op, name, "cpu", dtype).args
    cuda_args = sample(op, name, "cuda", dtype).args
    want = run(op, _kernel(op, "cpu"), cpu_args)
    got = run(op, _kernel(op, "cuda"), cuda_args)
    for g, w in zip(got, want, strict=True):
        assert g.is_cuda and g.dtype == w.dtype and g.shape == w.shape and (
            g.stride() == w.stride() or g.numel() == 0)
        atol = CUDA_TOL[op](dtype, w) if op in CUDA_TOL else 0.0
        rtol = 4 * torch.finfo(dtype).eps if op == "cosine_backward" else atol
        torch.testing.assert_close(g.cpu(), w, rtol=rtol, atol=atol)


def _x():
    return torch.rand(2, 3, 4)


BAD_INPUTS = [  # (op, args builder, message fragment)
    ("cosine", lambda: (torch.randn(2, 3), torch.randn(2, 4)), "shape of `a` \\[2, 3\\]"),
    ("cosine", lambda: (torch.randn(2, 3), torch.randn(2, 3).double()), "dtype of `a`"),
    ("cosine", lambda: (torch.ones(2, 3, dtype=torch.long),) * 2, "floating-point.*got Long"),
    ("cosine", lambda: (torch.zeros(2, 3, dtype=torch.float8_e4m3fn),) * 2,
     "half or bfloat16\\), got Float8_e4m3fn"),
    ("cosine", lambda: (torch.zeros(0, 3, dtype=torch.float8_e5m2),) * 2, "got Float8_e5m2"),
    ("cosine", lambda: (torch.tensor(1.0), torch.tensor(1.0)), "batch dimension"),
    ("cosine_backward", lambda: (torch.rand(3), *(torch.rand(2, 3),) * 2, *(torch.rand(2),) * 3),
     "`grad_cos` must have shape \\[2\\]"),
    ("cosine_backward", lambda: (torch.rand(2), *(torch.rand(2, 3),) * 2,
                                 *(torch.rand(2).double(),) * 3), "must be Float"),
    ("cosine_backward", lambda: (torch.ones(2, dtype=torch.long), *(torch.rand(2, 3),) * 2,
                                 *(torch.rand(2),) * 3),
     "`grad_cos` must be a floating-point tensor .*got Long"),
    ("attack_step", lambda: (_x(), _x(), _x()[:, :2], 0.1, 0.1, 0.0, 1.0, True), "shape"),
    ("attack_step", lambda: (_x(), _x().double(), _x(), 0.1, 0.1, 0.0, 1.0, True), "dtype"),
    ("attack_step", lambda: (_x(), _x(), _x(), -0.1234567, 0.1, 0.0, 1.0, True),
     "alpha` must be >= 0, got -0.123457"),
    ("attack_step_", lambda: (_x(), _x(), _x(), 0.1, -0.1, 0.0, 1.0, True), "eps"),
    ("attack_step", lambda: (_x(), _x(), _x(), 0.1, 0.1, 1.0, 0.0, True), "lo=1 hi=0"),
    ("random_delta", lambda: (_x(), -1.0, 0.0, 1.0, True), "radius"),
    ("random_delta", lambda: (_x().long(), 1.0, 0.0, 1.0, True), "floating"),
    ("random_delta", lambda: (_x().half(), 40000.0, 0.0, 1.0, True),
     "largest Half \\(65504\\), got radius=40000"),
    ("random_delta", lambda: (_x(), 2e38, 0.0, 1.0, False), "largest Float \\(3.40282e\\+38\\)"),
    ("relu_affine_backward", lambda: (torch.rand(2, 1), torch.rand(2, 3), torch.rand(3),
                                      torch.rand(3)), "shape of `x`"),
    ("relu_affine_backward", lambda: (torch.rand(2, 3), torch.rand(2, 3), torch.rand(1),
                                      torch.rand(3)), "`scale` must have shape \\[3\\]"),
    ("relu_affine_backward", lambda: (torch.rand(2, 3), torch.rand(2, 3), torch.rand(3),
                                      torch.rand(1, 3)), "`shift` must have shape"),
    ("relu_affine_backward", lambda: (torch.rand(2, 3), torch.rand(2, 3), torch.rand(3).double(),
                                      torch.rand(3)), "dtype of `x`"),
    ("relu_affine_backward", lambda: (torch.rand(3), torch.rand(3), torch.rand(3),
                                      torch.rand(3)), "channels in dim 1"),
    ("relu_affine_backward", lambda: (torch.ones(2, 3, dtype=torch.long), torch.rand(2, 3),
                                      torch.rand(3), torch.rand(3)), "floating-point"),
]


@pytest.mark.parametrize("op, build, match", BAD_INPUTS)
def test_fake_kernel_raises_the_kernel_error(op, build, match):
    """A clear error from the kernel, and the same message from the fake kernel (opcheck and
    torch.compile users see the kernel's errors)."""
    kernel = _kernel(op, "cpu")
    args = build()
    with pytest.raises(RuntimeError, match=match) as real:
        kernel(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError) as fake:
            kernel(*fake_args)
    assert str(fake.value) == str(real.value).splitlines()[0]
