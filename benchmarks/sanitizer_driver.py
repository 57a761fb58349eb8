"""Runs every CUDA kernel of gradalign_fast once per code path, small, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python benchmarks/sanitizer_driver.py
    compute-sanitizer --tool racecheck python benchmarks/sanitizer_driver.py --ops cosine --dtypes float32,float64
    python benchmarks/sanitizer_driver.py --list     # the cases, without a GPU

--ops and --dtypes narrow the run (racecheck: only the cosine kernels use shared memory, and
its reductions are instantiated for float and double accumulators).

Paths covered, per dtype (float, double, half, bfloat16): cosine and cosine_backward with
16-byte vector loads (contiguous, channels_last, batch-sliced), scalar loads (misaligned data
pointer), the strided path (mixed layouts, a strided slice), the contiguous-copy fallback
(8-D permuted view), one block per sample, samples split over blocks (partial sums + finalize),
zero-norm samples and empty tensors; attack_step / attack_step_ (contiguous, channels_last,
strided, empty); random_delta with and without the clip, on aligned and misaligned x, dense and
strided x, and sizes that end inside a 4-element pack and inside a tile; relu_affine_backward
(every layout, 2-D to 5-D, empty). Checks the results
against the CPU kernels loosely (the tests do it exactly) so a kernel that silently does
nothing is noticed too.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradalign_fast as gf  # noqa: E402

OPS = torch.ops.gradalign_fast
DEV = torch.device("cuda")


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values at a data pointer one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def layouts(t: torch.Tensor) -> dict:
    out = {"contiguous": t, "misaligned": misaligned(t),
           "batch_sliced": torch.stack([t, t], 1).flatten(0, 1)[::2]}
    if t.dim() == 4:
        out["channels_last"] = t.contiguous(memory_format=torch.channels_last)
    if t.dim() >= 2:
        out["slice"] = torch.stack([t, t], -1).flatten(-2)[..., ::2]
        out["transposed"] = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return out


def close(got, want, tol, what):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol * max(1.0, want.abs().max().item() if want.numel() else 0.0), (what, err)


def check_cosine(dtype, shape):
    tol = 1e-9 if dtype == torch.float64 else 2e-2
    a = torch.randn(shape, dtype=torch.float64).to(dtype)
    b = torch.randn(shape, dtype=torch.float64).to(dtype)
    a[0] = 0  # a zero-norm sample
    want = OPS.cosine(a, b)
    la, lb = layouts(a.to(DEV)), layouts(b.to(DEV))
    pairs = dict((k, (la[k], lb[k])) for k in la)
    pairs["mixed"] = (la["contiguous"], lb["transposed" if "transposed" in lb else "contiguous"])
    for name, (x, y) in pairs.items():
        got = OPS.cosine(x, y)
        for g, w in zip(got, want):
            close(g, w, tol, f"cosine {dtype} {shape} {name}")
        grad = OPS.cosine_backward(torch.ones_like(got[0]), x, y, *got)
        want_b = OPS.cosine_backward(torch.ones_like(want[0]), a, b, *want)
        close(grad, want_b, tol, f"cosine_backward {dtype} {shape} {name}")


def check_attack(dtype, shape):
    x = torch.rand(shape).to(dtype)
    d = ((torch.rand(shape) - 0.5) * 0.1).to(dtype)
    g = torch.randn(shape).to(dtype)
    want = OPS.attack_step(x, d, g, 0.01, 0.03, 0.0, 1.0, True)
    lx, ld, lg = layouts(x.to(DEV)), layouts(d.to(DEV)), layouts(g.to(DEV))
    for name in lx:
        got = OPS.attack_step(lx[name], ld[name], lg[name], 0.01, 0.03, 0.0, 1.0, True)
        close(got, want, 0.0, f"attack_step {dtype} {shape} {name}")
        inplace = ld[name].clone()
        OPS.attack_step_(lx[name], inplace, lg[name], 0.01, 0.03, 0.0, 1.0, True)
        close(inplace, want, 0.0, f"attack_step_ {dtype} {shape} {name}")


def check_relu_affine(dtype, shape):
    x, g = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    a, b = (torch.rand(shape[1]) - 0.3).to(dtype), torch.randn(shape[1]).to(dtype)
    want = OPS.relu_affine_backward(g, x, a, b)
    lx, lg = layouts(x.to(DEV)), layouts(g.to(DEV))
    for name in lx:
        got = OPS.relu_affine_backward(lg[name], lx[name], a.to(DEV), b.to(DEV))
        close(got, want, 0.0, f"relu_affine_backward {dtype} {shape} {name}")


def check_random(dtype, shape):
    x = torch.rand(shape, device=DEV).to(dtype)
    for name, lx in layouts(x).items():
        for clip in (False, True):
            r = OPS.random_delta(lx, 0.25, 0.0, 1.0, clip, None)
            assert r.shape == lx.shape and torch.isfinite(r).all(), (name, clip)
            assert r.abs().max().item() <= 0.25 * 1.01, (dtype, shape, name, clip)


DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
COSINE_SHAPES = [(3, 3, 5, 7), (2, 17), (4, 1), (2, 3, 64, 64), (1, 3, 224, 224)]
ATTACK_SHAPES = [(3, 3, 5, 7), (2, 17), (1, 3, 40, 40)]
RANDOM_SHAPES = [(1,), (5,), (3, 3, 5, 7), (4097,), (2, 3, 50, 50)]
RELU_SHAPES = [(3, 3, 5, 7), (2, 17), (2, 16, 33, 31), (2, 3, 2, 3, 5)]
OPS_ALL = ("cosine", "attack_step", "random_delta", "relu_affine_backward", "empty")


def cases(ops, dtypes):
    """(op, dtype name, shape) of each check, in the order run."""
    out = []
    for name in dtypes:
        if "cosine" in ops:
            out += [("cosine", name, s) for s in COSINE_SHAPES] + [("cosine_8d", name, None)]
        if "attack_step" in ops:
            out += [("attack_step", name, s) for s in ATTACK_SHAPES]
        if "random_delta" in ops:
            out += [("random_delta", name, s) for s in RANDOM_SHAPES]
        if "relu_affine_backward" in ops:
            out += [("relu_affine_backward", name, s) for s in RELU_SHAPES]
    if "empty" in ops:
        out.append(("empty", "float32", None))
    return out


def check_cosine_8d(dtype):
    """More merged dims than the kernels take: the contiguous-copy fallback."""
    p = torch.randn((2,) + (2, 3) * 4, device=DEV).to(dtype)
    q = torch.randn((2,) + (3, 2) * 4, device=DEV).to(dtype).permute(0, *range(8, 0, -1))
    assert p.shape == q.shape
    cos, na, nb = OPS.cosine(p, q)
    OPS.cosine_backward(torch.ones_like(cos), p, q, cos, na, nb)


def check_empty():
    for shape in [(0, 3), (2, 0), (2, 3, 0)]:
        e = torch.empty(shape, device=DEV)
        cos, na, nb = OPS.cosine(e, e)
        OPS.cosine_backward(cos, e, e, cos, na, nb)
        OPS.attack_step(e, e, e, 0.1, 0.1, 0.0, 1.0, True)
        OPS.attack_step_(e, e.clone(), e, 0.1, 0.1, 0.0, 1.0, True)
        OPS.random_delta(e, 0.1, 0.0, 1.0, True, None)
        if len(shape) >= 2:
            c = torch.zeros(shape[1], device=DEV)
            OPS.relu_affine_backward(e, e, c, c)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default=",".join(OPS_ALL), help=f"comma-separated, of {OPS_ALL}")
    p.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {list(DTYPES)}")
    p.add_argument("--list", action="store_true", help="print the cases and exit (no GPU needed)")
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [o for o in ops if o not in OPS_ALL] + [d for d in dtypes if d not in DTYPES]
    if bad:
        p.error(f"unknown: {bad}")
    todo = cases(ops, dtypes)
    if args.list:
        for c in todo:
            print(*c)
        print(f"{len(todo)} cases")
        return
    assert gf.has_cuda_ops(), f"CUDA kernels not compiled in: {gf.ops_error()}"
    torch.manual_seed(0)
    run = {"cosine": check_cosine, "attack_step": check_attack, "random_delta": check_random,
           "relu_affine_backward": check_relu_affine}
    for op, name, shape in todo:
        if op == "cosine_8d":
            check_cosine_8d(DTYPES[name])
        elif op == "empty":
            check_empty()
        else:
            run[op](DTYPES[name], shape)
    torch.cuda.synchronize()
    print(f"sanitizer_driver: {len(todo)} cases ran ({','.join(ops)}; {','.join(dtypes)})")


if __name__ == "__main__":
    main()
