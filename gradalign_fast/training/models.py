"""Models of the paper's experiments; inputs in [0, 1] (eps in pixel units), normalisation, when
a recipe asks for it, by a Normalize layer in front of the model.

`preact_resnet18` and `cnn` are the authors' (tml-epfl/understanding-fast-adv-training,
`models.py`); `preact_resnet18_std` is the common Rice et al. / kuangliu form; `_narrow`: 16
channels in the first stage instead of 64 (CPU benchmarks and studies); `mnist_cnn` is Wong et
al.'s MNIST CNN. `init="authors"` applies the authors' initialisation (`authors_init`).
"""
from __future__ import annotations

import math

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
    """Pre-activation basic block. shortcut_on_input: the shortcut conv (where the shape
    changes) reads the block's input x (the authors' form) instead of relu(bn1(x))."""

    def __init__(self, in_planes, planes, stride=1, shortcut_on_input=True):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut_on_input = shortcut_on_input
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if self.shortcut is None:
            shortcut = x
        else:
            shortcut = self.shortcut(x if self.shortcut_on_input else out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18 (He et al. 2016). authors=True: the authors' network (shortcut conv on the
    block's input, no BatchNorm+ReLU before the 4x4 average pool: 16 BatchNorm layers);
    authors=False: the Rice et al. / kuangliu form (shortcut on relu(bn1(x)), a final
    BatchNorm+ReLU: 17). `width` = channels of the first stage (64 in the paper)."""

    def __init__(self, num_classes=10, in_channels=3, width=64, authors=True):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        stages, in_planes = [], w
        for planes, stride in [(w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)]:
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride, authors),
                                        PreActBlock(planes, planes, 1, authors)))
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.bn = None if authors else nn.BatchNorm2d(8 * w)
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        # a 4x4 map for 32x32 inputs: the authors' F.avg_pool2d(out, 4) is the global mean
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class CNN(nn.Module):
    """The authors' one-layer CNN (their `--model cnn`): a 3x3 conv with n_filters filters
    (stride 1, padding 1), ReLU, a linear layer on the flattened [n_filters, H, W] map."""

    def __init__(self, num_classes=10, in_channels=3, image_size=32, n_filters=16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, n_filters, 3, 1, 1)
        self.linear = nn.Linear(n_filters * image_size * image_size, num_classes)

    def forward(self, x):
        return self.linear(F.relu(self.conv(x)).flatten(1))


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


# name -> constructor(num_classes, in_channels, image_size)
MODELS = {
    "cnn": lambda num_classes, in_channels, image_size: CNN(num_classes, in_channels,
                                                            image_size),
    "mnist_cnn": lambda num_classes, in_channels, image_size: mnist_cnn(num_classes,
                                                                        in_channels),
    "mnist_cnn_wide": lambda num_classes, in_channels, image_size: mnist_cnn(
        num_classes, in_channels, width=4),
    "preact_resnet18": lambda num_classes, in_channels, image_size: PreActResNet18(
        num_classes, in_channels),
    "preact_resnet18_std": lambda num_classes, in_channels, image_size: PreActResNet18(
        num_classes, in_channels, authors=False),
    "preact_resnet18_narrow": lambda num_classes, in_channels, image_size: PreActResNet18(
        num_classes, in_channels, width=16),
    # the narrow network of the committed studies made before the authors' form (issue 22)
    "preact_resnet18_std_narrow": lambda num_classes, in_channels, image_size: PreActResNet18(
        num_classes, in_channels, width=16, authors=False),
    "resnet50": lambda num_classes, in_channels, image_size: resnet50(num_classes, in_channels),
}


@torch.no_grad()
def authors_init(net: nn.Module) -> nn.Module:
    """The authors' initialisation (`utils.initialize_weights`), in place: conv weights
    N(0, sqrt(2 / (k * k * out_channels))), linear N(0, sqrt(2 / in_features)), biases 0,
    BatchNorm weight 1 and bias 0. Draws from torch's global generator."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            m.weight.normal_(0, math.sqrt(2.0 / (k * m.out_channels)))
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0, math.sqrt(2.0 / m.in_features))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.fill_(1.0)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)) \
                and m.bias is not None:
            m.bias.zero_()
    return net


INITS = ("torch", "authors")  # torch: PyTorch's default initialisation of each layer


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, mean=None, std=None,
                init: str = "torch", image_size: int = 32):
    """The model `name` of MODELS, initialised by `init` (one of INITS), behind a Normalize
    layer when mean/std are given. image_size: the inputs' height = width (the `cnn`'s linear
    layer depends on it)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    net = MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if init == "authors":
        authors_init(net)
    if mean is None:
        return net
    return nn.Sequential(Normalize(mean, std), net)
