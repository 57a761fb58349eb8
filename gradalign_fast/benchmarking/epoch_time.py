"""`bench --epoch`: minutes per 30-epoch run of the authors' CIFAR-10 recipe, end to end, beside
their V100 figures (FGSM 9.5 min, FGSM+GradAlign 30.9 min).

Each method trains the recipe's model (the authors' PreActResNet-18, their init, SGD, cyclic lr,
batch 128) through the trainer's pieces: the data loader (CIFAR-10 with its augmentation from
--data-dir, or CIFAR-10-shaped synthetic uint8 images through the same dataset class and loader,
labelled so), the attack, the regulariser and the optimizer step. A fixed number of iterations
is timed per method (blocks of `iters` iterations after `warmup` untimed ones, the device
synchronised around each block; the methods' blocks interleaved) and extrapolated to an epoch of 50,000 images and to 30
epochs: the table says so. FGSM+GradAlign "authors'" is their formulation in plain PyTorch
(gradalign_fast.testing.authors_reference: FGSM from zero and their regulariser, one backward of
loss + regulariser).
"""
from __future__ import annotations

import contextlib
import math
import random
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..testing import authors_reference
from ..training import checkpoint, methods, optim, recipe, step
from ..training.datasets import ArrayImages, load_dataset, make_loader
from .outputs import output_path, write_json
from .step_bench import AUTHORS_FGSM_MINUTES

RECIPE = "cifar10"
AUTHORS_GRADALIGN_MINUTES = 30.9  # the authors' FGSM+GradAlign run, CIFAR-10, 30 epochs, V100
CIFAR10_TRAIN = 50_000
EPOCHS = 30
# name -> (text, the authors' V100 minutes per 30 epochs of that method, or None)
METHODS = {
    "fgsm": ("FGSM", AUTHORS_FGSM_MINUTES),
    "gradalign_authors": ("FGSM+GradAlign, authors' formulation", AUTHORS_GRADALIGN_MINUTES),
    "gradalign": ("FGSM+GradAlign exact (gradalign_fast)", AUTHORS_GRADALIGN_MINUTES),
    "ga_every8": ("  exact, every=8", None),
    "nfgsm": ("N-FGSM", None),
}
GRADALIGN = ("gradalign_authors", "gradalign", "ga_every8")  # trained with GradAlign's lr
# The CPU dry run: a few iterations of a narrow network, only to check that the table is built
# from real timings (the numbers say nothing about a GPU).
DRY_RUN = dict(model="preact_resnet18_narrow", batch_size=4, iters=8, blocks=2, warmup=1)


def synthetic_cifar10(n: int, seed: int = 0) -> ArrayImages:
    """n CIFAR-10-shaped images (uint8 noise, [n, 32, 32, 3]) with labels in 0..9."""
    rng = np.random.default_rng(seed)
    return ArrayImages(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, n))


