"""The pictures of what the inner loop does (features.png, the concept schematic) and the
learning curve's test and untrained marks and caption: checked through their geometry and the
colours of the pixels where things must be, as tests/runs/test_plot.py does."""

import math

import numpy as np
import torch

from anil.feature_plane import FeaturePlane
from anil.run.plot import COLOURS, learning_curve_figure
from anil.run.plot.canvas import _blend
from anil.run.plot.curve import TEST, UNTRAINED
from anil.run.plot.features import FLIP, concept_figure, features_figure


def pixels(figure):
    return np.asarray(figure.image.convert("RGB")).astype(int)


def near(array, colour, tolerance=30):
    return (np.abs(array - np.array(colour)) <= tolerance).all(-1)


def around(array, x, y, radius):
    """The pixels of a square of half-width ``radius`` around (x, y)."""
    x, y = round(x), round(y)
    return array[y - radius:y + radius + 1, x - radius:x + radius + 1]


# --------------------------------------------------------------------------------- features.png


def a_plane():
    """3 classes, 1 shot: support at even positions, query at odd; query 1 flips to correct."""
    coords = torch.tensor([[2.0, 0.0], [1.5, 0.5], [-1.0, 1.7], [-0.5, 1.0], [-1.0, -1.7],
                           [-0.4, -1.2]], dtype=torch.float64)
    before = torch.tensor([[0.2, 0.0], [0.0, 0.1], [-0.1, -0.1]], dtype=torch.float64)
    after = torch.tensor([[1.0, 0.0], [-0.5, 0.85], [-0.5, -0.85]], dtype=torch.float64)
    return FeaturePlane(coords, torch.tensor([0, 0, 1, 1, 2, 2]), torch.eye(2), 0.8, before,
                        after, torch.tensor([True, False, True]), torch.tensor([True, True, True]))


def test_features_are_drawn_where_the_plane_puts_them_with_equal_axes():
    plane = a_plane()
    figure = features_figure(plane, title="t")
    axes, array = figure.axes["plane"], pixels(figure)
    left, top, right, bottom = axes.box
    assert right - left == bottom - top and axes.xlim == axes.ylim  # a circle stays a circle
    for j, ((x, y), label) in enumerate(zip(plane.coords.tolist(), plane.labels.tolist())):
        colour = COLOURS[label]
        patch = around(array, axes.x(x), axes.y(y), 1 if j % 2 == 0 else 5)
        assert near(patch, colour, 40).any(), (j, label)
        if j % 2 == 0:  # support: a filled dot, its centre in the class colour
            assert near(around(array, axes.x(x), axes.y(y), 0), colour, 40).all()


def test_the_class_arrows_share_one_scale_and_the_flip_is_ringed():
    plane = a_plane()
    figure = features_figure(plane)
    array = pixels(figure)
    reach = max(math.hypot(*p) for p in plane.coords.tolist())
    axes = figure.axes["plane"]
    for k in range(3):
        tip = figure.boxes["arrow_tip", k, "after"]
        assert near(around(array, *tip, 3), COLOURS[k], 40).any()
        before = figure.boxes["arrow_tip", k, "before"]
        assert near(around(array, *before, 3), _blend(COLOURS[k], 0.6), 40).any()
    # one scale: the longest arrow (class 0 after) reaches 90% of the farthest point's distance,
    # and every arrow keeps its length relative to it
    unit = axes.x(1) - axes.x(0)
    for k, when, vector in [(k, w, v) for w, vs in (("after", plane.after), ("before", plane.before))
                            for k, v in enumerate(vs.tolist())]:
        tip = figure.boxes["arrow_tip", k, when]
        length = math.hypot(tip[0] - axes.x(0), tip[1] - axes.y(0))
        assert abs(length - 0.9 * reach * math.hypot(*vector) * unit) < 1e-6
    # query 1 (position 3) flipped to correct: a black ring 9 px around it; query 0 has none
    for position, ringed in ((3, True), (1, False)):
        x, y = plane.coords[position].tolist()
        ring = around(array, axes.x(x), axes.y(y) - 9, 1)
        assert near(ring, FLIP, 60).any() == ringed


def test_the_concept_schematic_moves_only_the_head_under_feature_reuse():
    figure = concept_figure()
    array = pixels(figure)
    for name, body_moves in (("rapid learning", True), ("feature reuse", False)):
        axes = figure.axes[name]
        left, top, right, bottom = axes.box
        arrows = np.zeros(array.shape[:2], bool)
        for colour in COLOURS[2:5]:
            arrows |= near(array, colour, 40)
        rows = np.nonzero(arrows[top:bottom, left:right].any(1))[0] + top
        off_axis = np.abs(rows - axes.y(0)).max()
        assert (off_axis > 0.5 * (bottom - top) / 2) == body_moves, (name, off_axis)


# ------------------------------------------------------------------ curve.png: marks and caption


def test_the_curve_marks_the_test_and_the_untrained_accuracy_and_explains_validation():
    rows = [{"iteration": 0, "val_accuracy": 0.52, "val_ci95": 0.03}] + [
        {"iteration": it, "loss": 1 / it, "accuracy": 0.6, "val_accuracy": 0.7, "val_ci95": 0.03}
        for it in (100, 200, 300)]
    figure = learning_curve_figure(rows, test=(0.72, 0.02, 300), untrained=(0.5, 0.04),
                                   note="why validation sits above meta-train")
    acc, array = figure.axes["accuracy"], pixels(figure)
    assert figure.boxes["test"] == (acc.x(300), acc.y(72))
    assert figure.boxes["untrained"] == (acc.x(0), acc.y(50))
    assert near(around(array, *figure.boxes["test"], 1), TEST, 40).all()
    assert near(around(array, *figure.boxes["untrained"], 1), UNTRAINED, 40).all()
    # the CI bar's caps at ± 4 points
    assert near(around(array, acc.x(0), acc.y(54), 1), UNTRAINED, 40).any()
    # the caption lies under everything else
    below = array[figure.axes["loss"].box[3] + 30:]
    assert (below.sum(-1) < 600).any()
    legend = figure.boxes["legend"]
    assert legend[3] <= acc.box[1]


def test_a_run_without_an_iteration_0_row_still_plots_from_0():
    rows = [{"iteration": it, "loss": 1.0, "accuracy": 0.6, "val_accuracy": 0.7} for it in (50, 100)]
    figure = learning_curve_figure(rows, untrained=(0.4, 0.05))
    assert figure.axes["accuracy"].xlim[0] == 0
    assert learning_curve_figure(rows).axes["accuracy"].xlim == (50, 100)  # as before: no mark


def test_the_feature_reuse_bars_have_a_pair_per_layer_and_anils_head(tmp_path):
    from PIL import Image

    from anil.run.plot.features import reuse_plot
    row = lambda change, cka: {"parameters": 1, "relative_change": change, "cka": cka}
    reuse = {"maml": {"conv1": row(0.1, 0.99), "head": row(0.3, 0.6)}, "anil_head": row(0.8, 0.65)}
    path = reuse_plot(tmp_path / "reuse.png", reuse, "t")
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB")).astype(int)
    # three categories, two bars each: the two group colours fill columns in three clusters
    for colour in COLOURS[:2]:
        columns = np.nonzero(near(array, colour, 10).sum(0) > 20)[0]
        clusters = 1 + int((np.diff(columns) > 1).sum())
        assert clusters == 3, (colour, clusters)
