"""experiments/cost_table.py: the total-training-time table of the cost study, on fake runs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "cost_table.py"


def _run_dir(root: Path, label: str, time_s: float, shares=None) -> None:
    d = root / label / "eps76.5" / "seed0"
    d.mkdir(parents=True)
    (d / "final.json").write_text(json.dumps({"train_time_s": time_s}))
    rows = [{"kind": "iter", "reg_share": 1.0}]  # only epoch rows count
    rows += [{"kind": "epoch", "epoch": i + 1, **({} if shares is None else {"reg_share": s})}
             for i, s in enumerate(shares or [None, None])]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _table(folder: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(folder), *extra], cwd=REPO,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})


def test_ratios_per_pass_their_mean_and_the_regularised_share(tmp_path):
    for p, (fgsm, ga, ada) in {"pass1": (10.0, 22.0, 15.0), "pass2": (20.0, 46.0, 28.0)}.items():
        _run_dir(tmp_path / p, "fgsm", fgsm)
        _run_dir(tmp_path / p, "gradalign_lam2", ga)
        _run_dir(tmp_path / p, "gradalign_adaptive_lam2", ada, shares=[0.2, 0.4])
    _run_dir(tmp_path / "pass1", "only_in_one_pass", 5.0)
    out = _table(tmp_path, "--out", str(tmp_path / "cost.md"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    row = {line.split("|")[1].strip(" `"): [c.strip() for c in line.split("|")[2:-1]]
           for line in lines[2:]}
    assert row["gradalign_lam2"] == ["22 / 46", "2.20 / 2.30", "**2.25**", "-"]
    assert row["gradalign_adaptive_lam2"] == ["15 / 28", "1.50 / 1.40", "**1.45**",
                                              "0.30 / 0.30"]
    assert row["fgsm"][2] == "**1.00**"
    assert "only_in_one_pass" not in row  # a method must be timed in every pass
    assert [r.split("|")[1].strip(" `") for r in lines[2:]] == \
        ["fgsm", "gradalign_adaptive_lam2", "gradalign_lam2"]  # cheapest first
    assert (tmp_path / "cost.md").read_text() == out.stdout


@pytest.mark.parametrize("layout", ["no passes", "no fgsm"])
def test_clear_errors(tmp_path, layout):
    if layout == "no fgsm":
        _run_dir(tmp_path / "pass1", "gradalign_lam2", 22.0)
    out = _table(tmp_path)
    assert out.returncode != 0
    assert ("no pass* folders" if layout == "no passes" else "no 'fgsm' run") in out.stderr
