"""Models for the comparison tests (``tests/test_compare.py``): a retrained-looking copy of ``tinynets.tiny_cnn``
and a net of another architecture, as factories (``comparenets:shifted_cnn``); seeded, CPU-fast, no downloads."""

from __future__ import annotations

import torch
from tinynets import tiny_cnn
from torch import nn


def shifted_cnn(num_classes: int = 10) -> nn.Module:
    """``tiny_cnn`` with its classifier moved by seeded noise: same layers, some predictions change."""
    model = tiny_cnn(num_classes)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.fc.weight.add_(0.3 * torch.randn(model.fc.weight.shape, generator=gen))
        model.fc.bias.add_(0.3 * torch.randn(model.fc.bias.shape, generator=gen))
    return model.eval()


class OtherCNN(nn.Module):
    """Another architecture: different layer names (``stem``, ``block``) and depth, 10 classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 5, stride=2, padding=2), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 12, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def other_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(3)
    return OtherCNN(num_classes).eval()


shifted_cnn.reportgen_identity = lambda: {"seed": 1}  # type: ignore[attr-defined]
other_cnn.reportgen_identity = lambda: {"seed": 3}  # type: ignore[attr-defined]
