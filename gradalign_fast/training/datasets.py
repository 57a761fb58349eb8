"""Datasets of the paper as torch Datasets of [0, 1] float images, and their loaders.

MNIST comes from an .npz (x_train, y_train, x_test, y_test as uint8, like the shared one) or
torchvision's MNIST/raw layout; `mnist_subset` is the small MNIST sample shipped in the package.
CIFAR-10, SVHN and ImageNet go through torchvision's dataset classes on a local data directory
(nothing is downloaded). Normalisation is not applied here: the models normalise internally so
that eps is in pixel units.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

PACKAGE_MNIST = Path(__file__).parent / "data" / "mnist_subset.npz"


@dataclass(frozen=True)
class DatasetSpec:
    num_classes: int
    in_channels: int
    mean: tuple
    std: tuple
    model: str
    image_size: int


DATASETS = {
    "mnist": DatasetSpec(10, 1, (0.1307,), (0.3081,), "mnist_cnn", 28),
    "mnist_subset": DatasetSpec(10, 1, (0.1307,), (0.3081,), "mnist_cnn", 28),
    "cifar10": DatasetSpec(10, 3, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                           "preact_resnet18", 32),
    "svhn": DatasetSpec(10, 3, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        "preact_resnet18", 32),
    "imagenet": DatasetSpec(1000, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "resnet50",
                            224),
}

_HOW_TO_GET = {
    "mnist": "an .npz with x_train, y_train, x_test, y_test (uint8), or a folder holding "
             "mnist.npz or torchvision's MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte "
             "(torchvision.datasets.MNIST(root, download=True) writes these); or use the "
             "dataset 'mnist_subset', shipped with the package",
    "cifar10": "DIR/cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta: "
               "the CIFAR-10 python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
               "untarred into DIR",
    "svhn": "DIR/train_32x32.mat and DIR/test_32x32.mat from "
            "http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits)",
    "imagenet": "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (ILSVRC-2012, the "
                "validation images sorted into one folder per class)",
}


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def _missing(name: str, what: str) -> FileNotFoundError:
    key = "mnist" if name.startswith("mnist") else name
    return FileNotFoundError(f"dataset {name!r}: {what}; expected {_HOW_TO_GET[key]}")


class ArrayImages(Dataset):
    """uint8 images [N, H, W] or [N, H, W, C] with integer labels -> (float [C, H, W] in [0, 1],
    int64 label). Kept as uint8 in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        x = torch.from_numpy(np.ascontiguousarray(images))
        self.images = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.asarray(labels).astype(np.int64))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float().div_(255), self.labels[i]


def _mnist_npz(path: Path, train: bool) -> ArrayImages:
    """The train or test split of an mnist.npz (x_train, y_train, x_test, y_test: uint8
    [N, 28, 28] images, labels 0-9). Never unpickles: a file the user did not make runs no
    code."""
    split = "train" if train else "test"
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {f"x_{split}", f"y_{split}"} - set(f.files)
            if missing:
                raise ValueError(f"{path} lacks the arrays {sorted(missing)} (has {f.files})")
            images, labels = f[f"x_{split}"], f[f"y_{split}"]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, AttributeError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not a readable MNIST .npz file (damaged, truncated, or "
                         f"another format; numpy: {type(e).__name__}); expected "
                         f"{_HOW_TO_GET['mnist']}") from None
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: the {split} labels span {labels.min()}..{labels.max()}; "
                         f"MNIST's classes are 0-9")
    return ArrayImages(images, labels)


def _mnist(name: str, data_dir, train: bool):
    if name == "mnist_subset":
        if data_dir is not None:
            raise ValueError("dataset 'mnist_subset' is shipped with the package: give no "
                             "data_dir (use dataset 'mnist' for your own MNIST files)")
        return _mnist_npz(PACKAGE_MNIST, train)
    if data_dir is None:
        raise _missing(name, "no data directory given (--data-dir)")
    path = Path(data_dir)
    if path.is_file():
        return _mnist_npz(path, train)
    if (path / "mnist.npz").is_file():
        return _mnist_npz(path / "mnist.npz", train)
    if (path / "MNIST" / "raw").is_dir():
        import torchvision

        return torchvision.datasets.MNIST(str(path), train=train, download=False,
                                          transform=torchvision.transforms.ToTensor())
    raise _missing(name, f"{path} is neither an .npz file nor a folder with mnist.npz or "
                         f"MNIST/raw/")


def _require(name: str, paths: list[Path]) -> None:
    for p in paths:
        if not p.exists():
            raise _missing(name, f"{p} does not exist")


def _cifar10(root: Path, train: bool, transform):
    import torchvision

    folder = root / "cifar-10-batches-py"
    _require("cifar10", [folder / f for f in
                         ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]])

    class CIFAR10(torchvision.datasets.CIFAR10):
        """torchvision's CIFAR10 reading the files as they are: the presence of every file is
        checked above, their md5 (a download check) is not."""

        def _check_integrity(self):
            return True

        def _load_meta(self):
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR10(str(root), train=train, transform=transform, download=False)


def _svhn(root: Path, train: bool, transform):
    import torchvision

    split = "train" if train else "test"
    _require("svhn", [root / f"{split}_32x32.mat"])

    class SVHN(torchvision.datasets.SVHN):
        """torchvision's SVHN without the md5 check of the .mat (checked present above)."""

        def _check_integrity(self):
            return True

    return SVHN(str(root), split=split, transform=transform, download=False)


def _imagenet(root: Path, train: bool, transform):
    import torchvision

    folder = root / ("train" if train else "val")
    _require("imagenet", [folder])
    return torchvision.datasets.ImageFolder(str(folder), transform=transform)


def _transform(name: str, augment: bool):
    from torchvision import transforms as T

    if name == "cifar10":
        aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
        return T.Compose(aug + [T.ToTensor()])
    if name == "svhn":
        return T.ToTensor()
    if augment:  # imagenet
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])


def load_dataset(name: str, data_dir=None, train: bool = True, n: int | None = None,
                 augment: bool | None = None) -> Dataset:
    """The train or test split of dataset `name` as (float image in [0, 1], label) pairs.

    data_dir: where the files are (see the error message for the expected layout); n: keep the
    first n points; augment: the training transforms (default: on for the train split;
    CIFAR-10: random crop with padding 4 + flip, ImageNet: RandomResizedCrop + flip, none for
    MNIST and SVHN).
    """
    spec(name)
    augment = train if augment is None else augment
    if name.startswith("mnist"):
        ds = _mnist(name, data_dir, train)
    else:
        if data_dir is None:
            raise _missing(name, "no data directory given (--data-dir)")
        root = Path(data_dir)
        if not root.is_dir():
            raise _missing(name, f"{root} is not a directory")
        loader = {"cifar10": _cifar10, "svhn": _svhn, "imagenet": _imagenet}[name]
        ds = loader(root, train, _transform(name, augment))
    return first(ds, n)


def first(dataset: Dataset, n: int | None) -> Dataset:
    """The first n points of `dataset` (all of it for n=None)."""
    if n is None:
        return dataset
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n > len(dataset):
        raise ValueError(f"n={n} but the dataset has only {len(dataset)} points")
    return Subset(dataset, range(n))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, sampler=None, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader; pass a seeded `generator` for a reproducible order (and worker seeds)."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, generator=generator, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False)


def take(dataset: Dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n points (all for None) as one stacked (x, y) pair."""
    ds = first(dataset, n)
    x, y = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    return x, y
