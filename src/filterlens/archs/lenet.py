"""advertorch's MNIST ``LeNet5`` (``advertorch/test_utils.py``), the architecture of its
clean and PGD-trained MNIST checkpoints.

conv1 1->32 3x3 pad 1, ReLU, max-pool 2; conv2 32->64 3x3 pad 1, ReLU, max-pool 2;
flatten; linear1 3136->200, ReLU; linear2 200->classes. Input (1, 28, 28) in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import Stats, check_num_classes, make_normalization
from .registry import register_arch

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """advertorch's LeNet5 with the same attribute (and state-dict key) names."""

    def __init__(self, num_classes: int = 10, mean: Stats = None, std: Stats = None) -> None:
        super().__init__()
        self.normalize = make_normalization(mean, std, 1)
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1, stride=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1, stride=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool2 = nn.MaxPool2d(2)
        self.linear1 = nn.Linear(7 * 7 * 64, 200)
        self.relu3 = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        out = self.maxpool1(self.relu1(self.conv1(x)))
        out = self.maxpool2(self.relu2(self.conv2(out)))
        out = torch.flatten(out, 1)
        out = self.relu3(self.linear1(out))
        return self.linear2(out)


@register_arch(
    "lenet5",
    input_shape=(1, 28, 28),
    num_classes=10,
    description="advertorch's MNIST LeNet5 (2 convs 32/64, linear 3136-200-10), 0.65M params",
)
def lenet5(num_classes: int = 10, mean: Stats = None, std: Stats = None) -> LeNet5:
    """advertorch's MNIST LeNet5 (input 1x28x28)."""
    return LeNet5(check_num_classes(num_classes), mean, std)
