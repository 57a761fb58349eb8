"""`python -m gradalign_fast eval`: accuracy of a checkpoint under clean/PGD/AutoAttack."""
from __future__ import annotations

import json
import sys

from ...training import evaluation
from ...training.checkpoint import load_checkpoint
from ...training.datasets import load_dataset
from ...training.trainer import USER_ERRORS
from .train import add_eps_arguments, eps_from_args


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--checkpoint", required=True, help="a run's checkpoint.pt or best.pt")
    a("--attacks", default="clean,pgd-50-10",
      help="comma-separated: clean, pgd-STEPS-RESTARTS (e.g. pgd-50-10), autoattack")
    a("--n", type=int, default=1000, help="evaluate on the first N test points")
    a("--full", action="store_true", help="evaluate on the whole test set")
    add_eps_arguments(parser, "the checkpoint's training eps")
    a("--data-dir", default=None, help="default: the checkpoint's")
    a("--batch-size", type=int, default=256)
    a("--device", default="cpu")
    a("--seed", type=int, default=0)
    a("--out", default=None, help="also write the results to this JSON file")
    a("--no-progress", action="store_true")


def run(args) -> int:
    try:
        attacks = evaluation.parse_attacks(args.attacks)
        model = load_checkpoint(args.checkpoint, args.device)
        cfg = model.config
        eps = eps_from_args(args.eps, args.eps_units)
        eps = cfg["eps"] if eps is None else eps
        data_dir = cfg["data_dir"] if args.data_dir is None else args.data_dir
        test = load_dataset(cfg["dataset"], data_dir, train=False)
        res = evaluation.evaluate(model, test, eps, attacks, None if args.full else args.n,
                                  args.batch_size, args.device, args.seed,
                                  not args.no_progress)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    res = {"checkpoint": str(args.checkpoint), "dataset": cfg["dataset"], "eps": eps,
           "eps_255": eps * 255, **res}
    for name in attacks:
        print(f"{name:>12}: {res[name]:.2%}  ({res['time_s'][name]:.1f}s)")
    print(f"on the first {res['n']} {cfg['dataset']} test points, eps = {eps * 255:g}/255")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0
