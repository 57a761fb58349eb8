"""Small models and batches shared by the tests of the training methods."""
import torch
import torch.nn as nn


def softplus_cnn() -> nn.Module:
    """A float64 CNN on 6x6 one-channel inputs, 5 classes; smooth (Softplus), so second
    derivatives are exact in float64."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).double()


def batch(seed: int = 1, n: int = 8):
    """(x in [0, 1]^(n, 1, 6, 6), labels in 0..4), float64, from its own generator."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (n,), generator=g))


def train_killed_after_epoch_1_then_resumed(run_dir, monkeypatch, **cfg) -> dict:
    """train(cfg) into run_dir, killed right after epoch 1's checkpoint (a KeyboardInterrupt
    from inside the trainer), then resumed to the end: returns the resumed run's final.json."""
    import pytest

    from gradalign_fast.training import checkpoint, trainer
    from gradalign_fast.training.trainer import TrainConfig, train

    save = trainer._Run._save

    def save_then_die(self, epoch):
        save(self, epoch)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer._Run, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out_dir=str(run_dir), **cfg))
    monkeypatch.setattr(trainer._Run, "_save", save)
    assert checkpoint.read(run_dir / "checkpoint.pt")["epoch"] == 1
    return train(TrainConfig(out_dir=str(run_dir), resume=True, **cfg))
