"""`python -m gradalign_fast demo`: the library's point in a few CPU minutes.

Trains the MNIST CNN three times on real MNIST (the subset shipped in the package, or the full
data with --dataset mnist --data-dir DIR) at the same eps, same seed: FGSM, FGSM-RS
(random start, step 1.25 eps) and FGSM+GradAlign. Prints per
epoch the clean / FGSM / PGD accuracy and the gradient alignment of the CO monitor, flags
catastrophic overfitting where it happens, evaluates each with PGD-50-10 (on --n-eval points)
and with the worst case of PGD-50-10 and the standard AutoAttack (AutoAttack on the PGD-robust
points among the first --n-autoattack), flags possible gradient masking where PGD exceeds that
worst case by more than 5 points, and ends with the step-time table of the bench (ratios to FGSM, measured in
one run).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ... import has_ops, ops_error
from ...training.monitor import MetricsLog
from ...training.trainer import RUN_FILES, TrainConfig, train
from .train import add_eps_arguments, eps_from_args, summary

EXAMPLES = """examples:
  python -m gradalign_fast demo --epochs 2 --n-train 1024 --n-eval 100 --n-autoattack 20 \
      --no-bench --out runs/example_demo
"""

# eps = 90/255 (about 0.35): with the MNIST recipe (SGD, cyclic lr, eps ramped over the first
# half) FGSM overfits catastrophically at this radius on every seed. FGSM-RS does not on the
# shipped subset, and is more robust than GradAlign (lambda = 2) there: docs/results.md has
# the studies, including the search for a regime where GradAlign beats FGSM-RS.
DEMO_EPS_255 = 90.0
DEMO_RECIPE = "mnist_sgd_ramp"  # the project's MNIST recipe (SGD), not Wong et al.'s (Adam)
DEMO_LAM = 2.0
# The demo's step-time table: the methods it trains and the cheaper GradAlign variants (the
# bench command measures every variant).
DEMO_BENCH_STEPS = ("fgsm", "fgsm_rs", "gradalign_plain", "gradalign", "ga_fraction0.2",
                    "ga_adaptive_off", "ga_adaptive_on", "elle")


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--dataset", default="mnist_subset", help="mnist_subset (shipped) or mnist (--data-dir)")
    a("--data-dir", default=None, help="for --dataset mnist: mnist.npz or torchvision's folder")
    add_eps_arguments(parser, f"{DEMO_EPS_255:g} (/255)")
    a("--lam", type=float, default=DEMO_LAM, help="GradAlign's lambda")
    a("--epochs", type=int, default=8, help="training epochs; eps is ramped up over the first "
      "half")
    a("--n-train", type=int, default=None,
      help="train on the first N training points; None: all but the monitor's 256")
    a("--n-eval", type=int, default=1000, help="test points of the final PGD-50-10 evaluation")
    a("--n-autoattack", type=int, default=100,
      help="the standard AutoAttack (worst case with PGD-50-10, on PGD's survivors) on the "
           "first N of the --n-eval points: minutes per model on a CPU")
    a("--out", default="runs/demo", help="output directory (one run folder per method)")
    a("--device", default=None, help="cpu, cuda or cuda:N; None: cuda if available")
    a("--seed", type=int, default=0, help="seed of the initialisation, data order and noise")
    a("--no-bench", action="store_true", help="skip the step-time table")


def _print_epochs(method: str, run_dir: Path) -> None:
    print(f"\n{method}: per epoch (CO monitor on 256 held-out training images)")
    print(f"  {'epoch':>5} {'clean':>7} {'FGSM':>7} {'PGD-10':>7} {'grad align':>10}")
    for r in MetricsLog(run_dir / "metrics.jsonl").read():
        if r["kind"] != "epoch":
            continue
        flag = "  <-- catastrophic overfitting" if r["co"] else ""
        print(f"  {r['epoch']:>5} {r['clean_acc']:>7.3f} {r['fgsm_acc']:>7.3f} "
              f"{r['pgd_acc']:>7.3f} {r['grad_align']:>10.3f}{flag}")


def _summary(finals: dict, worst: str) -> str:
    n_aa = next(iter(finals.values()))["eval_points"][worst]
    head = f"PGD+AA (first {n_aa})"
    lines = ["", f"{'method':<10} {'clean':>7} {'PGD-50-10':>10} {head:>20} {'CO':>12} "
             f"{'train time':>11} {'masking?':>9}"]
    for method, f in finals.items():
        acc = f["accuracy"]
        co = f"epoch {f['co_epoch']:g}" if f["co"] else "none"
        lines.append(f"{method:<10} {acc['clean']:>7.3f} {acc['pgd-50-10']:>10.3f} "
                     f"{acc[worst]:>20.3f} {co:>12} {f['train_time_s']:>10.0f}s "
                     f"{'YES' if f['gradient_masking'] else 'no':>9}")
    lines.append("(PGD+AA: robust to PGD-50-10 and to the standard AutoAttack (APGD-CE, APGD-T "
                 "and FAB-T 100 iterations, 9 targets; Square 5000 queries), run on the "
                 "PGD-robust points only; PGD more than 5 points above it flags possible "
                 "gradient masking)")
    times = ", ".join(f"{m} {f['eval_time_s']['pgd-50-10']:.0f}s / {f['eval_time_s'][worst]:.0f}s"
                      for m, f in finals.items())
    lines.append(f"(evaluation time, PGD-50-10 on {finals[next(iter(finals))]['n_eval']} points "
                 f"/ AutoAttack on the PGD-robust of the first {n_aa}: {times})")
    return "\n".join(lines)


def run_config(args, method: str, eps: float, out: Path, worst: str) -> TrainConfig:
    """The demo's training run of `method` (parsed demo `args`)."""
    return TrainConfig(method=method, dataset=args.dataset, recipe=DEMO_RECIPE,
                       data_dir=args.data_dir, eps=eps,
                       lam=args.lam if method == "gradalign" else None, epochs=args.epochs,
                       eps_warmup_epochs=args.epochs / 2, n_train=args.n_train,
                       n_eval=args.n_eval, eval_attacks=f"clean,pgd-50-10,{worst}",
                       seed=args.seed, device=args.device, out_dir=str(out),
                       monitor_every=0, progress=False)


