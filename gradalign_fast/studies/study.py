"""The study protocol: every method compared with a reference method (exact GradAlign) on
paired seeds, with intervals, and the verdict rules applied mechanically.

Rules (docs/results.md, "Verdict rules", fixed before the runs):
* primary measure: AutoAttack accuracy (else the strongest attack in final.json);
* a run has *collapsed* when its primary accuracy is below COLLAPSED (5%);
* CO rate = collapsed runs / seeds, with a 95% Wilson interval;
* difference to the reference = mean over paired seeds of (method - reference), with a 95%
  percentile-bootstrap interval;
* verdict, first rule that applies:
  1. "collapses more": the method collapses more often than the reference (one-sided Fisher
     exact test, p < 0.05);
  2. "too few seeds": fewer than MIN_SEEDS paired seeds (no claim below rests on them);
  3. "equivalent": the interval of the primary difference lies within +-MARGIN;
  4. "worse" / "better": the interval lies entirely below / above 0;
  5. "inconclusive": none of these (the seeds do not resolve the difference).
"""
from __future__ import annotations

import math

import numpy as np

from ..training import evaluation
from .stats import bootstrap_mean_ci, fisher_greater, wilson
from .tables import md_table

COLLAPSED = 0.05
MARGIN = 0.03  # equivalence margin on the primary accuracy (3 points)
P_COLLAPSE = 0.05
MIN_SEEDS = 5  # paired seeds needed for rules 3-5


def primary_attack(final: dict) -> str:
    """'autoattack' when evaluated, else the attack with the lowest accuracy."""
    acc = {k: v for k, v in final["accuracy"].items() if k != "clean"}
    if not acc:
        return "clean"
    return "autoattack" if "autoattack" in acc else min(acc, key=acc.get)


def collapsed(final: dict) -> bool:
    return final["accuracy"][primary_attack(final)] < COLLAPSED


def verdict(diff_ci: tuple[float, float], p_collapse: float, paired: int) -> str:
    lo, hi = diff_ci
    if p_collapse < P_COLLAPSE:
        return "collapses more"
    if paired < MIN_SEEDS:
        return "too few seeds"
    if -MARGIN <= lo and hi <= MARGIN:
        return "equivalent"
    if hi < 0:
        return "worse"
    if lo > 0:
        return "better"
    return "inconclusive"


def compare(finals: list[dict], reference: str) -> list[dict]:
    """One row per (method label, eps): per attack the paired mean difference to the
    `reference` label and its bootstrap interval, the CO rate with its Wilson interval, the
    Fisher p-value of collapsing more often than the reference, training time, verdict.
    Seeds without a reference run are left out of the differences (counted in `paired`)."""
    groups: dict[tuple, dict[int, dict]] = {}
    for f in finals:
        groups.setdefault((f["label"], round(f["eps_255"], 4)), {})[f["seed"]] = f
    rows = []
    for (label, eps_255), by_seed in groups.items():
        ref = groups.get((reference, eps_255))
        if ref is None:
            raise ValueError(f"no {reference!r} runs at eps {eps_255:g}/255 to compare with")
        seeds = sorted(by_seed)
        runs = [by_seed[s] for s in seeds]
        paired = [s for s in seeds if s in ref]
        k = sum(collapsed(f) for f in runs)
        k_ref = sum(collapsed(f) for f in ref.values())
        row = {"method": label, "eps_255": eps_255, "seeds": len(seeds), "paired": len(paired),
               "primary": primary_attack(runs[0]), "collapsed": k,
               "co_rate_ci": wilson(k, len(runs)),
               "p_collapse_more": fisher_greater(k, len(runs), k_ref, len(ref)),
               "train_time_s": sum(f["train_time_s"] for f in runs) / len(runs)}
        row["acc"], row["diff"] = {}, {}
        for attack in runs[0]["accuracy"]:
            vals = np.array([f["accuracy"][attack] for f in runs])
            row["acc"][attack] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1
                                  else 0.0)
            if paired:
                row["diff"][attack] = bootstrap_mean_ci(
                    [by_seed[s]["accuracy"][attack] - ref[s]["accuracy"][attack]
                     for s in paired])
        d = row["diff"].get(row["primary"])
        row["verdict"] = ("reference" if label == reference else
                          verdict(d[1:], row["p_collapse_more"], len(paired)) if d else "no paired seeds")
        rows.append(row)
    return rows


def markdown(rows: list[dict], reference: str) -> str:
    """The comparison table: accuracies as mean ± std (%), differences to the reference as
    mean [95% interval] (points), CO rate k/n [Wilson 95%], time, verdict."""
    attacks = list(rows[0]["acc"]) if rows else []
    robust = [a for a in attacks if a != "clean"]
    head = (["method", "eps (/255)", "seeds"] + [f"{a} (%)" for a in attacks]
            + [f"Δ {a} vs ref. (pts)" for a in robust]
            + ["collapsed [95% CI]", "p(collapses more)", "train time (s)", "verdict"])
    table = []
    for r in rows:
        cells = [f"`{r['method']}`", f"{r['eps_255']:g}", str(r["seeds"])]
        cells += [f"{100 * r['acc'][a][0]:.1f} ± {100 * r['acc'][a][1]:.1f}" for a in attacks]
        for a in robust:
            d = r["diff"].get(a)
            cells.append("—" if d is None or r["verdict"] == "reference" else
                         f"{100 * d[0]:+.1f} [no interval: 1 seed]" if math.isnan(d[1]) else
                         f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]")
        lo, hi = r["co_rate_ci"]
        cells += [f"{r['collapsed']}/{r['seeds']} [{100 * lo:.0f}, {100 * hi:.0f}]%",
                  f"{r['p_collapse_more']:.3f}", f"{r['train_time_s']:.0f}", r["verdict"]]
        table.append(cells)
    return (f"Reference: `{reference}`. Δ = mean paired difference (same seeds) with its 95% "
            f"bootstrap interval.\n\n" + md_table(head, table)
            + "".join(f"\n\n{line}" for line in evaluation.legend(attacks)))
