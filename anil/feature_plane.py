"""The inner loop in feature space: one task's features in a plane, and the head's class
directions before and after ANIL's inner loop (docs/design.md, "The inner loop").

The plane is the task's first two principal components: with Z ∈ ℝ^{2NK×D} the features of
support and query, Z̄ their mean and Z − 1Z̄ = U Σ Vᵀ (thin SVD), the coordinates of image j are

    p_j = (z_j − Z̄) [v_1 v_2] ∈ ℝ²

and the plane keeps (σ_1² + σ_2²) / Σ σ_i² of the features' variance. The head scores class k
with W_k z + b_k, so W_k is the direction in feature space along which class k's logit grows;
its shadow in the plane is W_k [v_1 v_2]. The inner loop turns and stretches these directions
towards the support points of their class: W^(0) = W before, W^(m) after m steps. A query whose
prediction argmax_k(W z + b)_k is wrong at w^(0) and right at w^(m) "flips to correct".

(The plane shows two of D directions: a logit also depends on the other D − 2 and on b, so the
arrows are a guide, not the decision rule.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FeaturePlane:
    """One task in the plane of its first two principal components (float tensors, CPU)."""

    coords: torch.Tensor  # [2NK, 2] p_j, support and query interleaved as the task's images
    labels: torch.Tensor  # [2NK]
    components: torch.Tensor  # [2, D] v_1, v_2
    explained: float  # (σ_1² + σ_2²) / Σ σ_i²
    before: torch.Tensor  # [N, 2] W^(0) [v_1 v_2]
    after: torch.Tensor  # [N, 2] W^(m) [v_1 v_2]
    correct_before: torch.Tensor  # [NK] bool, per query image
    correct_after: torch.Tensor  # [NK] bool

    @property
    def flipped_to_correct(self) -> list[int]:
        """Query indices (0..NK−1) wrong at w^(0) and right at w^(m)."""
        return torch.nonzero(~self.correct_before & self.correct_after).flatten().tolist()

    @property
    def flipped_to_wrong(self) -> list[int]:
        return torch.nonzero(self.correct_before & ~self.correct_after).flatten().tolist()


def principal_plane(features: torch.Tensor):
    """(centred features @ [v_1 v_2], [v_1; v_2], explained fraction) of ``features`` [n, D].

    Each component's sign is fixed so that its largest-magnitude entry is positive (an SVD's
    signs are arbitrary; this makes the picture the same on every machine)."""
    z = features.detach().double().reshape(len(features), -1)
    centred = z - z.mean(0, keepdim=True)
    _, sigma, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    if len(components) < 2:  # one feature: a flat second axis
        components = torch.cat([components, torch.zeros_like(components)])
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    total = (sigma ** 2).sum()
    explained = ((sigma[:2] ** 2).sum() / total).item() if total > 0 else 0.0
    return centred @ components.T, components, explained


def feature_plane(features: torch.Tensor, labels: torch.Tensor, head_before: dict,
                  head_after: dict) -> FeaturePlane:
    """The task's features Z [2NK, D] (support and query interleaved) and labels, with the head
    ``{"weight": W [N, D], "bias": b [N]}`` before and after the inner loop."""
    coords, components, explained = principal_plane(features)
    z = features.detach().double()
    query, query_labels = z[1::2], labels[1::2]

    def correct(head):
        weight, bias = head["weight"].detach().double(), head["bias"].detach().double()
        return (query @ weight.T + bias).argmax(1).cpu() == query_labels.cpu()

    project = lambda head: head["weight"].detach().double() @ components.T
    return FeaturePlane(coords.cpu(), labels.cpu(), components.cpu(), explained,
                        project(head_before).cpu(), project(head_after).cpu(),
                        correct(head_before), correct(head_after))