def _authors_gradalign(eps: float, lam: float, amp_dtype=None):
    def step(model, opt, x, y):
        model.train()
        amp = (torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        with amp:
            delta, grad = authors_reference.fgsm(model, x, y, eps)
            loss = F.cross_entropy(model(x + delta), y)
            reg = authors_reference.gradalign_regularizer(model, x, y, eps, lam,
                                                          grad_clean=grad)
        opt.zero_grad(set_to_none=True)
        (loss + reg).backward()
        opt.step()
    return step


def make_step(name: str, eps: float, lam: float, amp_dtype=None):
    """step(model, opt, x, y) of METHODS[name] at eps (and GradAlign's lam)."""
    if name == "gradalign_authors":
        return _authors_gradalign(eps, lam, amp_dtype)
    method = {"fgsm": lambda: methods.FGSM(eps), "nfgsm": lambda: methods.NFGSM(eps),
              "gradalign": lambda: methods.GradAlign(eps, lam),
              "ga_every8": lambda: methods.GradAlign(eps, lam, every=8)}[name]()
    return lambda model, opt, x, y: step.train_step(method, model, opt, x, y, amp_dtype)


def _batches(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Training:
    """One method's training on the recipe: model, optimizer, step, data, iteration count."""

    def __init__(self, name, dataset, device, model_name, batch_size, amp_dtype, seed):
        self.r = recipe.recipe_for(RECIPE, "gradalign" if name in GRADALIGN else name)
        torch.manual_seed(seed)
        self.model = checkpoint.model_from_config({"dataset": "cifar10", "model": model_name,
                                                   "recipe": RECIPE}).to(device)
        self.opt = optim.build_optimizer(self.r.optimizer, self.model.parameters(),
                                         self.r.momentum, self.r.wd)
        lam = recipe.lambda_for_eps(self.r.eps * 255, self.r.lam_table)
        self.step = make_step(name, self.r.eps, lam, amp_dtype)
        loader = make_loader(dataset, batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(seed),
                             pin_memory=device.type == "cuda")
        self.batches, self.device, self.it = _batches(loader), device, 0
        self.steps_per_epoch = math.ceil(CIFAR10_TRAIN / batch_size)

    def run(self, n: int) -> float:
        """Seconds of n iterations (data loading, host-to-device copy, attack, regulariser,
        optimizer step), the device synchronised before and after."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = next(self.batches)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            lr = recipe.lr_at(self.it, self.steps_per_epoch, self.r.epochs, self.r.lr_max,
                              self.r.lr_schedule)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.step(self.model, self.opt, x, y)
            self.it += 1
        _sync(self.device)
        return time.perf_counter() - t0


def run_epoch_bench(device="cpu", data_dir=None, model=None, batch_size=None, iters=16,
                    blocks=3, warmup=2, amp_dtype=None, names=tuple(METHODS), seed=0) -> dict:
    """{"meta": ..., "rows": [...]}: per method the median (min, max over blocks) seconds per
    iteration and their extrapolation to minutes per 30 epochs of 50,000 images."""
    if "ga_every8" in names and iters % 8:
        raise ValueError(f"iters={iters}: every=8 is timed over whole cycles, give a multiple "
                         f"of 8")
    for k, v in (("iters", iters), ("blocks", blocks)):
        if not (isinstance(v, int) and v > 0):
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
    if amp_dtype == torch.float16:
        raise ValueError("bench --epoch runs float32 or bf16 autocast: float16 needs loss "
                         "scaling, which the authors' formulation here does not do")
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    device = torch.device(device)
    r = recipe.RECIPES[RECIPE]
    model, batch_size = model or r.model, batch_size or r.batch_size
    needed = batch_size * (warmup + iters * blocks)
    if data_dir is None:
        dataset = synthetic_cifar10(min(needed, CIFAR10_TRAIN), seed)
        data = ("synthetic CIFAR-10-shaped images (uint8 noise through the trainer's dataset "
                "class and loader; no augmentation): the real data was not given")
    else:
        dataset = load_dataset("cifar10", data_dir, train=True)
        data = f"CIFAR-10 from {data_dir} (random crop + flip, the recipe's)"
    steps_per_epoch = math.ceil(CIFAR10_TRAIN / batch_size)
    runs = {name: _Training(name, dataset, device, model, batch_size, amp_dtype, seed)
            for name in names}
    for t in runs.values():
        t.run(warmup)  # untimed
    times = {name: [] for name in names}
    order, shuffle = list(names), random.Random(seed).shuffle
    for _ in range(blocks):  # round-robin: a noisy machine slows every method alike
        shuffle(order)
        for name in order:
            times[name].append(runs[name].run(iters) / iters)
    rows = []
    for name in names:
        t = times[name]
        minutes = [s * steps_per_epoch * EPOCHS / 60 for s in t]
        rows.append({"method": name, "text": METHODS[name][0], "s_per_iter": t,
                     "min_30ep": statistics.median(minutes), "min_30ep_lo": min(minutes),
                     "min_30ep_hi": max(minutes), "authors_v100_min": METHODS[name][1]})
    fgsm = next((row for row in rows if row["method"] == "fgsm"), None)
    for row in rows:
        row["x_fgsm"] = row["min_30ep"] / fgsm["min_30ep"] if fgsm else None
        row["authors_x_fgsm"] = (row["authors_v100_min"] / AUTHORS_FGSM_MINUTES
                                 if row["authors_v100_min"] else None)
    meta = {"dry_run": False, "device": str(device), "model": model, "batch_size": batch_size, "iters": iters,
            "blocks": blocks, "warmup": warmup, "amp": str(amp_dtype), "data": data,
            "steps_per_epoch": steps_per_epoch, "epochs": EPOCHS,
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else "cpu")}
    return {"meta": meta, "rows": rows}


def format_table(result: dict) -> str:
    m = result["meta"]
    lines = [("DRY RUN (a few iterations of a small network: checks the table, says nothing "
              "about the recipe's speed)\n" if m["dry_run"] else "") + f"bench --epoch: the authors' CIFAR-10 recipe ({m['model']}, batch "
             f"{m['batch_size']}, SGD, cyclic lr) on {m['device_name']} ({m['device']}), amp "
             f"{m['amp']}", f"data: {m['data']}",
             f"timed: {m['blocks']} blocks of {m['iters']} iterations per method after "
             f"{m['warmup']} untimed, extrapolated to {m['steps_per_epoch']} iterations an epoch "
             f"and {m['epochs']} epochs (median [min, max] over the blocks)", "",
             f"{'method':<40} {'min/30 ep':>10} {'[min, max]':>21} {'x FGSM':>7} "
             f"{'authors V100':>13} {'authors x':>10}"]
    for r in result["rows"]:
        span = f"[{r['min_30ep_lo']:.3g}, {r['min_30ep_hi']:.3g}]"
        ratio = f"{r['x_fgsm']:.2f}" if r["x_fgsm"] is not None else "-"
        authors = f"{r['authors_v100_min']:.1f}" if r["authors_v100_min"] else "-"
        a_ratio = f"{r['authors_x_fgsm']:.2f}" if r["authors_x_fgsm"] else "-"
        lines.append(f"{r['text']:<40} {r['min_30ep']:>10.3g} {span:>21} {ratio:>7} "
                     f"{authors:>13} {a_ratio:>10}")
    lines.append("(authors: Andriushchenko & Flammarion 2020, V100, apex O1 mixed precision; "
                 "x: minutes over the same column's FGSM)")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """bench's --epoch mode and its options (bench's --device, --model, --batch-sizes, --warmup,
    --amp, --threads and --out apply too)."""
    a = parser.add_argument
    a("--epoch", action="store_true",
      help="time whole training iterations of the authors' CIFAR-10 recipe end to end, per "
           "method, extrapolated to minutes per 30 epochs beside the authors' V100 figures")
    a("--data-dir", default=None,
      help="--epoch: CIFAR-10 (cifar-10-batches-py/) here; None: synthetic CIFAR-shaped data")
    a("--iters", type=int, default=16, help="--epoch: timed iterations per block (x8)")
    a("--blocks", type=int, default=3, help="--epoch: timed blocks per method")
    a("--dry-run", action="store_true",
      help="--epoch: a few iterations of the narrow network, batch 4 (a CPU check)")


def run(args, results_dir: str) -> int:
    opts = dict(device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                data_dir=args.data_dir, iters=args.iters, blocks=args.blocks,
                warmup=args.warmup, model=args.model[0] if args.model else None,
                batch_size=args.batch_sizes[0] if args.batch_sizes else None,
                amp_dtype={"none": None, "bf16": torch.bfloat16,
                           "fp16": torch.float16}[args.amp])
    if args.dry_run:
        opts.update(DRY_RUN)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_epoch_bench(**opts)
    result["meta"]["dry_run"] = args.dry_run
    print(format_table(result))
    out = output_path(args.out, results_dir, f"epoch_{result['meta']['device']}")
    if out:
        write_json(out, result)
        print(f"wrote {out}")
    return 0
