"""Step time and peak memory of every training method: FGSM, FGSM-RS, N-FGSM, PGD-10,
FGSM+GradAlign (plain, exact, approximate, adaptive), ELLE, ELLE-A, CURE and LLR.

`run_bench(...) -> list[dict]` measures every step variant of STEPS on one model and batch
size in ONE interleaved run (round-robin over the variants, so that a noisy machine slows
them alike; the order shuffled each round), and reports medians and ratios to FGSM; `format_table(rows)` prints them.
Used by `python -m gradalign_fast bench`, the demo command and benchmarks/. The plain
formulation ("gradalign_plain") is the authors' step as transcribed in
gradalign_fast.testing.authors_reference, with no gradalign_fast op or layer in it.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import datetime
import platform
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .. import precision
from ..testing import authors_reference
from ..training import methods, models, step
from .native_log import profiler_log_filtered

AUTHORS_FGSM_MINUTES = 9.5  # the authors' FGSM training run on CIFAR-10 (PreActResNet-18)
LAM = 0.2  # GradAlign's lambda for eps = 8/255 in the paper (it does not change the cost)


@dataclass(frozen=True)
class Variant:
    """One training-step variant: `build(eps, lam)` -> step(model, opt, x, y)."""

    name: str
    text: str
    build: Callable
    block: int = 1  # steps per timed sample (k for every-k: one sample = one full cycle)
    # in the default set; the precision policies are not (bf16 is emulated, much slower, on a
    # CPU without bf16 instructions): name them in `steps` (benchmarks/gpu_check.sh does)
    default: bool = True


def _method(cls, policy: str | None = None, **kw):
    """A train_step of cls(eps, [lam,] **kw); `policy`: a precision policy of its own
    (gradalign_fast.precision.POLICIES) instead of the bench's --amp."""
    pol = precision.policy(policy) if policy else None
    if pol is not None and pol.reg_precision != "autocast":
        kw["precision"] = pol.reg_precision

    def build(eps, lam):
        method = cls(eps, lam, **kw) if issubclass(cls, methods.GradAlign) else cls(eps, **kw)
        if pol is None:
            return lambda model, opt, x, y: step.train_step(method, model, opt, x, y)
        scaler = torch.amp.GradScaler("cuda" if torch.cuda.is_available() else "cpu") \
            if pol.amp == "fp16" else None
        return lambda model, opt, x, y: step.train_step(method, model, opt, x, y,
                                                           pol.amp_dtype, scaler)
    return build


def _plain(eps, lam):
    return lambda model, opt, x, y: authors_reference.gradalign_step(model, opt, x, y, eps, lam)


STEPS = [
    Variant("fgsm", "FGSM", _method(methods.FGSM)),
    Variant("fgsm_rs", "FGSM-RS", _method(methods.FGSMRS)),
    Variant("nfgsm", "N-FGSM", _method(methods.NFGSM)),
    Variant("pgd10", "PGD-10", _method(methods.PGD, steps=10)),
    Variant("gradalign_plain", "FGSM+GradAlign, plain PyTorch (authors')", _plain),
    Variant("gradalign", "FGSM+GradAlign exact (gradalign_fast)", _method(methods.GradAlign)),
    Variant("gradalign_keep", "  exact, low_memory=False",
            _method(methods.GradAlign, low_memory=False)),
    Variant("gradalign_torch2nd", "  exact, PyTorch's 2nd derivatives",
            _method(methods.GradAlign, fast_layers=False)),
    Variant("ga_fraction0.25", "  approx: fraction=0.25", _method(methods.GradAlign,
                                                                  fraction=0.25)),
    Variant("ga_fraction0.2", "  approx: fraction=0.2", _method(methods.GradAlign,
                                                                fraction=0.2)),
    Variant("ga_every4", "  approx: every=4", _method(methods.GradAlign, every=4), block=4),
    Variant("ga_linearity", "  approx: mode='linearity', fraction=0.25",
            _method(methods.GradAlign, mode="linearity", fraction=0.25)),
    # gradalign_adaptive's two costs (a run pays the second on its reg_share of the steps):
    # threshold -1 never fires (cos < -1), threshold 1 always does (cos < 1).
    Variant("ga_adaptive_off", "  adaptive: probe only (16 samples)",
            _method(methods.GradAlignAdaptive, rule="threshold", threshold=-1.0)),
    Variant("ga_adaptive_on", "  adaptive: probe + exact regulariser",
            _method(methods.GradAlignAdaptive, rule="threshold", threshold=1.0)),
    Variant("elle", "FGSM+ELLE", _method(methods.ELLE)),
    # ELLE-A while lambda = 0 (before its first trigger; after it, lambda > 0 and a step
    # costs an ELLE step): lambda_max 0 keeps it there
    Variant("elle_a_off", "FGSM+ELLE-A while lambda = 0 (error only)",
            _method(methods.ELLEA, lam=0.0)),
    Variant("cure", "FGSM+CURE", _method(methods.CURE, lam=LAM)),
    Variant("llr", "LLR (2 inner steps)", _method(methods.LLR)),
    # precision policies (gradalign_fast.precision), each with its own autocast
    Variant("fgsm_bf16", "FGSM, bf16 autocast", _method(methods.FGSM, "bf16"), default=False),
    Variant("ga_bf16", "  exact, bf16 autocast", _method(methods.GradAlign, "bf16"),
            default=False),
    Variant("ga_bf16_reg32", "  exact, bf16; GradAlign pass in float32",
            _method(methods.GradAlign, "bf16-reg-fp32"), default=False),
    Variant("ga_bf16_bn32", "  exact, bf16; its BatchNorm in float32",
            _method(methods.GradAlign, "bf16-bn-fp32"), default=False),
]
QUICK = dict(model_names=("mnist_cnn", "preact_resnet18_narrow"), batch_sizes=(32,), reps=5,
             warmup=1)


