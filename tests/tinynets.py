"""Small CNNs for tests, importable as factories (``tinynets:tiny_cnn``): seeded, CPU-fast, no downloads."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """3 → 8 → 16 → 16 channels, in-place ReLUs and a BatchNorm, 10 classes; layers named like a real net."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN(num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode differs from train mode
        model.features[3].running_mean.uniform_(-0.1, 0.1)
        model.features[3].running_var.uniform_(0.5, 1.5)
    return model.eval()


class FixedCNN(nn.Module):
    """A CNN whose Grad-CAM can be worked out by hand.

    1-channel input → 1×1 conv to two channels (A0 = x, A1 = 5 - x) → ReLU (``act``, the CAM layer) → global
    average pool → linear with W = [[1, -2], [0.5, 0.5]], no bias.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 5.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


# tiny_cnn depends on nothing but its code and seed: let fully cached runs skip building it.
tiny_cnn.reportgen_identity = lambda: {"seed": 0}  # type: ignore[attr-defined]


def plain_factory(num_classes: int = 10) -> nn.Module:
    """A factory that does not declare its identity: built on every run."""
    return tiny_cnn(num_classes)
