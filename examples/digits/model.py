"""The digits classifier: a small CNN over scikit-learn's 8x8 handwritten digits.

The model takes raw pixel intensities (0..16, as ``load_digits`` gives them) and scales them
itself, so a caller sends the image as it is and the saved weights are the whole model.
"""

from __future__ import annotations

import torch
from torch import nn

#: load_digits pixels are integers 0..16.
PIXEL_MAX = 16.0
CLASSES = 10


class DigitsCNN(nn.Module):
    """[N, 1, 8, 8] raw pixels -> [N, 10] logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Linear(32 * 2 * 2, CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image / PIXEL_MAX)
        return self.classifier(torch.flatten(x, 1))
