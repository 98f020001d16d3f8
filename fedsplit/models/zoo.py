"""The model zoo: small models for edge terminals, plus any ``torchvision.models`` constructor.

All models take ``[N, C, H, W]`` float inputs and return ``[N, num_classes]`` logits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


class MLP(nn.Module):
    """A one-hidden-layer perceptron: flatten, ``Linear(in, hidden)``, ReLU, ``Linear(hidden, classes)``.

    On ``digits`` (8x8x1) with ``hidden=64`` this is the 64-64-10 MLP.
    """

    #: Split contract (:mod:`fedsplit.models.contract`): ``forward`` applies these children in order.
    split_sequence = ("net",)

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        in_features = math.prod(input_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FedAvgCNN(nn.Module):
    """The CNN of the FedAvg paper (McMahan et al., 2017).

    Two 5x5 convolutions (32 and 64 channels, 'same' padding), each followed by 2x2 max-pooling,
    a 512-unit fully connected layer and the classifier. At 28x28x1 it has 1,663,370 parameters.
    """

    #: Split contract (:mod:`fedsplit.models.contract`): ``forward`` applies these children in order.
    split_sequence = ("features", "classifier")

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 64 * (height // 4) * (width // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN-ReLU layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class CompactResNet(nn.Module):
    """A compact residual CNN for any input resolution (global average pooling before the head).

    Stem conv, then three stages of one :class:`ResidualBlock` each (16, 32, 64 channels times
    ``width``; stages 2 and 3 halve the resolution).
    """

    #: Split contract (:mod:`fedsplit.models.contract`): ``forward`` applies these children in order.
    split_sequence = ("stem", "stages", "head")

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (_scaled(c, width) for c in (16, 32, 64))
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU())
        self.stages = nn.Sequential(ResidualBlock(c1, c1, 1), ResidualBlock(c1, c2, 2), ResidualBlock(c2, c3, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class MobileNetLite(nn.Module):
    """A MobileNet-style CNN: depthwise-separable blocks with a width multiplier, any resolution."""

    #: Split contract (:mod:`fedsplit.models.contract`): ``forward`` applies these children in order.
    split_sequence = ("features", "head")

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        plan = [(32, 1), (64, 2), (128, 2), (128, 1)]
        channels = _scaled(16, width)
        layers: list[nn.Module] = [
            nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        ]
        for out, stride in plan:
            out = _scaled(out, width)
            layers.append(_depthwise_separable(channels, out, stride))
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, str] = {
    "mlp": "one-hidden-layer perceptron (hidden units = model.hidden)",
    "fedavg-cnn": "the CNN of the FedAvg paper (1,663,370 parameters at 28x28x1)",
    "cnn": "compact residual CNN, any resolution (width multiplier = model.width)",
    "mobilenet": "MobileNet-style depthwise-separable CNN (width multiplier = model.width)",
    "tv:<name>": "any torchvision.models constructor, random init",
}


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    hidden: int = 64,
    width: float = 1.0,
    seed: int | None = None,
) -> nn.Module:
    """Build a model of the zoo by name.

    Parameters
    ----------
    name : str
        ``mlp``, ``fedavg-cnn``, ``cnn``, ``mobilenet`` or ``tv:<torchvision constructor>``.
    input_shape : tuple of int
        ``(channels, height, width)`` of one input, in pixels.
    num_classes : int
        Number of output classes.
    hidden : int
        Hidden units of the MLP.
    width : float
        Width multiplier of ``cnn`` and ``mobilenet``.
    seed : int, optional
        Seed of the initial weights (same seed => same weights).
    """
    if seed is not None:
        torch.manual_seed(seed)
    if name == "mlp":
        return MLP(input_shape, num_classes, hidden)
    if name == "fedavg-cnn":
        if input_shape[1] < 4 or input_shape[2] < 4:
            raise ValueError(f"model.name = 'fedavg-cnn': needs inputs of at least 4x4 pixels, got {input_shape}")
        return FedAvgCNN(input_shape, num_classes)
    if name == "cnn":
        return CompactResNet(input_shape, num_classes, width)
    if name == "mobilenet":
        return MobileNetLite(input_shape, num_classes, width)
    if name.startswith("tv:"):
        import torchvision

        tv_name = name[3:]
        if tv_name not in torchvision.models.list_models():
            raise ValueError(f"model.name = {name!r}: torchvision has no model {tv_name!r}")
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    raise ValueError(f"model.name = {name!r}: unknown model (allowed: {', '.join(MODELS)})")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
