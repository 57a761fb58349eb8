"""`python -m gradalign_fast COMMAND ...` (also installed as `gradalign-fast`).

Each command is a module of gradalign_fast.cli.commands with `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported, so `--help` and small commands start fast.
Every failure is one `error: ...` line on stderr and a non-zero exit status: 2 for a bad
command line (argparse's usage errors), 130 for an interrupt (Ctrl-C), 1 for the rest;
warnings are `warning: ...` lines.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

COMMANDS = {
    "demo": "FGSM vs FGSM+GradAlign on the shipped MNIST subset, with the step-time ratios",
    "train": "train one model with one method (FGSM, FGSM-RS, GradAlign, N-FGSM, PGD, ...)",
    "eval": "evaluate a checkpoint: clean, PGD-50-10, AutoAttack, Square accuracy",
    "plot": "robust accuracy and gradient alignment per epoch of several runs (PNG)",
    "sweep": "train and evaluate a grid of (method, eps, seed); one results table",
    "fidelity": "gradient fidelity of approximate regularisers along an exact-GradAlign run",
    "bench": "median step time of each method and GradAlign mode, ratios to FGSM",
    "profile": "time and memory of each phase of one GradAlign step (trace + bar chart)",
    "info": "versions, build (torch, CUDA, archs), kernels per device, and a self-check",
}
TRACEBACK_ENV = "GRADALIGN_FAST_TRACEBACK"  # =1: show the traceback of an internal error


def _usage() -> str:
    lines = ["usage: python -m gradalign_fast COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`python -m gradalign_fast COMMAND --help` for a command's options."]
    return "\n".join(lines)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions and epilogs (examples) kept as
    written."""


def make_parser(name: str):
    """The parser of command `name` (its module's options, defaults shown, examples kept)."""
    module = importlib.import_module(f"gradalign_fast.cli.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"python -m gradalign_fast {name}",
                                     description=COMMANDS[name],
                                     epilog=getattr(module, "EXAMPLES", None),
                                     formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return module, parser


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _run(module, args) -> int:
    from ..training.trainer import USER_ERRORS

    try:
        return int(module.run(args) or 0)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:  # exit status 128 + SIGINT, as a shell reports an interrupt
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line unless the traceback is asked for
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"error: internal error, {type(e).__name__}: {e} (set {TRACEBACK_ENV}=1 for "
              f"the traceback)", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"{_usage()}\n\nerror: {what}", file=sys.stderr)
        return 2
    module, parser = make_parser(argv[0])
    args = parser.parse_args(argv[1:])
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        return _run(module, args)
