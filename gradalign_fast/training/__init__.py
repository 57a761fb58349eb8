"""The adversarial-training toolkit around GradAlignLoss: training methods (`methods`), the
trainer and its recipes, datasets, models, checkpoints, distributed training, evaluation, the
catastrophic-overfitting monitor (sweeps and studies: gradalign_fast.studies).

    from gradalign_fast.training import TrainConfig, train, load_checkpoint
"""
from .checkpoint import load_checkpoint
from .methods import METHODS, make_method
from .step import train_step
from .models import build_model
from .monitor import COMonitor
from .trainer import TrainConfig, train

__all__ = ["COMonitor", "METHODS", "TrainConfig", "build_model", "load_checkpoint",
           "make_method", "train", "train_step"]
