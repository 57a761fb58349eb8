"""Runs every CUDA kernel of gradalign_fast on every sample of its op list, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python benchmarks/sanitizer_driver.py
    compute-sanitizer --tool racecheck python benchmarks/sanitizer_driver.py --ops cosine --dtypes float32,float64
    python benchmarks/sanitizer_driver.py --list     # the cases, without a GPU
    python benchmarks/sanitizer_driver.py --device cpu   # the same checks on the CPU kernels

--ops and --dtypes narrow the run (racecheck: only the cosine kernels use shared memory, and
its reductions are instantiated for float and double accumulators).

The samples are the tests' (gradalign_fast/testing/op_samples.py), which cover the kernels'
paths: cosine and cosine_backward with 16-byte vector loads (contiguous, channels_last,
batch-strided), scalar loads (a misaligned data pointer), the strided path (mixed layouts,
sliced views), the contiguous-copy fallback (8 merged dims), one block per sample and samples
split over blocks (partial sums + finalize), zero-norm samples and empty tensors; the attack
steps in every layout; random_delta with and without the clip on dense, strided and misaligned
x and sizes that end inside a 4-value draw and past a tile; relu_affine_backward in every
layout, 2-D to 5-D, empty. Each result is checked against the float64 reference
(gradalign_fast/testing/op_agreement.py, the harness of the tests and of `info`), so a kernel
that silently does nothing is noticed too.
"""
import argparse
import sys

import torch

import gradalign_fast as gf
from gradalign_fast.testing import op_agreement
from gradalign_fast.testing.op_samples import OPS, sample_ids

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def cases(ops, dtypes):
    """(op, dtype name, sample name) of each check, in the order run."""
    return [(op, d, name) for d in dtypes for op in ops for name in sample_ids(op)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {list(OPS)}")
    p.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {list(DTYPES)}")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="the kernels checked")
    p.add_argument("--list", action="store_true", help="print the cases and exit (no GPU needed)")
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [o for o in ops if o not in OPS] + [d for d in dtypes if d not in DTYPES]
    if bad:
        p.error(f"unknown: {bad}")
    todo = cases(ops, dtypes)
    if args.list:
        for c in todo:
            print(*c)
        print(f"{len(todo)} cases")
        return 0
    missing = [op for op in ops if not gf.ops.has_kernel(op, args.device)]
    if missing:
        p.error(f"no compiled {args.device} kernel for {missing} (compiled ops loaded: "
                f"{gf.has_ops()}, {gf.ops_error() or f'cuda_version() = {gf.cuda_version()}'})")
    torch.manual_seed(0)
    failed = []
    for d in dtypes:
        dtype = DTYPES[d]
        for op in ops:
            for name, err in op_agreement.agreement(op, op_agreement.kernel(op), args.device,
                                                    dtype):
                if not err <= op_agreement.TOL[dtype]:
                    failed.append(f"{op} {d} {name}: error {err:.3g} > "
                                  f"{op_agreement.TOL[dtype]:g}")
    if args.device == "cuda":
        torch.cuda.synchronize()
    for line in failed:
        print(f"sanitizer_driver: FAILED {line}", file=sys.stderr)
    print(f"sanitizer_driver: {len(todo)} cases ran on {args.device} ({','.join(ops)}; "
          f"{','.join(dtypes)}), {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