# `timm:NAME[:KEY=VALUE]...`: timm.create_model(NAME, pretrained=False, num_classes=10,
# KEY=VALUE, ...) on a CIFAR-shaped [3, 32, 32] input, VALUE a Python literal (else a string).
# img_size=S makes the input [3, S, S] (in_chans=C: C channels); it is also passed to models
# whose size is fixed at construction (timm's pretrained_cfg.fixed_input_size: ViTs), which
# get img_size=32 by default. E.g. timm:resnet18, timm:vit_tiny_patch16_224:patch_size=4,
# timm:vit_tiny_patch16_224:img_size=224.
TIMM = "timm:"
CIFAR_SIZE = 32


def _timm_spec(model_name: str) -> tuple[str, dict]:
    """'timm:NAME[:KEY=VALUE]...' -> (NAME, {KEY: VALUE})."""
    name, *pairs = model_name[len(TIMM):].split(":")
    kwargs = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not (sep and key.isidentifier()):
            raise ValueError(f"model {model_name!r}: {pair!r} is not KEY=VALUE "
                             f"(timm:NAME[:KEY=VALUE]...)")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return name, kwargs


def _timm_model(model_name: str) -> torch.nn.Module:
    """The timm model of a `timm:` name (see TIMM), randomly initialised, 10 classes."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"model {model_name!r} needs timm ({e}): pip install --no-deps "
                          f"timm==1.0.31 (and torchvision, huggingface_hub, safetensors, "
                          f"pyyaml; requirements.txt pins them)") from e
    name, kwargs = _timm_spec(model_name)
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (timm {timm.__version__}; "
                         f"timm.list_models('*{name.split('_')[0]}*') lists similar names)")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs.setdefault("img_size", CIFAR_SIZE)
    else:
        kwargs.pop("img_size", None)  # only the input's size
    try:
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    except TypeError as e:  # a KEY the architecture does not take
        raise ValueError(f"model {model_name!r}: {e}") from e


def input_shape(model_name: str) -> tuple[int, int, int]:
    if model_name.startswith(TIMM):
        kwargs = _timm_spec(model_name)[1]
        size = kwargs.get("img_size", CIFAR_SIZE)
        return kwargs.get("in_chans", 3), size, size
    return (1, 28, 28) if model_name.startswith("mnist") else (3, 32, 32)


def default_eps(model_name: str) -> float:
    return 0.3 if model_name.startswith("mnist") else 8 / 255


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def memory_method(device: torch.device) -> str:
    """How `peak_mib` is measured: resident tensors (parameters, gradients, optimizer state,
    batch) + the peak of what one step allocates above them."""
    step = ("CUDA max_memory_allocated" if device.type == "cuda" else
            "torch.profiler memory events (bytes allocated/freed by torch ops, summed in time "
            "order)")
    return f"parameters+gradients+optimizer state+batch, plus the step's peak by {step}"


def _timed(device: torch.device, fn: Callable[[], None]) -> float:
    """Seconds of fn(), waiting for the device."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_memory(device: torch.device, fn: Callable[[], None]) -> int:
    """Peak bytes allocated by fn() above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profiler_log_filtered(), \
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def resident_bytes(model, opt, x, y) -> int:
    """Bytes of the tensors that live across steps: parameters, gradients, optimizer state,
    the batch."""
    tensors = [x, y] + [t for p in model.parameters() for t in (p, p.grad) if t is not None]
    tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _setup(model_name, batch, device, channels_last, seed=0):
    """A model (train mode) and one random batch in [0, 1]: a name of
    gradalign_fast.training.models or a timm model (`timm:NAME`, see TIMM)."""
    torch.manual_seed(seed)
    shape = input_shape(model_name)
    model = _timm_model(model_name) if model_name.startswith(TIMM) else \
        models.build_model(model_name, in_channels=shape[0])
    model = model.to(device)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, y


def run_bench(model_names=("preact_resnet18_narrow",), batch_sizes=(32,), device="cpu", reps=7,
              warmup=2, steps=None, amp_dtype=None, channels_last=False, threads=1,
              log: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (model, batch size, step variant), all measured in this one run (on CUDA
    with CUDA events and a synchronize per sample).

    steps: names of STEPS (default: those with default=True). amp_dtype: e.g. torch.bfloat16 (autocast around every
    variant alike). threads: torch CPU threads during the run (restored after; None: as set).
    The default 1 is deliberate: on a shared 2-core machine two threads next to other jobs
    made steps up to 10x slower and ratios unstable. Row keys: model, batch, step, text, ms
    (median per step), ratio (to fgsm), peak_mib (see memory_method), step_peak_mib (the
    step's own peak above the resident tensors), mem_ratio (peak_mib to fgsm's), minutes
    (ratio x the authors' 9.5-min FGSM CIFAR-10 run; None for MNIST-shaped models), reps.
    """
    device = torch.device(device)
    saved_threads = torch.get_num_threads()
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        return _run(model_names, batch_sizes, device, reps, warmup, steps, amp_dtype,
                    channels_last, log)
    finally:
        torch.set_num_threads(saved_threads)


