"""`python -m gradalign_fast plot RUN_DIR ...`: the paper's Fig. A for several runs: monitored
PGD accuracy and gradient alignment per epoch (from each run's metrics.jsonl), catastrophic
overfitting marked with an x at the first CO epoch, in one PNG; a third panel with the share
of regularised steps (`reg_share`) of the adaptive methods' runs (elle_a, gradalign_adaptive)."""
from __future__ import annotations

import json
from pathlib import Path

from ...training.monitor import MetricsLog

EXAMPLES = """examples:
  python -m gradalign_fast plot runs/example_ga runs/example_fgsm --out fig_a.png
"""


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", default="fig_a.png", help="the PNG to write")
    parser.add_argument("--title", default=None, help="figure title")


def _label(run: Path) -> str:
    cfg_path = run / "config.json"
    if not cfg_path.exists():
        return run.name
    cfg = json.loads(cfg_path.read_text())
    opts = {"lam": cfg.get("lam"), **cfg.get("method_options", {})}
    extra = "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                    for k, v in opts.items() if v is not None)
    return f"{cfg['method']}{extra} eps={cfg['eps'] * 255:g}/255 ({run.name})"


def load_curves(run) -> dict:
    """{"label", "epoch", "pgd_acc", "grad_align"} of a run directory's epoch rows, "co": the
    first CO row (epoch rows or in-epoch ones) or None, and "reg_share": (epoch, share) of
    every row that has one (each covers the steps since the row before)."""
    run = Path(run)
    all_rows = MetricsLog(run / "metrics.jsonl").read()
    rows = [r for r in all_rows if r["kind"] == "epoch"]
    if not rows:
        raise ValueError(f"{run} has no epoch rows in metrics.jsonl (is it a run directory?)")
    return {"label": _label(run), "epoch": [r["epoch"] for r in rows],
            "pgd_acc": [r["pgd_acc"] for r in rows], "grad_align": [r["grad_align"] for r in rows],
            "co": next((r for r in all_rows if r["co"]), None),
            "reg_share": [(r["epoch"], r["reg_share"]) for r in all_rows if "reg_share" in r]}


def plot_curves(curves: list[dict], out, title: str | None = None) -> None:
    """Writes Fig. A of the curves (from load_curves) to the PNG `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = any(c["reg_share"] for c in curves)
    fig, axes = plt.subplots(1, 3 if shares else 2, figsize=(16 if shares else 11, 4))
    ax_pgd, ax_cos = axes[:2]
    for c in curves:
        line, = ax_pgd.plot(c["epoch"], [100 * a for a in c["pgd_acc"]], marker=".",
                            label=c["label"])
        ax_cos.plot(c["epoch"], c["grad_align"], marker=".", color=line.get_color())
        co = c["co"]
        if co is not None:
            ax_pgd.plot(co["epoch"], 100 * co["pgd_acc"], "x", ms=12, mew=2,
                        color=line.get_color())
            ax_cos.plot(co["epoch"], co["grad_align"], "x", ms=12, mew=2, color=line.get_color())
        if c["reg_share"]:
            axes[2].plot(*zip(*c["reg_share"]), marker=".", color=line.get_color())
    ax_pgd.set(xlabel="epoch", ylabel="PGD accuracy (%), monitor batch",
               title="robustness (x: catastrophic overfitting)")
    ax_cos.set(xlabel="epoch", ylabel="cos(grad at x, grad at x + eta)",
               title="gradient alignment")
    if shares:
        axes[2].set(xlabel="epoch", ylabel="share of steps since the previous row",
                    title="regularised steps (reg_share)", ylim=(-0.02, 1.02))
    ax_pgd.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run(args) -> int:
    curves = [load_curves(r) for r in args.runs]
    plot_curves(curves, args.out, args.title)
    print(f"wrote {args.out} ({len(curves)} runs)")
    return 0
