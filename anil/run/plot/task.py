"""A picture of one few-shot task: one row per class, its support images, then its query images
(see ``anil.run.plot`` for the layout rules)."""

from __future__ import annotations

import math
import numpy as np
from pathlib import Path

from PIL import Image, ImageDraw

from anil.run.plot import canvas
from anil.run.plot.canvas import (FRAME, Figure, QUERY, SUPPORT, _text, _text_height, _text_width)


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

    font, head_font = canvas._font(13), canvas._font(14)
    gap, half_gap, frame = 8, 28, 2
    label_width = _text_width(font, f"label {labels[starts[-1]]}") + 20
    title_h = _text_height(canvas._font(15)) + 16 if title else 0
    header_h = _text_height(head_font) + 14 if support_query else 0
    half_w = [len(o) * (cw + gap) - gap for o in order]
    width = 14 + label_width + sum(half_w) + half_gap * (len(order) - 1) + 14
    height = 12 + title_h + header_h + len(starts) * (ch + gap + 2 * frame) + 10
    width = max(width, _text_width(canvas._font(15), title or "") + 28)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    boxes = {}
    if title:
        boxes["title"] = _text(draw, (width / 2, 10), title, canvas._font(15), anchor="mt")
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
