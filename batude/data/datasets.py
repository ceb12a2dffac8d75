"""One entry point for training data: :class:`DataSpec` in, train/test datasets and info out.

Datasets are held in memory as uint8 tensors (:class:`TensorImageDataset`); items come out as
normalised float32 ``C x H x W`` images with an int label.

Choices, fixed so that runs are comparable:

* **Normalisation** uses fixed per-channel constants for the built-in datasets (Fashion-MNIST
  0.2860/0.3530; CIFAR-10 (0.4914, 0.4822, 0.4465)/(0.2470, 0.2435, 0.2616), the training-set
  statistics), so a subset normalises exactly like the full set. Image folders use the mean/std of
  their full training split, computed at load.
* **Augmentation** (training split only, ``augment=True``): Fashion-MNIST random crop 28 with
  zero padding 2 + horizontal flip; CIFAR-10 crop 32 pad 4 + flip; folders crop to their size with
  padding H // 8 + flip. Test splits are only normalised. Random draws use torch's global RNG.
* **Subsets** (``subset=N``, for smoke runs): N training and max(1, N // 5) test images, chosen by
  :func:`stratified_subset` (seed 0): a fixed random order, then round-robin over classes, so class
  counts differ by at most one (while every class has enough images). Same N, same images.
* **Image folders**: ``root/train/`` + ``root/test/`` (or ``val/``) when those are root's only
  sub-folders; otherwise ``root/<class>/`` and every 5th image (by file name) of each class is the
  test split.
* **Loader order**: :func:`make_loader` shuffles with a ``torch.Generator`` seeded from
  ``(seed, epoch)``; call ``loader.set_epoch(epoch)`` before each epoch.
* **Sharding** (data-parallel runs, ``world_size > 1``): every rank draws the same seeded order
  and takes every ``world_size``-th index from position ``rank``; ``batch_size`` is the global
  batch, each rank loads ``batch_size / world_size``, so step k's shards together are exactly the
  single-process run's batch k. Training orders are first cut to a multiple of ``world_size``
  (every rank takes the same number of steps); evaluation orders are not (all-reduce the counts).
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from batude.data.cifar import CIFAR10_CLASSES, load_cifar10
from batude.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from batude.data.folder import load_image_folder
from batude.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, channel_stats
from batude.errors import BatudeError

__all__ = [
    "DatasetName",
    "DataSpec",
    "DatasetInfo",
    "TensorImageDataset",
    "stratified_subset",
    "load_datasets",
    "EpochSampler",
    "SeededDataLoader",
    "make_loader",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUBSET_SEED = 0
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

Split = tuple[torch.Tensor, torch.Tensor]


class DatasetName(str, enum.Enum):
    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    FOLDER = "folder"


_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10", "imagefolder": "folder", "image-folder": "folder"}  # fmt: skip
_NATIVE_SIZE = {DatasetName.FASHION_MNIST: 28, DatasetName.CIFAR10: 32}


def _positive_int(value: Any, what: str, hint: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BatudeError(f"{what} must be a positive integer, got {value!r}; {hint}")
    return int(value)


@dataclass(frozen=True)
class DataSpec:
    """What to load. ``name``: "fashion-mnist" | "cifar10" | "folder" (normalised to :class:`DatasetName`).

    ``root``: the data folder (None: the Debian package's folder; Fashion-MNIST only). ``subset``:
    use N training and max(1, N // 5) test images (see :func:`stratified_subset`). ``augment``:
    random crop + flip on the training split. ``image_size``: folders only, resize + centre-crop to
    N x N (None: keep the size all images share).
    """

    name: DatasetName | str
    root: str | None = None
    subset: int | None = None
    augment: bool = True
    image_size: int | None = None

    def __post_init__(self) -> None:
        key = str(getattr(self.name, "value", self.name)).strip().lower()
        try:
            name = DatasetName(_ALIASES.get(key, key))
        except ValueError:
            choices = ", ".join(repr(n.value) for n in DatasetName)
            raise BatudeError(f"unknown dataset {self.name!r}; choose one of {choices}") from None
        object.__setattr__(self, "name", name)
        if self.root is not None:
            object.__setattr__(self, "root", os.fspath(self.root))
        elif name is not DatasetName.FASHION_MNIST:
            raise BatudeError(f"dataset {name.value!r} has no default location; pass its folder with --data-dir")
        object.__setattr__(self, "subset", _positive_int(self.subset, "subset", "pass e.g. 1000 or None"))
        size = _positive_int(self.image_size, "image_size", "pass e.g. 32 or None")
        native = _NATIVE_SIZE.get(name)
        if size is not None and native is not None and size != native:
            raise BatudeError(
                f"{name.value} images are {native}x{native}; image_size={size} applies only to folder "
                "datasets, drop --image-size"
            )
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "augment", bool(self.augment))

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "name": self.name.value, "root": self.root,  # type: ignore[union-attr]
                "subset": self.subset, "augment": self.augment, "image_size": self.image_size}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        if d.get("version") != FORMAT_VERSION:
            raise BatudeError(f"data spec version {d.get('version')!r} is not {FORMAT_VERSION}; re-create it")
        return cls(d["name"], d.get("root"), d.get("subset"), d.get("augment", True), d.get("image_size"))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the data: classes, input shape, normalisation."""

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std),
                "class_names": list(self.class_names), "name": self.name}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetInfo":
        if d.get("version") != FORMAT_VERSION:
            raise BatudeError(f"dataset info version {d.get('version')!r} is not {FORMAT_VERSION}; re-create it")
        h, w = (int(v) for v in d["image_size"])
        return cls(int(d["num_classes"]), int(d["in_channels"]), (h, w), tuple(map(float, d["mean"])),
                   tuple(map(float, d["std"])), tuple(map(str, d["class_names"])), str(d["name"]))  # fmt: skip


