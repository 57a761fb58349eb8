"""Gradient fidelity of approximate regularisers along a fixed exact-GradAlign trajectory.

At each weight snapshot of an exact-GradAlign run (TrainConfig.snapshot_every), on one fixed
batch of training points, every mode (a method spec such as 'gradalign:lam=1:fraction=0.2' or
'elle') is asked for its regulariser's parameter gradient `draws` times (its own randomness:
noise, sub-batches, schedules), and the mean is compared with the exact regulariser's
expected parameter gradient (the mean of `ref_draws` draws of exact GradAlign at the same
eps and lambda):

    cos         cosine(mean mode gradient, mean exact gradient)       1 = same direction
    norm_ratio  |mean mode gradient| / |mean exact gradient|           1 = same size
    rel_bias    |E mode grad - E exact grad| / |E exact grad|, with the Monte Carlo noise of
                both means subtracted (see `compare`)                  0 = unbiased
    rel_var     trace of the single-draw covariance / |mean exact gradient|^2
    single_cos  mean_d cosine(g_d, mean exact gradient)                 one step's alignment

The exact mode itself is measured too (`draws` fresh draws against the reference): its cos is
the noise floor of the raw cosine and its rel_bias the instrument's zero.
No training outcome is needed: this is the fast, low-noise check to run before a study.

Precision policies (gradalign_fast.precision.POLICIES, `measure_precision`) are measured the
same way but paired: each draw's randomness (FGSM-RS noise, eta) is replayed under float32 and
under the policy, so the numbers are the rounding error alone, for the regulariser's parameter
gradient and for the training loss's (FGSM's) own; `noise_cos` puts them on the scale of the
regulariser's own randomness (cosine between two float32 draws with different eta).
"""
from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import precision
from ..training.checkpoint import load_checkpoint, read
from ..training.datasets import load_dataset, take
from ..training.methods import METHODS, Method, make_method
from .sweep import parse_method
from .tables import md_table

EXACT = "gradalign"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    iteration: int
    epoch: float
    eps: float


def snapshots(run_dir) -> list[Snapshot]:
    """The weight snapshots of a run directory, in training order."""
    paths = sorted(Path(run_dir, "snapshots").glob("it*.pt"))
    if not paths:
        raise FileNotFoundError(f"no snapshots in {Path(run_dir, 'snapshots')}: train with "
                                "snapshot_every > 0 (fidelity --snapshot-every)")
    out = []
    for p in paths:
        meta = read(p)
        out.append(Snapshot(p, int(meta["iteration"]), float(meta["epoch"]), float(meta["eps"])))
    return out


def _flat_grad(reg, params, retain_graph: bool = False) -> torch.Tensor:
    """The regulariser's gradient in all parameters as one float64 vector (zeros when the
    regulariser is off this call, e.g. GradAlign's `every` schedule)."""
    if reg is None or not reg.requires_grad:
        return torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    grads = torch.autograd.grad(reg, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double()
                      for g, p in zip(grads, params)])