def _run(model_names, batch_sizes, device, reps, warmup, steps, amp_dtype, channels_last,
         log) -> list[dict]:
    variants = [v for v in STEPS if (v.default if steps is None else v.name in steps)]
    if "fgsm" not in [v.name for v in variants]:
        variants.insert(0, STEPS[0])  # the ratios need it
    amp = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else \
        contextlib.nullcontext
    rows = []
    for model_name in model_names:
        for batch in batch_sizes:
            base, x, y = _setup(model_name, batch, device, channels_last)
            eps = default_eps(model_name)
            runs, models_, opts = {}, {}, {}
            for v in variants:
                model = models_[v.name] = copy.deepcopy(base)
                opt = opts[v.name] = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                step = v.build(eps, LAM)

                def run(step=step, model=model, opt=opt, block=v.block):
                    with amp():
                        for _ in range(block):
                            step(model, opt, x, y)
                runs[v.name] = run
            for v in variants:
                for _ in range(warmup):
                    runs[v.name]()
            times = {v.name: [] for v in variants}
            order, rng = list(variants), random.Random(0)
            for _ in range(reps):  # interleaved: a slow moment slows every variant
                rng.shuffle(order)  # in a new order each round: no variant always follows
                for v in order:     # the same one (a fixed order biases the later ones)
                    times[v.name].append(_timed(device, runs[v.name]) / v.block)
            peaks = {v.name: peak_memory(device, runs[v.name]) for v in variants}
            resident = {v.name: resident_bytes(models_[v.name], opts[v.name], x, y)
                        for v in variants}
            ms = {k: 1e3 * statistics.median(t) for k, t in times.items()}
            for v in variants:
                ratio = ms[v.name] / ms["fgsm"]
                ci = ratio_interval(times[v.name], times["fgsm"])
                rows.append(dict(
                    model=model_name, batch=batch, step=v.name, text=v.text,
                    ms=round(ms[v.name], 3), ratio=round(ratio, 3),
                    ratio_lo=ci and round(ci[0], 3), ratio_hi=ci and round(ci[1], 3),
                    times_ms=[round(1e3 * t, 3) for t in times[v.name]],  # one per round
                    step_peak_mib=round(peaks[v.name] / 2**20, 2),
                    peak_mib=round((peaks[v.name] + resident[v.name]) / 2**20, 2),
                    mem_ratio=round((peaks[v.name] + resident[v.name])
                                    / (peaks["fgsm"] + resident["fgsm"]), 3),
                    minutes=(round(ratio * AUTHORS_FGSM_MINUTES, 1)
                             if input_shape(model_name)[0] == 3 else None),
                    reps=reps))
            if log:
                log(f"measured {model_name} batch {batch}")
    return rows


