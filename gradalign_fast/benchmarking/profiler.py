"""One FGSM+GradAlign training step split into phases, each timed and memory-profiled.

The step is step.train_step's, written out so that each phase is a record_function range
(the three GradAlign phases are ranges inside GradAlignLoss), in train_step's order: the
training loss is backpropagated before the regulariser's forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from .. import attacks, gradalign
from ..training.step import trained_parameters
from . import step_bench
from .native_log import profiler_log_filtered

PHASES = ("attack fwd+bwd (FGSM)", "training forward", "training backward",
          *gradalign.PHASES, "gradalign: double backward", "optimizer step")
FGSM_PHASES = {PHASES[0], PHASES[1], PHASES[2], PHASES[7]}  # what an FGSM step also does


def gradalign_step(model, opt, x, y, reg: gradalign.GradAlignLoss) -> None:
    model.train()
    with record_function(PHASES[0]):
        delta, grad = attacks.fgsm(model, x, y, reg.eps)
    with record_function(PHASES[1]):
        loss = F.cross_entropy(model(x + delta), y)
    opt.zero_grad(set_to_none=True)
    params = trained_parameters(opt)  # as train_step: no derivatives towards input leaves
    with record_function(PHASES[2]):
        loss.backward(inputs=params)
    r = reg(model, x, y, grad_clean=grad)
    with record_function(PHASES[6]):
        r.backward(inputs=params)
    with record_function(PHASES[7]):
        opt.step()


def _phase_memory(events, start, end, attr) -> tuple[float, float]:
    """(peak, net) bytes allocated by ops inside [start, end], in time order."""
    live = peak = 0
    for e in events:
        if start <= e.time_range.start <= end:
            live += getattr(e, attr)
            peak = max(peak, live)
    return peak, live


def profile_step(model_name="preact_resnet18_narrow", batch=32, device="cpu", steps=3,
                 warmup=2, lam=step_bench.LAM, trace_path=None, **loss_options) -> list[dict]:
    """Per phase, averaged over `steps` profiled steps: ms, peak and net MiB.

    Time is the range's CPU time on CPU, its device (kernel) time on CUDA; memory is what the
    ops inside the range allocate (peak above the range's start; net = what it leaves alive).
    """
    device = torch.device(device)
    model, x, y = step_bench._setup(model_name, batch, device, channels_last=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    reg = gradalign.GradAlignLoss(step_bench.default_eps(model_name), lam, **loss_options)
    for _ in range(warmup):
        gradalign_step(model, opt, x, y, reg)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler_log_filtered(), profile(activities=activities, profile_memory=True) as prof:
        for _ in range(steps):
            gradalign_step(model, opt, x, y, reg)
            if cuda:
                torch.cuda.synchronize(device)
    if trace_path:
        prof.export_chrome_trace(trace_path)
    attr = "self_device_memory_usage" if cuda else "self_cpu_memory_usage"
    mem_events = sorted((e for e in prof.events() if getattr(e, attr, 0)),
                        key=lambda e: e.time_range.start)
    rows = []
    for name in PHASES:
        ranges = [e for e in prof.events() if e.name == name]
        ms = sum((e.device_time_total if cuda else e.cpu_time_total) for e in ranges) / 1e3
        mem = [_phase_memory(mem_events, e.time_range.start, e.time_range.end, attr)
               for e in ranges]
        rows.append(dict(phase=name, ms=ms / steps, gradalign_only=name not in FGSM_PHASES,
                         peak_mib=max((m[0] for m in mem), default=0) / 2**20,
                         net_mib=sum(m[1] for m in mem) / max(len(mem), 1) / 2**20))
    return rows


def format_phases(rows: list[dict]) -> str:
    total = sum(r["ms"] for r in rows)
    extra = sum(r["ms"] for r in rows if r["gradalign_only"])
    head = f"{'phase':<42} {'ms':>8} {'share':>6} {'peak MiB':>9} {'net MiB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = " *" if r["gradalign_only"] else ""
        lines.append(f"{r['phase'] + mark:<42} {r['ms']:>8.1f} {r['ms'] / total:>6.1%} "
                     f"{r['peak_mib']:>9.1f} {r['net_mib']:>8.1f}")
    lines.append(f"{'total':<42} {total:>8.1f}")
    top = max((r for r in rows if r["gradalign_only"]), key=lambda r: r["ms"])
    lines.append(f"* GradAlign's own phases: {extra:.1f} ms = {extra / total:.0%} of the step, "
                 f"{extra / max(total - extra, 1e-9):.2f}x the FGSM phases; the largest is "
                 f"'{top['phase']}' ({top['ms'] / max(extra, 1e-9):.0%} of the extra time).")
    return "\n".join(lines)


def plot_phases(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    names = [r["phase"] for r in rows][::-1]
    colors = ["tab:red" if r["gradalign_only"] else "tab:blue" for r in rows][::-1]
    ax_t.barh(names, [r["ms"] for r in rows][::-1], color=colors)
    ax_t.set_xlabel("ms per step (red: GradAlign only)")
    ax_m.barh(names, [r["peak_mib"] for r in rows][::-1], color=colors)
    ax_m.set_xlabel("peak MiB allocated in the phase")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
