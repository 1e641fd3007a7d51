"""The head's Hessian in docs/design.md ("Why ANIL's second order is cheap"):

    H = (1/n) Σ_j (diag p_j − p_j p_jᵀ) ⊗ z̃_j z̃_jᵀ,   z̃ = [z; 1],   w = vec([W b]) row by row

against torch.autograd's Hessian of head_loss, in float64."""

import torch

from anil.algorithm import head_loss
from anil.model import make_head


def formula(weight, bias, features):
    z = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)  # z̃
    p = torch.softmax(z @ torch.cat([weight, bias[:, None]], 1).T, 1)
    terms = [torch.kron(torch.diag(pj) - torch.outer(pj, pj), torch.outer(zj, zj)) for pj, zj in zip(p, z)]
    return sum(terms) / len(z)


def autograd_hessian(head, features, labels):
    ways, dim = head.weight.shape

    def loss(w):  # w = vec([W b]) row by row
        matrix = w.reshape(ways, dim + 1)
        return head_loss(head, {"weight": matrix[:, :dim], "bias": matrix[:, dim]}, features, labels)

    w = torch.cat([head.weight, head.bias[:, None]], 1).detach().reshape(-1)
    return torch.autograd.functional.hessian(loss, w)


def test_the_head_hessian_is_the_kronecker_formula():
    torch.manual_seed(0)
    ways, dim, n = 3, 4, 7
    head = make_head(dim, ways).double()
    features = torch.randn(n, dim, dtype=torch.float64)
    labels = torch.randint(0, ways, (n,))
    expected = autograd_hessian(head, features, labels)
    got = formula(head.weight.detach(), head.bias.detach(), features)
    assert got.shape == (ways * (dim + 1),) * 2
    assert torch.allclose(got, expected, rtol=0, atol=1e-14)
    # independent of the labels, symmetric and positive semidefinite
    assert torch.allclose(autograd_hessian(head, features, (labels + 1) % ways), expected, atol=1e-14)
    assert torch.allclose(got, got.T, rtol=0, atol=1e-15)
    assert torch.linalg.eigvalsh(got).min() > -1e-14


def test_a_5_way_head_on_64_features_has_a_325_dimensional_hessian():
    head = make_head(64, 5)
    assert sum(p.numel() for p in head.parameters()) == 5 * (64 + 1) == 325
    features = torch.randn(10, 64)
    assert formula(head.weight.detach(), head.bias.detach(), features).shape == (325, 325)
