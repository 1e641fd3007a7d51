"""The network: a 4-block conv body f_θ and a linear head w = (W, b) (docs/design.md,
"The network").

Body block: conv 3×3 (padding 1, bias) → BatchNorm2d (affine, statistics of the current batch,
i.e. of the current task's support and query together) → ReLU → max-pool 2×2. Layer order,
batch-norm behaviour and initialisation follow learn2learn's CNN4 (the MAML ConvNet), so the same
weights give the same features.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
        # track_running_stats=False: always normalise with the statistics of the batch at hand,
        # at train and test time alike, as the MAML reference does (batch_norm, is_training=True)
        # and learn2learn's ANIL example does in effect (it never calls .eval()); docs/design.md.
        self.norm = nn.BatchNorm2d(out_channels, affine=True, track_running_stats=False)
        self.pool = nn.MaxPool2d(2)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        nn.init.uniform_(self.norm.weight)  # learn2learn: BN weight ~ U(0, 1)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x):
        return self.pool(torch.relu(self.norm(self.conv(x))))


class ConvBody(nn.Module):
    """f_θ: images [n, C, H, W] → features Z [n, D]. One call must hold one task (its BN batch)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: int = 64, depth: int = 4):
        super().__init__()
        if depth < 1 or hidden < 1:
            raise ValueError(f"depth and hidden must be positive, got depth={depth}, hidden={hidden}")
        if image_size >> depth < 1:
            raise ValueError(f"{depth} pooling blocks shrink a {image_size}px image to nothing; "
                             f"use fewer blocks or larger images")
        channels = [in_channels] + [hidden] * depth
        self.blocks = nn.Sequential(*[ConvBlock(a, b) for a, b in zip(channels, channels[1:])])
        side = image_size
        for _ in range(depth):
            side //= 2  # MaxPool2d(2) floors
        self.feature_dim = hidden * side * side  # 64 for 28px, 256 for 32px, 1600 for 84px

    def forward(self, x):
        return self.blocks(x).flatten(1)


def make_head(feature_dim: int, ways: int) -> nn.Linear:
    """The linear head w = (W, b): logits = W z + b. Xavier-uniform W, zero b (learn2learn)."""
    head = nn.Linear(feature_dim, ways)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head
