"""anil.feature_plane: the PCA plane of a task's features and the head's class directions in it,
against numpy's eigendecomposition of the covariance and predictions computed here."""

import numpy as np
import pytest
import torch

from anil.feature_plane import feature_plane, principal_plane


def test_the_plane_is_spanned_by_the_top_two_eigenvectors_of_the_covariance():
    torch.manual_seed(0)
    z = torch.randn(12, 6, dtype=torch.float64) @ torch.diag(torch.tensor([5.0, 3, 1, 0.5, 0.2, 0.1],
                                                                          dtype=torch.float64))
    coords, components, explained = principal_plane(z)
    centred = (z - z.mean(0)).numpy()
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, ::-1][:, :2].T  # the two largest, as rows
    for got, want in zip(components.numpy(), top):
        assert abs(abs(got @ want) - 1) < 1e-10  # the same direction up to sign
        assert got[np.abs(got).argmax()] > 0  # the sign rule
    np.testing.assert_allclose(coords.numpy(), centred @ components.numpy().T, atol=1e-12)
    assert explained == pytest.approx(values[::-1][:2].sum() / values.sum(), rel=1e-10)
    assert coords.mean(0).abs().max() < 1e-12  # centred: the origin is the task's mean feature


def test_class_directions_and_the_queries_that_flip_to_correct():
    torch.manual_seed(1)
    ways, d = 3, 5
    z = torch.randn(2 * ways, d, dtype=torch.float64)  # one shot: support, query per class
    labels = torch.arange(ways).repeat_interleave(2)
    before = {"weight": torch.randn(ways, d, dtype=torch.float64),
              "bias": torch.zeros(ways, dtype=torch.float64)}
    after = {"weight": z[1::2].clone(), "bias": torch.zeros(ways, dtype=torch.float64)}
    plane = feature_plane(z, labels, before, after)
    np.testing.assert_allclose(plane.before.numpy(), (before["weight"] @ plane.components.T).numpy())
    np.testing.assert_allclose(plane.after.numpy(), (after["weight"] @ plane.components.T).numpy())
    right = lambda head: ((z[1::2] @ head["weight"].T + head["bias"]).argmax(1) == labels[1::2])
    assert plane.correct_before.tolist() == right(before).tolist()
    assert plane.correct_after.tolist() == right(after).tolist()
    expected = [q for q in range(ways) if not right(before)[q] and right(after)[q]]
    assert plane.flipped_to_correct == expected
    assert plane.flipped_to_wrong == [q for q in range(ways) if right(before)[q] and not right(after)[q]]