def run(args) -> int:
    eps = eps_from_args(args.eps, args.eps_units)
    eps = DEMO_EPS_255 / 255 if eps is None else eps
    epochs = args.epochs
    worst = f"pgd-50-10+autoattack@{args.n_autoattack}"
    print(f"gradalign_fast demo: FGSM, FGSM-RS and FGSM+GradAlign on {args.dataset}, "
          f"eps = {eps * 255:g}/255 ({eps:.3f}), {epochs} epochs; compiled ops: "
          f"{'yes' if has_ops() else 'NO (' + str(ops_error()) + ')'}")
    finals = {}
    for method in ("fgsm", "fgsm_rs", "gradalign"):
        out = Path(args.out) / method
        cfg = run_config(args, method, eps, out, worst)
        if any((out / f).exists() for f in RUN_FILES):  # the demo's own earlier output
            shutil.rmtree(out)
        print(f"\ntraining {method} -> {out} ...", flush=True)
        finals[method] = train(cfg)
        _print_epochs(method, out)
        print(summary(finals[method]))
    print(_summary(finals, worst))
    from .plot import load_curves, plot_curves
    png = Path(args.out) / "fig_a.png"
    plot_curves([load_curves(Path(args.out) / m) for m in finals], png,
                title=f"MNIST, eps = {eps * 255:g}/255")
    print(f"\nplot: {png}  (PGD accuracy and gradient alignment per epoch)")
    if not args.no_bench:
        from ...benchmarking.step_bench import QUICK, format_table, run_bench
        print("\nstep time (bench --quick): median per step and ratio to FGSM, one run",
              flush=True)
        rows = run_bench(**{**QUICK, "device": args.device or "cpu",
                            "steps": DEMO_BENCH_STEPS})
        print(format_table(rows))
    return 0
