"""Checkpoints: atomic writes, RNG states, clear errors for corrupt or mismatched files, and
`load_checkpoint(path)` that rebuilds the model ready for evaluation.

A checkpoint is a dict saved with torch.save holding only tensors and plain Python values (so
it loads with weights_only=True): "format", "config" (the resolved TrainConfig as a dict),
"model" (state dict), and for the resumable checkpoint.pt also "optimizer", "scaler", "epoch",
"iteration", "rng", "loader_rng", "monitor", "train_time_s".
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .datasets import spec
from .models import build_model
from .recipe import RECIPES

FORMAT = "gradalign_fast.checkpoint/1"
# The TrainConfig fields that define a training run: a resume must match them.
RUN_FIELDS = ("method", "dataset", "recipe", "model", "eps", "lam", "epochs", "batch_size",
              "lr_max", "optimizer", "momentum", "wd", "eps_warmup_epochs", "lr_schedule",
              "n_train", "n_monitor", "seed", "amp", "user_data")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or from another run."""


def save(path, state: dict) -> None:
    """torch.save to path + '.tmp', then os.replace: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def read(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        # torch's own message would advise weights_only=False (runs arbitrary code): not ours
        raise CheckpointError(f"{path} is not a readable checkpoint: damaged, truncated, or not "
                              f"written by gradalign_fast (torch.load with weights_only=True "
                              f"failed with {type(e).__name__}); retrain, or use another "
                              f"checkpoint (best.pt or checkpoint.pt of the run)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gradalign_fast checkpoint (format "
                              f"{ckpt.get('format') if isinstance(ckpt, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    return ckpt


def check_same_run(saved: dict, config: dict, path) -> None:
    """Raises CheckpointError naming every RUN_FIELDS value that differs."""
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}" for k in RUN_FIELDS
            if saved.get(k) != config.get(k)]
    if diff:
        raise CheckpointError(f"{path} is from a different run; " + "; ".join(diff))


def rng_state(loader_generator: torch.Generator) -> dict:
    """Every RNG the training consumes: torch (CPU and CUDA), numpy, python, data order."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *np_state[2:]],
            "python": random.getstate(),
            "loader": loader_generator.get_state()}


def set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():  # skipped when a CUDA run resumes on CPU
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    loader_generator.set_state(state["loader"])


# The recipe of a config written before configs named theirs: normalised inputs and torch's
# initialisation, as every model was built then.
LEGACY_RECIPE = "mnist_sgd_ramp"


def model_from_config(config: dict) -> torch.nn.Module:
    """The model of a resolved TrainConfig (as a dict): its recipe says whether the inputs are
    normalised and which initialisation it gets."""
    s = spec(config["dataset"])
    r = RECIPES[config.get("recipe") or LEGACY_RECIPE]
    mean, std = (s.mean, s.std) if r.normalize else (None, None)
    return build_model(config["model"], s.num_classes, s.in_channels, mean, std, init=r.init,
                       image_size=s.image_size)


def load_checkpoint(path, device=None, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The model of a checkpoint.pt or best.pt, weights loaded, in eval mode, on `device`
    (CPU by default). Its training config is at `model.config` (a dict). A run of a model of
    your own (config "model": "user:...") needs that model: pass a fresh instance as `model`."""
    ckpt = read(path)
    if "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} has no model config or weights")
    name = str(ckpt["config"]["model"])
    if model is None and name.startswith("user:"):
        raise CheckpointError(f"{path} holds a model of your own ({name[5:]}): load it with "
                              f"load_checkpoint(path, model=<a new instance of it>)")
    model = model_from_config(ckpt["config"]) if model is None else model
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit model "
                              f"{ckpt['config']['model']!r}: {e}") from e
    model.config = dict(ckpt["config"])
    return model.to(device or "cpu").eval()
