"""What the user reads is what runs: every example of the commands' --help texts, the README's
API section and docs/toolkit.md's Python API is executed; every option has help text and every
--help shows the defaults."""
import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gradalign_fast.cli import COMMANDS, main, make_parser

ROOT = Path(__file__).resolve().parent.parent
# train first: the other commands' examples read its run directories
ORDER = ["train", "eval", "plot", "sweep", "fidelity", "demo", "bench", "profile", "info"]


def _examples(text: str) -> list[list[str]]:
    """The `python -m gradalign_fast ...` command lines of an examples text (backslash
    continuations joined), as argument lists after the program name."""
    joined = re.sub(r"\\\n\s*", " ", text or "")
    return [shlex.split(line.strip())[3:] for line in joined.splitlines()
            if line.strip().startswith("python -m gradalign_fast ")]


def _python_block(path: Path, heading: str) -> str:
    text = path.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_order_covers_every_command():
    assert sorted(ORDER) == sorted(COMMANDS)


@pytest.mark.parametrize("name", ORDER)
def test_every_option_has_help_and_the_defaults_are_shown(name):
    _, parser = make_parser(name)
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{name} {action.option_strings}"
    assert "(default: " in parser.format_help()


def test_every_help_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for name in ORDER:
        module, parser = make_parser(name)
        examples = _examples(parser.epilog)
        assert examples, f"`{name} --help` shows no example"
        for argv in examples:
            assert argv[0] == name
            assert main(argv) == 0, (argv, capsys.readouterr().err)
            ran += 1
    assert ran >= len(ORDER)
    assert "WARNING" not in capsys.readouterr().err
    # demo's example trains: its three methods end with different weights
    from gradalign_fast.training.checkpoint import read

    demo = tmp_path / "runs" / "example_demo"
    w = [read(demo / m / "checkpoint.pt")["model"] for m in ("fgsm", "fgsm_rs", "gradalign")]
    for a, b in ((w[0], w[1]), (w[0], w[2]), (w[1], w[2])):
        assert not all(torch.equal(a[k], b[k]) for k in a)


def test_the_readme_example_is_on_its_first_screen_and_runs():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:60])
    assert "```python" in head and "never run on a GPU" in head
    code = _python_block(ROOT / "README.md", "## Install and run")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    scope = {"model": model, "x": torch.rand(8, 1, 28, 28), "y": torch.randint(0, 10, (8,))}
    exec(compile(code, "README.md", "exec"), scope)
    assert all(p.grad is not None for p in model.parameters())
    assert -1 <= float(scope["reg_fn"].last_cos) <= 1


def test_the_readme_own_model_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(_python_block(ROOT / "README.md", "## Your own model and data"), "README.md",
                 "exec"), scope)
    final = scope["final"]
    assert final["epochs_done"] == 2 and final["dataset"] == "user data"
    assert final["model"].startswith("user:")
    assert (tmp_path / "runs" / "my_model" / "checkpoint.pt").exists()
    from gradalign_fast.training import load_checkpoint

    model = load_checkpoint(tmp_path / "runs" / "my_model" / "checkpoint.pt",
                            model=nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(),
                                                nn.Linear(128, 10)))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 scope["model"].state_dict().values()))


def test_the_readme_monitoring_example_runs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    data = [(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(3)]
    scope = {"model": model, "loader": data, "x_held_out": torch.rand(16, 1, 28, 28),
             "y_held_out": torch.randint(0, 10, (16,))}
    exec(compile(_python_block(ROOT / "README.md", "## Gradient alignment and CO in your own"),
                 "README.md", "exec"), scope)
    assert -1 <= scope["align"] <= 1
    assert {"clean_acc", "pgd_acc", "grad_align", "co"} <= set(scope["row"])


def test_the_toolkit_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(_python_block(ROOT / "docs" / "toolkit.md", "## Python API"), "toolkit.md",
                 "exec"), scope)
    assert scope["final"]["epochs_done"] == 1
    assert (tmp_path / "runs" / "api_ga" / "best.pt").exists()
    assert 0 <= scope["res"]["pgd-5-2"] <= scope["res"]["clean"] <= 1


def test_method_examples_in_option_help_are_accepted():
    """The method specs and options that `sweep --help` and `train --help` name resolve."""
    from gradalign_fast.studies.sweep import parse_method
    from gradalign_fast.training.trainer import TrainConfig, resolve

    def helps(name, option):
        _, parser = make_parser(name)
        return next(a.help for a in parser._actions if option in a.option_strings)

    specs = re.findall(r"\b(?:fgsm|gradalign)(?::\w+=[\w.-]+)*", helps("sweep", "--method"))
    specs += [f"gradalign:{o}" for o in re.findall(r"\w+=[\w.]+",
                                                   helps("train", "--method-option"))]
    assert len(specs) >= 5
    for spec in specs:
        m = parse_method(spec)
        opts = dict(m.options)
        resolve(TrainConfig(method=m.name, lam=opts.pop("lam", None), amp=opts.pop("amp", None),
                            method_options=opts, epochs=10))
