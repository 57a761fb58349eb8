"""pytest-benchmark suite: one training step of each variant of gradalign_fast.benchmarking.step_bench.STEPS.

    pytest benchmarks --benchmark-only                 # CPU: small sizes, ~20 s
    pytest benchmarks --benchmark-only --benchmark-group-by=param:case

CPU: MNIST CNN and the narrow PreActResNet-18 at batch 32, on GRADALIGN_BENCH_THREADS torch
threads (default 1: on the shared 2-core machines two threads next to other jobs made single
steps 10x slower and the suite several minutes long). CUDA (when present): the full
PreActResNet-18 at batch 128 and 512, each step followed by a synchronize (pytest-benchmark
reads wall time). The ratios to FGSM of one run are in `python -m gradalign_fast bench`.
"""
import copy
import os

import pytest
import torch

from gradalign_fast.benchmarking import step_bench as bench

torch.set_num_threads(int(os.environ.get("GRADALIGN_BENCH_THREADS", "1")))
CASES = [("cpu", "mnist_cnn", 32), ("cpu", "preact_resnet18_narrow", 32)]
if torch.cuda.is_available():
    CASES += [("cuda", "preact_resnet18", 128), ("cuda", "preact_resnet18", 512),
              ("cuda", "mnist_cnn", 512)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}-b{c[2]}")
def case(request):
    device, model_name, batch = request.param
    model, x, y = bench._setup(model_name, batch, torch.device(device), channels_last=False)
    return device, model_name, model, x, y


@pytest.mark.parametrize("variant", bench.STEPS, ids=lambda v: v.name)
def test_step(benchmark, case, variant):
    device, model_name, base, x, y = case
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step = variant.build(bench.default_eps(model_name), bench.LAM)

    def run():
        for _ in range(variant.block):  # every-k: one timed round = one full cycle of k steps
            step(model, opt, x, y)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(steps_per_round=variant.block, model=model_name)
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
