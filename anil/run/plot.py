"""PNG pictures drawn with Pillow alone (no matplotlib): a run's learning curve (accuracy and loss
panels), bar charts with 95% confidence intervals, a plain line chart, and one few-shot task.

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

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]
TRAIN, VALIDATION = COLOURS[0], COLOURS[1]  # meta-train (query) and validation, in every chart
SUPPORT, QUERY = COLOURS[0], COLOURS[1]  # the two halves of a task
BEST = (200, 30, 30)
CHANCE = (90, 90, 90)
TEXT = (30, 30, 30)
MUTED = (120, 120, 120)
FRAME = (150, 150, 150)
GRID = (232, 232, 232)
W, H = 720, 440
SUPERSAMPLE = 3  # curves are drawn at 3x and box-filtered down: smooth, anti-aliased lines


def _blend(colour, alpha):
    """``colour`` at opacity ``alpha`` over white."""
    return tuple(round(255 - alpha * (255 - c)) for c in colour)


BAND = _blend(VALIDATION, 0.28)  # the validation 95% CI band


# ------------------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=None)
def _font(size=13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _plain(font, text):
    """``text`` as the bitmap fallback font can draw it (Latin-1 only)."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("…", "...").encode("latin-1", "replace").decode("latin-1")


def _bbox(font, text):
    text = _plain(font, text)
    try:
        return font.getbbox(text)
    except AttributeError:  # Pillow < 9.2
        width, height = font.getsize(text)
        return 0, 0, width, height


def _text_width(font, text):
    x0, _, x1, _ = _bbox(font, text)
    return x1 - x0


def _text_height(font):
    _, y0, _, y1 = _bbox(font, "Hg%")
    return y1 - y0


def _text(draw, xy, text, font, fill=TEXT, anchor="lt"):
    """Draw ``text`` with its ink box anchored at ``xy``: ``anchor`` = horizontal (l, m, r) +
    vertical (t, m, b), the vertical extent being the font's (so labels in a row line up).
    Returns the box. (Placed by hand: Pillow's bitmap fallback font takes no ``anchor``.)"""
    x0, _, x1, _ = _bbox(font, text)
    _, y0, _, y1 = _bbox(font, "Hg%")
    x = xy[0] - {"l": x0, "m": (x0 + x1) / 2, "r": x1}[anchor[0]]
    y = xy[1] - {"t": y0, "m": (y0 + y1) / 2, "b": y1}[anchor[1]]
    x, y = round(x), round(y)
    draw.text((x, y), _plain(font, text), font=font, fill=fill)
    return x + x0, y + y0, x + x1, y + y1


def _vertical_text(image, centre, text, font, fill=TEXT):
    """``text`` rotated 90° (read bottom to top), centred on ``centre``; returns the box."""
    x0, _, x1, _ = _bbox(font, text)
    _, y0, _, y1 = _bbox(font, "Hg%")
    mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(mask).text((1 - x0, 1 - y0), _plain(font, text), font=font, fill=255)
    mask = mask.rotate(90, expand=True)
    left, top = round(centre[0] - mask.width / 2), round(centre[1] - mask.height / 2)
    image.paste(Image.new("RGB", mask.size, fill), (left, top), mask)
    return left, top, left + mask.width, top + mask.height


def _wrap(text, font, width, max_lines=3):
    """``text`` broken into lines no wider than ``width``: at spaces, keeping a parenthesised
    part together where it fits; a line still too long ends in '…'."""
    tokens = re.findall(r"\([^)]*\)|\S+", str(text))
    if any(_text_width(font, t) > width for t in tokens):  # a parenthesis too long: split it too
        tokens = str(text).split()
    lines = []
    for token in tokens:
        if lines and _text_width(font, lines[-1] + " " + token) <= width:
            lines[-1] += " " + token
        else:
            lines.append(token)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    for i, line in enumerate(lines):
        while _text_width(font, line) > width and len(line) > 1:
            line = line[:-2] + "…"
        lines[i] = line
    return lines


# ------------------------------------------------------------------------------------- axes


