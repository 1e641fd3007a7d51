"""Small PNG charts drawn with Pillow alone (no matplotlib needed): line charts for learning
curves, bar charts for per-layer similarities."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]
W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 60


def _font(size=13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(low, high, count=5):
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _axes(draw, title, xlabel, ylabel, yticks, y_of, font):
    draw.text((W / 2, 12), title, fill="black", font=_font(15), anchor="mt")
    draw.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - RIGHT, H - BOTTOM)], fill="black")
    for t in yticks:
        y = y_of(t)
        draw.line([(LEFT - 4, y), (W - RIGHT, y)], fill=(225, 225, 225))
        draw.text((LEFT - 6, y), f"{t:g}", fill="black", font=font, anchor="rm")
    draw.text((W / 2, H - 18), xlabel, fill="black", font=font, anchor="mm")
    draw.text((8, TOP - 22), ylabel, fill="black", font=font)


def line_chart(path, series: dict, title="", xlabel="", ylabel="", ylim=None):
    """``series = {name: (xs, ys)}`` drawn as lines with a legend; returns the path."""
    font = _font()
    xs = [x for xs_, _ in series.values() for x in xs_]
    ys = [y for _, ys_ in series.values() for y in ys_]
    if not xs:
        raise ValueError("line_chart needs at least one point")
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = ylim or (min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1)
    x_of = lambda x: LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)
    y_of = lambda y: H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    _axes(draw, title, xlabel, ylabel, [t for t in _nice_ticks(y0, y1) if y0 <= t <= y1], y_of, font)
    for t in _nice_ticks(x0, x1):
        if x0 <= t <= x1:
            draw.text((x_of(t), H - BOTTOM + 6), f"{t:g}", fill="black", font=font, anchor="mt")
    for i, (name, (sx, sy)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [(x_of(x), y_of(y)) for x, y in zip(sx, sy)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points if len(points) < 60 else []:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        draw.line([(W - RIGHT - 170, TOP + 10 + 18 * i), (W - RIGHT - 145, TOP + 10 + 18 * i)],
                  fill=colour, width=3)
        draw.text((W - RIGHT - 140, TOP + 10 + 18 * i), name, fill="black", font=font, anchor="lm")
    image.save(path, format="PNG")
    return Path(path)


def bar_chart(path, labels, groups: dict, title="", ylabel="", ylim=(0.0, 1.0), errors=None):
    """Grouped bars: ``groups = {name: [value per label]}``, optional ``errors`` alike."""
    font = _font()
    y0, y1 = ylim
    y_of = lambda y: H - BOTTOM - (min(max(y, y0), y1) - y0) / (y1 - y0) * (H - TOP - BOTTOM)
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    _axes(draw, title, "", ylabel, _nice_ticks(y0, y1), y_of, font)
    slot = (W - LEFT - RIGHT) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(groups), 1)
    for i, label in enumerate(labels):
        draw.text((LEFT + slot * (i + 0.5), H - BOTTOM + 6), str(label), fill="black", font=font,
                  anchor="mt")
        for g, (name, values) in enumerate(groups.items()):
            x = LEFT + slot * i + slot * 0.1 + bar * g
            draw.rectangle([x, y_of(values[i]), x + bar - 2, y_of(y0)], fill=COLOURS[g % len(COLOURS)])
            if errors and name in errors:
                e, xc = errors[name][i], x + bar / 2 - 1
                draw.line([(xc, y_of(values[i] - e)), (xc, y_of(values[i] + e))], fill="black", width=1)
    for g, name in enumerate(groups):
        draw.rectangle([W - RIGHT - 170, TOP + 4 + 18 * g, W - RIGHT - 150, TOP + 16 + 18 * g],
                       fill=COLOURS[g % len(COLOURS)])
        draw.text((W - RIGHT - 140, TOP + 10 + 18 * g), name, fill="black", font=font, anchor="lm")
    image.save(path, format="PNG")
    return Path(path)
