"""Run directories that cannot be corrupted, and errors found before any training: a run that
stopped before its first checkpoint is started afresh, one process at a time holds a directory
(a lock the kernel releases however its holder ends), bad output paths, sizes and data files
are refused with one line, and an interrupt exits with 130."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from gradalign_fast.cli import main
from gradalign_fast.training import rundir
from gradalign_fast.training.datasets import load_dataset
from gradalign_fast.training.trainer import TrainConfig, TrainingDiverged, train

TINY = dict(dataset="mnist_subset", n_train=256, n_monitor=64, n_eval=64, batch_size=64,
            eval_attacks="clean,pgd-3-1", monitor_every=2, progress=False)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_stopped_before_its_first_checkpoint_starts_afresh(tmp_path, resume):
    """NaN in epoch 1 (lr 1e9): config.json and metrics rows but no checkpoint. The same
    command again (or with --resume) starts it afresh, with a warning, instead of "already
    holds a run" / "no checkpoint"."""
    bad = TrainConfig(method="fgsm", epochs=1, lr_max=1e9, out_dir=str(tmp_path), **TINY)
    with pytest.raises(TrainingDiverged):
        train(bad)
    assert (tmp_path / "config.json").exists() and not (tmp_path / "checkpoint.pt").exists()
    with pytest.warns(UserWarning, match="stopped before its first checkpoint"):
        final = train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path),
                                  resume=resume, **TINY))
    assert final["epochs_done"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["lr_max"] != 1e9
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "final.json"])


def test_a_directory_in_use_is_refused(tmp_path):
    """A second trainer on a directory that another holds (the lock taken here, as a running
    `train` takes it) is refused before it writes anything; released, the directory works."""
    with rundir.locked(tmp_path):
        with pytest.raises(ValueError, match=r"in use by another training process \(pid "
                                             f"{os.getpid()}"):
            train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path), **TINY))
        assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.LOCK_FILE]
    assert not (tmp_path / rundir.LOCK_FILE).exists()
    train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path), **TINY))


def test_the_lock_dies_with_its_holder(tmp_path):
    """kill -9 of the holder: the kernel releases the lock (the stale .lock file stays and is
    taken over)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from gradalign_fast.training import rundir\n"
         "with rundir.locked(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            with rundir.locked(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / rundir.LOCK_FILE).exists()
    with rundir.locked(tmp_path):
        assert (tmp_path / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())


def test_sigint_exits_130_and_the_directory_can_be_run_again(tmp_path):
    """Ctrl-C in training: exit status 130, the lock gone; the same command with --resume then
    finishes the run (from its checkpoint, or afresh if it had none)."""
    out = tmp_path / "run"
    cmd = ["train", "--method", "fgsm", "--epochs", "2", "--n-train", "8192", "--n-eval", "32",
           "--eval-attacks", "clean", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "gradalign_fast", *cmd],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not (out / "config.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # inside the training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "error: interrupted" in err
    assert not (out / rundir.LOCK_FILE).exists() and not (out / "final.json").exists()
    assert main(cmd + ["--resume"]) == 0
    assert json.loads((out / "final.json").read_text())["epochs_done"] == 2


def test_errors_found_before_training(tmp_path, capsys):
    """--n-eval larger than the test set, --out naming a file or a folder under a file: one
    line, before any training (no run file written)."""
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"n_eval=5000 but the test set has 1000 points"):
        train(TrainConfig(method="gradalign", epochs=10, out_dir=str(tmp_path / "a"),
                          **{**TINY, "n_eval": 5000}))
    assert not (tmp_path / "a" / "config.json").exists()
    (tmp_path / "file").write_text("x")
    for out, match in ((tmp_path / "file", "is a file"),
                       (tmp_path / "file" / "sub", "cannot create the output directory")):
        with pytest.raises(ValueError, match=match):
            train(TrainConfig(method="gradalign", epochs=10, out_dir=str(out), **TINY))
        assert main(["train", "--epochs", "10", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "internal error" not in err
    assert time.perf_counter() - t0 < 60  # nothing was trained


def test_eval_checks_its_output_before_evaluating(tmp_path, capsys):
    train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path / "run"), **TINY))
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    for out, match in ((tmp_path / "nodir" / "x.json", "does not exist"),
                       (tmp_path, "is a directory")):
        rc = main(["eval", "--checkpoint", ckpt, "--attacks", "pgd-500-10", "--n", "64",
                   "--no-progress", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 1 and match in err and err.startswith("error: ")


@pytest.fixture
def bad_files(tmp_path):
    x = np.zeros((300, 28, 28), np.uint8)
    np.savez(tmp_path / "labels.npz", x_train=x, y_train=np.arange(300) % 10 + 5,
             x_test=x[:50], y_test=np.arange(50) % 10)
    np.savez(tmp_path / "good.npz", x_train=x, y_train=np.arange(300) % 10,
             x_test=x[:50], y_test=np.arange(50) % 10)
    good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.npz").write_text("not an npz\n" * 20)
    return tmp_path


@pytest.mark.parametrize("name, match", [
    ("truncated.npz", r"truncated\.npz is not a readable MNIST \.npz file"),
    ("text.npz", r"text\.npz is not a readable MNIST \.npz file"),
    ("labels.npz", r"labels\.npz: the train labels span 5\.\.14; MNIST's classes are 0-9"),
])
def test_bad_data_files_get_one_clear_line(bad_files, capsys, name, match):
    with pytest.raises(ValueError, match=match) as e:
        load_dataset("mnist", str(bad_files / name))
    assert "allow_pickle" not in str(e.value)
    rc = main(["train", "--dataset", "mnist", "--data-dir", str(bad_files / name),
               "--epochs", "1", "--eps-warmup-epochs", "0", "--out", str(bad_files / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "internal error" not in err
    assert name in err and "allow_pickle" not in err


def test_labels_the_model_has_no_output_for_are_refused_before_training(tmp_path):
    x = torch.rand(400, 1, 28, 28)
    data = torch.utils.data.TensorDataset(x, torch.arange(400) % 10 + 5)
    test = torch.utils.data.TensorDataset(x[:64], torch.arange(64) % 10)
    with pytest.raises(ValueError, match=r"label 14 but the model has 10 outputs"):
        train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path), **TINY),
              model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
              train_data=data, test_data=test)
    assert not (tmp_path / "config.json").exists()
