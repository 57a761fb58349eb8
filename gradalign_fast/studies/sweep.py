"""A resumable grid of training runs (method x eps x seed) and its results table.

Each run lives in OUT/<label>/eps<E>/seed<S>/ (a trainer run directory). A run with a
final.json is done and is read back; one with only a checkpoint is resumed; the rest start.
So an interrupted sweep continues where it stopped when called again.
"""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from ..training import evaluation
from ..training.monitor import MetricsLog
from .study import COLLAPSED, collapsed
from .tables import md_table
from ..training.trainer import RUN_FILES, TrainConfig, TrainingDiverged, train, write_json


@dataclass(frozen=True)
class MethodSpec:
    """A method with its options, e.g. 'gradalign:lam=1:rho=0.25' -> label, name, options."""

    label: str
    name: str
    options: dict = field(default_factory=dict, hash=False)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_options(pairs: list[str]) -> dict:
    """['key=value', ...] -> {key: value} (values are numbers, true/false or strings)."""
    options = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"method option {pair!r} is not key=value")
        options[key] = _value(val)
    return options


def parse_method(spec: str) -> MethodSpec:
    """'name[:key=value[:key=value...]]', e.g. 'gradalign:lam=2:fraction=0.25'."""
    name, *pairs = spec.split(":")
    return MethodSpec(spec, name, parse_options(pairs))


@dataclass(frozen=True)
class RunSpec:
    method: MethodSpec
    eps: float  # [0, 1] units
    seed: int

    def run_dir(self, out: Path) -> Path:
        safe = self.method.label.replace(":", "_").replace("=", "")
        return out / safe / f"eps{self.eps * 255:g}" / f"seed{self.seed}"


def grid(methods: list[str], eps: list[float], seeds: list[int]) -> list[RunSpec]:
    specs = [parse_method(m) for m in methods]
    # seeds outside methods: an interrupted sweep has every method for its first seeds
    return [RunSpec(m, e, s) for e in eps for s in seeds for m in specs]


def _config(base: TrainConfig, run: RunSpec, out: Path) -> TrainConfig:
    opts = dict(run.method.options)
    lam = opts.pop("lam", base.lam if run.method.name in ("gradalign", "cure", "llr") else None)
    amp = opts.pop("amp", base.amp)  # a precision policy per method label, e.g. amp=bf16
    return replace(base, method=run.method.name, eps=run.eps, seed=run.seed, lam=lam, amp=amp,
                   method_options=opts, out_dir=str(run.run_dir(out)), progress=False)


def _drop_unresumable(run_dir: Path, bar) -> None:
    """Removes the files of a run interrupted before its first checkpoint (nothing to resume;
    a new run refuses a directory holding them), saying so."""
    if (run_dir / "checkpoint.pt").exists():
        return
    found = [run_dir / f for f in RUN_FILES if (run_dir / f).exists()]
    for f in found:
        f.unlink()
    if found:
        bar.write(f"{run_dir}: interrupted before its first checkpoint; starting it again")


def diverged_final(cfg: TrainConfig, run_dir: Path, error: TrainingDiverged) -> dict:
    """The final.json of a run whose training loss became NaN/inf, so that a study goes on
    and counts it: its outputs are NaN, no prediction is correct (every accuracy 0: collapsed
    by the study's rule, reported as diverged by `diverged`, the trainer's message); the
    training time and the monitor's CO flags are read back from its metrics.jsonl."""
    epochs = [r for r in MetricsLog(run_dir / "metrics.jsonl").read() if r.get("kind") == "epoch"]
    co = next((r["epoch"] for r in epochs if r.get("co")), None)
    return {"method": cfg.method, "dataset": cfg.dataset, "model": cfg.model, "eps": cfg.eps,
            "eps_255": cfg.eps * 255, "lam": cfg.lam, "seed": cfg.seed,
            "epochs_done": len(epochs), "diverged": str(error),
            "accuracy": {a.name: 0.0 for a in evaluation.parse_attacks(cfg.eval_attacks)},
            "train_time_s": sum(r.get("epoch_time_s", 0.0) for r in epochs),
            "co": co is not None, "co_epoch": co, "out_dir": str(run_dir)}


