"""`python -m gradalign_fast demo`: the library's point in a few CPU minutes.

Trains the MNIST CNN twice on real MNIST (the subset shipped in the package, or the full data
with --dataset mnist --data-dir DIR) at the same eps: FGSM, then FGSM+GradAlign. Prints per
epoch the clean / FGSM / PGD accuracy and the gradient alignment of the CO monitor, flags
catastrophic overfitting where it happens, evaluates both with PGD-50-10, and ends with the
step-time table of the bench (ratios to FGSM, measured in one run).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from ... import has_ops, ops_error
from ...training.monitor import MetricsLog
from ...training.trainer import USER_ERRORS, TrainConfig, train
from .train import add_eps_arguments, eps_from_args

# eps = 90/255 (about 0.35): with the MNIST recipe (SGD, cyclic lr, eps ramped over the first
# half) FGSM and FGSM-RS overfit catastrophically at this radius, GradAlign (lambda = 2) does
# not (docs/results.md has the full study).
DEMO_EPS_255 = 90.0
DEMO_LAM = 2.0


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--dataset", default="mnist_subset", help="mnist_subset (shipped) or mnist (--data-dir)")
    a("--data-dir", default=None, help="for --dataset mnist: mnist.npz or torchvision's folder")
    add_eps_arguments(parser, f"{DEMO_EPS_255:g} (/255)")
    a("--lam", type=float, default=DEMO_LAM, help="GradAlign's lambda")
    a("--epochs", type=int, default=8, help="eps is ramped up over the first half")
    a("--n-train", type=int, default=None)
    a("--n-eval", type=int, default=1000, help="test points of the final PGD-50-10 evaluation")
    a("--out", default="runs/demo", help="output directory (one run folder per method)")
    a("--device", default=None)
    a("--seed", type=int, default=0)
    a("--no-bench", action="store_true", help="skip the step-time table")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Sends file descriptor 2 (where C++ code logs) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _print_epochs(method: str, run_dir: Path) -> None:
    print(f"\n{method}: per epoch (CO monitor on 256 held-out training images)")
    print(f"  {'epoch':>5} {'clean':>7} {'FGSM':>7} {'PGD-10':>7} {'grad align':>10}")
    for r in MetricsLog(run_dir / "metrics.jsonl").read():
        if r["kind"] != "epoch":
            continue
        flag = "  <-- catastrophic overfitting" if r["co"] else ""
        print(f"  {r['epoch']:>5} {r['clean_acc']:>7.3f} {r['fgsm_acc']:>7.3f} "
              f"{r['pgd_acc']:>7.3f} {r['grad_align']:>10.3f}{flag}")


def _summary(finals: dict) -> str:
    lines = ["", f"{'method':<10} {'clean':>7} {'PGD-50-10':>10} {'CO':>12} {'train time':>11}"]
    for method, f in finals.items():
        acc = f["accuracy"]
        co = f"epoch {f['co_epoch']:g}" if f["co"] else "none"
        lines.append(f"{method:<10} {acc['clean']:>7.3f} {acc['pgd-50-10']:>10.3f} {co:>12} "
                     f"{f['train_time_s']:>10.0f}s")
    return "\n".join(lines)


def run(args) -> int:
    try:
        eps = eps_from_args(args.eps, args.eps_units)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    eps = DEMO_EPS_255 / 255 if eps is None else eps
    epochs = args.epochs
    print(f"gradalign_fast demo: FGSM vs FGSM+GradAlign on {args.dataset}, eps = {eps * 255:g}/255"
          f" ({eps:.3f}), {epochs} epochs; compiled ops: "
          f"{'yes' if has_ops() else 'NO (' + str(ops_error()) + ')'}")
    finals = {}
    for method in ("fgsm", "gradalign"):
        out = Path(args.out) / method
        cfg = TrainConfig(method=method, dataset=args.dataset, data_dir=args.data_dir, eps=eps,
                          lam=args.lam if method == "gradalign" else None, epochs=epochs,
                          eps_warmup_epochs=epochs / 2,
                          n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
                          device=args.device, out_dir=str(out), monitor_every=0)
        if (out / "checkpoint.pt").exists():  # the demo's own earlier output: start afresh
            shutil.rmtree(out)
        try:
            finals[method] = train(cfg)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        _print_epochs(method, out)
    print(_summary(finals))
    from .plot import load_curves, plot_curves
    png = Path(args.out) / "fig_a.png"
    plot_curves([load_curves(Path(args.out) / m) for m in finals], png,
                title=f"MNIST, eps = {eps * 255:g}/255")
    print(f"\nplot: {png}  (PGD accuracy and gradient alignment per epoch)")
    if not args.no_bench:
        from ..step_bench import QUICK, format_table, run_bench
        print("\nstep time (bench --quick): median per step and ratio to FGSM, one run",
              flush=True)
        with _quiet_native_stderr():  # the profiler's C++ start/stop lines (peak memory)
            rows = run_bench(**{**QUICK, "device": args.device or "cpu"})
        print(format_table(rows))
    return 0
