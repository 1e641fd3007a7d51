"""Any finite values draw a sensible picture, and a picture never ends a run: huge losses
(--outer-lr 1e6 gives losses of 1e17 and more, then values near the largest float), mixed
signs, a constant series, a single point."""

import sys

import numpy as np
import pytest

from anil.run.run_folder import RunFolder
from anil.run.plot import TRAIN, learning_curve_figure, line_figure, nice_ticks

BIG = sys.float_info.max  # 1.797e308

SERIES = {
    "near the largest float": [1e308, 1.7e308, BIG],
    "both ends of the floats": [BIG, -BIG],
    "mixed": [-1e308, 0.0, 3.5, 1e300],
    "constant and huge": [1e17, 1e17, 1e17],
    "constant": [2.5, 2.5],
    "a single point": [1e308],
    "tiny steps on a huge value": [1e20, np.nextafter(1e20, 2e20)],
}


def drawn(figure, panel):
    """How many pixels of the panel are in the training colour."""
    left, top, right, bottom = figure.axes[panel].box
    pixels = np.asarray(figure.image.convert("RGB")).astype(int)[top:bottom, left:right]
    return int((np.abs(pixels - np.array(TRAIN)) <= 40).all(-1).sum())


@pytest.mark.parametrize("name", SERIES)
def test_a_learning_curve_of_any_finite_losses_is_drawn(name):
    losses = SERIES[name]
    rows = [{"iteration": i + 1, "loss": v, "accuracy": 0.2} for i, v in enumerate(losses)]
    figure = learning_curve_figure(rows, chance=0.2)
    low, high = figure.axes["loss"].ylim
    assert low < high and all(np.isfinite([low, high]))
    assert low <= min(v for v in losses if v >= 0 or low < 0) and high >= max(losses)
    assert drawn(figure, "loss") > 0  # the curve (or its lone point) is in the panel


@pytest.mark.parametrize("name", SERIES)
def test_a_line_chart_of_any_finite_values_is_drawn(name):
    figure = line_figure({"series": (list(range(len(SERIES[name]))), SERIES[name])})
    low, high = figure.axes["main"].ylim
    assert low < high and low <= min(SERIES[name]) and high >= max(SERIES[name])


@pytest.mark.parametrize("low,high", [(-BIG, BIG), (0, BIG), (1e20, 1e20 + 16384),
                                      (1e-320, 2e-320)])
def test_ticks_of_extreme_ranges_lie_in_the_range(low, high):
    ticks = nice_ticks(low, high, 5)
    assert ticks and all(np.isfinite(ticks))
    assert all(low <= t <= high for t in ticks)


def test_a_drawing_that_fails_is_a_note_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import anil.run.run_folder as folder_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")
    monkeypatch.setattr(folder_module, "learning_curve_figure", broken)
    with RunFolder(tmp_path).open(resuming=False) as folder:
        folder.log({"iteration": 1, "loss": 1.0})
        folder.draw_curve()
        folder.log({"iteration": 2, "loss": 1.0})  # still writing
    assert "curve.png not drawn (ZeroDivisionError" in capsys.readouterr().err
    assert not (tmp_path / "curve.png").exists() and len(list(tmp_path.iterdir())) == 1
