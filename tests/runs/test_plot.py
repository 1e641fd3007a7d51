"""The PNG pictures: checked through their geometry (``Figure.axes`` / ``Figure.boxes``) and the
colours of the pixels where things should (or must not) be, no golden images."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

import anil.run.plot as plot
from anil.data import ClassSplit
from anil.run.metrics import plot_learning_curve
from anil.run.plot import (BAND, BEST, CHANCE, COLOURS, TEXT, TRAIN, VALIDATION, bar_chart,
                           bar_figure, learning_curve_figure, line_chart, nice_ticks, task_figure,
                           task_grid)
from anil.sampler import TaskSampler


def pixels(figure):
    return np.asarray(figure.image.convert("RGB")).astype(int)


def near(array, colour, tolerance=30):
    """Mask of the pixels within ``tolerance`` (per channel) of ``colour``."""
    return (np.abs(array - np.array(colour)) <= tolerance).all(-1)


def inside(box, margin=0):
    """Mask-indexing helper: (rows, cols) slices of a box."""
    left, top, right, bottom = box
    return slice(top - margin, bottom + margin), slice(left - margin, right + margin)


def disjoint(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def realistic_rows(start=0, val_every=100):
    """600 iterations logged every 25 with accuracy settling at 85-90% and validation every
    100 with a 95% CI of 2.5 points; fractions, as in metrics.jsonl."""
    rng = np.random.default_rng(0)
    rows = []
    for it in range(start + 25, start + 601, 25):
        row = {"iteration": it, "loss": 0.3 + 1.3 * math.exp(-it / 110) + 0.02 * rng.random(),
               "accuracy": 0.85 + 0.05 * rng.random(), "seconds": it / 3}
        if it % val_every == 0:
            row.update(val_accuracy=0.86 + 0.03 * rng.random(), val_ci95=0.025)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- learning curve


@pytest.mark.parametrize("chance", [None, 0.2])
def test_the_legend_lies_outside_the_panels_and_no_data_pixel_outside_them(chance):
    rows = realistic_rows()
    fig = learning_curve_figure(rows, title="run", best_iteration=400, chance=chance)
    acc, loss = fig.axes["accuracy"].box, fig.axes["loss"].box
    legend = fig.boxes["legend"]
    assert disjoint(legend, acc) and disjoint(legend, loss) and disjoint(legend, fig.boxes["title"])
    assert disjoint(acc, loss) and acc[3] <= loss[1]  # accuracy on top, loss below
    # Every pixel in a data colour is in a panel, or in the legend (its samples); the legend
    # does hold some, so this is not vacuous.
    px = pixels(fig)
    elsewhere = np.ones(px.shape[:2], bool)
    for box in (acc, loss, legend):
        elsewhere[inside(box)] = False
    for colour in (TRAIN, VALIDATION, BAND, BEST):
        mask = near(px, colour, 12)
        assert not mask[elsewhere].any(), colour
        assert mask[inside(legend)].any(), colour
        assert mask[inside(acc)].any(), colour
    if chance:  # grey, like anti-aliased text: only where it should be
        assert near(px, CHANCE, 0)[inside(legend)].any() and near(px, CHANCE, 0)[inside(acc)].any()


def test_the_y_range_fits_the_data_in_percent_and_covers_chance():
    rows = realistic_rows()
    values = [100 * r["accuracy"] for r in rows] \
        + [100 * (r["val_accuracy"] + s * r["val_ci95"]) for r in rows if "val_accuracy" in r for s in (-1, 1)]
    fig = learning_curve_figure(rows)
    low, high = fig.axes["accuracy"].ylim
    assert low <= min(values) and high >= max(values)  # the data, in %
    assert low > 75 and high < 95  # scaled to it, not 0-100
    fig = learning_curve_figure(rows, chance=0.2)
    low, high = fig.axes["accuracy"].ylim
    assert 0 <= low <= 20 and max(values) <= high <= 100
    # The chance line: a dashed row of CHANCE pixels at 20%, across the panel.
    acc = fig.axes["accuracy"]
    row = pixels(fig)[round(acc.y(20)) - 1: round(acc.y(20)) + 2, acc.box[0]:acc.box[2]]
    dashes = near(row, CHANCE, 20).any(0)
    assert 0.35 < dashes.mean() < 0.8
    # Near the top: never beyond 100%.
    rows = [{"iteration": 1, "accuracy": 0.999, "val_accuracy": 1.0, "val_ci95": 0.05}]
    assert learning_curve_figure(rows).axes["accuracy"].ylim[1] <= 100


def test_the_ticks_are_round_numbers_inside_the_range():
    for low, high in [(84.2, 91.7), (16.5, 93.5), (0, 100), (0.31, 1.62), (25, 600)]:
        ticks = nice_ticks(low, high, 5)
        assert 3 <= len(ticks) <= 11 and low <= ticks[0] and ticks[-1] <= high
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
        assert all(math.isclose(t / step, round(t / step), abs_tol=1e-6) for t in ticks)
    assert nice_ticks(1, 3, 6, integer=True) == [1, 2, 3]


def test_the_curves_pass_through_their_points_and_share_the_iteration_axis():
    rows = realistic_rows()
    fig = learning_curve_figure(rows)
    acc, loss = fig.axes["accuracy"], fig.axes["loss"]
    assert acc.xlim == loss.xlim and acc.x(300) == loss.x(300)
    px = pixels(fig)
    for r in rows[::5]:
        for axes, value, colour in ((acc, 100 * r["accuracy"], TRAIN), (loss, r["loss"], TRAIN)):
            x, y = round(axes.x(r["iteration"])), round(axes.y(value))
            assert near(px[y - 2:y + 3, x - 2:x + 3], colour, 12).any(), (r["iteration"], value)
    lo, hi = loss.ylim
    assert lo <= min(r["loss"] for r in rows) and hi >= max(r["loss"] for r in rows) and lo >= 0


def test_validation_stays_visible_over_a_dense_noisy_training_curve():
    rng = np.random.default_rng(1)
    rows = [{"iteration": it, "accuracy": 0.85 + 0.08 * rng.standard_normal(), "loss": 0.4,
             **({"val_accuracy": 0.85, "val_ci95": 0.01} if it % 500 == 0 else {})}
            for it in range(10, 30001, 10)]
    fig = learning_curve_figure(rows)
    acc, px = fig.axes["accuracy"], pixels(fig)
    for it in range(500, 30001, 2500):
        x, y = round(acc.x(it)), round(acc.y(85))
        assert near(px[y - 1:y + 2, x - 1:x + 2], VALIDATION, 12).any(), it


def test_the_validation_ci_is_a_shaded_band():
    # Validation far below meta-train accuracy, so nothing else is drawn in the band.
    rows = [{"iteration": it, "accuracy": 0.95, "loss": 0.2,
             **({"val_accuracy": 0.6, "val_ci95": 0.05} if it % 100 == 0 else {})}
            for it in range(25, 601, 25)]
    fig = learning_curve_figure(rows)
    acc, px = fig.axes["accuracy"], pixels(fig)
    for it in (200, 250, 400):  # at a validation iteration and between two
        x = round(acc.x(it)) + 1
        top, bottom, mid = acc.y(65), acc.y(55), acc.y(60)
        column = px[:, x]
        band = [y for y in range(math.ceil(top) + 1, int(bottom) - 1) if abs(y - mid) > 5]
        assert near(column[band], BAND, 3).all(), it
        assert not near(column[int(top) - 3], BAND, 10) and not near(column[math.ceil(bottom) + 3], BAND, 10)
    # Without val_ci95 there is no band.
    for r in rows:
        r.pop("val_ci95", None)
    assert not near(pixels(learning_curve_figure(rows)), BAND, 3).any()


def test_the_best_validation_point_is_ringed():
    rows = realistic_rows()
    best = max((r for r in rows if "val_accuracy" in r), key=lambda r: r["val_accuracy"])
    fig = learning_curve_figure(rows, best_iteration=best["iteration"])
    acc, mask = fig.axes["accuracy"], near(pixels(fig), BEST, 20)
    x, y = round(acc.x(best["iteration"])), round(acc.y(100 * best["val_accuracy"]))
    ring = mask[y - 9:y + 10, x - 9:x + 10].sum()
    panel = mask[inside(acc.box)].sum()
    assert ring > 20 and ring == panel
    assert not near(pixels(learning_curve_figure(rows, best_iteration=7)), BEST, 20).any()


@pytest.mark.parametrize("rows", [
    [],
    [{"iteration": 1}],
    [{"iteration": 5, "val_accuracy": 0.4, "val_ci95": 0.05}],  # validation only
    [{"iteration": 5, "loss": 1.6, "accuracy": 0.2}],  # one point, no validation
    [{"iteration": 1, "loss": float("nan"), "accuracy": float("inf")},
     {"iteration": 2, "loss": 1.2, "accuracy": 0.5, "val_accuracy": float("nan"), "val_ci95": float("nan")},
     {"iteration": 3, "loss": float("-inf"), "accuracy": 0.6, "val_accuracy": 0.55, "val_ci95": float("inf")},
     {"iteration": float("nan"), "accuracy": 0.7}, {"iteration": 4, "accuracy": None, "loss": "x"}],
], ids=["empty", "bare", "validation-only", "one-point", "nan-inf-none"])
def test_partial_and_non_finite_rows_still_draw(tmp_path, rows):
    path = plot_learning_curve(rows, tmp_path / "curve.png", best_iteration=5, chance=0.2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (720, 440)
        px = np.asarray(image.convert("RGB")).astype(int)
    finite_acc = [r for r in rows if isinstance(r.get("accuracy"), float)
                  and math.isfinite(r["accuracy"]) and math.isfinite(r["iteration"])]
    drawn = near(px, TRAIN, 12).sum()
    assert drawn > 60 if finite_acc else drawn == 0


def test_chance_is_a_fraction():
    with pytest.raises(ValueError, match="fraction"):
        learning_curve_figure(realistic_rows(), chance=20)


def test_the_bitmap_fallback_font_draws_every_chart(tmp_path, monkeypatch):
    """Pillow < 10.1 has only the Latin-1 bitmap font: text is placed and drawn without it."""
    monkeypatch.setattr(plot.canvas, "_font", lambda size=13: ImageFont.load_default_imagefont())
    learning_curve_figure(realistic_rows(), best_iteration=400, chance=0.2)
    bar_figure(["NIL (a very long name indeed…)", "b"], {"x": [50, 60]}, errors={"x": [1, 2]},
               ylim=(0, 100), chance=20, value_format="{value:.1f} ± {error:.1f}%")


# ----------------------------------------------------------------------------------- bars


def test_bar_heights_follow_the_values(tmp_path):
    fig = bar_figure(["a", "b"], {"x": [25.0, 100.0]}, ylim=(0, 100), value_format=None)
    axes = fig.axes["main"]
    heights = []
    for i in range(2):
        box = fig.boxes[("bar", i, 0)]
        mask = near(pixels(fig), COLOURS[0], 0)
        assert mask[box[1]:box[3] + 1, box[0]:box[2] + 1].all()  # filled
        heights.append(box[3] + 1 - box[1])
        assert box[3] + 1 == axes.box[3]  # from the axis
    assert abs(heights[1] / heights[0] - 4) < 0.05
    assert bar_chart(tmp_path / "b.png", ["a"], {"x": [0.5]}).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bar_chart_in_percent_with_ci_and_chance():
    methods = ["ANIL", "MAML", "NIL (ANIL body)", "NIL (MAML body)", "NIL (untrained)"]
    acc, ci = [88.2, 87.6, 89.1, 88.5, 41.3], [1.1, 1.2, 1.0, 1.1, 1.6]
    fig = bar_figure(methods, {"test accuracy": acc}, errors={"test accuracy": ci}, ylim=(0, 100),
                     chance=20, tick_format="{:g}%", value_format="{value:.1f} ± {error:.1f}%",
                     title="compare")
    axes, px = fig.axes["main"], pixels(fig)
    assert disjoint(fig.boxes["legend"], axes.box)
    # The chance line, dashed, across the bars.
    y = round(axes.y(20))
    assert 0.4 < near(px[y - 1:y + 1, axes.box[0]:axes.box[2]], CHANCE, 10).any(0).mean() < 0.8
    # Each error bar: a dark vertical line from mean - CI to mean + CI at the bar's centre.
    for i, (m, c) in enumerate(zip(acc, ci)):
        left, _, right, _ = fig.boxes[("bar", i, 0)]
        xc = (left + right + 1) // 2
        top, bottom = round(axes.y(m + c)), round(axes.y(m - c))
        column = near(px[top:bottom + 1, xc - 1:xc + 2], TEXT, 40).any(1)
        assert column.all() and not near(px[top - 6:top - 2, xc - 1:xc + 2], TEXT, 40).all(1).any()


@pytest.mark.parametrize("labels", [
    ["ANIL", "MAML", "NIL (ANIL body)", "NIL (MAML body)", "NIL (untrained)"],
    ["none", "conv1", "conv1-2", "conv1-3", "conv1-4 (head only)"],
    ["a very long method name here", "MAML first order", "NIL (ANIL body)", "NIL (MAML body)",
     "NIL (untrained)", "supercalifragilisticexpialidocious"],
])
def test_category_labels_do_not_overlap_and_stay_in_the_picture(labels):
    groups = {"before vs after inner loop": [0.9] * len(labels), "trained vs untrained": [0.3] * len(labels)}
    fig = bar_figure(labels, groups, ylabel="linear CKA (similarity, 0 to 1)", ylim=(0, 1),
                     errors={name: [0.02] * len(labels) for name in groups})
    axes = fig.axes["main"]
    boxes = [fig.boxes[("label", i)] for i in range(len(labels))]
    width, height = fig.image.size
    for a, b in zip(boxes, boxes[1:]):
        assert a[2] < b[0]  # left to right, apart
    for box in boxes:
        assert box[1] >= axes.box[3] and 0 <= box[0] and box[2] <= width and box[3] <= height
    legend = fig.boxes["legend"]
    assert disjoint(legend, axes.box) and 0 <= legend[0] and legend[2] <= width


# ------------------------------------------------------------------------------ task grid


def block_task(ways, shots, channels, size=28, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((2 * ways * shots, channels, size, size)).astype(np.float32)
    labels = np.repeat(np.arange(ways), 2 * shots)
    return images, labels


@pytest.mark.parametrize("ways,shots,channels", [(5, 1, 1), (5, 5, 1), (3, 2, 3)])
def test_task_grid_cells_are_the_upscaled_images_support_then_query(ways, shots, channels):
    images, labels = block_task(ways, shots, channels)
    fig = task_figure(images, labels, title="a task")
    px = np.asarray(fig.image.convert("RGB"))
    width, height = fig.image.size
    cells = {k[1:]: v for k, v in fig.boxes.items() if k[0] == "cell"}
    assert len(cells) == 2 * ways * shots
    for (j, c), (left, top, right, bottom) in cells.items():
        assert (right - left, bottom - top) == (84, 84)  # 28 x 3, nearest neighbour
        assert 0 <= left and right <= width and 0 <= top and bottom <= height
        position = 2 * shots * j + (2 * c if c < shots else 2 * (c - shots) + 1)
        expected = np.rint(images[position] * 255).astype(np.uint8).repeat(3, 1).repeat(3, 2)
        expected = np.broadcast_to(expected, (3, 84, 84)).transpose(1, 2, 0)
        assert np.array_equal(px[top:bottom, left:right], expected), (j, c)
    # Rows top to bottom by label; within a row support columns, a wider gap, query columns.
    for j in range(ways):
        assert len({cells[j, c][1] for c in range(2 * shots)}) == 1
        if j:
            assert cells[j, 0][1] > cells[j - 1, 0][3]
        lefts = [cells[j, c][0] for c in range(2 * shots)]
        steps = np.diff(lefts)
        assert (steps > 84).all() and steps[shots - 1] > steps.min() + 10 if shots > 1 else steps[0] > 100
    support, query = fig.boxes["support"], fig.boxes["query"]
    assert support[3] <= cells[0, 0][1] and query[3] <= cells[0, 0][1]
    assert support[2] < cells[0, shots][0] <= query[0]
    assert width < cells[0, 2 * shots - 1][2] + 60 and height < cells[ways - 1, 0][3] + 60  # no waste


def test_task_grid_of_a_sampled_task_and_without_the_split(tmp_path):
    rng = np.random.default_rng(0)
    split = ClassSplit(rng.integers(0, 256, (6 * 4, 28, 28, 1), dtype=np.uint8),
                       np.arange(0, 25, 4), [f"c{i}" for i in range(6)])
    task = TaskSampler(split, 3, 2, seed=0).task(0)
    assert isinstance(task.images, torch.Tensor)
    path = task_grid(task.images, task.labels, tmp_path / "task.png")
    assert Image.open(path).format == "PNG"
    fig = task_figure(task.images, task.labels, support_query=False, scale=2)
    cells = {k[1:]: v for k, v in fig.boxes.items() if k[0] == "cell"}
    assert len(cells) == 12 and "support" not in fig.boxes
    px = np.asarray(fig.image.convert("RGB"))
    left, top, right, bottom = cells[1, 3]  # row 1, the block's 4th image
    expected = np.rint(task.images[7, 0].numpy() * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    assert np.array_equal(px[top:bottom, left:right, 0], expected)


def test_task_grid_needs_class_blocks():
    images, labels = block_task(3, 1, 1)
    with pytest.raises(ValueError, match="blocks"):
        task_figure(images, labels[[0, 2, 1, 3, 4, 5]])
    with pytest.raises(ValueError, match="C, H, W"):
        task_figure(images[:, 0], labels)


# ----------------------------------------------------------------------------- line chart


def test_line_chart_is_a_png_with_each_series_drawn_and_the_legend_above(tmp_path):
    series = {"train": ([1, 2, 3], [0.2, 0.5, 0.9]), "val": ([1.5, 2, 3], [0.3, 0.4, float("nan")])}
    path = line_chart(tmp_path / "c.png", series, ylim=(0, 1))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot.line_figure(series, ylim=(0, 1))
    assert disjoint(fig.boxes["legend"], fig.axes["main"].box)
    px = pixels(fig)
    for colour in COLOURS[:2]:
        assert near(px[inside(fig.axes["main"].box)], colour, 12).sum() > 20
