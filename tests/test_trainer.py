import json

import pytest
import torch

import gradalign_fast
from gradalign_fast.training import checkpoint, trainer
from gradalign_fast.training.trainer import TrainConfig, TrainingDiverged, train
from helpers import train_killed_after_epoch_1_then_resumed

TINY = dict(dataset="mnist_subset", n_train=256, n_monitor=64, n_eval=64, batch_size=64,
            eval_attacks="clean,pgd-3-1", monitor_every=2, progress=False)


def _weights(path):
    return checkpoint.read(path)["model"]


def _rows(run_dir):
    """metrics.jsonl without its wall-clock times."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def test_train_writes_every_file(tmp_path):
    final = train(TrainConfig(method="gradalign", epochs=2, out_dir=str(tmp_path), **TINY))
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "final.json"):
        assert (tmp_path / f).is_file(), f
    assert final == json.loads((tmp_path / "final.json").read_text())
    assert set(final["accuracy"]) == {"clean", "pgd-3-1"} and final["n_eval"] == 64
    assert final["lam"] == pytest.approx(gradalign_fast.training.recipe.lambda_for_eps(76.5))
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert all(0 <= r["pgd_acc"] <= r["clean_acc"] + 1e-9 for r in rows)
    assert all(-1 <= r["grad_align"] <= 1 for r in rows)
    model = gradalign_fast.training.load_checkpoint(tmp_path / "best.pt")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("method, options", [
    ("fgsm_rs", {}),
    ("gradalign", {"every": 3}),  # 4 steps an epoch: the resumed run must continue the count
    ("elle_a", {"lam": 50.0, "k": 0.0}),  # lambda and the error history must carry over
    ("gradalign_adaptive", {"k": 0.0, "decay": 0.5, "period": 3}),  # and the probe's
])
def test_resume_is_bitwise(tmp_path, monkeypatch, method, options):
    cfg = dict(method=method, method_options=options, epochs=2, **TINY)
    train(TrainConfig(out_dir=str(tmp_path / "full"), **cfg))

    final = train_killed_after_epoch_1_then_resumed(tmp_path / "cut", monkeypatch, **cfg)

    full, cut = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(
        tmp_path / "cut" / "checkpoint.pt")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    assert final["accuracy"] == json.loads((tmp_path / "full" / "final.json").read_text())[
        "accuracy"]


def test_resume_rejects_other_runs_and_corrupt_files(tmp_path):
    train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path), **TINY))
    (tmp_path / "final.json").unlink()  # as if interrupted before the final evaluation
    with pytest.raises(checkpoint.CheckpointError, match="method: checkpoint 'fgsm' vs now"):
        train(TrainConfig(method="pgd", epochs=1, out_dir=str(tmp_path), resume=True, **TINY))
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path), **TINY))
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint") as e:
        train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path), resume=True, **TINY))
    assert "weights_only=False" not in str(e.value)
    # --resume where nothing was ever trained: there is nothing to resume, the run starts
    new = tmp_path / "new"
    train(TrainConfig(method="fgsm", epochs=1, out_dir=str(new), resume=True, **TINY))
    assert (new / "final.json").exists()


@pytest.mark.parametrize("name", ["checkpoint.pt", "final.json"])
def test_a_new_run_refuses_a_directory_with_a_checkpoint_or_a_result(tmp_path, name):
    (tmp_path / name).write_text("{}")
    match = "holds a finished run" if name == "final.json" else f"holds a run \\({name}\\)"
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path), **TINY))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # nothing written or removed


def test_a_finished_run_is_never_resumed_or_rewritten(tmp_path):
    cfg = dict(method="fgsm", epochs=1, out_dir=str(tmp_path), **TINY)
    train(TrainConfig(**cfg))
    before = (tmp_path / "final.json").read_bytes()
    for resume in (True, False):
        with pytest.raises(ValueError, match="holds a finished run .* python -m "
                                             "gradalign_fast eval --checkpoint"):
            train(TrainConfig(**{**cfg, "eval_attacks": "clean", "resume": resume}))
    assert (tmp_path / "final.json").read_bytes() == before


def test_eps_warmup_longer_than_the_run(tmp_path):
    """The recipe's ramp is scaled to the run (with a warning), an explicit one refused; the
    largest eps trained at is reported."""
    with pytest.warns(UserWarning, match=r"eps warm-up \(4 epochs of 10\) is longer"):
        cfg = trainer.resolve(TrainConfig(method="fgsm", epochs=2, **TINY))
    assert cfg.eps_warmup_epochs == pytest.approx(0.8)
    with pytest.raises(ValueError, match="eps_warmup_epochs=3 is longer than the run"):
        trainer.resolve(TrainConfig(method="fgsm", epochs=2, eps_warmup_epochs=3, **TINY))
    final = train(TrainConfig(method="fgsm", epochs=1, eps_warmup_epochs=1.0, stop_on_co=False,
                              out_dir=str(tmp_path), **TINY))
    # 4 iterations ramped over 4: the last one trains at 3/4 of eps, and says so
    assert final["eps_max_trained"] == pytest.approx(0.75 * final["eps"])
    last = [r for r in _rows(tmp_path) if r["kind"] == "epoch"][-1]
    assert last["eps"] == pytest.approx(final["eps_max_trained"])


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    cfg = TrainConfig(method="fgsm", epochs=3, lr_max=1e8, out_dir=str(tmp_path), **TINY)
    with pytest.raises(TrainingDiverged, match="training diverged"):
        train(cfg)
    if (tmp_path / "checkpoint.pt").exists():  # only good weights are ever saved
        ck = checkpoint.read(tmp_path / "checkpoint.pt")
        assert all(torch.isfinite(v).all() for v in ck["model"].values())


@pytest.mark.parametrize("bad, match", [
    (dict(method="fgsmx"), "unknown method"),
    (dict(eps=8.0), "eps must be in"),
    (dict(method="fgsm", lam=0.1), "lam applies only"),
    (dict(amp="fp8"), "unknown precision policy 'fp8'; choose one of float32, bf16"),
    (dict(method="fgsm", amp="bf16-reg-fp32"), "method 'fgsm' has none: use amp='bf16'"),
    (dict(amp="bf16-reg-fp32", method_options={"precision": "bn_float32"}),
     "sets GradAlign's precision to 'float32' but the method options say 'bn_float32'"),
    (dict(dataset="cifar100"), "unknown dataset"),
    (dict(method="cure"), "needs lam"),
    (dict(n_train=10 ** 6), "n_train"),
    (dict(sync_bn=True, device="cpu"), "sync_bn needs CUDA"),
    pytest.param(dict(sync_bn=True, device="cuda"), "not twice differentiable",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                          reason="needs a CUDA GPU (else: no GPU error first)")),
])
def test_bad_config_is_rejected(tmp_path, bad, match):
    cfg = {**TINY, "out_dir": str(tmp_path), "epochs": 1, **bad}
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**cfg))


# ---------------------------------------------------------------- recipe
def test_lambda_table_and_log_linear_interpolation():
    from gradalign_fast.training.recipe import LAMBDA_TABLE, lambda_for_eps

    for eps, lam in LAMBDA_TABLE:
        assert lambda_for_eps(eps) == pytest.approx(lam)
    assert lambda_for_eps(3) == pytest.approx((0.036 * 0.063) ** 0.5)  # geometric mean
    assert lambda_for_eps(0.5) == pytest.approx(0.027) and lambda_for_eps(30) == pytest.approx(2)
    with pytest.raises(ValueError, match="eps_255"):
        lambda_for_eps(-1)


def test_cyclic_lr_peaks_at_two_fifths_and_eps_warmup():
    from gradalign_fast.training.recipe import eps_at, lr_at, recipe_for

    lrs = [lr_at(s, 10, 5, 0.2) for s in range(50)]
    assert max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 19  # end of epoch 2 of 5
    assert lrs[-1] == 0 and lrs[9] == pytest.approx(0.1)
    assert lr_at(30, 10, 5, 0.2, "piecewise") == pytest.approx(0.02)
    assert [eps_at(s, 4, 0.3) for s in (0, 2, 4, 9)] == pytest.approx([0, 0.15, 0.3, 0.3])
    assert recipe_for("cifar10", "gradalign").lr_max == 0.3
    assert recipe_for("cifar10", "fgsm").lr_max == 0.2 and recipe_for("svhn", "fgsm").epochs == 15
    with pytest.raises(ValueError, match="lr schedule"):
        lr_at(0, 1, 1, 0.1, "cosine")


def test_stop_on_co_stops_at_the_first_event(tmp_path, monkeypatch):
    from gradalign_fast.training.monitor import COMonitor

    update = COMonitor.update

    def co_from_iteration_6(self, row):
        row = update(self, row)
        row["co"] = row["co"] or row["iteration"] >= 6
        return row

    monkeypatch.setattr(COMonitor, "update", co_from_iteration_6)
    final = train(TrainConfig(method="fgsm", epochs=3, stop_on_co=True, out_dir=str(tmp_path),
                              **TINY))
    # 4 iterations an epoch, a monitor row every 2: stops in epoch 2, after iteration 6
    assert final["stopped_on_co"] and final["iterations"] == 6 and final["epochs_done"] == 2


def test_bf16_autocast_trains(tmp_path):
    """Under bf16 the run trains (finite loss, an active regulariser) to weights that differ
    from float32's, by rounding, not by direction."""
    runs = {amp: train(TrainConfig(method="gradalign", epochs=1, amp=amp,
                                   out_dir=str(tmp_path / str(amp)), **TINY))
            for amp in (None, "bf16")}
    last = runs["bf16"]["last_monitor"]
    assert 0 < last["train_loss"] < 10 and last["train_reg"] > 0
    w16, w32 = (torch.cat([v.flatten().double() for v in _weights(
        tmp_path / str(amp) / "checkpoint.pt").values() if v.is_floating_point()])
        for amp in ("bf16", None))
    assert not torch.equal(w16, w32)
    assert torch.nn.functional.cosine_similarity(w16, w32, dim=0) > 0.99