class TensorImageDataset(Dataset):
    """In-memory images: item i is ``(transform(images[i] / 255), int(labels[i]))``.

    ``images``: uint8 ``N x C x H x W``; ``labels``: int64 ``N``. The image is converted to float32
    in [0, 1] before ``transform`` (which normally ends with :class:`Normalize`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise BatudeError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise BatudeError(
                f"labels must be int64 of shape ({images.shape[0]},), got {labels.dtype} {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])


def stratified_subset(labels: torch.Tensor, n: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Indices (int64, ascending) of ``n`` examples balanced over classes; all if ``n >= len``.

    Order the examples by a ``torch.randperm`` seeded with ``seed``, then take them round-robin
    over the classes (class 0's first, class 1's first, ..., class 0's second, ...).
    """
    if n >= labels.numel():
        return torch.arange(labels.numel())
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    lab = labels[perm]
    rank = torch.empty_like(perm)
    for c in lab.unique():
        mask = lab == c
        rank[mask] = torch.arange(int(mask.sum()))
    key = rank * (int(lab.max()) + 1) + (lab - int(lab.min()))
    return perm[torch.argsort(key)[:n]].sort().values


def _split_folder(spec: DataSpec) -> tuple[Split, Split, tuple[str, ...]]:
    """``root/{train,test|val}/<class>/`` if that is the layout, else every 5th image per class is test."""
    root = Path(spec.root or "")
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} if root.is_dir() else set()
    test_name = "test" if "test" in subdirs else "val"
    if "train" in subdirs and test_name in subdirs and subdirs <= {"train", "test", "val"}:
        tx, ty, names, mode = load_image_folder(root / "train", spec.image_size)
        vx, vy, _, _ = load_image_folder(root / test_name, spec.image_size, classes=names, mode=mode)
        if vx.shape[2:] != tx.shape[2:]:
            raise BatudeError(
                f"{root / test_name} images are {tuple(vx.shape[2:])}, train images {tuple(tx.shape[2:])}; "
                "pass image_size (--image-size N) to bring both to N x N"
            )
        return (tx, ty), (vx, vy), names
    x, y, names, _ = load_image_folder(root, spec.image_size)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(len(names)):
        test[(y == c).nonzero().flatten()[4::5]] = True
    if not test.any():
        raise BatudeError(
            f"{root} has fewer than 5 images in every class, too few to hold out a test split; "
            "add images or use a train/ + test/ layout"
        )
    log.info("%s: holding out every 5th image per class as the test split (%d images)", root, int(test.sum()))
    return (x[~test], y[~test]), (x[test], y[test]), names


