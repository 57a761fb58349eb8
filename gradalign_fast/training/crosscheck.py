"""The toolkit's AutoAttack (torchattacks' components, `autoattack`) beside a second
implementation, the Adversarial Robustness Toolbox (ART): per attack and in total, on the
points a model classifies correctly.

ART has no FAB; its `AutoAttack` class runs the attacks it is given untargeted (or each of them
against every other class). The ART side here is APGD-CE and APGD-DLR (100 iterations, initial
step 2 eps as in Croce & Hein, one random start each), Square (5000 queries, one restart) and
ART's `AutoAttack` over those three. Both sides run in blocks of `autoattack.BLOCK` points with
fixed seeds (ART draws its random starts from numpy's global RNG) and score every adversarial
example inside the eps-ball and the box only (`autoattack.score`).

    python -m gradalign_fast.training.crosscheck CHECKPOINT... [--n 1000] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from . import autoattack, evaluation
from .datasets import load_dataset, take

OURS = autoattack.COMPONENTS  # run alone, then together as `autoattack`
THEIRS = ("apgd-ce", "apgd-dlr", "square")


def art():
    try:
        import art.attacks.evasion
        import art.estimators.classification
    except ImportError as e:
        raise ImportError("the cross-check needs the optional package "
                          "adversarial-robustness-toolbox (requirements.txt)") from e
    return art


def _art_attacks(model, x, eps: float, n_classes: int, steps: int, queries: int):
    a = art()
    clf = a.estimators.classification.PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
        nb_classes=n_classes, clip_values=(0.0, 1.0), device_type="cpu")
    ev = a.attacks.evasion

    def apgd(loss_type):
        return ev.AutoProjectedGradientDescent(
            clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
            targeted=False, nb_random_init=1, batch_size=autoattack.BLOCK, loss_type=loss_type,
            verbose=False)

    parts = {"apgd-ce": apgd("cross_entropy"), "apgd-dlr": apgd("difference_logits_ratio"),
             "square": ev.SquareAttack(clf, norm=np.inf, max_iter=queries,
                                       eps=eps, p_init=0.8, nb_restarts=1,
                                       batch_size=autoattack.BLOCK, verbose=False)}
    parts["autoattack"] = ev.AutoAttack(clf, norm=np.inf, eps=eps, eps_step=2 * eps,
                                        attacks=[parts[k] for k in THEIRS],
                                        batch_size=autoattack.BLOCK, targeted=False)
    return parts


def _blocks(x, y, fn) -> torch.Tensor:
    return torch.cat([fn(x[i:i + autoattack.BLOCK], y[i:i + autoattack.BLOCK])
                      for i in range(0, len(y), autoattack.BLOCK)])


def robust_sets(model, x, y, eps: float, seed: int = 0,
                steps: int = autoattack.STANDARD_ITERATIONS,
                queries: int = autoattack.SQUARE_QUERIES) -> tuple[dict, dict]:
    """({side/attack: bool [B] robust mask}, {side/attack: seconds}) for the torchattacks
    components alone and together ("ours/...") and ART's ("art/..."), each run on the points
    of x [B, ...] that model (in eval mode) classifies correctly; steps: APGD's and FAB's
    iterations, queries: Square's (the standard configuration by default)."""
    model.eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    idx = correct.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    n_classes = autoattack.num_classes(model, x)
    runs = {f"ours/{name}": (lambda a: lambda xb, yb: autoattack.run_checked(
        model, a, xb, yb, eps))(atk) for name, atk in zip(
        OURS, autoattack.build(model, eps, n_classes, seed, steps, queries).attacks)}
    runs["ours/autoattack"] = autoattack.robust_fn(model, "autoattack", eps, seed, steps,
                                                   queries)
    for name, atk in _art_attacks(model, x, eps, n_classes, steps, queries).items():
        def theirs(xb, yb, atk=atk):
            np.random.seed(seed)
            adv = atk.generate(x=xb.numpy(), y=yb.numpy())
            return autoattack.score(model, xb, torch.from_numpy(adv).to(xb.dtype), yb, eps)
        runs[f"art/{name}"] = theirs
    masks, times = {}, {}
    for key, fn in runs.items():
        t0 = time.perf_counter()
        mask = torch.zeros(len(y), dtype=torch.bool)
        if len(idx):
            mask[idx] = _blocks(xs, ys, fn)
        masks[key], times[key] = mask, time.perf_counter() - t0
    return masks, times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=1000, help="the first N test points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    from .checkpoint import load_checkpoint

    results = []
    for ckpt in args.checkpoints:
        model = load_checkpoint(ckpt, "cpu").eval()
        cfg = model.config
        x, y = take(load_dataset(cfg["dataset"], cfg["data_dir"], train=False), args.n)
        masks, times = robust_sets(model, x, y, cfg["eps"], args.seed)
        (pgd,) = evaluation.parse_attacks("pgd-50-10")
        masks["ours/pgd-50-10"] = evaluation._Masks(
            model, torch.utils.data.TensorDataset(x, y), cfg["eps"], 256, "cpu", args.seed,
            False, "any").get(pgd.parts, len(y))
        for side in ("ours", "art"):  # robust to PGD-50-10 and to the side's AutoAttack
            masks[f"{side}/pgd-50-10&autoattack"] = masks["ours/pgd-50-10"] & masks[
                f"{side}/autoattack"]
        row = {"checkpoint": ckpt, "n": len(y), "eps_255": cfg["eps"] * 255,
               "accuracy": {k: m.float().mean().item() for k, m in masks.items()},
               "time_s": times,
               "ours_vs_art_autoattack_disagree": int(
                   (masks["ours/autoattack"] != masks["art/autoattack"]).sum())}
        results.append(row)
        print(json.dumps({k: row[k] for k in ("checkpoint", "accuracy", "time_s")}), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
