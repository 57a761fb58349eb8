"""`python -m gradalign_fast profile`: time and memory of each phase of one GradAlign step."""
from __future__ import annotations

import json
import os

from .bench import RESULTS_DIR

EXAMPLES = """examples:
  python -m gradalign_fast profile --model mnist_cnn --batch-size 4 --steps 1 \\
      --out-dir runs/example_profile
"""


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="preact_resnet18_narrow", help="model name")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the step")
    parser.add_argument("--device", default=None, help="cpu or cuda; None: cuda if present")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (averaged)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--torch-2nd", action="store_true",
                        help="PyTorch's own second derivatives (fast_layers=False)")
    parser.add_argument("--out-dir", default=None,
                        help="where the Chrome trace, bar chart and JSON go; None: "
                             "bench/profile_<device> under the current directory")


def run(args) -> int:
    import torch

    from ...benchmarking import profiler

    if args.threads:
        torch.set_num_threads(args.threads)
    from ...training.trainer import check_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    out_dir = args.out_dir or os.path.join(RESULTS_DIR, f"profile_{device.split(':')[0]}")
    os.makedirs(out_dir, exist_ok=True)
    trace = os.path.join(out_dir, "trace.json")
    rows = profiler.profile_step(args.model, args.batch_size, device, args.steps,
                                 trace_path=trace, fast_layers=not args.torch_2nd)
    text = (f"{args.model}, batch {args.batch_size}, {device}, "
            f"{'PyTorch' if args.torch_2nd else 'gradalign_fast'} second derivatives\n"
            + profiler.format_phases(rows))
    print(text)
    with open(os.path.join(out_dir, "phases.md"), "w") as f:
        f.write("```\n" + text + "\n```\n")
    profiler.plot_phases(rows, os.path.join(out_dir, "phases.png"))
    with open(os.path.join(out_dir, "phases.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {trace} (chrome://tracing), phases.png, .json, .md in {out_dir}")
    return 0
