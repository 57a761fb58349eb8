"""The authors' models (tml-epfl/understanding-fast-adv-training, models.py) and their init."""
import math

import pytest
import torch
import torch.nn as nn

from gradalign_fast.training import checkpoint, models
from gradalign_fast.training.models import build_model


def _layers(net, kind):
    return [m for m in net.modules() if isinstance(m, kind)]


def test_authors_preact_resnet18_layer_list():
    net = build_model("preact_resnet18")
    assert len(_layers(net, nn.BatchNorm2d)) == 16
    convs = _layers(net, nn.Conv2d)
    assert len(convs) == 1 + 8 * 2 + 3  # stem, two per block, three shortcut convs
    assert all(c.bias is None for c in convs)
    assert not _layers(net, models.Normalize)
    assert len(_layers(net, nn.Linear)) == 1 and net.linear.in_features == 512
    assert len(_layers(build_model("preact_resnet18_std"), nn.BatchNorm2d)) == 17


@pytest.mark.parametrize("name, on_input", [("preact_resnet18", True),
                                            ("preact_resnet18_std", False)])
def test_shortcut_input_and_no_final_batchnorm(name, on_input):
    """Forward hooks: each shortcut conv reads its block's input x (authors) or relu(bn1(x));
    the pooled features reach the linear layer straight from the last block (authors) or
    through a final BatchNorm + ReLU."""
    torch.manual_seed(0)
    net = build_model(name).eval()
    seen = {}

    def keep(key, pick):
        def hook(module, inp, out):  # returns None: the forward is not changed
            seen[key] = pick(inp[0], out).detach()
        return hook

    for bi, block in enumerate(m for m in net.modules() if isinstance(m, models.PreActBlock)):
        if block.shortcut is None:
            continue
        block.register_forward_hook(keep(("block_in", bi), lambda i, o: i))
        block.bn1.register_forward_hook(keep(("pre", bi), lambda i, o: torch.relu(o)))
        block.shortcut.register_forward_hook(keep(("shortcut_in", bi), lambda i, o: i))
    net.layers.register_forward_hook(keep("last", lambda i, o: o))
    net.linear.register_forward_hook(keep("head", lambda i, o: i))
    net(torch.rand(2, 3, 32, 32))
    blocks = [k[1] for k in seen if k[0:1] == ("shortcut_in",)]
    assert len(blocks) == 3
    for bi in blocks:
        want = seen[("block_in", bi)] if on_input else seen[("pre", bi)]
        assert torch.equal(seen[("shortcut_in", bi)], want)
    pooled = seen["last"].mean((2, 3))
    assert seen["last"].shape[-2:] == (4, 4)
    assert torch.allclose(seen["head"], pooled, atol=1e-6) == on_input


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_cnn_is_one_conv_relu_linear(channels, size):
    net = build_model("cnn", in_channels=channels, image_size=size)
    assert [type(m) for m in net.children()] == [nn.Conv2d, nn.Linear]
    assert net.conv.kernel_size == (3, 3) and net.conv.in_channels == channels
    x = torch.randn(3, channels, size, size)
    want = net.linear(torch.relu(net.conv(x)).flatten(1))
    assert torch.equal(net(x), want) and want.shape == (3, 10)
    assert models.CNN(10, channels, size, n_filters=4).conv.out_channels == 4


def test_authors_init():
    torch.manual_seed(0)
    net = build_model("preact_resnet18", init="authors")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            std = math.sqrt(2 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
            assert m.weight.std().item() == pytest.approx(std, rel=0.1)
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert net.linear.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.1)
    assert torch.all(net.linear.bias == 0)
    cnn = build_model("cnn", init="authors")
    assert torch.all(cnn.conv.bias == 0) and torch.all(cnn.linear.bias == 0)
    torch.manual_seed(0)
    default = build_model("preact_resnet18")  # torch's: the linear bias is not zero
    assert not torch.all(default.linear.bias == 0)
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        build_model("cnn", init="xavier")


def test_recipes_build_their_model():
    """The authors' recipes: no normalisation, their init; the old MNIST one normalised."""
    cifar = checkpoint.model_from_config({"dataset": "cifar10", "model": "preact_resnet18",
                                          "recipe": "cifar10"})
    assert isinstance(cifar, models.PreActResNet18)
    assert all(torch.all(m.bias == 0) for m in _layers(cifar, nn.Linear))
    old = checkpoint.model_from_config({"dataset": "mnist", "model": "mnist_cnn",
                                        "recipe": "mnist_sgd_ramp"})
    assert isinstance(old[0], models.Normalize)
    wong = checkpoint.model_from_config({"dataset": "mnist", "model": "mnist_cnn",
                                         "recipe": "mnist"})
    assert not _layers(wong, models.Normalize)
