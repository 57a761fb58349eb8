"""An optimizer per recipe: SGD or Adam, checkpointed and resumed bitwise."""
import pytest
import torch

from gradalign_fast.training import checkpoint, optim, trainer
from gradalign_fast.training.trainer import TrainConfig, train
from helpers import train_killed_after_epoch_1_then_resumed

TINY = dict(dataset="mnist_subset", n_train=256, n_monitor=64, n_eval=64, batch_size=64,
            eval_attacks="clean,pgd-3-1", monitor_every=2, progress=False)


def test_build_optimizer_and_its_checks():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(optim.build_optimizer("adam", p, None, 0.0), torch.optim.Adam)
    sgd = optim.build_optimizer("sgd", p, 0.9, 5e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="Adam takes no momentum"):
        optim.build_optimizer("adam", p, 0.9, 0.0)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        optim.build_optimizer("rmsprop", p, None, 0.0)


def test_optimizer_flag_overrides_the_recipe():
    adam = trainer.resolve(TrainConfig(method="fgsm", optimizer="adam", **TINY))
    assert (adam.optimizer, adam.momentum) == ("adam", None)  # the SGD recipe's 0.9 dropped
    sgd = trainer.resolve(TrainConfig(method="fgsm", dataset="mnist", data_dir="x",
                                      optimizer="sgd", eval_attacks="clean"))
    assert (sgd.optimizer, sgd.momentum, sgd.recipe) == ("sgd", 0.9, "mnist")
    with pytest.raises(ValueError, match="Adam takes no momentum"):
        trainer.resolve(TrainConfig(method="fgsm", optimizer="adam", momentum=0.5, **TINY))
    with pytest.raises(ValueError, match="unknown recipe 'wong'"):
        trainer.resolve(TrainConfig(method="fgsm", recipe="wong", **TINY))


@pytest.mark.parametrize("method", ["fgsm_rs", "gradalign"])
def test_adam_trains_and_resumes_bitwise(tmp_path, monkeypatch, method):
    """As tests/test_trainer.py's test_resume_is_bitwise, with Adam: 2 epochs straight vs 1
    epoch, killed, resumed to 2."""
    cfg = dict(method=method, optimizer="adam", lr_max=5e-3, epochs=2, **TINY)
    full_final = train(TrainConfig(out_dir=str(tmp_path / "full"), **cfg))
    saved = checkpoint.read(tmp_path / "full" / "checkpoint.pt")
    assert saved["config"]["optimizer"] == "adam"
    assert all("exp_avg_sq" in s for s in saved["optimizer"]["state"].values())

    final = train_killed_after_epoch_1_then_resumed(tmp_path / "cut", monkeypatch, **cfg)

    full, cut = (checkpoint.read(tmp_path / d / "checkpoint.pt") for d in ("full", "cut"))
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])
    for i, s in full["optimizer"]["state"].items():
        assert all(torch.equal(v, cut["optimizer"]["state"][i][k]) for k, v in s.items())
    assert final["accuracy"] == full_final["accuracy"]
    one = {**cfg, "epochs": 1}
    train(TrainConfig(out_dir=str(tmp_path / "one"), **one))
    (tmp_path / "one" / "final.json").unlink()  # as if interrupted before the evaluation
    with pytest.raises(checkpoint.CheckpointError, match="optimizer: checkpoint 'adam'"):
        train(TrainConfig(out_dir=str(tmp_path / "one"), resume=True,
                          **{**one, "optimizer": "sgd"}))
