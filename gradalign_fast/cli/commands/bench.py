"""`python -m gradalign_fast bench`: one table of step times, ratios to FGSM and peak memory."""
from __future__ import annotations

import os

from ...benchmarking import epoch_time
from ...benchmarking.outputs import output_path, write_json
from ...benchmarking.step_bench import QUICK, STEPS

EXAMPLES = """examples:
  python -m gradalign_fast bench --model mnist_cnn --batch-sizes 4 --reps 1 --warmup 0 \\
      --steps gradalign,ga_every4
"""

# Default output folder, under the current directory (never inside the package).
RESULTS_DIR = "bench"
AMP = {"none": None, "bf16": "bfloat16", "fp16": "float16"}


def _csv(cast):
    return lambda text: [cast(v) for v in text.split(",") if v]


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=_csv(str), default=None,
                        help="model name(s), comma-separated: gradalign_fast.training.models "
                             "names, or timm:NAME[:KEY=VALUE]... for any timm model (10 classes, "
                             "3x32x32 input; img_size=S: 3xSxS; e.g. timm:resnet18, "
                             "timm:vit_tiny_patch16_224:patch_size=4); None: preact_resnet18 on "
                             "CUDA, preact_resnet18_narrow on CPU")
    parser.add_argument("--batch-sizes", type=_csv(int), default=None,
                        help="comma-separated; None: 32,128 on CPU, 128,256,512 on CUDA")
    parser.add_argument("--device", default=None, help="cpu or cuda; None: cuda if present")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--steps", type=_csv(str), default=None,
                        help="variants, comma-separated, of: " + ", ".join(v.name for v in STEPS)
                        + "; None: all but the precision policies (fgsm_bf16, ga_bf16*: bf16 "
                        "is emulated and slow on most CPUs); 'all': every one")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads while measuring (1: stable ratios on a "
                             "shared machine; 0: leave torch's setting)")
    parser.add_argument("--amp", choices=sorted(AMP), default="none",
                        help="autocast dtype for every variant alike")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last memory format for model and inputs")
    parser.add_argument("--quick", action="store_true",
                        help="MNIST CNN and narrow PreActResNet-18, batch 32, 5 reps: every "
                             "default variant, about 3 minutes on a 2-core CPU")
    parser.add_argument("--out", nargs="?", const="auto", default=None,
                        help="write JSON (+ the table as .md); no value: "
                             "bench/<device>_<date>.json under the current directory")
    parser.add_argument("--plot", nargs="?", const="auto", default=None,
                        help="PNG of the ratio to FGSM vs batch size (no value: next to --out)")
    epoch_time.add_arguments(parser)


def _options(args, torch) -> dict:
    from ...training.trainer import check_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    steps = [v.name for v in STEPS] if args.steps == ["all"] else args.steps
    unknown = sorted(set(steps or ()) - {v.name for v in STEPS})
    if unknown:
        raise ValueError(f"unknown --steps {', '.join(unknown)}; choose from "
                         f"{', '.join(v.name for v in STEPS)} or 'all'")
    opts = dict(device=device, reps=args.reps, warmup=args.warmup, steps=steps,
                threads=args.threads,
                channels_last=args.channels_last,
                amp_dtype=getattr(torch, AMP[args.amp]) if AMP[args.amp] else None)
    if args.quick:
        opts.update(QUICK)
    cuda = device.startswith("cuda")
    if args.model:
        opts["model_names"] = args.model
    elif not args.quick:
        opts["model_names"] = ["preact_resnet18" if cuda else "preact_resnet18_narrow"]
    if args.batch_sizes:
        opts["batch_sizes"] = args.batch_sizes
    elif not args.quick:
        opts["batch_sizes"] = [128, 256, 512] if cuda else [32, 128]
    return opts


def plot_ratios(rows, path) -> None:
    """One panel per model: each variant's ratio to FGSM against the batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model_names = list(dict.fromkeys(r["model"] for r in rows))
    steps = [s for s in dict.fromkeys(r["step"] for r in rows) if s != "fgsm"]
    cmap = plt.get_cmap("tab20")  # 20 colours, cycled: STEPS has more than 10 variants
    colors = {step: cmap(i % cmap.N) for i, step in enumerate(steps)}
    fig, axes = plt.subplots(1, len(model_names), figsize=(5.5 * len(model_names), 4.5),
                             squeeze=False)
    for ax, model in zip(axes[0], model_names):
        for step in steps:
            pts = sorted((r["batch"], r["ratio"]) for r in rows
                         if r["model"] == model and r["step"] == step)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[step], label=step)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.set_ylabel("step time / FGSM step time")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    import torch

    from ...benchmarking import step_bench

    if args.epoch:
        return epoch_time.run(args, RESULTS_DIR)
    opts = _options(args, torch)
    rows = step_bench.run_bench(**opts)
    meta = step_bench.metadata(opts["device"], opts["amp_dtype"], opts["channels_last"],
                          opts["threads"])
    table = "\n".join([step_bench.format_table(rows, meta), *step_bench.exact_vs_plain(rows)])
    print(table)
    out = output_path(args.out, RESULTS_DIR, meta["device_type"])
    if out:
        write_json(out, {"meta": meta, "options": {k: str(v) for k, v in opts.items()},
                         "rows": rows})
        with open(os.path.splitext(out)[0] + ".md", "w") as f:
            f.write("```\n" + table + "\n```\n")
        print(f"wrote {out}")
    if args.plot:
        path = args.plot
        if path == "auto":
            path = (os.path.splitext(out)[0] if out else os.path.join(RESULTS_DIR, "bench")) + \
                "_ratios.png"
        plot_ratios(rows, path)
        print(f"wrote {path}")
    return 0
