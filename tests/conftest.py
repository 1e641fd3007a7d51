import pytest

from data_prep import glyphs


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory):
    """The full built-in dataset, generated once per test session (about 15 s)."""
    root = tmp_path_factory.mktemp("data")
    glyphs.ensure(root, verbose=False)
    return root
