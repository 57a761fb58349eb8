"""`python -m gradalign_fast train|eval|plot` end to end, and their errors."""
import json

import pytest
import torch

from gradalign_fast.cli import main

FAST = ["--epochs", "1", "--batch-size", "64", "--n-eval", "64", "--eval-attacks",
        "clean,pgd-3-1", "--monitor-every", "2", "--no-progress"]


def _train(out, *extra):
    return main(["train", "--out", str(out), "--n-train", "256", *FAST, *extra])


def test_train_eval_plot_on_shared_mnist(tmp_path, mnist_path, capsys):
    for method in ("fgsm", "gradalign"):
        assert _train(tmp_path / method, "--method", method, "--dataset", "mnist",
                      "--data-dir", mnist_path, "--eps", "76.5") == 0
        out = capsys.readouterr().out
        assert out.startswith(f"train: {method} -> {tmp_path / method}\n")
        assert f"{method} eps=76.5/255 (trained up to 76.5/255) on mnist" in out
    final = json.loads((tmp_path / "gradalign" / "final.json").read_text())
    assert final["n_eval"] == 64 and final["epochs_done"] == 1

    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "fgsm" / "checkpoint.pt"), "--n", "32",
                 "--attacks", "clean,pgd-2-1", "--out", str(out_json), "--no-progress"]) == 0
    res = json.loads(out_json.read_text())
    assert res["n"] == 32 and res["dataset"] == "mnist" and res["eps_255"] == pytest.approx(76.5)
    assert "pgd-2-1: " in capsys.readouterr().out

    png = tmp_path / "fig.png"
    assert main(["plot", str(tmp_path / "fgsm"), str(tmp_path / "gradalign"), "--out",
                 str(png)]) == 0
    assert png.stat().st_size > 1000


def test_train_on_the_packaged_subset_with_unit_eps(tmp_path, capsys):
    assert _train(tmp_path, "--method", "nfgsm", "--eps", "0.1", "--eps-units", "unit") == 0
    assert "nfgsm eps=25.5/255 (trained up to 25.5/255) on mnist_subset" in \
        capsys.readouterr().out


def _one_error_line(capsys, rc, message, status=1):
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True)
                  if not line.startswith("warning: "))
    assert rc == status and err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--method", "fgsmx"], "unknown method 'fgsmx'"),
    (["--eps", "0.3"], "looks like [0, 1] units"),
    (["--eps", "300"], "outside [0, 255]"),
    (["--dataset", "cifar10", "--data-dir", "nowhere"], "cifar-10-batches-py"),
    (["--dataset", "mnist"], "no data directory given"),
    (["--dataset", "mnist", "--data-dir", "nowhere"], "nowhere"),
    (["--method", "fgsm", "--lr-max", "1e8", "--epochs", "2"], "training diverged"),
    (["--device", "foo"], "unknown device 'foo'"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--eval-attacks", "pgd-50-0"], "at least 1 step and 1 restart"),
    (["--eval-attacks", "pgd-0-1"], "at least 1 step and 1 restart"),
    (["--eps-warmup-epochs", "3"], "longer than the run"),
])
def test_train_errors_are_one_line_and_nonzero(tmp_path, capsys, args, message):
    rc = main(["train", "--out", str(tmp_path), "--n-train", "256", *FAST, *args])
    _one_error_line(capsys, rc, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", [["train", "--n-train", "256", *FAST], ["eval"],
                                     ["bench", "--quick"], ["profile"]])
def test_device_cuda_without_a_gpu_is_one_error_line(tmp_path, capsys, command):
    if command == ["eval"]:
        command = ["eval", "--checkpoint", "x.pt"]
    rc = main([*command, "--device", "cuda", *(["--out", str(tmp_path / "r")]
                                               if command[0] == "train" else [])])
    _one_error_line(capsys, rc, "no CUDA GPU is available")