def _load_raw(spec: DataSpec) -> tuple[Split, Split, tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
    if spec.name is DatasetName.FASHION_MNIST:
        train, test = load_fashion_mnist(spec.root)
        return train, test, FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    if spec.name is DatasetName.CIFAR10:
        train, test = load_cifar10(spec.root or "")
        return train, test, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
    train, test, names = _split_folder(spec)
    mean, std = channel_stats(train[0])
    std = tuple(s if s > 1e-6 else 1.0 for s in std)  # constant images: only centre them
    return train, test, names, mean, std


def _train_transform(spec: DataSpec, info: DatasetInfo) -> Callable[[torch.Tensor], torch.Tensor]:
    normalize = Normalize(info.mean, info.std)
    if not spec.augment:
        return normalize
    h, w = info.image_size
    padding = {DatasetName.FASHION_MNIST: 2, DatasetName.CIFAR10: 4}.get(spec.name, h // 8)  # type: ignore[arg-type]
    return Compose([RandomCrop((h, w), padding=padding), RandomHorizontalFlip(0.5), normalize])


def load_datasets(spec: DataSpec) -> tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]:
    """Load ``spec`` into ``(train, test, info)``; see the module docstring for the fixed choices.

    Items are ``(float32 C x H x W normalised image, int label)``. Raises :class:`BatudeError` for
    missing or malformed data, with a message saying how to fix it.
    """
    (train_x, train_y), (test_x, test_y), names, mean, std = _load_raw(spec)
    if spec.subset is not None:
        keep = stratified_subset(train_y, spec.subset)
        keep_test = stratified_subset(test_y, max(1, spec.subset // 5))
        train_x, train_y, test_x, test_y = train_x[keep], train_y[keep], test_x[keep_test], test_y[keep_test]
        log.info("using a subset: %d train, %d test images", len(train_y), len(test_y))
    h, w = train_x.shape[2:]
    info = DatasetInfo(len(names), train_x.shape[1], (int(h), int(w)), mean, std, names, spec.name.value)  # type: ignore[union-attr]
    train = TensorImageDataset(train_x, train_y, _train_transform(spec, info))
    test = TensorImageDataset(test_x, test_y, Normalize(mean, std))
    return train, test, info


def _mix(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed from (seed, epoch, stream); distinct inputs give unrelated seeds."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]) >> 1


class EpochSampler(Sampler[int]):
    """Indices 0..n-1: a permutation seeded from ``(seed, epoch)`` if ``shuffle``, else in order.

    With ``world_size > 1`` this rank's shard of that order: positions ``rank, rank + world_size,
    ...``; ``even=True`` first cuts the order to a multiple of ``world_size`` so that every shard
    has the same length (training: every rank must take the same number of steps).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, *, rank: int = 0, world_size: int = 1,
                 even: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise BatudeError(f"rank {rank} is outside 0..{world_size - 1}; launch data-parallel runs with torchrun")
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.rank, self.world_size = rank, world_size
        self.stop = n - n % world_size if even else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.rank, self.stop, self.world_size))
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 0))
        return iter(torch.randperm(self.n, generator=g)[self.rank:self.stop:self.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.stop, self.world_size))


class SeededDataLoader(DataLoader):
    """A DataLoader whose order (and worker RNG seeds) depend only on ``(seed, epoch)``."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reseeds the shuffling and the generator that seeds worker processes."""
        if epoch < 0:
            raise BatudeError(f"epoch must be >= 0, got {epoch}")
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        sampler.set_epoch(epoch)
        self.generator.manual_seed(_mix(sampler.seed, epoch, 1))  # type: ignore[union-attr]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> SeededDataLoader:
    """A DataLoader over ``dataset`` yielding ``(float32 B x C x H x W, int64 B)`` batches.

    ``train=True`` shuffles with a generator seeded from ``(seed, epoch)`` (epoch 0 until
    ``loader.set_epoch(e)``) and, by default, drops the last incomplete batch when the dataset has
    at least one full batch (BatchNorm cannot train on a batch of one); ``train=False`` keeps order
    and every example. Worker processes (``num_workers > 0``) get their global RNG seeded by the
    DataLoader from the loader's generator, so augmentation there is reproducible as well.

    ``rank``/``world_size``: this process's shard (see the module docstring). ``batch_size`` stays
    the global batch: a training loader yields ``batch_size // world_size`` examples per step and
    refuses a batch size that ``world_size`` does not divide; an evaluation loader yields at most
    ``ceil(batch_size / world_size)``.
    """
    batch_size = _positive_int(batch_size, "batch_size", "pass e.g. 128")  # type: ignore[assignment]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BatudeError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise BatudeError(f"num_workers must be an integer >= 0, got {num_workers!r}; pass 0 to load in-process")
    world_size = _positive_int(world_size, "world_size", "pass the number of processes")  # type: ignore[assignment]
    if train and batch_size % world_size:
        up = -(-batch_size // world_size) * world_size
        raise BatudeError(
            f"batch size {batch_size} is the global batch and must be divisible by the {world_size} processes; "
            f"pass e.g. --batch-size {up}"
        )
    if drop_last is None:
        drop_last = train and len(dataset) >= batch_size  # type: ignore[arg-type]
    return SeededDataLoader(
        dataset,
        batch_size=-(-batch_size // world_size),
        sampler=EpochSampler(len(dataset), seed, shuffle=train, rank=rank, world_size=world_size, even=train),  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(_mix(seed, 0, 1)),
    )
