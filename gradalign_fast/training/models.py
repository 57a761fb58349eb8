"""Models of the paper's experiments; inputs in [0, 1], normalisation inside the model so that
eps is in pixel units."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean, std: sequences of length C."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18 (He et al. 2016) as in the authors' code; `width` = channels of the first
    stage (64 in the paper; smaller for CPU benchmarks)."""

    def __init__(self, num_classes=10, in_channels=3, width=64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        stages, in_planes = [], w
        for i, (planes, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)]):
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride),
                                        PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(8 * w)
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def mnist_cnn(num_classes=10, in_channels=1, width=1):
    """The small MNIST CNN of Wong et al. (2020), used for fast adversarial training on MNIST;
    `width` multiplies every layer's channels/units (28x28 inputs)."""
    c1, c2, h = 16 * width, 32 * width, 100 * width
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, h), nn.ReLU(), nn.Linear(h, num_classes),
    )


def resnet50(num_classes=1000, in_channels=3):
    import torchvision

    if in_channels != 3:
        raise ValueError("resnet50 expects 3 input channels")
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


MODELS = {
    "mnist_cnn": mnist_cnn,
    "mnist_cnn_wide": lambda num_classes=10, in_channels=1: mnist_cnn(num_classes, in_channels,
                                                                      width=4),
    "preact_resnet18": PreActResNet18,
    "preact_resnet18_narrow": lambda num_classes=10, in_channels=3: PreActResNet18(
        num_classes, in_channels, width=16),
    "resnet50": resnet50,
}


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, mean=None, std=None):
    """The model `name` of MODELS behind a Normalize layer (when mean/std are given)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    net = MODELS[name](num_classes=num_classes, in_channels=in_channels)
    if mean is None:
        return net
    return nn.Sequential(Normalize(mean, std), net)