def test_no_command_prints_usage_on_stderr(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: python -m gradalign_fast")
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_an_internal_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    from gradalign_fast.cli.commands import plot

    monkeypatch.setattr(plot, "load_curves", lambda run: 1 / 0)
    _one_error_line(capsys, main(["plot", str(tmp_path)]), "internal error, ZeroDivisionError")


def test_eval_and_plot_errors(tmp_path, capsys):
    _one_error_line(capsys, main(["eval", "--checkpoint", str(tmp_path / "none.pt")]),
                    "no checkpoint at")
    _one_error_line(capsys, main(["plot", str(tmp_path)]), "no epoch rows")
    _one_error_line(capsys, main(["eval", "--checkpoint", "x.pt", "--attacks", "pgd-0-1"]),
                    "at least 1 step")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled object"])
def test_corrupt_checkpoint_gets_our_message(tmp_path, capsys, damage):
    assert _train(tmp_path / "run", "--method", "fgsm") == 0
    path = tmp_path / "run" / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        torch.save({"format": object()}, path)
    capsys.readouterr()
    rc = main(["eval", "--checkpoint", str(path), "--attacks", "clean", "--n", "8"])
    _one_error_line(capsys, rc, "is not a readable checkpoint: damaged, truncated")
    rc = main(["train", "--out", str(tmp_path / "run"), "--n-train", "256", *FAST,
               "--method", "fgsm"])
    assert rc == 1 and "holds a finished run (final.json)" in capsys.readouterr().err


def test_train_prints_the_directory_first_and_a_line_per_epoch(tmp_path, capsys):
    args = [a for a in FAST if a != "--no-progress"]
    assert main(["train", "--out", str(tmp_path), "--n-train", "256", "--method", "fgsm",
                 *args[:1], "2", *args[2:]]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"train: fgsm -> {tmp_path}"
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert "monitor: clean" in epoch_lines[0]


def test_short_run_scales_the_recipe_warmup_and_reports_the_eps_trained(tmp_path, capsys):
    assert _train(tmp_path, "--method", "fgsm") == 0  # 1 epoch; the recipe ramps over 4
    captured = capsys.readouterr()
    assert "warning: the mnist_sgd_ramp recipe's eps warm-up (4 epochs of 10)" in captured.err
    assert "(trained up to 76.5/255)" in captured.out
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["eps_max_trained_255"] == pytest.approx(76.5)
    assert json.loads((tmp_path / "config.json").read_text())["eps_warmup_epochs"] == 0.4


def test_eval_square_alone_and_masking_flag(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchattacks")
    from gradalign_fast.training import evaluation

    assert _train(tmp_path, "--method", "fgsm", "--eps", "20") == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "checkpoint.pt")
    assert main(["eval", "--checkpoint", ckpt, "--n", "16", "--attacks", "square-50",
                 "--no-progress"]) == 0
    assert "square-50: " in capsys.readouterr().out
    monkeypatch.setattr(evaluation, "_torchattacks_fn",
                        lambda *a: lambda x, y: torch.zeros(len(y), dtype=torch.bool))
    assert main(["eval", "--checkpoint", ckpt, "--n", "16", "--eps", "1", "--attacks",
                 "pgd-2-1,pgd-2-1+square@8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: possible gradient masking: pgd-2-1" in out


def test_plot_marks_the_first_co_row(tmp_path):
    from gradalign_fast.cli.commands.plot import load_curves
    from gradalign_fast.training.monitor import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for kind, epoch, pgd, co in [("epoch", 1, 0.3, False), ("iter", 1.5, 0.01, True),
                                 ("epoch", 2, 0.0, True)]:
        log.append({"kind": kind, "epoch": epoch, "pgd_acc": pgd, "grad_align": 0.5, "co": co})
    curves = load_curves(tmp_path)
    assert curves["epoch"] == [1, 2] and curves["co"]["epoch"] == 1.5
    assert curves["reg_share"] == []
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "a.png")]) == 0


def test_plot_shows_the_share_of_regularised_steps(tmp_path):
    from gradalign_fast.cli.commands.plot import load_curves
    from gradalign_fast.training.monitor import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for kind, epoch, share in [("iter", 0.5, 0.25), ("epoch", 1, 0.5), ("epoch", 2, 0.0)]:
        log.append({"kind": kind, "epoch": epoch, "pgd_acc": 0.3, "grad_align": 0.5,
                    "co": False, "reg_share": share, "lam": 1.0})
    assert load_curves(tmp_path)["reg_share"] == [(0.5, 0.25), (1, 0.5), (2, 0.0)]
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "a.png")]) == 0
