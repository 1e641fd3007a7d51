"""Linear CKA (centered kernel alignment; Kornblith et al. 2019), the representation similarity
of the paper's §3.2.

For two representations of the same n inputs, X ∈ R^{n×p} and Y ∈ R^{n×q} (rows = inputs), each
centred column-wise (X̃ = H X with H = I − (1/n) 1 1ᵀ):

    CKA(X, Y) = ‖Ỹᵀ X̃‖_F² / (‖X̃ᵀ X̃‖_F ‖Ỹᵀ Ỹ‖_F)

It is 1 for identical representations, symmetric, and invariant to orthogonal transforms and
isotropic scaling of either representation (but not to arbitrary invertible linear maps). For
any n, p and q the same value comes from the n×n Gram matrices, ⟨K̃, L̃⟩_F / (‖K̃‖_F ‖L̃‖_F) with
K̃ = H X Xᵀ H (since ‖Ỹᵀ X̃‖²_F = tr(X̃ᵀ Ỹ Ỹᵀ X̃) = ⟨K̃, L̃⟩_F); that is how it is computed here,
because it is cheaper when p ≫ n (wide conv layers).

With few inputs CKA is high even between unrelated networks: at n = 10 (one 5-way 1-shot task)
the first conv layers of a trained and of an untrained network score close to 1. A high CKA
before vs after the inner loop is evidence of feature reuse only where such a control is clearly
lower (``anil.paper.analysis`` reports it beside every layer).

CCA is not provided: with one task's n = 2NK inputs and p ≫ n features per layer, every
canonical correlation is 1 and CCA cannot tell layers apart without the regularisation or SVD
truncation of SVCCA/PWCCA, whose choices would then decide the answer.
"""

from __future__ import annotations

import torch


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(len(x), -1)
    x = x - x.mean(0, keepdim=True)
    return x @ x.T


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n inputs ([n, ...] each, flattened)."""
    if len(x) != len(y):
        raise ValueError(f"CKA compares representations of the same inputs; got {len(x)} and {len(y)} rows")
    x, y = x.detach().double(), y.detach().double()
    k, l = _centred_gram(x), _centred_gram(y)
    denominator = k.norm() * l.norm()
    if denominator == 0:
        raise ValueError("CKA is undefined for a constant representation (zero variance)")
    return float((k * l).sum() / denominator)
