"""`python -m gradalign_fast train|eval|plot` end to end, and their errors."""
import json

import pytest

from gradalign_fast.cli import main
from test_trainer import one_thread  # noqa: F401 (autouse: one CPU thread per test)

FAST = ["--epochs", "1", "--batch-size", "64", "--n-eval", "64", "--eval-attacks",
        "clean,pgd-3-1", "--monitor-every", "2", "--no-progress"]


def _train(out, *extra):
    return main(["train", "--out", str(out), "--n-train", "256", *FAST, *extra])


def test_train_eval_plot_on_shared_mnist(tmp_path, mnist_path, capsys):
    for method in ("fgsm", "gradalign"):
        assert _train(tmp_path / method, "--method", method, "--dataset", "mnist",
                      "--data-dir", mnist_path, "--eps", "76.5") == 0
        assert f"{method} eps=76.5/255 on mnist" in capsys.readouterr().out
    final = json.loads((tmp_path / "gradalign" / "final.json").read_text())
    assert final["n_eval"] == 64 and final["epochs_done"] == 1

    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "fgsm" / "checkpoint.pt"), "--n", "32",
                 "--attacks", "clean,pgd-2-1", "--out", str(out_json), "--no-progress"]) == 0
    res = json.loads(out_json.read_text())
    assert res["n"] == 32 and res["dataset"] == "mnist" and res["eps_255"] == pytest.approx(76.5)
    assert "pgd-2-1:" in capsys.readouterr().out

    png = tmp_path / "fig.png"
    assert main(["plot", str(tmp_path / "fgsm"), str(tmp_path / "gradalign"), "--out",
                 str(png)]) == 0
    assert png.stat().st_size > 1000


def test_train_on_the_packaged_subset_with_unit_eps(tmp_path, capsys):
    assert _train(tmp_path, "--method", "nfgsm", "--eps", "0.1", "--eps-units", "unit") == 0
    assert "nfgsm eps=25.5/255 on mnist_subset" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--method", "fgsmx"], "unknown method 'fgsmx'"),
    (["--eps", "0.3"], "looks like [0, 1] units"),
    (["--eps", "300"], "outside [0, 255]"),
    (["--dataset", "cifar10", "--data-dir", "nowhere"], "cifar-10-batches-py"),
    (["--dataset", "mnist"], "no data directory given"),
    (["--method", "fgsm", "--lr-max", "10000", "--epochs", "2"], "training diverged"),
])
def test_train_errors_are_clear_and_nonzero(tmp_path, capsys, args, message):
    rc = main(["train", "--out", str(tmp_path), "--n-train", "256", *FAST, *args])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and message in err


def test_eval_and_plot_errors(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 1
    assert "no epoch rows" in capsys.readouterr().err


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
