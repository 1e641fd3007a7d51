"""The network: a 4-block conv body f_θ and a linear head w = (W, b) (docs/design.md,
"The network").

Body block: conv 3×3 (padding 1, bias) → BatchNorm2d (affine, statistics of the current batch,
by default the current task's support and query together) → ReLU → max-pool 2×2. Layer order,
batch-norm behaviour and initialisation follow learn2learn's CNN4 (the MAML ConvNet), so the same
weights give the same features.

Which images the batch statistics come from is a protocol choice (``BATCH_NORMS``;
``task_features``; docs/design.md, "Batch-norm statistics: task, separate, support").
"""

from __future__ import annotations

import torch
from torch import nn

from anil.sampler import support_query

# Which images batch norm takes its statistics μ, σ² from, for a task's support set S and query
# set Q: "task" S ∪ Q in one batch (learn2learn's convention, the default), "separate" S and Q
# each their own (the MAML reference code's two forward calls), "support" S for both
# (non-transductive: no query's prediction depends on another query).
BATCH_NORMS = ("task", "separate", "support")


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

    def forward(self, x, statistics_of: int | None = None):
        """``statistics_of=n``: normalise all of x with the batch statistics of its first n
        images only, y = γ (x − μ_n) / √(σ²_n + ε) + β (gradients flow through μ_n, σ²_n)."""
        x = self.conv(x)
        if statistics_of is None:
            x = self.norm(x)
        else:
            var, mean = torch.var_mean(x[:statistics_of], dim=(0, 2, 3), correction=0, keepdim=True)
            scale = self.norm.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.norm.eps)
            x = (x - mean) * scale + self.norm.bias.view(1, -1, 1, 1)
        return self.pool(torch.relu(x))


class ConvBody(nn.Module):
    """f_θ: images [n, C, H, W] → features Z [n, D]. One call holds one BN batch (see
    ``task_features``); ``statistics_of=n`` takes every block's statistics from the first n."""

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

    def forward(self, x, statistics_of: int | None = None):
        for block in self.blocks:
            x = block(x, statistics_of)
        return x.flatten(1)


def check_batch_norm(body: nn.Module, batch_norm: str) -> None:
    """Refuse, in one line, a batch-norm mode that is unknown or that ``body`` cannot run."""
    if batch_norm not in BATCH_NORMS:
        raise ValueError(f"batch_norm must be one of {BATCH_NORMS}, got {batch_norm!r}")
    if batch_norm == "support" and not isinstance(body, ConvBody):
        raise ValueError(f"batch_norm='support' normalises with the support set's statistics, "
                         f"which anil.model.ConvBody implements; {type(body).__name__} does not: "
                         f"use 'task' or 'separate'")


def task_features(body: nn.Module, support: torch.Tensor, query: torch.Tensor,
                  batch_norm: str = "task", call=None):
    """(f_θ(S), f_θ(Q)) for one task's support and query images, batch norm's μ, σ² over

        "task"      S ∪ Q: one body call on both (each query's features depend on every image)
        "separate"  S for the support, Q for the query: two body calls (the MAML reference code)
        "support"   S for both: the query features depend on the support images and on the
                    query itself only (``ConvBody(x, statistics_of=|S|)`` on S then Q)

    ``call(x, **kwargs)`` runs the body (default: ``body`` itself; e.g. a ``functional_call``
    with other parameters, as MAML's inner loop does). docs/design.md derives the three modes.
    """
    check_batch_norm(body, batch_norm)
    call = call or body
    if batch_norm == "separate":
        return call(support), call(query)
    both = torch.cat([support, query])
    features = call(both) if batch_norm == "task" else call(both, statistics_of=len(support))
    return features[:len(support)], features[len(support):]


def interleaved_task_features(body: nn.Module, images: torch.Tensor, batch_norm: str = "task"):
    """f_θ of a task's images [2NK, C, H, W] in the sampler's layout (support at the even
    positions, query at the odd; ``anil.sampler.support_query``) → features [2NK, D] in the
    same layout, batch norm as ``task_features``. "task" is one body call on the images as
    they lie."""
    if batch_norm == "task":
        check_batch_norm(body, batch_norm)
        return body(images)
    support, query = task_features(body, *support_query(images), batch_norm)
    return torch.stack([support, query], dim=1).flatten(0, 1)


def make_head(feature_dim: int, ways: int) -> nn.Linear:
    """The linear head w = (W, b): logits = W z + b. Xavier-uniform W, zero b (learn2learn)."""
    head = nn.Linear(feature_dim, ways)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head
