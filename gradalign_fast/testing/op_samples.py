"""Sample inputs of every gradalign_fast op, one list per op (pytorch/extension-cpp's
`sample_inputs`, torchvision's `generate_opcheck_tests`): the one list behind the op tests
(tests/test_op_contracts.py: opcheck, gradcheck, reference and CPU-vs-CUDA agreement), the
self-check of `python -m gradalign_fast info` and benchmarks/sanitizer_driver.py, through the
agreement harness of op_agreement.py. A new op gets an entry in OPS, or
tests/test_op_contracts.py::test_every_op_has_samples fails.

The samples cover the kernels' code paths: awkward shapes (batch 1, odd sizes, one element,
empty batches and samples), layouts (channels_last, batch-strided, transposed, sliced, mixed,
8 merged dims, a data pointer off the 16-byte vector alignment), zero-norm samples, special
gradient values (+-0, NaN) and, for the cosine, samples large enough to be split over several
CUDA blocks.

Every sample is built from float64 values drawn on the CPU with a fixed seed, then converted
to the requested device and dtype and only then given its layout, so that a CUDA sample has the
same values and strides as the CPU one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..ops import reference
from ..ops._checks import cosine_acc_dtype
from .layouts import layouts

LOW = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Sample:
    name: str
    args: tuple
    smooth: bool = True  # the op is differentiable at these inputs (gradcheck applies)


@dataclass(frozen=True)
class OpSpec:
    """build(device, dtype) -> [Sample]; reference(*args) -> the expected result(s)
    (reference.<op>, with the op's schema).

    grad_args: the args gradcheck differentiates (float64); () for an op without autograd.
    mutates: index of the arg an in-place op writes (its result is that arg).
    random: outputs are random draws (opcheck leaves out the checks that compare two runs).
    """

    build: Callable[[torch.device, torch.dtype], list[Sample]]
    reference: Callable
    grad_args: tuple[int, ...] = ()
    mutates: int | None = None
    random: bool = False


# --------------------------------------------------------------------------- layouts
def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values at a data pointer one element past the allocation's start (off the 16-byte
    alignment of the CUDA kernels' vector loads)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _reversed_dims(t: torch.Tensor) -> torch.Tensor:
    """t with its inner dims stored in reverse order: every inner dim is its own merged dim
    (8 of them for a 9-D t, more than the CUDA kernels' kMaxDims = 6)."""
    perm = (0, *range(t.dim() - 1, 0, -1))
    return t.permute(perm).contiguous().permute(perm)


def _put(t: torch.Tensor, device, dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype)


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- cosine
def _cosine_pair(shape, seed=0):
    a = _randn(shape, seed)
    b = 0.6 * a + 0.8 * _randn(shape, seed + 1)  # correlated, as gradients at nearby points
    return a, b


def _cosine_logical() -> list[tuple[str, torch.Tensor, torch.Tensor, str, bool]]:
    """(name, a, b, layout, smooth) in float64 on the CPU; layout names a key of layouts() or
    a special case handled by _cosine_layout."""
    out = []
    for name, shape in [("batch1", (1, 3, 5, 5)), ("odd", (7, 3, 5, 5)), ("flat", (5, 17)),
                        ("one_element", (3, 1)), ("large", (2, 3, 32, 32)),
                        ("split", (2, 3, 64, 64)), ("split_batch1", (1, 3, 224, 224))]:
        out.append((name, *_cosine_pair(shape), "contiguous", True))
    out.append(("misaligned", *_cosine_pair((3, 3, 5, 7), seed=12), "misaligned", True))
    a, b = _cosine_pair((4, 2, 3, 7), seed=2)
    for lay in ("channels_last", "batch_strided", "transposed", "sliced"):
        out.append((lay, a, b, lay, True))
    out.append(("mixed", *_cosine_pair((3, 4, 5, 6), seed=4), "mixed", True))
    out.append(("mixed_slice", *_cosine_pair((3, 4, 5, 6), seed=6), "mixed_slice", True))
    out.append(("eight_dims", *_cosine_pair((2, 2, 3, 2, 3, 2, 3, 2, 3), seed=8), "eight_dims",
                True))
    a, b = _cosine_pair((6, 3, 4, 4), seed=10)
    a[1] = 0
    b[2] = 0
    a[3] = 0
    b[3] = 0
    out.append(("zero_norms", a, b, "contiguous", False))  # cos is discontinuous there
    z = torch.zeros(4, 3, 8, 8, dtype=torch.float64)
    out.append(("all_zero", z, z.clone(), "contiguous", False))
    for name, shape in [("empty_batch", (0, 3, 4)), ("empty_samples", (3, 0)),
                        ("empty_samples_4d", (2, 3, 0, 4))]:
        out.append((name, *_cosine_pair(shape), "contiguous", False))
    return out


def _cosine_layout(a: torch.Tensor, b: torch.Tensor, lay: str):
    if lay == "mixed":
        return a, b.contiguous(memory_format=torch.channels_last)
    if lay == "mixed_slice":
        return a[:, 1:, :, ::3], b.transpose(2, 3).contiguous().transpose(2, 3)[:, 1:, :, ::3]
    if lay == "eight_dims":
        return a, _reversed_dims(b)
    if lay == "misaligned":
        return _misaligned(a), _misaligned(b)
    return layouts(a)[lay], layouts(b)[lay]


def cosine_samples(device="cpu", dtype=torch.float64) -> list[Sample]:
    return [Sample(name, _cosine_layout(_put(a, device, dtype), _put(b, device, dtype), lay),
                   smooth)
            for name, a, b, lay, smooth in _cosine_logical()]


def cosine_backward_samples(device="cpu", dtype=torch.float64) -> list[Sample]:
    """(grad_cos, a, b, cos, norm_a, norm_b) for every cosine sample, the [B] vectors from the
    float64 reference of the (rounded) inputs in the accumulation dtype; plus a half grad_cos
    (converted by the op)."""
    acc = cosine_acc_dtype(dtype)
    out = []
    for s in cosine_samples(device, dtype):
        a, b = s.args
        vecs = [v.to(acc) for v in reference.cosine(a.double(), b.double())]
        g = _put(_randn(a.shape[0], seed=20), device, acc)
        out.append(Sample(s.name, (g, a, b, *vecs), s.smooth))
    g, a, b, *vecs = out[1].args
    out.append(Sample("half_grad_cos", (g.half(), a, b, *vecs)))
    return out


# --------------------------------------------------------------------------- attack steps
ATTACK_CASES = {  # alpha, eps, lo, hi, project
    "fgsm": (0.3, 0.3, 0.0, 1.0, True),
    "pgd": (0.125, 0.1, 0.0, 1.0, True),
    "nfgsm": (0.1, 0.1, 0.0, 1.0, False),  # N-FGSM: no eps-ball
    "no_box": (0.05, 0.1, -math.inf, math.inf, True),
    "eps0": (0.0, 0.0, 0.0, 1.0, True),
}


def _attack_logical(shape, seed=0):
    """x with exact box edges (as in MNIST), delta in [-0.2, 0.2], grad with exact zeros, -0.0
    and NaN elements (sign = 0: no step)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    delta = (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 0.4
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    x.view(-1)[::7] = 0.0
    x.view(-1)[1::11] = 1.0
    grad.view(-1)[::5] = 0.0
    grad.view(-1)[2::17] = -0.0
    grad.view(-1)[3::13] = math.nan
    return x, delta, grad


def _attack_samples(device, dtype, inplace: bool) -> list[Sample]:
    def put(ts, lay="contiguous"):
        return [layouts(_put(t, device, dtype))[lay] for t in ts]

    out = []
    for (name, shape), case in zip([("batch1", (1, 1, 28, 28)), ("odd", (7, 3, 5, 5)),
                                    ("flat", (5, 17)), ("one_element", (3, 1)),
                                    ("small", (2, 3, 4, 4))], ATTACK_CASES):
        out.append((f"{name}_{case}", put(_attack_logical(shape)), ATTACK_CASES[case]))
    logical = _attack_logical((4, 2, 3, 7), seed=1)
    for lay in ("channels_last", "batch_strided", "transposed", "sliced"):
        out.append((lay, put(logical, lay), ATTACK_CASES["pgd"]))
    x, d, g = _attack_logical((3, 3, 6, 5), seed=2)
    out.append(("mixed", [put([x], "channels_last")[0], put([d], "transposed")[0],
                          put([g], "batch_strided")[0]], ATTACK_CASES["pgd"]))
    out.append(("large", put(_attack_logical((2, 3, 32, 32), seed=3)), ATTACK_CASES["fgsm"]))
    out.append(("misaligned", [_misaligned(t) for t in put(_attack_logical((3, 17), seed=4))],
                ATTACK_CASES["pgd"]))
    for name, shape in [("empty_batch", (0, 3)), ("empty_samples", (2, 0, 4))]:
        out.append((name, put(_attack_logical(shape)), ATTACK_CASES["pgd"]))
    if inplace:  # attack_step_'s schema: the mutated delta (a fresh tensor) first
        return [Sample(name, (d.clone(), x, g, *case), smooth=False)
                for name, (x, d, g), case in out]
    return [Sample(name, (x, d, g, *case), smooth=False) for name, (x, d, g), case in out]


def attack_step_samples(device="cpu", dtype=torch.float64) -> list[Sample]:
    return _attack_samples(device, dtype, inplace=False)


def attack_step_inplace_samples(device="cpu", dtype=torch.float64) -> list[Sample]:
    """(delta, x, grad, ...): attack_step's samples, delta first and a fresh tensor of its
    layout (the op writes it)."""
    return _attack_samples(device, dtype, inplace=True)


def random_delta_samples(device="cpu", dtype=torch.float64) -> list[Sample]:
    """(x, radius, lo, hi, clip_to_box): every layout, with and without the box clip."""
    out = []
    x = _put(torch.rand((4, 2, 3, 7), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64) * 1.2 - 0.1, device, dtype)
    for lay, t in layouts(x).items():
        out.append(Sample(f"{lay}_clip", (t, 0.25, 0.0, 1.0, True), smooth=False))
    for name, shape, radius, clip in [("batch1", (1, 1, 28, 28), 0.3, False),
                                      ("odd", (7, 3, 5, 5), 0.1, True), ("flat", (5, 17), 0.5,
                                                                         False),
                                      ("radius0", (3, 4), 0.0, True),
                                      ("empty_batch", (0, 3), 0.1, True),
                                      # sizes ending inside a 4-value draw and past a tile
                                      ("one", (1,), 0.2, False), ("five", (5,), 0.2, True),
                                      ("tile_plus_one", (4097,), 0.2, False)]:
        t = _put(torch.rand(shape, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64), device, dtype)
        out.append(Sample(name, (t, radius, 0.0, 1.0, clip), smooth=False))
    t = _misaligned(_put(torch.rand((3, 17), generator=torch.Generator().manual_seed(2),
                                    dtype=torch.float64), device, dtype))
    out.append(Sample("misaligned", (t, 0.3, 0.0, 1.0, True), smooth=False))
    return out


# --------------------------------------------------------------------------- relu_affine
def _relu_affine_logical(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    c = shape[1]
    scale = torch.rand(c, generator=g, dtype=torch.float64) - 0.3
    shift = torch.randn(c, generator=g, dtype=torch.float64)
    if c > 1:
        scale[0] = 0.0  # a dead channel: the mask is then shift > 0 everywhere
    return grad, x, scale, shift


def relu_affine_backward_samples(device="cpu", dtype=torch.float64) -> list[Sample]:
    """(grad, x, scale, shift); grad and x in one layout, the [C] vectors contiguous."""
    def put(ts, lay="contiguous"):
        grad, x, scale, shift = (_put(t, device, dtype) for t in ts)
        return layouts(grad)[lay], layouts(x)[lay], scale, shift

    out = []
    for name, shape in [("batch1", (1, 1, 28, 28)), ("odd", (7, 3, 5, 5)), ("flat", (5, 17)),
                        ("five_dims", (3, 4, 2, 3, 5)), ("large", (2, 16, 33, 31))]:
        out.append(Sample(name, put(_relu_affine_logical(shape))))
    logical = _relu_affine_logical((4, 6, 5, 5), seed=1)
    for lay in ("channels_last", "batch_strided", "transposed", "sliced"):
        out.append(Sample(lay, put(logical, lay)))
    grad, x, scale, shift = put(_relu_affine_logical((3, 5, 7), seed=2))
    out.append(Sample("misaligned", (_misaligned(grad), _misaligned(x), scale, shift)))
    out.append(Sample("empty_batch", put(_relu_affine_logical((0, 3, 4, 4)))))
    return out


OPS: dict[str, OpSpec] = {
    "cosine": OpSpec(cosine_samples, reference.cosine, grad_args=(0, 1)),
    "cosine_backward": OpSpec(cosine_backward_samples, reference.cosine_backward),
    "attack_step": OpSpec(attack_step_samples, reference.attack_step),
    "attack_step_": OpSpec(attack_step_inplace_samples, reference.attack_step_, mutates=0),
    "random_delta": OpSpec(random_delta_samples, reference.random_delta, random=True),
    "relu_affine_backward": OpSpec(relu_affine_backward_samples, reference.relu_affine_backward,
                                   grad_args=(0,)),
}
# Registered in the namespace but not sampled: it takes no tensors (one implementation for
# every backend) and is tested by tests/test_extension.py.
NOT_SAMPLED = {"_cuda_version": "no tensor arguments: the build's CUDA version"}


def sample_ids(op: str) -> list[str]:
    """The names of op's samples (built once on the CPU), for parametrisation ids."""
    return [s.name for s in OPS[op].build("cpu", torch.float64)]


def sample(op: str, name: str, device="cpu", dtype=torch.float64) -> Sample:
    """Sample `name` of op, freshly built on device in dtype."""
    return next(s for s in OPS[op].build(device, dtype) if s.name == name)


def op_sample_params() -> list[tuple[str, str]]:
    """(op, sample name) for every sample of every op, for pytest.mark.parametrize."""
    return [(op, name) for op in OPS for name in sample_ids(op)]
