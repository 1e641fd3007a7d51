"""PNG pictures drawn with Pillow alone (no matplotlib): a run's learning curve (accuracy and loss
panels), bar charts with 95% confidence intervals, a plain line chart, one few-shot task, and
the inner loop in feature space with the paper's concept schematic (``anil.run.plot.features``).

Each picture is built as a ``Figure``: the image plus its geometry, i.e. the pixel box of each
panel (``Axes``, which also maps data to pixels) and of the legend, title and image cells. Tests
and callers use the geometry to find things in the image; ``Figure.save(path)`` writes the PNG.
``line_chart``, ``bar_chart`` and ``task_grid`` build and save in one call and return the path;
``anil.run.metrics.plot_learning_curve`` does the same for ``learning_curve_figure``.

Layout rules shared by all charts: the title on top, the legend in a strip between the title and
the panels (never over the data), data clipped to its panel, y-axis label written vertically
beside the axis. Box coordinates are ``(left, top, right, bottom)`` in pixels, right and bottom
exclusive.
"""

from anil.run.plot.canvas import (BAND, BEST, CHANCE, COLOURS, FRAME, GRID, H, MUTED, TEXT, TRAIN,
                                  VALIDATION, W, Axes, Figure, nice_ticks)
from anil.run.plot.charts import bar_chart, bar_figure, line_chart, line_figure
from anil.run.plot.curve import learning_curve_figure
from anil.run.plot.task import task_figure, task_grid

__all__ = ["Axes", "Figure", "nice_ticks", "learning_curve_figure", "line_figure", "line_chart",
           "bar_figure", "bar_chart", "task_figure", "task_grid", "COLOURS", "TRAIN", "VALIDATION",
           "BAND", "BEST", "CHANCE", "TEXT", "MUTED", "FRAME", "GRID", "W", "H"]
