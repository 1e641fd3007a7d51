"""Two pictures of what the inner loop does (see ``anil.run.plot`` for the layout rules):

* ``features_figure``: one task's features in the plane of their first two principal components
  (``anil.feature_plane``), support points filled and query points as rings, coloured by label,
  with the head's class directions before (thin) and after (thick) the inner loop, and a black
  ring on each query that flips to correct;
* ``reuse_plot``: MAML's per-layer change and CKA as bars, beside ANIL's head;
* ``concept_figure``: the paper's two hypotheses as a schematic (its Figure 1): from the
  meta-initialisation, rapid learning moves body and head far for each task; feature reuse
  moves the head and leaves the body where it is.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from anil.run.plot import canvas
from anil.run.plot.charts import bar_chart
from anil.run.plot.canvas import (Axes, COLOURS, FRAME, Figure, MUTED, TEXT, _Layer, _blend,
                                  _header, _padded, _text, _text_height, _wrap)

FLIP = (0, 0, 0)  # the ring on a query that flips to correct


def _arrow(layer: _Layer, start, end, colour, width):
    """A line from ``start`` to ``end`` (data coordinates) with a filled head at ``end``."""
    (x0, y0), (x1, y1) = layer.point(*start), layer.point(*end)
    length = math.hypot(x1 - x0, y1 - y0)
    if length < 1:
        return
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    head = min(length, (4 + 2.5 * width) * layer.s)
    base = (x1 - ux * head, y1 - uy * head)
    layer.draw.line([(x0, y0), base], fill=colour, width=round(width * layer.s))
    half = head * 0.45
    layer.draw.polygon([(x1, y1), (base[0] - uy * half, base[1] + ux * half),
                        (base[0] + uy * half, base[1] - ux * half)], fill=colour)


def _square_limits(points):
    """One range for both axes (equal scale: a circle stays a circle), around the origin."""
    reach = max([abs(v) for p in points for v in p] or [1.0]) or 1.0
    return _padded([-reach, reach], 0.06, 1e-9)


def features_figure(plane, title="", size=(720, 640)) -> Figure:
    """``plane``: an ``anil.feature_plane.FeaturePlane``. Arrows start at the origin (the task's
    mean feature) and are scaled by one factor so that the longest reaches 90% of the farthest
    point: their lengths compare before with after, not with the points.
    ``axes["plane"]`` maps the plane's coordinates to pixels, ``boxes["arrow_tip", k, when]``
    the pixel tip of class k's arrow (when = "before" or "after")."""
    coords = plane.coords.tolist()
    labels = [int(v) for v in plane.labels]
    before, after = plane.before.tolist(), plane.after.tolist()
    reach = max(math.hypot(*p) for p in coords) or 1.0
    longest = max(math.hypot(*d) for d in before + after) or 1.0
    scale = 0.9 * reach / longest
    lim = _square_limits(coords)
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = canvas._font(13), canvas._font(12)
    ways = len(before)
    entries = [("patch", COLOURS[k % len(COLOURS)], f"label {k}") for k in range(ways)]
    entries += [("line", _blend(TEXT, 0.35), "class direction W_k before"),
                ("line", TEXT, "after the inner loop"), ("ring", FLIP, "query flips to correct")]
    caption = (f"support: filled dots; query: rings. The plane of the first two principal "
               f"components keeps {100 * plane.explained:.0f}% of the features' variance.")
    lines = _wrap(caption, small, width - 40)
    bottom = height - 12 - len(lines) * (_text_height(small) + 5)
    boxes, top = _header(draw, title, entries, 20, width - 20, font)
    side = min(width - 40, bottom - top - 8)
    left = (width - side) // 2
    axes = Axes((left, top, left + side, top + side), lim, lim, pad=4)
    layer = _Layer(axes)
    layer.grid([0], [0])
    r = 4.5 * layer.s
    for j, ((x, y), label) in enumerate(zip(coords, labels)):
        colour = COLOURS[label % len(COLOURS)]
        px, py = layer.point(x, y)
        if j % 2 == 0:  # support
            layer.draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
        else:
            layer.draw.ellipse([px - r, py - r, px + r, py + r], outline=colour, width=2 * layer.s)
            if (j - 1) // 2 in plane.flipped_to_correct:
                layer.ring(x, y, FLIP, radius=9, width=2)
    for when, vectors, w, shade in (("after", after, 3, 1.0), ("before", before, 1.5, 0.6)):
        for k in range(ways):  # the thin "before" arrows on top, visible where they overlap
            colour = COLOURS[k % len(COLOURS)]
            tip = (scale * vectors[k][0], scale * vectors[k][1])
            _arrow(layer, (0, 0), tip, _blend(colour, shade), w)
            boxes["arrow_tip", k, when] = (axes.x(tip[0]), axes.y(tip[1]))
    layer.paste_onto(image)
    draw.rectangle([left - 1, top - 1, left + side, top + side], outline=FRAME)
    _text(draw, (left + side - 4, top + side - 4), "PC 1", small, MUTED, anchor="rb")
    _text(draw, (left + 4, top + 4), "PC 2", small, MUTED, anchor="lt")
    for i, line in enumerate(lines):
        _text(draw, (width / 2, bottom + 6 + i * (_text_height(small) + 5)), line, small, anchor="mt")
    return Figure(image, {"plane": axes}, boxes)