def run_grid(runs: list[RunSpec], base: TrainConfig, out, progress: bool = True,
             train_missing: bool = True) -> list[dict]:
    """Trains (or reads back) every run; returns their final.json dicts, with 'label' added.
    With train_missing=False, unfinished runs are left out (a report of what exists). A run
    that diverges (NaN/inf loss) is recorded by diverged_final and the sweep goes on."""
    out = Path(out)
    finals = []
    bar = tqdm(runs, desc="sweep", disable=not progress)
    for run in bar:
        d = run.run_dir(out)
        bar.set_postfix_str(f"{run.method.label} eps={run.eps * 255:g} seed={run.seed}")
        if (d / "final.json").exists():
            final = json.loads((d / "final.json").read_text())
        elif not train_missing:
            continue
        else:
            _drop_unresumable(d, bar)
            cfg = replace(_config(base, run, out), resume=(d / "checkpoint.pt").exists())
            try:
                final = train(cfg)
            except TrainingDiverged as e:
                final = diverged_final(cfg, d, e)
                write_json(d / "final.json", final)
                bar.write(f"{d}: {e} Recorded as diverged (every accuracy 0); the sweep goes on.")
        finals.append({**final, "label": run.method.label, "run_dir": str(d)})
    return finals


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(finals: list[dict]) -> list[dict]:
    """One row per (label, eps): mean and std over seeds of each accuracy and the training
    time, how many seeds overfitted catastrophically and at which epochs."""
    groups: dict[tuple, list[dict]] = {}
    for f in finals:
        groups.setdefault((f["label"], round(f["eps_255"], 4)), []).append(f)
    rows = []
    for (label, eps_255), fs in groups.items():
        row = {"method": label, "eps_255": eps_255, "seeds": len(fs)}
        for attack in fs[0]["accuracy"]:
            row[attack], row[f"{attack}_std"] = _mean_std([f["accuracy"][attack] for f in fs])
        row["train_time_s"], row["train_time_s_std"] = _mean_std([f["train_time_s"] for f in fs])
        co = [f["co_epoch"] for f in fs if f["co"]]
        row["co_runs"] = len(co)
        row["co_epochs"] = ",".join(f"{e:.2g}" for e in co)
        # the end state, independent of the monitor's noisy 256-point batch
        row["collapsed_runs"] = sum(collapsed(f) for f in fs)
        rows.append(row)
    return rows


def write_tables(rows: list[dict], out) -> tuple[Path, Path]:
    """results.csv (all columns) and results.md (mean ± std, %) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    return out / "results.csv", out / "results.md"


def markdown_table(rows: list[dict]) -> str:
    meta = ("method", "eps_255", "seeds", "train_time_s", "co_runs", "co_epochs",
            "collapsed_runs")
    attacks = [k for k in rows[0] if k not in meta and not k.endswith("_std")] if rows else []
    head = ["method", "eps (/255)", "seeds"] + [f"{a} acc. (%)" for a in attacks] + [
        "train time (s)", "CO flagged (epoch)", f"collapsed (< {100 * COLLAPSED:g}%)"]
    table = []
    for r in rows:
        cells = [r["method"], f"{r['eps_255']:g}", str(r["seeds"])]
        cells += [f"{100 * r[a]:.1f} ± {100 * r[a + '_std']:.1f}" for a in attacks]
        cells.append(f"{r['train_time_s']:.0f} ± {r['train_time_s_std']:.0f}")
        cells.append(f"{r['co_runs']}/{r['seeds']}" + (f" ({r['co_epochs']})" if r["co_runs"]
                                                        else ""))
        cells.append(f"{r['collapsed_runs']}/{r['seeds']}")
        table.append(cells)
    return md_table(head, table) + "".join(f"\n\n{line}" for line in evaluation.legend(attacks))