def test_amp_policy_sets_gradalign_precision(tmp_path, monkeypatch):
    """--amp bf16-reg-fp32 trains under bf16 autocast with GradAlign's pass in float32; the
    policy is recorded (resume must match it); "float32" is no autocast, recorded as None."""
    seen = []
    real = trainer.train_step

    def spy(method, model, opt, x, y, amp_dtype=None, scaler=None):
        seen.append((method._loss.precision, amp_dtype))
        return real(method, model, opt, x, y, amp_dtype, scaler)

    monkeypatch.setattr(trainer, "train_step", spy)
    train(TrainConfig(method="gradalign", epochs=1, amp="bf16-reg-fp32",
                      out_dir=str(tmp_path / "a"), **TINY))
    assert set(seen) == {("float32", torch.bfloat16)}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["amp"] == "bf16-reg-fp32"
    assert trainer.resolve(TrainConfig(method="gradalign", amp="float32", **TINY)).amp is None


def test_the_method_is_made_once_and_follows_the_eps_ramp(tmp_path, monkeypatch):
    """One method object for the run (resolve's check makes one more): the eps warm-up sets its
    eps in place and what derives from eps (FGSM-RS's step 1.25 eps) follows."""
    made = []
    make = trainer.make_method

    def counting(*a, **kw):
        made.append(make(*a, **kw))
        return made[-1]

    monkeypatch.setattr(trainer, "make_method", counting)
    train(TrainConfig(method="fgsm_rs", epochs=2, eps_warmup_epochs=1, out_dir=str(tmp_path),
                      **TINY))
    assert len(made) == 2
    run_method = made[1]
    assert run_method.eps == pytest.approx(76.5 / 255)
    assert run_method.alpha == pytest.approx(1.25 * 76.5 / 255)
    run_method.set_eps(0.1)
    assert run_method.alpha == pytest.approx(0.125)


def test_the_epoch_bar_ends_at_its_last_step(tmp_path, capfd):
    """The progress bar is drawn at its last step before it closes (it ended at 3/4)."""
    train(TrainConfig(method="fgsm", epochs=1, out_dir=str(tmp_path),
                      **{**TINY, "progress": True, "eval_attacks": "clean"}))
    err = capfd.readouterr().err
    assert "epoch 1/1" in err and "4/4" in err
