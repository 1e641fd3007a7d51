"""A plain line chart and grouped bar charts with 95% confidence intervals (see ``anil.run.plot``
for the layout rules)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageDraw

from anil.run.plot import canvas
from anil.run.plot.canvas import (Axes, CHANCE, COLOURS, Figure, GRID, H, TEXT, W, _Layer, _finite,
                                  _frame, _header, _padded, _text, _text_height, _text_width,
                                  _vertical_text, _wrap, nice_ticks)


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
    font, small = canvas._font(13), canvas._font(12)
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
    font, small = canvas._font(13), canvas._font(12)
    y0, y1 = ylim
    yticks = nice_ticks(y0, y1, 5)
    left = 12 + (_text_height(font) + 10 if ylabel else 0) \
        + max(_text_width(small, tick_format.format(t)) for t in yticks) + 8
    right = width - 22
    slot = (right - left) / max(len(labels), 1)
    lines = [_wrap(label, font, slot - 10) for label in labels]
    label_font = font
    if any(len(ls) > 2 for ls in lines):  # three lines: try a smaller font first
        label_font = canvas._font(11)
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
    value_font = canvas._font(12)
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
                text = _value_text(value_format, value, error, value_font, bar + 8)
                texts.append((xc, value + (error or 0), value, text))
    if chance is not None and y0 <= chance <= y1:
        y = y_of(chance)
        for x in range(left, right, 12):
            draw.rectangle([x, y - 1, min(x + 7, right - 1), y], fill=CHANCE)
    _draw_value_texts(draw, texts, y_of, top, bottom, value_font)
    _frame(draw, axes, (), yticks, yfmt=tick_format, font=small)
    if ylabel:
        _vertical_text(image, (12 + _text_height(font) / 2, (top + bottom) / 2), ylabel, font)
    return Figure(image, {"main": axes}, boxes)



def _value_text(value_format: str, value, error, font, room: float) -> str:
    """The text over a bar: ``value_format`` with value and error, or the value alone when there
    is no error or the whole text is wider than ``room``."""
    text = value_format.format(value=value, error=error or 0)
    if _text_width(font, text) > room or not error:
        text = re.sub(r"\s*±\s*\{error[^}]*\}", "", value_format).format(value=value, error=0)
    return text


def _draw_value_texts(draw, texts, y_of, top: float, bottom: float, font) -> None:
    """Each (x, top of bar and error bar, value, text): above the bar on a white backing, else
    inside the bar's top when there is no room above, else nowhere."""
    h = _text_height(font)
    for xc, high, value, text in texts:
        if y_of(high) - 4 - h >= top + 2:  # above the bar (and its error bar)
            w = _text_width(font, text)
            draw.rectangle([xc - w / 2 - 2, y_of(high) - 6 - h, xc + w / 2 + 2, y_of(high) - 3], fill="white")
            _text(draw, (xc, y_of(high) - 4), text, font, TEXT, anchor="mb")
        elif bottom - y_of(value) > h + 10:  # no room above: inside the bar's top
            _text(draw, (xc, y_of(value) + 5), text, font, "white", anchor="mt")


def bar_chart(path, labels, groups: dict, title="", ylabel="", ylim=(0.0, 1.0), errors=None,
              chance=None, tick_format="{:g}", value_format="{value:.2f}") -> Path:
    """Grouped bars with error bars and an optional chance line (see ``bar_figure``); returns
    the path."""
    return bar_figure(labels, groups, title, ylabel, ylim, errors, chance, tick_format,
                      value_format).save(path)
