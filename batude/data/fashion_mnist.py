"""Fashion-MNIST from IDX files: the Debian package ``dataset-fashion-mnist`` or any folder.

IDX format (LeCun et al.): a 4-byte magic ``0x00 0x00 TYPE NDIM`` (TYPE 0x08 = unsigned byte),
then NDIM big-endian uint32 sizes, then the values in C order. Images have magic 0x00000803
(N, rows, cols), labels 0x00000801 (N,). The parser is strict: the file length must match the
header exactly, and anything else is a :class:`BatudeError` that says how to get good files.
Files may be gzipped or not (detected from the content, not the name).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from batude.errors import BatudeError

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "read_idx",
    "load_fashion_mnist",
]

log = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_MAX_BYTES = 1 << 31  # refuse to decompress more than 2 GiB (Fashion-MNIST train images: 47 MB)
_FIX = "re-download the file or reinstall it with 'apt-get install --reinstall dataset-fashion-mnist'"

Split = tuple[torch.Tensor, torch.Tensor]


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise BatudeError(f"cannot read {path}: {err}; the file is corrupt or truncated, {_FIX}") from None
    if len(raw) > _MAX_BYTES:
        raise BatudeError(f"{path} is larger than 2 GiB once decompressed; it is not an IDX image/label file")
    return raw


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzipped or not) into a uint8 array of its header's shape.

    ``magic`` is the expected magic number: :data:`IDX_IMAGES_MAGIC` (result N x rows x cols) or
    :data:`IDX_LABELS_MAGIC` (result N). The returned array is writable and owns its memory.
    """
    path = Path(path)
    raw = _read_bytes(path)
    kind = "image" if magic == IDX_IMAGES_MAGIC else "label" if magic == IDX_LABELS_MAGIC else "IDX"
    if len(raw) < 4:
        raise BatudeError(f"{path} is truncated ({len(raw)} bytes, no IDX header); {_FIX}")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise BatudeError(
            f"{path} is not an IDX {kind} file: magic 0x{got:08x}, expected 0x{magic:08x}; "
            f"check that images and labels are not swapped, or {_FIX}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BatudeError(f"{path} is truncated inside its header ({len(raw)} bytes); {_FIX}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need = header + math.prod(dims)
    shape = "x".join(str(d) for d in dims)
    if len(raw) < need:
        raise BatudeError(
            f"{path} is truncated: its header says {shape} values ({need} bytes) but it has {len(raw)} bytes; {_FIX}"
        )
    if len(raw) > need:
        raise BatudeError(
            f"{path} has {len(raw) - need} bytes after the {shape} values its header announces; {_FIX}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=need - header, offset=header).reshape(dims).copy()


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise BatudeError(
        f"Fashion-MNIST not found in {root} (no {stem} or {stem}.gz); "
        "install it with 'apt-get install dataset-fashion-mnist' or pass --data-dir"
    )


def _load_split(root: Path, prefix: str) -> Split:
    img_path = _find(root, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_path, IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise BatudeError(
            f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} labels; "
            f"the files do not belong together, {_FIX}"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise BatudeError(
            f"{lbl_path} has label {int(labels.max())}, but Fashion-MNIST labels are 0..9; {_FIX}"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def load_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[Split, Split]:
    """Read ``((train_images, train_labels), (test_images, test_labels))`` from ``root``.

    ``root`` (default :data:`DEFAULT_FASHION_MNIST_DIR`) holds ``{train,t10k}-images-idx3-ubyte``
    and ``{train,t10k}-labels-idx1-ubyte``, each optionally ``.gz``. Images: uint8 N x 1 x 28 x 28
    (values 0..255); labels: int64 N (0..9). The real files give 60000 train and 10000 test images.
    """
    root = Path(root if root is not None else DEFAULT_FASHION_MNIST_DIR)
    train = _load_split(root, "train")
    test = _load_split(root, "t10k")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise BatudeError(
            f"Fashion-MNIST train images are {tuple(train[0].shape[2:])} but test images are "
            f"{tuple(test[0].shape[2:])} in {root}; {_FIX}"
        )
    log.info("loaded Fashion-MNIST from %s: %d train, %d test images", root, len(train[1]), len(test[1]))
    return train, test
