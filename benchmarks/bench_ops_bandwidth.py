"""Achieved memory bandwidth of the gradalign_fast ops, against the device's copy bandwidth.

    python benchmarks/bench_ops_bandwidth.py --out bench.json            # CUDA
    python benchmarks/bench_ops_bandwidth.py --device cpu --quick --out /tmp/x.json

Each op runs on CIFAR-sized gradients (B in 128, 256, 512; 3x32x32) and an ImageNet-sized
batch (B=64; 3x224x224), in float32 and bfloat16, beside its pure-PyTorch reference
(gradalign_fast.ops.reference: the unfused ops it replaces) on the same inputs and timer, so a
kernel slower than what it fuses shows as "x ref" > 1. Bytes counted: what the op must read plus what
it writes (the [B] vectors included). On CUDA the time of one call is the median over many
reps of CUDA-event pairs, queued behind a sleep kernel so the events time the GPU, not the
launch; the inputs rotate over enough copies to exceed twice the L2 cache. The copy bandwidth
is a large device-to-device copy (read + write) timed in the same run. On CPU: time.perf_counter.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch

import gradalign_fast as gf
from gradalign_fast import ops
from gradalign_fast.ops import reference

CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)


# ----------------------------------------------------------------------------- the ops
def _op_table(dtype, device):
    """name -> (make_inputs(shape) -> tuple, call(*inputs), bytes(shape), reference call)."""
    es = torch.tensor([], dtype=dtype).element_size()
    acc = 8 if dtype == torch.float64 else 4

    def n(shape):
        return math.prod(shape)

    def pair(shape):
        return torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype,
                                                                          device=device)

    def attack(shape):
        x = torch.rand(shape, dtype=dtype, device=device)
        return x, torch.zeros_like(x), torch.randn_like(x)

    def bwd_inputs(shape):
        a, b = pair(shape)
        cos, na, nb = ops.cosine(a, b)
        return torch.ones_like(cos), a, b, cos, na, nb

    def step(f, x, d, g):
        return f(x, d, g, 2 / 255, 8 / 255, 0.0, 1.0, True)

    def delta(f, clip, radius):
        return lambda x: f(x, radius, 0.0, 1.0, clip, None)

    def image(s):
        return (torch.rand(s, dtype=dtype, device=device),)

    return {
        "cosine_fwd": (pair, ops.cosine, lambda s: 2 * n(s) * es + 3 * s[0] * acc,
                       reference.cosine),
        "cosine_bwd": (bwd_inputs, ops.cosine_backward,
                       lambda s: 3 * n(s) * es + 4 * s[0] * acc, reference.cosine_backward),
        "attack_step": (attack, lambda *t: step(ops.attack_step, *t), lambda s: 4 * n(s) * es,
                        lambda *t: step(reference.attack_step, *t)),
        "attack_step_": (attack, lambda *t: step(ops.attack_step_, *t), lambda s: 4 * n(s) * es,
                         lambda x, d, g: d.copy_(step(reference.attack_step, x, d, g))),
        "random_delta": (image, delta(ops.random_delta, True, 8 / 255), lambda s: 2 * n(s) * es,
                         delta(reference.random_delta, True, 8 / 255)),
        "random_delta_noclip": (image, delta(ops.random_delta, False, 16 / 255),
                                lambda s: n(s) * es,
                                delta(reference.random_delta, False, 16 / 255)),
    }


# ----------------------------------------------------------------------------- timing
def _l2_bytes(device) -> int:
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))


def _time_cuda(fn, sets, reps, warmup) -> tuple[float, float]:
    """(median GPU seconds per call, median host seconds per call incl. launch and sync)."""
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda._sleep(200_000_000)  # ~0.1 s: the launches below queue up behind it
    for i in range(reps):
        starts[i].record()
        fn(*sets[i % len(sets)])
        ends[i].record()
    torch.cuda.synchronize()
    gpu = statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3
    host = []
    for i in range(min(reps, 50)):
        t0 = time.perf_counter()
        fn(*sets[i % len(sets)])
        torch.cuda.synchronize()
        host.append(time.perf_counter() - t0)
    return gpu, statistics.median(host)


def _time_cpu(fn, sets, reps, warmup) -> tuple[float, float]:
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    ts = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(*sets[i % len(sets)])
        ts.append(time.perf_counter() - t0)
    t = statistics.median(ts)
    return t, t


def copy_bandwidth(device, nbytes: int, reps: int) -> float:
    """Bytes per second of dst.copy_(src), counting the read and the write."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timer = _time_cuda if device.type == "cuda" else _time_cpu
    t, _ = timer(lambda: dst.copy_(src), [()], reps, 2)
    return 2 * src.numel() * 4 / t


