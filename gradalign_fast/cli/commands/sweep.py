"""`python -m gradalign_fast sweep`: train and evaluate a grid of (method, eps, seed), resumable,
then write OUT/results.csv, OUT/results.md and one Fig. A plot per eps (seed 0 of each method).

    python -m gradalign_fast sweep --dataset mnist --data-dir ../shared/data \\
        --method fgsm --method gradalign:lam=1 --eps 64 --eps 76.5 --seeds 0,1,2 --out runs/s
"""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from ...training.sweep import grid, run_grid, summarize, write_tables, markdown_table
from ...training.trainer import USER_ERRORS, TrainConfig
from .train import eps_from_args

# TrainConfig fields settable from the command line, with their types.
_PASSTHROUGH = {"dataset": str, "data_dir": str, "model": str, "epochs": int,
                "batch_size": int, "lr_max": float, "eps_warmup_epochs": float,
                "n_train": int, "n_eval": int, "eval_attacks": str, "device": str,
                "monitor_every": int, "lam": float}


def add_passthrough(parser) -> None:
    """The TrainConfig options of _PASSTHROUGH, with TrainConfig's defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, typ in _PASSTHROUGH.items():
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=defaults[name])


def passthrough_config(args) -> TrainConfig:
    """A TrainConfig from the _PASSTHROUGH options of parsed `args`."""
    return TrainConfig(**{k: getattr(args, k) for k in _PASSTHROUGH})


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--method", action="append", required=True,
      help="method[:key=value...], repeatable; e.g. fgsm, gradalign:lam=1, gradalign:rho=0.25")
    a("--eps", action="append", type=float, required=True, help="/255 units, repeatable")
    a("--eps-units", choices=("255", "unit"), default="255")
    a("--seeds", default="0,1,2", help="comma-separated seeds")
    a("--out", default="runs/sweep")
    add_passthrough(parser)
    a("--no-plots", action="store_true")
    a("--report-only", action="store_true",
      help="train nothing: the table and plots of the runs of the grid that have finished")
    a("--reference", default=None, metavar="METHOD",
      help="also compare every method with this one (a --method label, e.g. gradalign:lam=1) "
           "on paired seeds: differences with bootstrap intervals, CO rates with Wilson "
           "intervals, verdicts (OUT/comparison.md)")


def run(args) -> int:
    try:
        eps = [eps_from_args(e, args.eps_units) for e in args.eps]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        runs = grid(args.method, eps, seeds)
        base = passthrough_config(args)
        finals = run_grid(runs, base, args.out, train_missing=not args.report_only)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not finals:
        print("error: no finished run in the grid", file=sys.stderr)
        return 2
    rows = summarize(finals)
    csv_path, md_path = write_tables(rows, args.out)
    print(markdown_table(rows))
    print(f"\nwrote {csv_path} and {md_path}")
    if args.reference is not None:
        from ...training.study import compare, markdown

        try:
            table = markdown(compare(finals, args.reference), args.reference)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        (Path(args.out) / "comparison.md").write_text(table + "\n")
        print(f"\n{table}\nwrote {Path(args.out) / 'comparison.md'}")
    if not args.no_plots:
        from .plot import load_curves, plot_curves

        for e in eps:
            dirs = [Path(f["run_dir"]) for f in finals
                    if abs(f["eps"] - e) < 1e-9 and f["seed"] == seeds[0]]
            png = Path(args.out) / f"fig_a_eps{e * 255:g}.png"
            plot_curves([load_curves(d) for d in dirs], png,
                        title=f"{args.dataset}, eps = {e * 255:g}/255, seed {seeds[0]}")
            print(f"plot: {png}")
    return 0