def _finite(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
        and math.isfinite(value)


def nice_ticks(low, high, count=5, integer=False):
    """Round values (1, 2, 2.5 or 5 times a power of ten apart) in [low, high], about ``count``
    of them; whole numbers only if ``integer``."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw * 0.999)
    if integer:
        step = 1 if step < 1 else 2 if step == 2.5 else step
    first = math.ceil(low / step - 1e-9) * step
    ticks = [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]
    return [round(t, 10) for t in ticks]


def _padded(values, pad_fraction, min_pad, floor=None, ceiling=None):
    """(low, high) around ``values`` with a margin, kept within [floor, ceiling]."""
    low, high = min(values), max(values)
    pad = max((high - low) * pad_fraction, min_pad)
    low, high = low - pad, high + pad
    if floor is not None:
        low = max(low, floor)
    if ceiling is not None:
        high = min(high, ceiling)
    return low, high


@dataclass
class Axes:
    """A panel: its pixel ``box`` and the data ranges ``xlim``/``ylim``, mapped onto the box
    less ``pad`` pixels on each side (so points at the ends of a range are not cut)."""

    box: tuple
    xlim: tuple
    ylim: tuple
    pad: int = 0

    def x(self, value):
        left, _, right, _ = self.box
        (x0, x1), p = self.xlim, self.pad
        return left + p + (value - x0) / (x1 - x0) * (right - left - 2 * p)

    def y(self, value):
        _, top, _, bottom = self.box
        (y0, y1), p = self.ylim, self.pad
        return bottom - p - (value - y0) / (y1 - y0) * (bottom - top - 2 * p)


@dataclass
class Figure:
    """An image and where things are in it: ``axes`` by panel name, ``boxes`` (legend, title,
    task cells, ...) as (left, top, right, bottom)."""

    image: Image.Image
    axes: dict = field(default_factory=dict)
    boxes: dict = field(default_factory=dict)

    def save(self, path) -> Path:
        self.image.save(path, format="PNG")
        return Path(path)


class _Layer:
    """A panel's data area drawn at SUPERSAMPLE x resolution and box-filtered down onto the
    figure: anti-aliased curves, and whatever falls outside the panel is clipped."""

    def __init__(self, axes: Axes):
        left, top, right, bottom = axes.box
        self.axes, self.s = axes, SUPERSAMPLE
        self.image = Image.new("RGB", ((right - left) * self.s, (bottom - top) * self.s), "white")
        self.draw = ImageDraw.Draw(self.image)

    def point(self, x, y):
        return (self.axes.x(x) - self.axes.box[0]) * self.s, (self.axes.y(y) - self.axes.box[1]) * self.s

    def grid(self, xticks, yticks):
        """1-pixel grid lines at the ticks (whole output pixels, so they stay crisp)."""
        width, height = self.image.size
        for t in yticks:
            row = int(self.axes.y(t) - self.axes.box[1]) * self.s
            self.draw.rectangle([0, row, width, row + self.s - 1], fill=GRID)
        for t in xticks:
            col = int(self.axes.x(t) - self.axes.box[0]) * self.s
            self.draw.rectangle([col, 0, col + self.s - 1, height], fill=GRID)

    def line(self, points, colour, width=2.0, markers=0.0):
        pts = [self.point(x, y) for x, y in points]
        if len(pts) > 1:
            self.draw.line(pts, fill=colour, width=round(width * self.s), joint="curve")
        r = max(markers, width / 2 if len(pts) == 1 else 0) * self.s  # a lone point: a dot
        for x, y in pts if r else []:
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)

    def hline(self, y, colour, width=1.5, dash=(7, 5)):
        _, row = self.point(self.axes.xlim[0], y)
        half, x, on = width * self.s / 2, 0, True
        while x < self.image.width:
            length = (dash[0] if on else dash[1]) * self.s
            if on:
                self.draw.rectangle([x, row - half, x + length - 1, row + half], fill=colour)
            x, on = x + length, not on

    def band(self, points, colour):
        """Fill between ``(x, low, high)`` points; a lone point gets a capped vertical bar."""
        if len(points) == 1:
            x, low, high = points[0]
            (px, lo), (_, hi) = self.point(x, low), self.point(x, high)
            w = 5 * self.s
            self.draw.rectangle([px - w, hi, px + w, lo], fill=colour)
            return
        upper = [self.point(x, high) for x, _, high in points]
        lower = [self.point(x, low) for x, low, _ in reversed(points)]
        self.draw.polygon(upper + lower, fill=colour)

    def ring(self, x, y, colour, radius=6, width=2):
        px, py = self.point(x, y)
        r = radius * self.s
        self.draw.ellipse([px - r, py - r, px + r, py + r], outline=colour, width=width * self.s)

    def paste_onto(self, image):
        image.paste(self.image.reduce(self.s), self.axes.box[:2])


def _frame(draw, axes, xticks=(), yticks=(), xfmt=None, yfmt="{:g}", font=None):
    """The panel's border, tick marks and tick labels (x labels only if ``xfmt``)."""
    left, top, right, bottom = axes.box
    draw.rectangle([left - 1, top - 1, right, bottom], outline=FRAME)
    for t in yticks:
        y = int(axes.y(t))
        draw.line([(left - 5, y), (left - 2, y)], fill=FRAME)
        _text(draw, (left - 8, y), yfmt.format(t), font, anchor="rm")
    for t in xticks:
        x = int(axes.x(t))
        draw.line([(x, bottom + 1), (x, bottom + 4)], fill=FRAME)
        if xfmt:
            _text(draw, (x, bottom + 8), xfmt.format(t), font, anchor="mt")


# ----------------------------------------------------------------------------------- legend

LEGEND_ROW = 20
SAMPLE = 28  # width of a legend entry's sample


def _legend(draw, entries, left, right, top, font):
    """Legend entries ``(kind, colour, text)`` in centred rows within [left, right] from ``top``
    (rows wrap); ``draw=None`` only measures. Returns the box (left, top, right, bottom) of what
    was (or would be) drawn, or None for no entries. Kinds: line, band (validation line on its
    CI band), ring, dash, patch, errorbar."""
    if not entries:
        return None
    widths = [SAMPLE + 6 + _text_width(font, text) for _, _, text in entries]
    rows, row_width = [[]], 0
    for i, w in enumerate(widths):
        if rows[-1] and row_width + 22 + w > right - left:
            rows.append([])
            row_width = 0
        row_width += (22 if rows[-1] else 0) + w
        rows[-1].append(i)
    box = [right, top, left, top + LEGEND_ROW * len(rows)]
    for r, row in enumerate(rows):
        total = sum(widths[i] for i in row) + 22 * (len(row) - 1)
        x, y = (left + right - total) // 2, top + LEGEND_ROW * r + LEGEND_ROW // 2
        box[0], box[2] = min(box[0], x), max(box[2], x + total)
        for i in row:
            kind, colour, text = entries[i]
            if draw is not None:
                _sample(draw, kind, colour, x, y)
                _text(draw, (x + SAMPLE + 6, y), text, font, anchor="lm")
            x += widths[i] + 22
    return tuple(box)


def _sample(draw, kind, colour, x, y):
    if kind == "band":
        draw.rectangle([x, y - 6, x + SAMPLE, y + 6], fill=BAND)
        draw.line([(x, y), (x + SAMPLE, y)], fill=colour, width=2)
    elif kind == "line":
        draw.line([(x, y), (x + SAMPLE, y)], fill=colour, width=2)
    elif kind == "ring":
        c = x + SAMPLE // 2
        draw.ellipse([c - 6, y - 6, c + 6, y + 6], outline=colour, width=2)
    elif kind == "dash":
        for s in range(x, x + SAMPLE, 10):
            draw.rectangle([s, y - 1, min(s + 6, x + SAMPLE), y], fill=colour)
    elif kind == "patch":
        draw.rectangle([x + 6, y - 6, x + SAMPLE - 6, y + 6], fill=colour)
    elif kind == "errorbar":
        c = x + SAMPLE // 2
        draw.line([(c, y - 7), (c, y + 7)], fill=colour)
        draw.line([(c - 4, y - 7), (c + 4, y - 7)], fill=colour)
        draw.line([(c - 4, y + 7), (c + 4, y + 7)], fill=colour)


def _header(draw, title, entries, left, right, font):
    """Title and legend strip above the panels; returns (boxes, y where the panels may start)."""
    boxes = {"title": _text(draw, ((left + right) / 2, 10), title, _font(15), anchor="mt")} \
        if title else {}
    top = (boxes["title"][3] + 8) if title else 10
    legend = _legend(draw, entries, left, right, top, font)
    if legend:
        boxes["legend"] = legend
        top = legend[3]
    return boxes, top + 10


# ---------------------------------------------------------------------------- learning curve


def learning_curve_figure(rows, title="learning curve", best_iteration=None, chance=None,
                          size=(W, H)) -> Figure:
    """A run's learning curve from its metrics rows (``anil.run.metrics``; fractions), in two
    panels sharing the iteration axis.

    ``accuracy`` panel (%): meta-train query ``accuracy``, ``val_accuracy`` with its
    ``val_ci95`` as a shaded band, a ring on the validation point of ``best_iteration``, and
    ``chance`` (a fraction, 1/ways) as a dashed line. y-range: the data and chance, padded,
    within 0-100%. ``loss`` panel: meta-train query ``loss``. Missing, NaN or infinite values
    are left out; rows may hold any subset of the keys.
    """
    if chance is not None and not (_finite(chance) and 0 < chance <= 1):
        raise ValueError(f"chance is a fraction in (0, 1] (1/ways), got {chance!r}")
    train, loss, val = [], [], []
    for row in sorted((r for r in rows if _finite(r.get("iteration"))), key=lambda r: r["iteration"]):
        it = row["iteration"]
        if _finite(row.get("accuracy")):
            train.append((it, 100 * row["accuracy"]))
        if _finite(row.get("loss")):
            loss.append((it, row["loss"]))
        if _finite(row.get("val_accuracy")):
            ci = row.get("val_ci95")
            val.append((it, 100 * row["val_accuracy"], 100 * ci if _finite(ci) else None))
    best = next(((it, v) for it, v, _ in val if it == best_iteration), None)
    chance_pct = None if chance is None else 100 * chance

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(12)

    # ranges and ticks
    xs = [p[0] for p in train + loss + val] or [0, 1]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:  # one iteration so far: in the middle
        x0, x1 = x0 - 1, x1 + 1
    elif 0 <= x0 <= 0.2 * x1:  # from the start of the run: the axis from 0
        x0 = 0
    acc_values = [v for _, v in train] + [v for _, v, _ in val] \
        + [min(100, v + c) for _, v, c in val if c] + [max(0, v - c) for _, v, c in val if c]
    acc_values += [chance_pct] if chance_pct is not None else []
    ylim = _padded(acc_values or [0, 100], 0.06, 1.0, 0, 100)
    loss_lim = _padded([v for _, v in loss] or [0, 1], 0.08, 0.02, floor=0)
    xticks = nice_ticks(x0, x1, 6, integer=True)
    yticks = nice_ticks(*ylim, 5) if train or val or chance_pct is not None else []
    loss_ticks = nice_ticks(*loss_lim, 3) if loss else []

    # layout: title, legend strip, accuracy panel, loss panel, iteration axis
    tick_width = max([_text_width(small, f"{t:g}%") for t in yticks]
                     + [_text_width(small, f"{t:g}") for t in loss_ticks] + [_text_width(small, "100%")])
    left, right = 12 + _text_height(font) + 10 + tick_width + 8, width - 22
    entries = []
    if train or loss:
        entries.append(("line", TRAIN, "meta-train (query)"))
    if val:
        entries.append(("band" if any(c for *_, c in val) else "line", VALIDATION,
                        "validation ± 95% CI" if any(c for *_, c in val) else "validation"))
    if best:
        entries.append(("ring", BEST, f"best validation {best[1]:.1f}% (iteration {best[0]:g})"))
    if chance_pct is not None:
        entries.append(("dash", CHANCE, f"chance {chance_pct:.3g}%"))
    boxes, top = _header(draw, title, entries, left, right, font)
    bottom = height - 16 - 2 * _text_height(font) - 10
    loss_height = max(60, round((bottom - top) * 0.28))
    acc = Axes((left, top, right, bottom - loss_height - 12), (x0, x1), ylim, pad=9)
    lossax = Axes((left, bottom - loss_height, right, bottom), (x0, x1), loss_lim, pad=9)

    layer = _Layer(acc)
    layer.grid(xticks, yticks)
    band = [(it, max(0, v - c), min(100, v + c)) for it, v, c in val if c]
    if band:
        layer.band(band, BAND)
    if chance_pct is not None:
        layer.hline(chance_pct, CHANCE)
    dense = len(train) > (right - left) / 4  # a noisy blob: thinner, validation haloed over it
    layer.line(train, TRAIN, 1 if dense else 1.75, markers=2.5 if len(train) <= 30 else 0)
    if dense:
        layer.line([(it, v) for it, v, _ in val], "white", 4)
    layer.line([(it, v) for it, v, _ in val], VALIDATION, 2, markers=3 if len(val) <= 40 else 0)
    if best:
        layer.ring(*best, BEST)
    layer.paste_onto(image)
    _frame(draw, acc, xticks, yticks, yfmt="{:g}%", font=small)
    _vertical_text(image, (12 + _text_height(font) / 2, (acc.box[1] + acc.box[3]) / 2), "accuracy", font)
    if not (train or val):
        _text(draw, ((left + right) / 2, (acc.box[1] + acc.box[3]) / 2), "no accuracy logged yet",
              font, MUTED, anchor="mm")

    layer = _Layer(lossax)
    layer.grid(xticks, loss_ticks)
    layer.line(loss, TRAIN, 1 if len(loss) > (right - left) / 4 else 1.75,
               markers=2.5 if len(loss) <= 30 else 0)
    layer.paste_onto(image)
    _frame(draw, lossax, xticks, loss_ticks, xfmt="{:.0f}", yfmt="{:g}", font=small)
    _vertical_text(image, (12 + _text_height(font) / 2, (lossax.box[1] + lossax.box[3]) / 2), "loss", font)
    if not loss:
        _text(draw, ((left + right) / 2, (lossax.box[1] + lossax.box[3]) / 2),
              "no training loss logged yet", font, MUTED, anchor="mm")
    _text(draw, ((left + right) / 2, height - 10), "iteration", font, anchor="mb")
    return Figure(image, {"accuracy": acc, "loss": lossax}, boxes)


# ------------------------------------------------------------------------------- line chart


def line_figure(series: dict, title="", xlabel="", ylabel="", ylim=None, size=(W, H)) -> Figure:
    """``series = {name: (xs, ys)}`` as lines in one panel, legend above it."""
    points = {name: [(x, y) for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
              for name, (xs, ys) in series.items()}
    xs = [x for p in points.values() for x, _ in p]
    ys = [y for p in points.values() for _, y in p]
    if not xs:
        raise ValueError("line_chart needs at least one finite point")
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    ylim = ylim or _padded(ys, 0.06, 1e-3)
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(12)
    yticks, xticks = nice_ticks(*ylim, 5), nice_ticks(x0, x1, 6)
    left = 12 + (_text_height(font) + 10 if ylabel else 0) \
        + max(_text_width(small, f"{t:g}") for t in yticks) + 8
    right = width - 22
    entries = [("line", COLOURS[i % len(COLOURS)], name) for i, name in enumerate(series)]
    boxes, top = _header(draw, title, entries, left, right, font)
    bottom = height - 16 - _text_height(font) - (_text_height(font) + 10 if xlabel else 0)
    axes = Axes((left, top, right, bottom), (x0, x1), tuple(ylim), pad=6)
    layer = _Layer(axes)
    layer.grid(xticks, yticks)
    for i, p in enumerate(points.values()):
        layer.line(p, COLOURS[i % len(COLOURS)], 2, markers=2.5 if len(p) <= 30 else 0)
    layer.paste_onto(image)
    _frame(draw, axes, xticks, yticks, xfmt="{:g}", font=small)
    if ylabel:
        _vertical_text(image, (12 + _text_height(font) / 2, (top + bottom) / 2), ylabel, font)
    if xlabel:
        _text(draw, ((left + right) / 2, height - 10), xlabel, font, anchor="mb")
    return Figure(image, {"main": axes}, boxes)


def line_chart(path, series: dict, title="", xlabel="", ylabel="", ylim=None) -> Path:
    """``series = {name: (xs, ys)}`` drawn as lines with a legend; returns the path."""
    return line_figure(series, title, xlabel, ylabel, ylim).save(path)


# -------------------------------------------------------------------------------- bar chart


def bar_figure(labels, groups: dict, title="", ylabel="", ylim=(0.0, 1.0), errors=None,
               chance=None, tick_format="{:g}", value_format="{value:.2f}", size=(W, H)) -> Figure:
    """Grouped bars: ``groups = {name: [value per label]}``, ``errors`` alike (drawn as ± error
    bars, e.g. 95% CIs), in the units of ``ylim`` (pass percentages for accuracies).

    ``chance``: a dashed horizontal line at that value. ``value_format``: the text over each
    bar, formatted with ``value`` and ``error`` (None: no text). Category labels are wrapped to
    their slot; the legend (groups, error bars, chance) sits above the bars.
    """
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(12)
    y0, y1 = ylim
    yticks = nice_ticks(y0, y1, 5)
    left = 12 + (_text_height(font) + 10 if ylabel else 0) \
        + max(_text_width(small, tick_format.format(t)) for t in yticks) + 8
    right = width - 22
    slot = (right - left) / max(len(labels), 1)
    lines = [_wrap(label, font, slot - 10) for label in labels]
    label_font = font
    if any(len(ls) > 2 for ls in lines):  # three lines: try a smaller font first
        label_font = _font(11)
        lines = [_wrap(label, label_font, slot - 8) for label in labels]
    line_height = _text_height(label_font) + 3
    entries = [("patch", COLOURS[g % len(COLOURS)], name) for g, name in enumerate(groups)]
    if errors:
        entries.append(("errorbar", TEXT, "95% CI"))
    if chance is not None:
        entries.append(("dash", CHANCE, f"chance {tick_format.format(chance)}"))
    boxes, top = _header(draw, title, entries, left, right, font)
    bottom = height - 10 - line_height * max(map(len, lines), default=1) - 8
    axes = Axes((left, top, right, bottom), (0, max(len(labels), 1)), (y0, y1))
    clamp = lambda v: min(max(v, y0), y1)
    y_of = lambda v: round(axes.y(clamp(v)))

    for t in yticks:
        draw.line([(left, y_of(t)), (right - 1, y_of(t))], fill=GRID)
    bar = slot * 0.76 / max(len(groups), 1)
    value_font = _font(12)
    texts = []  # value labels, drawn last (over the chance line, on a white backing)
    for i in range(len(labels)):
        line_boxes = [_text(draw, (left + slot * (i + 0.5), bottom + 8 + line_height * k), line,
                            label_font, anchor="mt") for k, line in enumerate(lines[i])]
        boxes[("label", i)] = (min(b[0] for b in line_boxes), line_boxes[0][1],
                               max(b[2] for b in line_boxes), line_boxes[-1][3])
        for g, (name, values) in enumerate(groups.items()):
            value = values[i]
            if not _finite(value):
                continue
            x = left + slot * i + slot * 0.12 + bar * g
            bar_box = (round(x + 1), y_of(value), round(x + bar - 1) - 1, bottom - 1)
            draw.rectangle(bar_box, fill=COLOURS[g % len(COLOURS)])
            boxes[("bar", i, g)] = bar_box
            error = errors[name][i] if errors and name in errors else None
            error = error if _finite(error) and error > 0 else None
            xc = round(x + bar / 2)
            if error:
                cap = max(2, min(6, round(bar / 5)))
                ys = y_of(value - error), y_of(value + error)
                draw.line([(xc, ys[0]), (xc, ys[1])], fill=TEXT, width=1)
                for yy in ys:
                    draw.line([(xc - cap, yy), (xc + cap, yy)], fill=TEXT, width=1)
            if value_format:
                fmt = value_format
                text = fmt.format(value=value, error=error or 0)
                if _text_width(value_font, text) > bar + 8 or not error:  # value only
                    fmt = re.sub(r"\s*±\s*\{error[^}]*\}", "", value_format)
                    text = fmt.format(value=value, error=0)
                texts.append((xc, value + (error or 0), value, text))
    if chance is not None and y0 <= chance <= y1:
        y = y_of(chance)
        for x in range(left, right, 12):
            draw.rectangle([x, y - 1, min(x + 7, right - 1), y], fill=CHANCE)
    h = _text_height(value_font)
    for xc, high, value, text in texts:
        if y_of(high) - 4 - h >= top + 2:  # above the bar (and its error bar)
            w = _text_width(value_font, text)
            draw.rectangle([xc - w / 2 - 2, y_of(high) - 6 - h, xc + w / 2 + 2, y_of(high) - 3], fill="white")
            _text(draw, (xc, y_of(high) - 4), text, value_font, TEXT, anchor="mb")
        elif bottom - y_of(value) > h + 10:  # no room above: inside the bar's top
            _text(draw, (xc, y_of(value) + 5), text, value_font, "white", anchor="mt")
    _frame(draw, axes, (), yticks, yfmt=tick_format, font=small)
    if ylabel:
        _vertical_text(image, (12 + _text_height(font) / 2, (top + bottom) / 2), ylabel, font)
    return Figure(image, {"main": axes}, boxes)


def bar_chart(path, labels, groups: dict, title="", ylabel="", ylim=(0.0, 1.0), errors=None,
              chance=None, tick_format="{:g}", value_format="{value:.2f}") -> Path:
    """Grouped bars with error bars and an optional chance line (see ``bar_figure``); returns
    the path."""
    return bar_figure(labels, groups, title, ylabel, ylim, errors, chance, tick_format,
                      value_format).save(path)


# -------------------------------------------------------------------------------- task grid


def task_figure(images, labels, support_query=True, title=None, scale=None) -> Figure:
    """One task as a grid: a row per class (block of equal consecutive labels), headed
    "label j"; with ``support_query`` the block's even positions (support) first, then a gap,
    then its odd positions (query), else the block's images in order.

    ``images``: float [n, C, H, W] in [0, 1] (C = 1 or 3; torch or numpy); ``labels``: [n].
    ``scale``: the nearest-neighbour upscaling (default: images at least 84 pixels wide).
    ``boxes[("cell", j, c)]``: where image c of row j (support 0..K-1, then query) lies.
    """
    if hasattr(images, "detach"):
        images, labels = images.detach().cpu().numpy(), np.asarray(labels.detach().cpu())
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels).reshape(-1)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) != len(labels) or not len(labels):
        raise ValueError(f"task_grid needs images [n, C, H, W] with C 1 or 3 and n labels; got "
                         f"images {tuple(images.shape)} and {len(labels)} labels")
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
    block = len(labels) // len(starts)
    if block * len(starts) != len(labels) or any(s != i * block for i, s in enumerate(starts)) \
            or (support_query and block % 2):
        raise ValueError("task_grid needs consecutive class blocks of equal size (even with "
                         "support_query: support at even, query at odd positions)")
    _, channels, h, w = images.shape
    scale = scale or max(1, math.ceil(84 / max(h, w)))
    pixels = np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if channels == 1:
        pixels = pixels.repeat(3, axis=-1)
    cw, ch = w * scale, h * scale
    order = [list(range(0, block, 2)), list(range(1, block, 2))] if support_query else [list(range(block))]

    font, head_font = _font(13), _font(14)
    gap, half_gap, frame = 8, 28, 2
    label_width = _text_width(font, f"label {labels[starts[-1]]}") + 20
    title_h = _text_height(_font(15)) + 16 if title else 0
    header_h = _text_height(head_font) + 14 if support_query else 0
    half_w = [len(o) * (cw + gap) - gap for o in order]
    width = 14 + label_width + sum(half_w) + half_gap * (len(order) - 1) + 14
    height = 12 + title_h + header_h + len(starts) * (ch + gap + 2 * frame) + 10
    width = max(width, _text_width(_font(15), title or "") + 28)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    boxes = {}
    if title:
        boxes["title"] = _text(draw, (width / 2, 10), title, _font(15), anchor="mt")
    top = 12 + title_h + header_h
    x_halves = [14 + label_width]
    for hw in half_w[:-1]:
        x_halves.append(x_halves[-1] + hw + half_gap)
    if support_query:
        k = len(order[0])
        for x, name, colour in zip(x_halves, ("support", "query"), (SUPPORT, QUERY)):
            text = f"{name} ({k} per class)" if k > 1 else name
            boxes[name] = _text(draw, (x + half_w[0] / 2, top - 10), text, head_font, colour, anchor="mb")
        sep = x_halves[1] - half_gap / 2
        draw.line([(sep, top - 4), (sep, height - 10)], fill=FRAME, width=1)
    for j, start in enumerate(starts):
        y = top + j * (ch + gap + 2 * frame) + frame
        _text(draw, (14, y + ch / 2), f"label {labels[start]}", font, anchor="lm")
        c = 0
        for half, (x_half, positions) in enumerate(zip(x_halves, order)):
            colour = (SUPPORT, QUERY)[half] if support_query else FRAME
            for n, pos in enumerate(positions):
                x = x_half + n * (cw + gap)
                draw.rectangle([x - frame, y - frame, x + cw + frame - 1, y + ch + frame - 1], fill=colour)
                cell = Image.fromarray(pixels[start + pos]).resize((cw, ch), Image.NEAREST)
                image.paste(cell, (x, y))
                boxes[("cell", j, c)] = (x, y, x + cw, y + ch)
                c += 1
    return Figure(image, {}, boxes)


def task_grid(images, labels, path, support_query=True, title=None, scale=None) -> Path:
    """Save ``task_figure(images, labels, support_query, title, scale)`` as a PNG; returns the
    path. For an ``anil.sampler.Task``: ``task_grid(task.images, task.labels, path)``."""
    return task_figure(images, labels, support_query, title, scale).save(path)