# ----------------------------------------------------------------------------- main
def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not gf.has_cuda_ops():
            print(f"WARNING: CUDA kernels not compiled in ({gf.ops_error()}); timing the "
                  "fallback", file=sys.stderr)
        torch.backends.cuda.matmul.allow_tf32 = False
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    quick = args.quick
    batches = [128] if quick else [128, 256, 512]
    imagenet_b = 2 if quick else 64
    dtypes = [torch.float32, torch.bfloat16]
    reps = args.reps or (5 if quick else 200)
    warmup = 1 if quick else 10
    l2 = _l2_bytes(device)
    copy_bytes = (64 << 20) if quick else (1 << 30)
    copy_bw = copy_bandwidth(device, copy_bytes, reps=max(3, reps // 10))
    shapes = [(b,) + CIFAR for b in batches] + [(imagenet_b,) + IMAGENET]

    rows = []
    for dtype in dtypes:
        for op, (make, call, nbytes, ref) in _op_table(dtype, device).items():
            if args.ops and op not in args.ops:
                continue
            for shape in shapes:
                bytes_call = nbytes(shape)
                n_sets = 1 if l2 == 0 else min(256, max(2, math.ceil(2 * l2 / bytes_call)))
                sets = [make(shape) for _ in range(n_sets)]
                timer = _time_cuda if device.type == "cuda" else _time_cpu
                t, host = timer(call, sets, reps, warmup)
                t_ref, _ = timer(ref, sets, reps, warmup)
                bw = bytes_call / t
                rows.append({
                    "op": op, "dtype": str(dtype).replace("torch.", ""), "shape": list(shape),
                    "bytes": bytes_call, "time_us": t * 1e6, "host_us": host * 1e6,
                    "GBps": bw / 1e9, "pct_copy": 100 * bw / copy_bw, "input_sets": n_sets,
                    "ref_us": t_ref * 1e6, "x_ref": t / t_ref,
                })
                del sets
    return {
        "device": name, "device_type": device.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "compiled_ops": gf.has_ops(),
        "cuda_ops": gf.has_cuda_ops(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "copy_GBps": copy_bw / 1e9, "copy_bytes": copy_bytes, "l2_bytes": l2, "reps": reps,
        "quick": quick, "rows": rows,
    }


def print_table(res: dict) -> None:
    print(f"# {res['device']} | torch {res['torch']} (CUDA {res['cuda']}) | {res['date']}")
    print(f"# copy bandwidth (read+write): {res['copy_GBps']:.1f} GB/s; "
          f"compiled ops: {res['compiled_ops']}, CUDA kernels: {res['cuda_ops']}")
    head = f"{'op':<20} {'dtype':<9} {'shape':<18} {'MB':>8} {'time us':>10} {'host us':>10} " \
           f"{'GB/s':>8} {'% copy':>7} {'ref us':>10} {'x ref':>6}"
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['op']:<20} {r['dtype']:<9} {shape:<18} {r['bytes'] / 1e6:>8.2f} "
              f"{r['time_us']:>10.1f} {r['host_us']:>10.1f} {r['GBps']:>8.1f} "
              f"{r['pct_copy']:>6.1f}% {r['ref_us']:>10.1f} {r['x_ref']:>6.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="one CIFAR batch, few reps (smoke test)")
    p.add_argument("--reps", type=int, default=0, help="timed calls per case (default 200)")
    p.add_argument("--ops", nargs="*", help="only these ops")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    res = run(args)
    print_table(res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
