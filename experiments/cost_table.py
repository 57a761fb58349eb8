"""Total training time of every method relative to FGSM, from the runs of study_v2_cost.sh.

    python experiments/cost_table.py runs/study_v2/cost [--out cost.md]

Reads each pass's runs (OUT/pass*/<method label>/eps*/seed0/final.json and metrics.jsonl) and
prints one markdown row per method: its training time in each pass (the trainer's
train_time_s: the optimisation steps only, monitor and evaluation excluded), the ratio to FGSM's
time in the same pass (each pass its own ratio: the two passes ran in opposite method orders),
their mean, and the share of regularised steps of the methods that switch their regulariser
(metrics.jsonl's per-epoch reg_share, averaged over epochs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from gradalign_fast.training.monitor import MetricsLog
from gradalign_fast.studies.tables import md_table


def read_pass(folder: Path) -> dict[str, dict]:
    """{method label (its run folder's name): {"time": train_time_s, "share": reg_share or None}}."""
    runs = {}
    for final in sorted(folder.glob("*/eps*/seed0/final.json")):
        label = final.parents[2].name
        shares = [r["reg_share"] for r in MetricsLog(final.parent / "metrics.jsonl").read()
                  if r.get("kind") == "epoch" and "reg_share" in r]
        runs[label] = {"time": float(json.loads(final.read_text())["train_time_s"]),
                       "share": statistics.fmean(shares) if shares else None}
    return runs


def cost_rows(passes: list[dict[str, dict]], reference: str = "fgsm") -> list[list[str]]:
    """One row per method found in every pass: times, per-pass ratios to `reference`, mean."""
    missing = [i + 1 for i, p in enumerate(passes) if reference not in p]
    if missing:
        raise SystemExit(f"no {reference!r} run in pass(es) {missing}: nothing to divide by")
    ratios = {m: [p[m]["time"] / p[reference]["time"] for p in passes]
              for m in set.intersection(*(set(p) for p in passes))}
    rows = []
    for m in sorted(ratios, key=lambda m: statistics.fmean(ratios[m])):
        shares = [p[m]["share"] for p in passes if p[m]["share"] is not None]
        rows.append([f"`{m}`", " / ".join(f"{p[m]['time']:.0f}" for p in passes),
                     " / ".join(f"{r:.2f}" for r in ratios[m]),
                     f"**{statistics.fmean(ratios[m]):.2f}**",
                     " / ".join(f"{s:.2f}" for s in shares) if shares else "-"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the OUT/cost folder of study_v2_cost.sh")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    pass_dirs = sorted(d for d in args.folder.glob("pass*") if d.is_dir())
    if not pass_dirs:
        raise SystemExit(f"{args.folder}: no pass* folders (run experiments/study_v2_cost.sh)")
    passes = [read_pass(d) for d in pass_dirs]
    n = len(passes)
    table = md_table(["method", f"train time (s), pass 1..{n}", "ratio to FGSM per pass",
                      "ratio (mean)", "regularised share per pass"], cost_rows(passes))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
