"""Loaders on tiny synthetic stand-ins written in each dataset's real on-disk format."""
import importlib.util
import pickle
import struct

import numpy as np
import pytest
import torch

from gradalign_fast.training import datasets as data

# The real torchvision loaders; torchvision is absent with the CPU build of torch (set-up's
# CPU path), present in CI.
needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="needs torchvision (installed with the CUDA build of torch by scripts/setup.sh)")

RNG = np.random.default_rng(0)


def _cifar10(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = RNG.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        y = list(RNG.integers(0, 10, n))
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": x, "labels": y}, f)
        batches[name] = (x, y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches


@needs_torchvision
def test_cifar10_python_batches(tmp_path):
    batches = _cifar10(tmp_path)
    train = data.load_dataset("cifar10", tmp_path, train=True, augment=False)
    assert len(train) == 30
    x, y = train[7]  # second batch, second image
    want = torch.from_numpy(batches["data_batch_2"][0][1].reshape(3, 32, 32)).float() / 255
    assert torch.equal(x, want) and y == batches["data_batch_2"][1][1]
    test = data.load_dataset("cifar10", tmp_path, train=False, n=4)
    assert len(test) == 4 and test[0][0].shape == (3, 32, 32)
    torch.manual_seed(0)
    aug = data.load_dataset("cifar10", tmp_path, train=True)
    crops = torch.stack([aug[7][0] for _ in range(8)])
    assert crops.shape == (8, 3, 32, 32)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])  # random crops / flips
    assert 0 <= crops.min() and crops.max() <= 1


@needs_torchvision
def test_svhn_mat_maps_label_10_to_0(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    x = RNG.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy_io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    ds = data.load_dataset("svhn", tmp_path, train=True)
    assert [int(ds[i][1]) for i in range(5)] == [0, 1, 2, 0, 9]
    want = torch.from_numpy(x[..., 3]).permute(2, 0, 1).float() / 255
    assert torch.equal(ds[3][0], want)  # no training transform on SVHN
    with pytest.raises(FileNotFoundError, match="test_32x32.mat does not exist"):
        data.load_dataset("svhn", tmp_path, train=False)


def _idx(path, arr, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape))
        f.write(arr.tobytes())


@needs_torchvision
def test_mnist_raw_idx_files_and_npz(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 7), ("t10k", 3)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, n).astype(np.uint8)
        _idx(raw / f"{split}-images-idx3-ubyte", x, 2051)
        _idx(raw / f"{split}-labels-idx1-ubyte", y, 2049)
        arrays[split] = (x, y)
    ds = data.load_dataset("mnist", tmp_path, train=False)
    x, y = data.take(ds)
    assert torch.equal(x, torch.from_numpy(arrays["t10k"][0]).unsqueeze(1).float() / 255)
    assert y.tolist() == arrays["t10k"][1].tolist()

    npz = tmp_path / "mine.npz"
    np.savez(npz, x_train=arrays["train"][0], y_train=arrays["train"][1],
             x_test=arrays["t10k"][0], y_test=arrays["t10k"][1])
    x2, y2 = data.take(data.load_dataset("mnist", npz, train=False))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    np.savez(tmp_path / "bad.npz", images=arrays["train"][0])
    with pytest.raises(ValueError, match="lacks the arrays"):
        data.load_dataset("mnist", tmp_path / "bad.npz")


def test_shared_mnist_npz_dir(mnist_path):
    import os

    ds = data.load_dataset("mnist", os.path.dirname(mnist_path), train=False, n=300)
    x, y = data.take(ds)
    assert x.shape == (300, 1, 28, 28) and y[:4].tolist() == [7, 2, 1, 0]


@needs_torchvision
def test_imagenet_image_folders(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.png")
    train = data.load_dataset("imagenet", tmp_path, train=True)
    val = data.load_dataset("imagenet", tmp_path, train=False)
    assert len(train) == len(val) == 4
    assert train[0][0].shape == val[3][0].shape == (3, 224, 224) and val[3][1] == 1


def test_packaged_mnist_subset():
    train, test = data.load_dataset("mnist_subset"), data.load_dataset("mnist_subset",
                                                                        train=False)
    assert (len(train), len(test)) == (10000, 1000)
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and 0 <= x.min() <= x.max() <= 1
    with pytest.raises(ValueError, match="shipped with the package"):
        data.load_dataset("mnist_subset", "/some/dir")


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py"), ("svhn", "train_32x32.mat"),
    ("imagenet", "train/<wnid>"), ("mnist", "MNIST/raw")])
def test_missing_data_says_what_was_expected(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match="expected") as e:
        data.load_dataset(name, tmp_path / "absent")
    assert expected in str(e.value)
    with pytest.raises(FileNotFoundError, match="no data directory given"):
        data.load_dataset(name, None)


def test_specs_and_loader():
    assert data.DATASETS["imagenet"].num_classes == 1000
    assert data.DATASETS["cifar10"].model == "preact_resnet18"
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("cifar100", "x")
    ds = data.load_dataset("mnist_subset", n=50)
    order = [torch.cat([y for _, y in data.make_loader(
        ds, 16, shuffle=True, generator=torch.Generator().manual_seed(3))]) for _ in range(2)]
    assert torch.equal(*order) and sorted(order[0].tolist()) == sorted(data.take(ds)[1].tolist())
    with pytest.raises(ValueError, match="batch_size"):
        data.make_loader(ds, 0)
