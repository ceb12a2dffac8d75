"""Plain-torch image transforms for training (no torchvision needed).

Every transform takes and returns one float image, a ``C x H x W`` tensor (float32, values in
[0, 1] before :class:`Normalize`). Randomness: each random transform draws from the
``torch.Generator`` passed to its constructor, or, when that is None (the default), from torch's
global RNG, so ``torch.manual_seed(s)`` before training makes the augmentation reproducible. Inside
DataLoader worker processes the global RNG is seeded by the DataLoader from its own generator (see
:func:`batude.data.make_loader`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from batude.errors import BatudeError

__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip", "Normalize", "channel_stats"]

Transform = Callable[[torch.Tensor], torch.Tensor]


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise BatudeError(f"{what} must be a positive int or (height, width), got {size!r}; pass e.g. 32")
    return pair  # type: ignore[return-value]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """Pad each side by ``padding`` pixels, then crop a random ``size`` window.

    ``padding_mode`` is ``"constant"`` (zeros, i.e. black before normalisation) or ``"reflect"``.
    Input ``C x H x W`` float; output ``C x size[0] x size[1]``. The window's top-left corner is
    uniform over all positions that fit.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        padding: int = 0,
        padding_mode: str = "constant",
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _pair(size, "crop size")
        if not isinstance(padding, int) or padding < 0:
            raise BatudeError(f"crop padding must be an int >= 0, got {padding!r}; pass e.g. 4")
        if padding_mode not in ("constant", "reflect"):
            raise BatudeError(f"padding_mode {padding_mode!r} is not supported; use 'constant' or 'reflect'")
        self.padding = padding
        self.padding_mode = padding_mode
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p), mode=self.padding_mode)
        h, w = x.shape[-2:]
        th, tw = self.size
        if h < th or w < tw:
            raise BatudeError(
                f"cannot crop {th}x{tw} from a {h}x{w} image (after padding {p}); use a smaller crop size"
            )
        top = int(torch.randint(0, h - th + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - tw + 1, (), generator=self.generator))
        return x[..., top : top + th, left : left + tw]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, padding_mode={self.padding_mode!r})"


class RandomHorizontalFlip:
    """Mirror the image left-right (last dimension) with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise BatudeError(f"flip probability must be in [0, 1], got {p!r}; pass e.g. 0.5")
        self.p = float(p)
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if float(torch.rand((), generator=self.generator)) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel; ``mean``/``std`` have one entry per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or len(mean) == 0:
            raise BatudeError(f"mean {tuple(mean)} and std {tuple(std)} need one entry per channel")
        if min(std) <= 0:
            raise BatudeError(f"std {tuple(std)} must be positive; pass per-channel standard deviations")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != len(self.mean):
            raise BatudeError(
                f"Normalize has {len(self.mean)} channel(s) but the image has {x.shape[-3]}; "
                "pass one mean/std entry per channel"
            )
        return (x - self._mean) / self._std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images ``N x C x H x W``, scaled to [0, 1].

    Accumulates in float64 over chunks of ``chunk`` images, so memory stays small.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise BatudeError(f"channel_stats needs a non-empty N x C x H x W tensor, got shape {tuple(images.shape)}")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
