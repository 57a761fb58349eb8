"""`python -m gradalign_fast fidelity`: gradient fidelity of approximate regularisers along an
exact-GradAlign run (see gradalign_fast.studies.fidelity). Writes OUT/fidelity.json,
OUT/fidelity.md and OUT/fidelity.png.

    python -m gradalign_fast fidelity --run runs/traj --dataset mnist_subset --epochs 4 \\
        --snapshot-every 50 --mode gradalign:fraction=0.2 --mode gradalign:every=4

With --precision POLICY (repeatable; gradalign_fast.precision.POLICIES), the rounding error of
mixed-precision policies is measured along the same run (paired draws against float32):
OUT/precision.json, OUT/precision.md, OUT/precision.png.

The run directory is trained first (exact GradAlign, weight snapshots every
--snapshot-every iterations) when it holds no snapshots yet; its training options are those of
`train`.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ...precision import POLICIES
from ...studies import fidelity
from ...training.trainer import train
from .sweep import add_passthrough, passthrough_config
from .train import add_eps_arguments, eps_from_args

EXAMPLES = """examples:
  python -m gradalign_fast fidelity --run runs/example_traj --n-train 256 --epochs 1 \\
      --batch-size 64 --eps 76.5 --lam 1 --snapshot-every 2 --eval-attacks clean --n-eval 64 \\
      --draws 2 --ref-draws 2 --batch 16 --mode gradalign:fraction=0.5
  python -m gradalign_fast fidelity --run runs/example_traj --precision bf16 \
      --precision bf16-reg-fp32 --draws 2 --batch 16
"""


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--run", required=True, help="run directory of the exact-GradAlign trajectory "
      "(trained here first when it has no snapshots/)")
    a("--mode", action="append", default=[],
      help="method[:key=value...] whose regulariser is compared, repeatable; e.g. "
           "gradalign:fraction=0.2, gradalign:every=4, gradalign:mode=linearity")
    a("--precision", action="append", default=[], choices=tuple(POLICIES),
      help="mixed-precision policy whose rounding error is measured, repeatable: "
           + ", ".join(POLICIES))
    a("--draws", type=int, default=16, help="draws of each mode's randomness per snapshot")
    a("--ref-draws", type=int, default=32, help="draws of exact GradAlign for the reference")
    a("--batch", type=int, default=128, help="fixed batch: the first training points")
    a("--out", default=None, help="output folder (default: RUN/fidelity)")
    a("--co-iteration", type=int, default=None,
      help="iteration at which FGSM overfits catastrophically in the same set-up (marked)")
    add_eps_arguments(parser, "the dataset's recipe")
    a("--snapshot-every", type=int, default=50, help="iterations between snapshots")
    a("--seed", type=int, default=0, help="seed of the trajectory run and of the draws")
    add_passthrough(parser)


def run(args) -> int:
    if args.draws < 2 or args.ref_draws < 2:
        raise ValueError("--draws and --ref-draws must be >= 2")
    if not args.mode and not args.precision:
        raise ValueError("nothing to measure: give --mode and/or --precision")
    run_dir = Path(args.run)
    if not (run_dir / "snapshots").is_dir():
        cfg = replace(passthrough_config(args), method=fidelity.EXACT, seed=args.seed,
                      eps=eps_from_args(args.eps, args.eps_units), out_dir=str(run_dir),
                      snapshot_every=args.snapshot_every)
        print(f"training the exact-GradAlign trajectory in {run_dir} "
              f"(snapshots every {args.snapshot_every} iterations)")
        train(cfg)
    out = Path(args.out) if args.out else run_dir / "fidelity"
    out.mkdir(parents=True, exist_ok=True)
    if args.mode:
        _modes(args, run_dir, out)
    if args.precision:
        _precision(args, run_dir, out)
    return 0


def _write(out: Path, stem: str, result: dict, table: str, plot) -> None:
    """OUT/STEM.json, OUT/STEM.md (table) and OUT/STEM.png (plot(path)); prints the table."""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    plot(out / f"{stem}.png")
    print(f"\n{table}\n\nwrote " + ", ".join(str(out / f"{stem}.{e}") for e in
                                            ("json", "md", "png")))


def _precision(args, run_dir: Path, out: Path) -> None:
    result = fidelity.measure_precision(
        run_dir, args.precision, args.draws, args.batch, args.seed,
        progress=lambda r: print(f"  it {r['iteration']:>6}  {r['policy']:<16} reg. grad cos "
                                 f"{r['reg_cos']:.4f}  loss grad cos {r['loss_cos']:.5f}",
                                 flush=True))
    _write(out, "precision", result, fidelity.precision_markdown(result),
           lambda path: fidelity.precision_plot(result, path))


def _modes(args, run_dir: Path, out: Path) -> None:
    result = fidelity.measure(
        run_dir, args.mode, args.draws, args.ref_draws, args.batch, args.seed,
        progress=lambda r: print(f"  it {r['iteration']:>6}  {r['mode']:<40} "
                                 f"cos {r['cos']:.3f}  rel. bias {r['rel_bias']:.3f}",
                                 flush=True))
    _write(out, "fidelity", result, fidelity.markdown(result),
           lambda path: fidelity.plot(result, path, args.co_iteration))
