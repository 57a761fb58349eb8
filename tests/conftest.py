import os

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist.npz")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def mnist_path():
    if not os.path.exists(SHARED_MNIST):
        pytest.skip("../shared/data/mnist.npz is absent")
    return SHARED_MNIST


def layouts(t: torch.Tensor):
    """The awkward layouts of one logical tensor: contiguous, channels_last (4-D),
    a batch-strided slice, and a transposed (non-contiguous) view."""
    out = {"contiguous": t.contiguous()}
    if t.dim() == 4:
        out["channels_last"] = t.contiguous(memory_format=torch.channels_last)
    out["batch_strided"] = torch.stack([t, torch.zeros_like(t)], 1).flatten(0, 1)[::2]
    if t.dim() >= 2:
        out["transposed"] = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return out
