"""Training data: Fashion-MNIST (IDX), CIFAR-10 (python batches), image folders; loaders.

Entry points: :func:`load_datasets` (a :class:`DataSpec` in, train/test datasets and a
:class:`DatasetInfo` out) and :func:`make_loader` (a seeded, epoch-aware DataLoader). Imports only
torch, numpy and the standard library; Pillow is imported lazily for image folders.
"""

from batude.data.cifar import CIFAR10_CLASSES, load_cifar10, safe_unpickle
from batude.data.datasets import (
    DataSpec,
    DatasetInfo,
    DatasetName,
    EpochSampler,
    SeededDataLoader,
    TensorImageDataset,
    load_datasets,
    make_loader,
    stratified_subset,
)
from batude.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    read_idx,
)
from batude.data.folder import load_image_folder
from batude.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, channel_stats

__all__ = [
    "DataSpec",
    "DatasetInfo",
    "DatasetName",
    "load_datasets",
    "make_loader",
    "SeededDataLoader",
    "EpochSampler",
    "TensorImageDataset",
    "stratified_subset",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Normalize",
    "channel_stats",
    "read_idx",
    "load_fashion_mnist",
    "load_cifar10",
    "load_image_folder",
    "safe_unpickle",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
]
