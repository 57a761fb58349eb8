"""`python -m gradalign_fast train`: one training run (gradalign_fast.training.trainer.train)."""
from __future__ import annotations

import os

from ...precision import POLICIES
from ...training.methods import METHODS
from ...training.optim import OPTIMIZERS
from ...training.recipe import DEFAULT_RECIPES, RECIPES
from ...studies.sweep import parse_options
from ...training.trainer import TrainConfig, train

EPS_UNITS = ("255", "unit")
EXAMPLES = """examples:
  python -m gradalign_fast train --method gradalign --epochs 1 --n-train 512 --n-eval 100 \\
      --eval-attacks clean,pgd-5-1 --out runs/example_ga
  python -m gradalign_fast train --method fgsm --eps 0.3 --eps-units unit --epochs 1 \\
      --n-train 512 --n-eval 100 --eval-attacks clean,pgd-5-1 --out runs/example_fgsm
"""


def add_eps_arguments(parser, default_help: str) -> None:
    parser.add_argument("--eps", type=float, default=None,
                        help=f"L-inf radius in /255 units (8 means 8/255; MNIST's 0.3 is 76.5); "
                             f"None: {default_help}")
    parser.add_argument("--eps-units", choices=EPS_UNITS, default="255",
                        help="'unit' to give --eps in [0, 1] input units instead (0.3)")


def eps_from_args(eps, units: str):
    """--eps in [0, 1] units; a value in (0, 1) with /255 units is rejected as a likely mix-up."""
    if eps is None:
        return None
    if units == "unit":
        if not 0 <= eps <= 1:
            raise ValueError(f"--eps {eps} with --eps-units unit must be in [0, 1]")
        return eps
    if 0 < eps < 1:
        raise ValueError(f"--eps {eps} looks like [0, 1] units, but --eps is in /255 units "
                         f"(8 means 8/255): pass --eps {eps * 255:g}, or add --eps-units unit")
    if not 0 <= eps <= 255:
        raise ValueError(f"--eps {eps} is outside [0, 255] (/255 units)")
    return eps / 255


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--method", default="gradalign", help=f"one of {', '.join(sorted(METHODS))}")
    a("--dataset", default="mnist_subset",
      help="mnist_subset (shipped), mnist, cifar10, svhn, imagenet")
    a("--data-dir", default=None, help="where the dataset's files are (not for mnist_subset)")
    a("--recipe", choices=tuple(RECIPES), default=None,
      help="training recipe (docs/recipes.md); None: the dataset's ("
           + ", ".join(f"{d}: {r}" for d, r in DEFAULT_RECIPES.items()) + ")")
    a("--model", default=None,
      help="None: the recipe's (mnist_cnn, preact_resnet18, resnet50); also cnn (the "
           "authors' one-layer CNN), preact_resnet18_std (Rice et al.'s form)")
    add_eps_arguments(parser, "the dataset's (8/255; 0.3 for MNIST)")
    a("--lam", type=float, default=None,
      help="regulariser weight; None: GradAlign the paper's lambda for --eps, LLR 4; CURE "
           "needs it")
    a("--epochs", type=int, default=None, help="training epochs; None: the dataset's recipe")
    a("--batch-size", type=int, default=None,
      help="global batch size (split over DDP processes); None: the recipe's (128)")
    a("--lr-max", type=float, default=None,
      help="peak of the cyclic learning rate; None: the recipe's")
    a("--optimizer", choices=OPTIMIZERS, default=None, help="None: the recipe's")
    a("--lr-schedule", default=None, help="cyclic, piecewise or constant; None: cyclic")
    a("--eps-warmup-epochs", type=float, default=None,
      help="eps ramped up linearly from 0 over these epochs; None: the recipe's (scaled to "
           "the run when longer than --epochs)")
    a("--n-train", type=int, default=None,
      help="train on the first N training points; None: all but the monitor's 256")
    a("--n-eval", type=int, default=1000, help="final evaluation on the first N test points")
    a("--full-eval", action="store_true", help="final evaluation on the whole test set")
    a("--eval-attacks", default=TrainConfig.eval_attacks,
      help="attack specs of the final evaluation, comma-separated: clean, "
           "pgd-STEPS-RESTARTS, autoattack, square[-QUERIES]; A+B: worst case (B only on the "
           "points A left robust); @N: on the first N points")
    a("--out", default="runs/run",
      help="output directory (config.json, metrics.jsonl, checkpoint.pt, best.pt, final.json)")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    a("--seed", type=int, default=0, help="seed of the initialisation, data order and noise")
    a("--device", default=None, help="cpu, cuda, cuda:1; None: cuda if available, else cpu")
    a("--amp", choices=tuple(POLICIES), default=None,
      help="mixed-precision policy (gradalign_fast.precision): "
           + "; ".join(f"{p.name}: {p.text}" for p in POLICIES.values()))
    a("--method-option", action="append", default=[], metavar="KEY=VALUE",
      help="an option of the method, repeatable; GradAlign's approximate modes: fraction=0.25, "
           "every=2, mode=linearity (see GradAlignLoss)")
    a("--stop-on-co", action="store_true", help="stop at catastrophic overfitting")
    a("--monitor-every", type=int, default=200,
      help="CO-monitor period in iterations (0: epoch ends only)")
    a("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    a("--workers", type=int, default=0, help="data-loading processes")
    a("--no-progress", action="store_true",
      help="no progress bars and no per-epoch lines (only the final summary)")


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        method=args.method, method_options=parse_options(args.method_option),
        dataset=args.dataset, recipe=args.recipe, data_dir=args.data_dir, model=args.model,
        eps=eps_from_args(args.eps, args.eps_units), lam=args.lam, epochs=args.epochs,
        batch_size=args.batch_size, lr_max=args.lr_max, optimizer=args.optimizer,
        lr_schedule=args.lr_schedule,
        eps_warmup_epochs=args.eps_warmup_epochs, n_train=args.n_train,
        n_eval=None if args.full_eval else args.n_eval, eval_attacks=args.eval_attacks,
        seed=args.seed, device=args.device, amp=args.amp, out_dir=args.out,
        monitor_every=args.monitor_every, stop_on_co=args.stop_on_co, resume=args.resume,
        sync_bn=args.sync_bn, num_workers=args.workers, progress=not args.no_progress)


def summary(final: dict) -> str:
    """The one-line result of a run (from its final.json), gradient-masking warnings after."""
    from ...training.evaluation import masking_warnings

    accs = ", ".join(f"{k} {v:.2%}" for k, v in final["accuracy"].items())
    co = f"; CO at epoch {final['co_epoch']:.3g}" if final["co"] else ""
    line = (f"{final['method']} eps={final['eps_255']:g}/255 (trained up to "
            f"{final['eps_max_trained_255']:g}/255) on {final['dataset']}: {accs} "
            f"(n={final['n_eval']}); {final['epochs_done']} epochs in "
            f"{final['train_time_s']:.1f}s{co}; wrote {final['out_dir']}/final.json")
    return "\n".join([line] + [f"WARNING: {w}" for w in masking_warnings(final)])


def run(args) -> int:
    cfg = config_from_args(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"train: {cfg.method} -> {os.path.abspath(cfg.out_dir)}", flush=True)
    final = train(cfg)
    if final:  # rank 0
        print(summary(final))
    return 0
