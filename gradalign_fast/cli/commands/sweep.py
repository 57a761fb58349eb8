"""`python -m gradalign_fast sweep`: train and evaluate a grid of (method, eps, seed), resumable,
then write OUT/results.csv, OUT/results.md and one Fig. A plot per eps (seed 0 of each method).

    python -m gradalign_fast sweep --dataset mnist --data-dir ../shared/data \\
        --method fgsm --method gradalign:lam=1 --eps 64 --eps 76.5 --seeds 0,1,2 --out runs/s

(the examples of `sweep --help`, below, are run by the tests)
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ...studies.sweep import grid, run_grid, summarize, write_tables, markdown_table
from ...training.trainer import TrainConfig
from .train import eps_from_args

EXAMPLES = """examples:
  python -m gradalign_fast sweep --method fgsm --method gradalign:lam=1:fraction=0.25 \\
      --eps 76.5 --seeds 0 --epochs 1 --n-train 256 --n-eval 20 --eval-attacks clean,pgd-3-1 \\
      --out runs/example_sweep
"""

# TrainConfig fields settable from the command line: their types and help texts.
_PASSTHROUGH = {
    "dataset": (str, "mnist_subset (shipped), mnist, cifar10, svhn, imagenet"),
    "data_dir": (str, "where the dataset's files are (not for mnist_subset)"),
    "recipe": (str, "training recipe (docs/recipes.md); None: the dataset's"),
    "optimizer": (str, "sgd or adam; None: the recipe's"),
    "model": (str, "None: the dataset's"),
    "epochs": (int, "training epochs; None: the dataset's recipe"),
    "batch_size": (int, "batch size; None: the recipe's"),
    "lr_max": (float, "peak of the cyclic learning rate; None: the recipe's"),
    "eps_warmup_epochs": (float, "eps ramp length; None: the recipe's"),
    "n_train": (int, "train on the first N training points; None: all but the monitor's"),
    "n_eval": (int, "final evaluation on the first N test points"),
    "eval_attacks": (str, "attack specs of the final evaluation (see `train --help`)"),
    "device": (str, "cpu, cuda or cuda:N; None: cuda if available"),
    "monitor_every": (int, "CO-monitor period in iterations (0: epoch ends only)"),
    "lam": (float, "lambda of the lam methods without lam= in --method"),
    "amp": (str, "mixed-precision policy of every run without amp= in --method (see "
                 "`train --help`); None: float32"),
}


def add_passthrough(parser) -> None:
    """The TrainConfig options of _PASSTHROUGH, with TrainConfig's defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, (typ, text) in _PASSTHROUGH.items():
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=defaults[name],
                            help=text)


def passthrough_config(args) -> TrainConfig:
    """A TrainConfig from the _PASSTHROUGH options of parsed `args`."""
    return TrainConfig(**{k: getattr(args, k) for k in _PASSTHROUGH})


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--method", action="append", required=True,
      help="method[:key=value...], repeatable; e.g. fgsm, gradalign:lam=1, "
           "gradalign:fraction=0.25, gradalign:amp=bf16-reg-fp32 (lam, amp and the method's "
           "options, see GradAlignLoss)")
    a("--eps", action="append", type=float, required=True,
      help="L-inf radius in /255 units, repeatable")
    a("--eps-units", choices=("255", "unit"), default="255",
      help="'unit' to give --eps in [0, 1] input units instead")
    a("--seeds", default="0,1,2", help="comma-separated seeds")
    a("--out", default="runs/sweep",
      help="output directory: one run directory per (method, eps, seed), results.csv/.md")
    add_passthrough(parser)
    a("--no-plots", action="store_true", help="no Fig. A plots")
    a("--report-only", action="store_true",
      help="train nothing: the table and plots of the runs of the grid that have finished")
    a("--reference", default=None, metavar="METHOD",
      help="also compare every method with this one (a --method label, e.g. gradalign:lam=1) "
           "on paired seeds: differences with bootstrap intervals, CO rates with Wilson "
           "intervals, verdicts (OUT/comparison.md)")


def run(args) -> int:
    eps = [eps_from_args(e, args.eps_units) for e in args.eps]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers") from None
    runs = grid(args.method, eps, seeds)
    finals = run_grid(runs, passthrough_config(args), args.out,
                      train_missing=not args.report_only)
    if not finals:
        raise ValueError("no finished run in the grid")
    rows = summarize(finals)
    csv_path, md_path = write_tables(rows, args.out)
    print(markdown_table(rows))
    print(f"\nwrote {csv_path} and {md_path}")
    if args.reference is not None:
        from ...studies.study import compare, markdown

        table = markdown(compare(finals, args.reference), args.reference)
        (Path(args.out) / "comparison.md").write_text(table + "\n")
        print(f"\n{table}\nwrote {Path(args.out) / 'comparison.md'}")
    if not args.no_plots:
        from .plot import load_curves, plot_curves

        for e in eps:
            # a run that diverged before its first epoch ended has no curve to draw
            dirs = [Path(f["run_dir"]) for f in finals
                    if abs(f["eps"] - e) < 1e-9 and f["seed"] == seeds[0] and f["epochs_done"]]
            if not dirs:
                continue
            png = Path(args.out) / f"fig_a_eps{e * 255:g}.png"
            plot_curves([load_curves(d) for d in dirs], png,
                        title=f"{args.dataset}, eps = {e * 255:g}/255, seed {seeds[0]}")
            print(f"plot: {png}")
    return 0
