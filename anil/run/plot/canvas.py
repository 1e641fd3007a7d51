"""The drawing primitives every picture shares: colours, fonts and text, nice ticks, ``Axes`` (a
panel's box and its data-to-pixel map), ``Figure`` (an image and its geometry), lines, bands and
dashed lines drawn supersampled, frames, legends and the title strip."""

from __future__ import annotations

import functools
import math
import re
import sys
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


BIGGEST = sys.float_info.max


def _half_span(low, high):
    """(high - low) / 2, computed from halves so that it never overflows: any finite values,
    up to ±1.8e308, can be drawn (a picture must never end a run)."""
    return high / 2 - low / 2


def nice_ticks(low, high, count=5, integer=False):
    """Round values (1, 2, 2.5 or 5 times a power of ten apart) in [low, high], about ``count``
    of them; whole numbers only if ``integer``."""
    if not high > low:
        return [low]
    raw = _half_span(low, high) / count * 2
    step = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 0.0
    if not step > 0:  # a range below the smallest float's spacing: its two ends
        return [low, high]
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw * 0.999)
    if integer:
        step = 1 if step < 1 else 2 if step == 2.5 else step
    first = math.ceil(low / step - 1e-9) * step
    # (first + i·step), summed in halves: exact like the plain sum, and never overflowing
    ticks = [(first / 2 + i * (step / 2)) * 2
             for i in range(int(_half_span(first, high) / step * 2 + 1e-9) + 1)]
    # 0.1 * 3 shown as 0.3; not for huge or tiny ticks (round(1e308, 10) overflows to inf)
    return [round(t, 10) if 1e-6 < step and abs(t) < 1e15 else t for t in ticks]


def _padded(values, pad_fraction, min_pad, floor=None, ceiling=None):
    """(low, high) around ``values`` with a margin, kept within [floor, ceiling] and within the
    finite floats. The margin is at least a few units in the last place of the values, so that
    low < high even for a constant series of huge values (1e20 + 0.02 == 1e20)."""
    low, high = min(values), max(values)
    pad = max(_half_span(low, high) * 2 * pad_fraction, min_pad,
              4 * math.ulp(max(abs(low), abs(high))))
    low, high = max(low - pad, -BIGGEST), min(high + pad, BIGGEST)
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
        return left + self.pad + _fraction(value, self.xlim) * (right - left - 2 * self.pad)

    def y(self, value):
        _, top, _, bottom = self.box
        return bottom - self.pad - _fraction(value, self.ylim) * (bottom - top - 2 * self.pad)


def _fraction(value, limits):
    """Where ``value`` lies in ``limits`` (0 at the first, 1 at the second), without overflow;
    the middle for an empty range."""
    span = _half_span(*limits)
    return _half_span(limits[0], value) / span if span else 0.5


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
