"""Step times and a training epoch on a GPU, for benchmarks/gpu_check.sh (one JSON file).

    python3 benchmarks/gpu_steps.py steps --out steps.json   # FGSM, plain and exact GradAlign:
                                                             # fp32 / bf16 autocast, NCHW /
                                                             # channels_last, eager / CUDA graph
    python3 benchmarks/gpu_steps.py epoch --out epoch.json   # seconds per CIFAR-sized epoch
    ... --device cpu --quick                                 # the same logic, tiny, on a CPU

`steps`: PreActResNet-18 on CIFAR-shaped batches (3x32x32, batch 128), the interleaved medians
of gradalign_fast.benchmarking.step_bench.run_bench (ratios to FGSM, peak memory) for each of fp32 and
bf16 autocast, NCHW and channels_last; then FGSM and exact GradAlign captured as one CUDA graph
per step (gradalign_fast.training.cuda_graph.CapturedStep), replay time against eager.
`epoch`: FGSM and exact GradAlign training steps over synthetic CIFAR-shaped data (random
images, random labels, resident on the device, shuffled each epoch) for --n-train images;
reports seconds and the time of a 50,000-image epoch (CIFAR-10's), after one warm-up pass.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from gradalign_fast.benchmarking import step_bench
from gradalign_fast.training import methods, models
from gradalign_fast.training.step import train_step

EPS, LAM = 8 / 255, 0.2
CIFAR_TRAIN = 50_000


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(device, fn, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _method(name):
    if name == "fgsm":
        return methods.FGSM(EPS)
    return methods.GradAlign(EPS, LAM, check_finite=False)  # capturable (no host sync)


def steps(args) -> dict:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # On a CPU (a dry run of the logic): the small MNIST CNN.
    model_name = "preact_resnet18" if cuda else "mnist_cnn"
    batch = 128 if cuda else 8
    reps, warmup = (20, 3) if cuda and not args.quick else (2, 1)
    eager = []
    for amp in (None, torch.bfloat16):
        for channels_last in (False, True):
            rows = step_bench.run_bench(
                model_names=(model_name,), batch_sizes=(batch,), device=device, reps=reps,
                warmup=warmup, amp_dtype=amp,
                # under bf16 also GradAlign's precision policies (gradalign_fast.precision)
                steps=["fgsm", "gradalign_plain", "gradalign"]
                + (["ga_bf16_reg32", "ga_bf16_bn32"] if amp else []),
                channels_last=channels_last)
            for r in rows:
                r.update(amp="bf16" if amp else "fp32",
                         channels_last=channels_last)
            eager += rows
            print(f"eager {'bf16' if amp else 'fp32'} channels_last={channels_last}: "
                  + ", ".join(f"{r['step']} {r['ms']:.2f} ms" for r in rows), flush=True)
    graphs = []
    if device.type == "cuda":
        from gradalign_fast.training.cuda_graph import CapturedStep

        for amp in (None, torch.bfloat16):
            for name in ("fgsm", "gradalign"):
                model, x, y = step_bench._setup(model_name, batch, device, False)
                opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                row = {"step": name, "amp": "bf16" if amp else "fp32", "batch": batch,
                       "model": model_name}
                try:
                    captured = CapturedStep(_method(name), model, opt, x, y, amp_dtype=amp)
                    row["graph_ms"] = round(_median_ms(device, lambda: captured(x, y), reps,
                                                       warmup), 3)
                    method = _method(name)
                    row["eager_ms"] = round(_median_ms(
                        device, lambda: train_step(method, model, opt, x, y, amp),
                        reps, warmup), 3)
                    row["speedup"] = round(row["eager_ms"] / row["graph_ms"], 3)
                except Exception as e:  # report, and go on with the other variants
                    row["error"] = f"{type(e).__name__}: {e}"
                graphs.append(row)
                print(f"cuda graph {row}", flush=True)
    return {"device": step_bench.device_name(device), "model": model_name, "batch": batch,
            "eps": EPS, "lam": LAM, "eager": eager, "cuda_graph": graphs}


def epoch(args) -> dict:
    device = torch.device(args.device)
    # On a CPU (a dry run of the logic): the small MNIST CNN on MNIST-shaped data.
    model_name = "preact_resnet18" if device.type == "cuda" else "mnist_cnn"
    n = args.n_train or (10_000 if device.type == "cuda" else 64)
    batch = 128 if device.type == "cuda" else 16
    g = torch.Generator().manual_seed(0)
    shape = step_bench.input_shape(model_name)
    x_all = torch.rand(n, *shape, generator=g).to(device)
    y_all = torch.randint(0, 10, (n,), generator=g).to(device)
    out = {"device": step_bench.device_name(device), "model": model_name, "batch": batch,
           "n_train": n, "synthetic": True, "runs": []}
    for name in ("fgsm", "gradalign"):
        for amp in ((None, torch.bfloat16) if device.type == "cuda" else (None,)):
            torch.manual_seed(0)
            model = models.build_model(model_name, in_channels=shape[0]).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            method = _method(name)

            def one_pass(limit=None):
                perm = torch.randperm(n, device=device)
                steps = 0
                for i in range(0, n - batch + 1, batch):
                    idx = perm[i:i + batch]
                    train_step(method, model, opt, x_all[idx], y_all[idx], amp)
                    steps += 1
                    if limit and steps >= limit:
                        break
                return steps

            one_pass(limit=2)  # warm-up: cuDNN autotuning, allocator
            _sync(device)
            t0 = time.perf_counter()
            steps = one_pass()
            _sync(device)
            sec = time.perf_counter() - t0
            row = {"method": name, "amp": "bf16" if amp else "fp32", "steps": steps,
                   "seconds": round(sec, 3), "ms_per_step": round(1e3 * sec / steps, 3),
                   "cifar10_epoch_s": round(sec * CIFAR_TRAIN / (steps * batch), 2)}
            out["runs"].append(row)
            print(f"epoch {row}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("steps", "epoch"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="few reps (smoke test)")
    p.add_argument("--n-train", type=int, default=0,
                   help="epoch: images per timed pass (default 10,000 on CUDA, 256 on CPU)")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    result = steps(args) if args.what == "steps" else epoch(args)
    result.update(torch=torch.__version__, what=args.what)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