def regulariser_grads(method, model, x, y, draws: int) -> tuple[torch.Tensor, float]:
    """[draws, P] parameter gradients of `method`'s regulariser at (x, y), each with the
    clean gradient of its own perturbation step; and the mean seconds per draw."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    t0 = time.perf_counter()
    for _ in range(draws):
        _, grad_clean = method.perturb(model, x, y)
        out.append(_flat_grad(method.regularizer(model, x, y, grad_clean), params))
    return torch.stack(out), (time.perf_counter() - t0) / draws


def compare(grads: torch.Tensor, ref: torch.Tensor) -> dict:
    """The fidelity numbers of a mode's [D, P] gradient draws against the reference's [R, P]
    draws (exact GradAlign). rel_bias removes the Monte Carlo noise of both means:
    |E mode - E exact|^2 is estimated by |mean - ref mean|^2 - tr(cov)/D - tr(cov_ref)/R and
    |E exact|^2 by |ref mean|^2 - tr(cov_ref)/R (unbiased), so an unbiased mode reads ~0
    whatever its variance."""
    mean, ref_mean = grads.mean(0), ref.mean(0)
    d, r = grads.shape[0], ref.shape[0]
    tr = ((grads - mean) ** 2).sum() / (d - 1)
    tr_ref = ((ref - ref_mean) ** 2).sum() / (r - 1)
    ref_sq = ref_mean.norm() ** 2
    bias_sq = (((mean - ref_mean) ** 2).sum() - tr / d - tr_ref / r) / (ref_sq - tr_ref / r)
    cos = torch.nn.functional.cosine_similarity
    return {
        "cos": float(cos(mean, ref_mean, dim=0)),
        "norm_ratio": float(mean.norm() / ref_mean.norm()),
        "rel_bias": float(bias_sq.clamp(min=0).sqrt()),
        "rel_var": float(tr / ref_sq),
        "single_cos": float(cos(grads, ref_mean.expand_as(grads), dim=1).mean()),
    }


def _method(spec: str, eps: float, lam: float):
    """The method of a mode spec at eps; lam defaults to the trajectory's lambda for
    methods that take one."""
    m = parse_method(spec)
    cls = METHODS.get(m.name)
    if cls is not None and cls.regularizer is Method.regularizer:
        raise ValueError(f"mode {spec!r}: method {m.name!r} has no regulariser to compare")
    opts = dict(m.options)
    if cls is not None and "lam" in inspect.signature(cls).parameters:
        opts.setdefault("lam", lam)
    return make_method(m.name, eps, **opts)


def measure(run_dir, modes: list[str], draws: int = 16, ref_draws: int = 32,
            batch: int = 128, seed: int = 0, progress=None) -> dict:
    """Fidelity of every mode at every snapshot of the exact-GradAlign run in `run_dir`.

    Returns {"config": the run's config, "batch", "draws", "ref_draws", "rows": [one dict per
    (snapshot, mode): iteration, epoch, eps, mode, cos, norm_ratio, rel_var, single_cos,
    s_per_draw]}. The batch is the run's first `batch` training points (fixed)."""
    snaps = snapshots(run_dir)
    cfg = read(snaps[0].path)["config"]
    lam = cfg["lam"]
    x, y = take(load_dataset(cfg["dataset"], cfg["data_dir"], train=True, augment=False),
                batch)
    modes = [EXACT] + [m for m in modes if m != EXACT]
    rows = []
    for snap in snaps:
        model = load_checkpoint(snap.path)
        torch.manual_seed(seed)
        ref, _ = regulariser_grads(_method(EXACT, snap.eps, lam), model, x, y, ref_draws)
        for spec in modes:
            grads, sec = regulariser_grads(_method(spec, snap.eps, lam), model, x, y, draws)
            rows.append({"iteration": snap.iteration, "epoch": snap.epoch, "eps": snap.eps,
                         "mode": spec, **compare(grads, ref), "s_per_draw": sec})
            if progress is not None:
                progress(rows[-1])
    return {"run_dir": str(run_dir), "config": cfg, "batch": batch, "draws": draws,
            "ref_draws": ref_draws, "rows": rows}


def summary(rows: list[dict]) -> list[dict]:
    """Per mode over snapshots: median and minimum cos, median norm ratio and rel_var,
    median seconds per draw."""
    import statistics as st

    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        rs = [r for r in rows if r["mode"] == mode]
        out.append({"mode": mode, "snapshots": len(rs),
                     "cos_median": st.median(r["cos"] for r in rs),
                     "cos_min": min(r["cos"] for r in rs),
                     "norm_ratio_median": st.median(r["norm_ratio"] for r in rs),
                     "rel_bias_median": st.median(r["rel_bias"] for r in rs),
                     "rel_bias_max": max(r["rel_bias"] for r in rs),
                     "rel_var_median": st.median(r["rel_var"] for r in rs),
                     "single_cos_median": st.median(r["single_cos"] for r in rs),
                     "ms_per_draw": 1000 * st.median(r["s_per_draw"] for r in rs)})
    return out


def markdown(result: dict) -> str:
    """The per-mode summary table."""
    head = ["mode", "snapshots", "cos (median)", "cos (min)", "norm ratio (median)",
            "rel. bias (median)", "rel. bias (max)", "single-draw rel. var. (median)",
            "single-draw cos (median)", "ms / draw"]
    return md_table(head, [
        [f"`{s['mode']}`", str(s["snapshots"]), f"{s['cos_median']:.3f}", f"{s['cos_min']:.3f}",
         f"{s['norm_ratio_median']:.3f}", f"{s['rel_bias_median']:.3f}",
         f"{s['rel_bias_max']:.3f}", f"{s['rel_var_median']:.3g}",
         f"{s['single_cos_median']:.3f}", f"{s['ms_per_draw']:.0f}"]
        for s in summary(result["rows"])])


