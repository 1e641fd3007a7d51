import numpy as np
from PIL import Image

from anil.run.plot import COLOURS, bar_chart, line_chart


def test_line_chart_is_a_png_with_each_series_drawn(tmp_path):
    path = line_chart(tmp_path / "c.png", {"train": ([1, 2, 3], [0.2, 0.5, 0.9]),
                                           "val": ([2, 3], [0.3, 0.4])}, ylim=(0, 1))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    for colour in COLOURS[:2]:
        assert (pixels == colour).all(1).sum() > 50


def test_bar_heights_follow_the_values(tmp_path):
    path = bar_chart(tmp_path / "b.png", ["a", "b"], {"x": [0.25, 1.0]}, ylim=(0, 1))
    mask = (np.asarray(Image.open(path).convert("RGB")) == COLOURS[0]).all(-1)
    cols = np.flatnonzero(mask.any(0))
    left, right = cols[cols < mask.shape[1] / 2], cols[(cols >= mask.shape[1] / 2) & (cols < mask.shape[1] - 200)]
    h_left, h_right = mask[:, left].sum(0).max(), mask[:, right].sum(0).max()
    assert abs(h_right / h_left - 4) < 0.1
