"""The toolkit's AutoAttack (torchattacks' components, `autoattack`) beside a second
implementation, the Adversarial Robustness Toolbox (ART): the robust set after each attack
(each run on the points the ones before it left robust, as AutoAttack does) and in total.

ART has no FAB; its `AutoAttack` class runs the attacks it is given untargeted (or each of them
against every other class). The ART side here is ART's `AutoAttack` over APGD-CE and APGD-DLR
(100 iterations, initial step 2 eps as in Croce & Hein, one random start each) and Square (5000
queries, one restart), untargeted, split by the attack that fooled each point. Both sides run
in blocks of `autoattack.BLOCK` points with
fixed seeds (ART draws its random starts from numpy's global RNG) and score every adversarial
example inside the eps-ball and the box only (`autoattack.score`).

    python -m gradalign_fast.studies.crosscheck CHECKPOINT... [--n 1000] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ..training import autoattack, evaluation
from ..training.datasets import load_dataset, take

OURS = autoattack.COMPONENTS
THEIRS = ("apgd-ce", "apgd-dlr", "square")


def art():
    try:
        import art.attacks.evasion
        import art.estimators.classification
    except ImportError as e:
        raise ImportError("the cross-check needs the optional package "
                          "adversarial-robustness-toolbox (requirements.txt)") from e
    return art


def _art_autoattack(model, x, eps: float, n_classes: int, steps: int, queries: int):
    """ART's AutoAttack over APGD-CE, APGD-DLR and Square, untargeted."""
    a = art()
    clf = a.estimators.classification.PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
        nb_classes=n_classes, clip_values=(0.0, 1.0), device_type="cpu")
    ev = a.attacks.evasion

    def apgd(loss_type):
        return ev.AutoProjectedGradientDescent(
            clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps, targeted=False,
            nb_random_init=1, batch_size=autoattack.BLOCK, loss_type=loss_type, verbose=False)

    parts = [apgd("cross_entropy"), apgd("difference_logits_ratio"),
             ev.SquareAttack(clf, norm=np.inf, max_iter=queries, eps=eps, p_init=0.8,
                             nb_restarts=1, batch_size=autoattack.BLOCK, verbose=False)]
    return ev.AutoAttack(clf, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=parts,
                         batch_size=autoattack.BLOCK, targeted=False)


def robust_sets(model, x, y, eps: float, seed: int = 0,
                steps: int = autoattack.STANDARD_ITERATIONS,
                queries: int = autoattack.SQUARE_QUERIES) -> tuple[dict, dict]:
    """({side/attacks: bool [B] robust mask}, {side/attack: seconds}): the points of x [B, ...]
    that survive each side's attacks in order, cumulatively ("ours/apgd-ce", "ours/+apgd-t",
    ..., "ours/autoattack": torchattacks' components, each on the survivors of the ones before
    it, as in `autoattack`; "art/apgd-ce", "art/+apgd-dlr", "art/autoattack": ART's AutoAttack,
    split by the attack that fooled each point); steps: APGD's and FAB's iterations, queries:
    Square's (the standard configuration by default)."""
    model.eval()
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    n_classes = autoattack.num_classes(model, x)
    masks, times = {}, {}
    atks = autoattack.build(model, eps, n_classes, seed, steps, queries).attacks
    for k, (name, atk) in enumerate(zip(OURS, atks)):
        t0 = time.perf_counter()
        robust = robust.clone()
        for i in range(0, len(y), autoattack.BLOCK):  # each block's survivors, as `autoattack`
            todo = i + robust[i:i + autoattack.BLOCK].nonzero().squeeze(1)
            if len(todo):
                robust[todo] = autoattack.run_checked(model, atk, x[todo], y[todo], eps)
        key = "autoattack" if k == len(OURS) - 1 else ("" if k == 0 else "+") + name
        masks[f"ours/{key}"], times[f"ours/{name}"] = robust, time.perf_counter() - t0
    aa = _art_autoattack(model, x, eps, n_classes, steps, queries)
    t0 = time.perf_counter()
    blocks = [_art_block(aa, x[i:i + autoattack.BLOCK], y[i:i + autoattack.BLOCK], seed)
              for i in range(0, len(y), autoattack.BLOCK)]
    times["art/autoattack"] = time.perf_counter() - t0
    adv = torch.cat([a for a, _ in blocks]).to(x.dtype)
    masks["art/autoattack"] = autoattack.score(model, x, adv, y, eps)
    # per point the index of the attack that fooled it; -1: none did, -2: misclassified clean
    best = torch.cat([b for _, b in blocks])
    for k, name in enumerate(THEIRS[:-1]):
        masks[f"art/{'' if k == 0 else '+'}{name}"] = (best == -1) | (best > k)
    return masks, times


def _art_block(aa, x, y, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ART's adversarial examples for one block and, per point, the attack that fooled it."""
    np.random.seed(seed)  # ART draws its random starts from numpy's global RNG
    adv = aa.generate(x=x.numpy(), y=y.numpy())
    return torch.from_numpy(adv), torch.from_numpy(np.asarray(aa.best_attacks, dtype=np.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=1000, help="the first N test points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    from ..training.checkpoint import load_checkpoint

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