def _plot_panels(rows: list[dict], group: str, panels, path, suptitle: str | None = None,
                 extra=None) -> None:
    """One panel per (title, value(row), yscale kwargs) of `panels`, one line per value of
    row[group] over the snapshots' iterations; extra(axes) adds what one report needs (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 0.5, 4))
    for name in dict.fromkeys(r[group] for r in rows):
        rs = [r for r in rows if r[group] == name]
        label = name + (" (noise floor)" if group == "mode" and name == EXACT else "")
        for ax, (_, value, _) in zip(axes, panels):
            ax.plot([r["iteration"] for r in rs], [value(r) for r in rs], marker="o", ms=3,
                    label=label)
    for ax, (title, _, scale) in zip(axes, panels):
        ax.set_xlabel("iteration of the exact-GradAlign run")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if scale:
            ax.set_yscale(**scale)
    if extra is not None:
        extra(axes)
    axes[0].legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(result: dict, path, co_iteration: int | None = None) -> None:
    """Per snapshot and mode: cos and norm ratio of the mean gradients, and the relative bias
    with the Monte Carlo noise removed (PNG)."""
    def extra(axes):
        axes[1].axhline(1.0, color="gray", lw=0.8)
        if co_iteration is not None:
            for ax in axes:
                ax.axvline(co_iteration, color="red", ls="--", lw=1, label="FGSM's CO")

    cfg = result["config"]
    # a different regulariser can be off by orders of magnitude: log scales keep 1 and 0 readable
    _plot_panels(result["rows"], "mode", [
        ("cos(mean mode grad, mean exact grad)", lambda r: r["cos"], None),
        ("|mean mode grad| / |mean exact grad|", lambda r: r["norm_ratio"], {"value": "log"}),
        ("relative bias, Monte Carlo noise removed", lambda r: r["rel_bias"],
         {"value": "symlog", "linthresh": 0.1})], path,
        f"Gradient fidelity along exact GradAlign ({cfg['dataset']}, {cfg['model']}, "
        f"eps {cfg['eps'] * 255:g}/255, lambda {cfg['lam']:g}; "
        f"{result['draws']} draws, reference {result['ref_draws']})", extra)


# float16 parameter gradients are scaled like torch.amp.GradScaler's first step (2**16), halved
# until finite
_FP16_SCALE = 2.0 ** 16


def _scaled_grad(value, params, amp_dtype) -> torch.Tensor:
    """value's parameter gradient (float64 vector), loss-scaled under float16 autocast."""
    scale = _FP16_SCALE if amp_dtype == torch.float16 else 1.0
    while True:
        # a float16 try may overflow and be retried at half the scale: keep the graph
        g = _flat_grad(value * scale if scale != 1.0 else value, params,
                       retain_graph=scale != 1.0) / scale
        if scale == 1.0 or bool(torch.isfinite(g).all()):
            return g
        scale /= 2


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two gradients; 1 for two zero gradients (the regulariser's is zero where
    eps is: the eps warm-up's first steps)."""
    if not (a.any() or b.any()):
        return 1.0
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _norm_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a| / |b|; 1 for two zero gradients."""
    na, nb = a.norm(), b.norm()
    return 1.0 if na == nb == 0 else float(na / nb)


def _policy_draw(method, model, x, y, policy, params) -> tuple[torch.Tensor, torch.Tensor]:
    """(regulariser's, training loss's) parameter gradients of one draw of `method`'s step
    under `policy` (float64 vectors)."""
    dt = policy.amp_dtype
    amp = torch.autocast(x.device.type, dtype=dt) if dt else contextlib.nullcontext()
    with amp:
        delta, grad_clean = method.perturb(model, x, y)
        loss = F.cross_entropy(model(x + delta), y)
    g_loss = _scaled_grad(loss, params, dt)
    with amp:
        reg = method.regularizer(model, x, y, grad_clean)
    return _scaled_grad(reg, params, dt), g_loss


def measure_precision(run_dir, policies: list[str], draws: int = 8, batch: int = 128,
                      seed: int = 0, progress=None) -> dict:
    """Rounding error of every precision policy at every snapshot of an exact-GradAlign run.

    Each draw d seeds the generator with (seed, d) and runs one training step's gradients
    under float32 and under each policy with that seed (paired randomness). Rows, one per
    (snapshot, policy): reg_cos / reg_norm_ratio (mean over draws of the cosine and norm ratio
    of the policy's regulariser gradient to float32's), loss_cos / loss_norm_ratio (the same for
    the training loss's gradient at x + delta), noise_cos (mean cosine between float32
    regulariser gradients of consecutive draws: the scale of eta's own randomness), s_per_draw.
    """
    pols = [precision.policy(p) for p in dict.fromkeys(["float32", *policies])]
    snaps = snapshots(run_dir)
    cfg = read(snaps[0].path)["config"]
    x, y = take(load_dataset(cfg["dataset"], cfg["data_dir"], train=True, augment=False),
                batch)
    rows = []
    for snap in snaps:
        model = load_checkpoint(snap.path)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        grads, secs = {p.name: [] for p in pols}, {p.name: 0.0 for p in pols}
        for d in range(draws):
            for pol in pols:
                torch.manual_seed(seed * 100003 + d)
                method = _method(f"{EXACT}:precision={pol.reg_precision}", snap.eps, cfg["lam"])
                t0 = time.perf_counter()
                grads[pol.name].append(_policy_draw(method, model, x, y, pol, params))
                secs[pol.name] += time.perf_counter() - t0
        ref = grads["float32"]
        noise = [_cos(a[0], b[0]) for a, b in zip(ref, ref[1:])]
        for pol in pols:
            g = grads[pol.name]

            def mean(f):
                return sum(f(a, b) for a, b in zip(g, ref)) / draws

            rows.append({
                "iteration": snap.iteration, "epoch": snap.epoch, "eps": snap.eps,
                "policy": pol.name,
                "reg_cos": mean(lambda a, b: _cos(a[0], b[0])),
                "reg_norm_ratio": mean(lambda a, b: _norm_ratio(a[0], b[0])),
                "loss_cos": mean(lambda a, b: _cos(a[1], b[1])),
                "loss_norm_ratio": mean(lambda a, b: _norm_ratio(a[1], b[1])),
                "noise_cos": sum(noise) / len(noise) if noise else float("nan"),
                "s_per_draw": secs[pol.name] / draws})
            if progress is not None:
                progress(rows[-1])
    return {"run_dir": str(run_dir), "config": cfg, "batch": batch, "draws": draws,
            "rows": rows}


def precision_markdown(result: dict) -> str:
    """Per policy, medians over snapshots (and the worst snapshot's regulariser cosine)."""
    import statistics as st

    head = ["policy", "snapshots", "reg. grad cos (median)", "reg. grad cos (min)",
            "reg. grad norm ratio", "loss grad cos (median)", "loss grad norm ratio",
            "eta's own cos (median)", "ms / draw"]
    table = []
    for name in dict.fromkeys(r["policy"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["policy"] == name]

        def med(k):
            return st.median(r[k] for r in rs)

        table.append([f"`{name}`", str(len(rs)), f"{med('reg_cos'):.4f}",
                      f"{min(r['reg_cos'] for r in rs):.4f}", f"{med('reg_norm_ratio'):.3f}",
                      f"{med('loss_cos'):.5f}", f"{med('loss_norm_ratio'):.4f}",
                      f"{med('noise_cos'):.3f}", f"{1000 * med('s_per_draw'):.0f}"])
    return md_table(head, table)


def precision_plot(result: dict, path) -> None:
    """Regulariser and training-loss gradient cosine to float32 per snapshot (PNG)."""
    rows = result["rows"]

    def extra(axes):
        rs = [r for r in rows if r["policy"] == "float32"]
        axes[0].plot([r["iteration"] for r in rs], [1 - r["noise_cos"] for r in rs], "k--",
                     lw=1, label="two float32 draws (eta's own randomness)")

    scale = {"value": "symlog", "linthresh": 1e-4}
    _plot_panels(rows, "policy", [
        ("1 - cos(policy, float32): GradAlign regulariser's parameter gradient",
         lambda r: 1 - r["reg_cos"], scale),
        ("1 - cos(policy, float32): training loss at x + delta's parameter gradient",
         lambda r: 1 - r["loss_cos"], scale)], path, extra=extra)