MIN_REPS_FOR_CI = 3  # fewer rounds give no interval (a bootstrap of 1 or 2 values is not one)


def ratio_interval(times: list[float], base: list[float], n_boot: int = 2000,
                   seed: int = 0) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of median(times) / median(base), resampling the
    rounds (each round times every variant once: the pairs share the machine's state);
    None below MIN_REPS_FOR_CI rounds."""
    rng = random.Random(seed)
    n = len(times)
    if n < MIN_REPS_FOR_CI:
        return None
    boots = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        boots.append(statistics.median(times[i] for i in idx)
                     / statistics.median(base[i] for i in idx))
    boots.sort()
    return boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]


def exact_vs_plain(rows: list[dict]) -> list[str]:
    """One line per (model, batch) holding both: exact GradAlign's step time over the plain
    formulation's, with its 95% bootstrap interval over the paired rounds."""
    out = []
    for (model, batch) in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        got = {r["step"]: r for r in rows if (r["model"], r["batch"]) == (model, batch)}
        if "gradalign" in got and "gradalign_plain" in got and "times_ms" in got["gradalign"]:
            a, b = got["gradalign"]["times_ms"], got["gradalign_plain"]["times_ms"]
            ci = ratio_interval(a, b)
            r = statistics.median(a) / statistics.median(b)
            out.append(f"{model} batch {batch}: exact / plain = {r:.3f} " + (
                f"[95% CI {ci[0]:.3f}, {ci[1]:.3f}]" if ci else
                f"(no interval: fewer than {MIN_REPS_FOR_CI} rounds)"))
    return out


def metadata(device, amp_dtype=None, channels_last=False, threads=1) -> dict:
    device = torch.device(device)
    return dict(device=device_name(device), device_type=device.type,
                threads=threads or torch.get_num_threads(), torch=torch.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                precision=str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
                channels_last=channels_last, memory=memory_method(device),
                minutes="ratio to FGSM x the authors' 9.5-minute FGSM run on CIFAR-10")


def format_table(rows: list[dict], meta: dict | None = None) -> str:
    """The rows as one fixed-width table (with a header line from `meta` when given)."""
    lines = []
    if meta:
        lines.append(f"device: {meta['device']} ({meta['threads']} threads), torch "
                     f"{meta['torch']}, {meta['precision']}"
                     f"{', channels_last' if meta['channels_last'] else ''}, {meta['date']}")
        lines.append(f"peak MiB: {meta['memory']}; step MiB: that step's own peak")
        lines.append(f"CIFAR-10 min: {meta['minutes']}")
    head = (f"{'model':<23} {'batch':>5}  {'step':<44} {'ms/step':>9} {'x FGSM':>7} "
            f"{'95% CI':>11} {'peak MiB':>9} {'x FGSM':>7} {'step MiB':>9} "
            f"{'CIFAR-10 min':>12}")
    lines += [head, "-" * len(head)]
    for r in rows:
        minutes = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
        ci = f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}" if r.get("ratio_lo") else "-"
        lines.append(f"{r['model']:<23} {r['batch']:>5}  {r['text']:<44} {r['ms']:>9.1f} "
                     f"{r['ratio']:>7.2f} {ci:>11} {r['peak_mib']:>9.1f} "
                     f"{r['mem_ratio']:>7.2f} {r['step_peak_mib']:>9.1f} {minutes:>12}")
    return "\n".join(lines)
