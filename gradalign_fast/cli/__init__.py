"""`python -m gradalign_fast COMMAND ...` (also installed as `gradalign-fast`).

Each command is a module of gradalign_fast.cli.commands with `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported, so `--help` and small commands start fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": "FGSM vs FGSM+GradAlign on the shipped MNIST subset, with the step-time ratios",
    "train": "train one model with one method (FGSM, FGSM-RS, GradAlign, N-FGSM, PGD, ...)",
    "eval": "evaluate a checkpoint: clean, PGD-50-10, AutoAttack accuracy",
    "plot": "robust accuracy and gradient alignment per epoch of several runs (PNG)",
    "sweep": "train and evaluate a grid of (method, eps, seed); one results table",
    "bench": "median step time of each method and GradAlign mode, ratios to FGSM",
    "profile": "time and memory of each phase of one GradAlign step (trace + bar chart)",
    "info": "versions, build (torch, CUDA, archs), kernels per device, and a self-check",
}


def _usage() -> str:
    lines = ["usage: python -m gradalign_fast COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`python -m gradalign_fast COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gradalign_fast: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"gradalign_fast.cli.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"python -m gradalign_fast {name}",
                                     description=COMMANDS[name])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)
