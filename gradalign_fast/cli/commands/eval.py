"""`python -m gradalign_fast eval`: accuracy of a checkpoint under clean / PGD / AutoAttack /
Square, with a gradient-masking check where PGD and AutoAttack or Square are both run."""
from __future__ import annotations

import json

from ...training import evaluation
from ...training.checkpoint import load_checkpoint
from ...training.datasets import load_dataset
from ...training.rundir import check_output_file
from ...training.trainer import check_device
from .train import add_eps_arguments, eps_from_args

EXAMPLES = """examples:
  python -m gradalign_fast eval --checkpoint runs/example_ga/checkpoint.pt --n 50 \\
      --attacks clean,pgd-5-2
  python -m gradalign_fast eval --checkpoint runs/example_ga/best.pt --n 20 \\
      --attacks clean,pgd-5-2,square-100 --out eval.json
  python -m gradalign_fast eval --checkpoint runs/example_ga/checkpoint.pt --n 20 \\
      --attacks pgd-5-2,pgd-5-2+autoattack@10 --pgd-select max_loss
"""


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--checkpoint", required=True, help="a run's checkpoint.pt (final model) or best.pt")
    a("--attacks", default="clean,pgd-50-10",
      help="comma-separated: clean, pgd-STEPS-RESTARTS (e.g. pgd-50-10), autoattack (the "
           "standard version), autoattack-fast (10 iterations), square[-QUERIES] "
           "(gradient-free); A+B: worst case, B only on the points A left robust (e.g. "
           "pgd-50-10+autoattack); @N: on the first N points")
    a("--n", type=int, default=1000, help="evaluate on the first N test points")
    a("--full", action="store_true", help="evaluate on the whole test set")
    add_eps_arguments(parser, "the checkpoint's training eps")
    a("--data-dir", default=None, help="the test data; None: the checkpoint's")
    a("--batch-size", type=int, default=256, help="points per batch (PGD runs its restarts "
      "of a batch together: restarts x batch inputs per forward)")
    a("--pgd-select", choices=evaluation.PGD_SELECT, default="any",
      help="any: a point is robust only if no iterate of any restart fools it (stops "
           "attacking fooled points); max_loss: the authors' attack_pgd, the final delta of "
           "the restart of highest loss")
    a("--device", default=None, help="cpu, cuda or cuda:N; None: cuda if available, as train")
    a("--seed", type=int, default=0, help="seed of the random starts")
    a("--out", default=None, help="also write the results to this JSON file")
    a("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    attacks = evaluation.parse_attacks(args.attacks)
    if args.out:
        check_output_file(args.out)  # before the evaluation, not after it
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    model = load_checkpoint(args.checkpoint, device)
    cfg = model.config
    if cfg.get("user_data"):
        raise ValueError(f"{args.checkpoint} was trained on data of your own: evaluate it in "
                         f"Python, gradalign_fast.training.evaluation.evaluate(model, "
                         f"your_test_data, eps, attacks)")
    eps = eps_from_args(args.eps, args.eps_units)
    eps = cfg["eps"] if eps is None else eps
    data_dir = cfg["data_dir"] if args.data_dir is None else args.data_dir
    test = load_dataset(cfg["dataset"], data_dir, train=False)
    res = evaluation.evaluate(model, test, eps, args.attacks, None if args.full else args.n,
                              args.batch_size, device, args.seed, not args.no_progress,
                              args.pgd_select)
    res = {"checkpoint": str(args.checkpoint), "dataset": cfg["dataset"], "eps": eps,
           "eps_255": eps * 255, "pgd_select": args.pgd_select, **res}
    width = max(12, *(len(s.name) for s in attacks))
    for s in attacks:
        print(f"{s.name:>{width}}: {res[s.name]:.2%}  ({res['time_s'][s.name]:.1f}s, "
              f"n={res['points'][s.name]})")
    print(f"on the first {res['n']} {cfg['dataset']} test points, eps = {eps * 255:g}/255")
    for w in evaluation.masking_warnings(res):
        print(f"WARNING: {w}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0
