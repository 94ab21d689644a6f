"""The CIFAR models of the standard CIFAR-100 KD tables (Tian et al., "Contrastive
Representation Distillation", ICLR 2020, and the mdistiller benchmark): ResNets with
basic blocks (resnet8/20/32/56/110, and resnet8x4/32x4 with 4× wider stages),
pre-activation wide ResNets (wrn_16_2, wrn_40_2, …) and VGG with batch norm (vgg8, vgg13).

Tap paths: ``layer1``/``layer2``/``layer3`` (ResNet), ``block1``/``block2``/``block3``
(WRN), ``block0``…``block4`` (VGG), and ``fc:input`` for the pooled embedding.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU()
        cin = filters[0]
        for i, (cout, stride) in enumerate(zip(filters[1:], (1, 2, 2), strict=True), start=1):
            blocks = [
                BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(n)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.relu(self.bn2(self.conv1(out))))
        return out + identity


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        cin = widths[0]
        for i, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True), start=1):
            blocks = [
                PreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                for j in range(n)
            ]
            self.add_module(f"block{i}", nn.Sequential(*blocks))
            cin = cout
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.avgpool(self.relu(self.bn(x))).flatten(1))


VGG_CONFIGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        cin = 3
        for i, widths in enumerate(VGG_CONFIGS[depth]):
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                cin = width
            self.add_module(f"block{i}", nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            x = self.pool(getattr(self, f"block{i}")(x))
        return self.fc(self.avgpool(self.block4(x)).flatten(1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet(depth: int, num_classes: int = 100, x4: bool = False) -> CifarResNet:
    filters = (32, 64, 128, 256) if x4 else (16, 16, 32, 64)
    return CifarResNet(depth, filters, num_classes)


CIFAR_MODELS = {
    "resnet8": lambda n: resnet(8, n),
    "resnet14": lambda n: resnet(14, n),
    "resnet20": lambda n: resnet(20, n),
    "resnet32": lambda n: resnet(32, n),
    "resnet44": lambda n: resnet(44, n),
    "resnet56": lambda n: resnet(56, n),
    "resnet110": lambda n: resnet(110, n),
    "resnet8x4": lambda n: resnet(8, n, x4=True),
    "resnet32x4": lambda n: resnet(32, n, x4=True),
    "wrn_16_1": lambda n: WideResNet(16, 1, n),
    "wrn_16_2": lambda n: WideResNet(16, 2, n),
    "wrn_40_1": lambda n: WideResNet(40, 1, n),
    "wrn_40_2": lambda n: WideResNet(40, 2, n),
    "vgg8": lambda n: VGG(8, n),
    "vgg11": lambda n: VGG(11, n),
    "vgg13": lambda n: VGG(13, n),
}