def features_plot(path, plane, title="") -> Path:
    """Save ``features_figure(plane, title)`` as a PNG; returns the path."""
    return features_figure(plane, title).save(path)


def reuse_plot(path, reuse: dict, title: str) -> Path:
    """feature-reuse.png: per layer, MAML's relative parameter change and the CKA of the layer's
    outputs before vs after its inner loop, and the same for ANIL's head
    (``anil.paper.feature_reuse``; bars of ``bar_chart``)."""
    rows = {**reuse["maml"], "head (ANIL)": reuse["anil_head"]}
    return bar_chart(path, list(rows), {
        "relative change of the parameters": [r["relative_change"] for r in rows.values()],
        "CKA of the outputs, before vs after": [r["cka"] for r in rows.values()]},
        title=f"{title}: what MAML's inner loop does to each layer", ylabel="fraction",
        ylim=(0, max(1.0, *(r["relative_change"] for r in rows.values()))),
        value_format="{value:.2f}")


# ------------------------------------------------------------------------------- the concept

# Where the schematic's points lie (a drawing, not data): three tasks' adapted parameters,
# relative to the meta-initialisation at (0, 0); x is the head w, y the body θ.
_TASKS = {"rapid learning": [(-0.55, 0.75), (0.7, 0.55), (0.15, -0.8)],
          "feature reuse": [(-0.75, 0.0), (0.8, 0.0), (0.2, 0.0)]}


def concept_figure(size=(720, 380)) -> Figure:
    """Two panels side by side, "rapid learning" and "feature reuse": the meta-initialisation
    (a black dot) and the inner loop's result for three tasks (arrows). The x-axis is the head
    w, the y-axis the body; feature reuse's arrows are horizontal (the body does not move)."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = canvas._font(13), canvas._font(12)
    boxes, top = _header(draw, "Rapid learning or feature reuse? (a schematic of the paper's "
                               "Figure 1)", [], 20, width - 20, font)
    gap, bottom = 40, height - 30 - _text_height(small)
    side = min((width - 40 - gap) // 2, bottom - top - 24)
    axes = {}
    for i, (name, tasks) in enumerate(_TASKS.items()):
        left = 20 + i * (side + gap) + ((width - 40 - gap) // 2 - side) // 2
        ax = Axes((left, top + 22, left + side, top + 22 + side), (-1, 1), (-1, 1))
        _text(draw, (left + side / 2, top + 2), name, font, anchor="mt")
        layer = _Layer(ax)
        layer.grid([0], [0])
        for t, tip in enumerate(tasks):
            _arrow(layer, (0, 0), tip, COLOURS[t + 2], 2.5)
        layer.line([(0, 0)], TEXT, 9)
        layer.paste_onto(image)
        draw.rectangle([left - 1, ax.box[1] - 1, left + side, ax.box[3]], outline=FRAME)
        _text(draw, (left + side / 2, ax.box[3] + 6), "head w", small, MUTED, anchor="mt")
        _text(draw, (left + 4, ax.box[1] + 4), "body", small, MUTED, anchor="lt")
        axes[name] = ax
    _text(draw, (width / 2, height - 8), "black dot: the meta-initialisation; arrows: the inner "
                                         "loop on three tasks", small, anchor="mb")
    return Figure(image, axes, boxes)


def concept_plot(path) -> Path:
    return concept_figure().save(path)
