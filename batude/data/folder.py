"""ImageFolder trees: ``root/<class_name>/*.png|jpg|jpeg``, decoded into memory with Pillow.

Classes are the sub-folders of ``root`` (hidden ones skipped), sorted alphabetically; label i is
the i-th class. Images become uint8 ``N x C x H x W`` tensors with C = 1 when every image is
greyscale, else C = 3 (RGB; alpha is dropped). With ``image_size`` set, each image is resized
(bilinear) so its shorter side is ``image_size`` and centre-cropped to ``image_size x image_size``;
without it all images must already have the same size. Pillow is imported lazily.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batude.errors import BatudeError

__all__ = ["IMAGE_EXTENSIONS", "list_image_folder", "load_image_folder"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "I", "I;16", "F")


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise BatudeError("reading image folders needs Pillow; install it with 'pip install pillow'") from None
    return Image


def list_image_folder(
    root: str | os.PathLike, classes: tuple[str, ...] | None = None
) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """``(files, labels, class_names)`` of an ImageFolder tree, files sorted within each class.

    With ``classes`` given (e.g. the training split's), the tree's class folders must be among
    them and labels index into ``classes``; a class may then have no folder or no images here.
    """
    root = Path(root)
    if not root.is_dir():
        raise BatudeError(f"image folder {root} does not exist; pass a folder with one sub-folder per class")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise BatudeError(f"image folder {root} has no class sub-folders; put images in {root}/<class_name>/")
    if classes is not None:
        extra = [c for c in found if c not in classes]
        if extra:
            raise BatudeError(f"{root} has classes {extra} that the training folder lacks; add them there too")
    names = tuple(found) if classes is None else classes
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        folder = root / name
        images = sorted(
            p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        ) if folder.is_dir() else []
        if not images and classes is None:
            raise BatudeError(
                f"class folder {folder} has no {'/'.join(IMAGE_EXTENSIONS)} images; add some or remove the folder"
            )
        files += images
        labels += [label] * len(images)
    return files, labels, names


def _decode(path: Path, mode: str, image_size: int | None) -> np.ndarray:
    """One image as uint8 H x W x C."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            if im.mode != mode:
                im = im.convert(mode)  # alpha is dropped, palettes expanded
            if image_size is not None:
                im = _resize_crop(im, image_size, Image)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for unreadable files
        raise BatudeError(f"cannot decode image {path}: {err}; remove or replace the file") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _resize_crop(im: Any, size: int, Image: Any) -> Any:
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _probe(files: list[Path]) -> tuple[str, set[tuple[int, int]]]:
    """Pillow mode to decode into ("L" or "RGB") and the set of (width, height) sizes."""
    Image = _pil()
    grey = True
    sizes: set[tuple[int, int]] = set()
    for path in files:
        try:
            with Image.open(path) as im:
                grey = grey and im.mode in _GREY_MODES
                sizes.add(im.size)
        except (OSError, ValueError, SyntaxError) as err:
            raise BatudeError(f"cannot open image {path}: {err}; remove or replace the file") from None
    return ("L" if grey else "RGB"), sizes


def _decode_all(files: list[Path], image_size: int | None, mode: str | None = None) -> tuple[torch.Tensor, str]:
    """Decode ``files`` into uint8 ``N x C x H x W``; returns the tensor and the Pillow mode used."""
    probed_mode, sizes = _probe(files)
    mode = mode or probed_mode
    if image_size is None and len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
        raise BatudeError(
            f"images have different sizes ({shown}{', ...' if len(sizes) > 4 else ''}); "
            "pass image_size (--image-size N) to resize and centre-crop them to N x N"
        )
    arrays = [_decode(p, mode, image_size) for p in files]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, mode


def load_image_folder(
    root: str | os.PathLike,
    image_size: int | None = None,
    classes: tuple[str, ...] | None = None,
    mode: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], str]:
    """Decode a whole ImageFolder tree into memory.

    Returns ``(images, labels, class_names, mode)``: images uint8 ``N x C x H x W``, labels int64
    ``N``, and the Pillow mode ("L" or "RGB"). ``classes``/``mode`` force the training split's
    classes and channel count onto a test split.
    """
    files, labels, names = list_image_folder(root, classes)
    if not files:
        raise BatudeError(f"image folder {root} has no {'/'.join(IMAGE_EXTENSIONS)} images; add some")
    images, mode = _decode_all(files, image_size, mode)
    log.info("decoded %d images of %d classes from %s", len(files), len(names), root)
    return images, torch.tensor(labels, dtype=torch.int64), names, mode
