"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-20/32/56 for small images.

Three stages of ``n`` basic blocks with 16, 32, 64 channels (depth = 6n + 2), option-B
(1x1 conv) shortcuts when the shape changes, global average pooling and one Linear. ``in_channels``
is configurable (1 for Fashion-MNIST, 3 for CIFAR-10).
"""

from __future__ import annotations

import torch
from torch import nn

from batude.errors import BatudeError

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet56"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for ``(N, in_channels, H, W)`` images (28x28 or 32x32); logits ``(N, num_classes)``."""

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise BatudeError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(depth=20, **kwargs)


def resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(depth=32, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(depth=56, **kwargs)
