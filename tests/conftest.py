import pytest
import torch

from data_prep import glyphs


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory):
    """The full built-in dataset, generated once per test session (about 15 s)."""
    root = tmp_path_factory.mktemp("data")
    glyphs.ensure(root, verbose=False)
    return root


@pytest.fixture
def float64():
    """float64 as torch's default dtype for the test (finite differences need it), restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
