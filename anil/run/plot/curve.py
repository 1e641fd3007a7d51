"""The learning curve of a run: accuracy (%) and meta-train loss against iteration, two panels
sharing the x-axis (see ``anil.run.plot`` for the layout rules)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from anil.run.plot import canvas
from anil.run.plot.canvas import (Axes, BAND, BEST, CHANCE, COLOURS, Figure, H, MUTED, TRAIN,
                                  VALIDATION, W, _Layer, _finite, _frame, _header, _padded, _text,
                                  _text_height, _text_width, _vertical_text, _wrap, nice_ticks)

TEST, UNTRAINED = COLOURS[2], COLOURS[4]  # the final test and the untrained network's test


# ---------------------------------------------------------------------------- learning curve


def learning_curve_figure(rows, title="learning curve", best_iteration=None, chance=None,
                          size=(W, H), test=None, untrained=None, note=None) -> Figure:
    """A run's learning curve from its metrics rows (``anil.run.metrics``; fractions), in two
    panels sharing the iteration axis.

    ``accuracy`` panel (%): meta-train query ``accuracy``, ``val_accuracy`` with its
    ``val_ci95`` as a shaded band, a ring on the validation point of ``best_iteration``, and
    ``chance`` (a fraction, 1/ways) as a dashed line. y-range: the data and chance, padded,
    within 0-100%. ``loss`` panel: meta-train query ``loss``. Missing, NaN or infinite values
    are left out; rows may hold any subset of the keys.

    ``test`` = (accuracy, ci95, iteration) marks the final test accuracy (fractions) with its
    95% CI at the iteration of the weights tested; ``untrained`` = (accuracy, ci95) marks the
    untrained network's test accuracy at iteration 0; ``note`` is a caption under the chart
    (e.g. why validation sits above meta-train). ``boxes["test"]``/``["untrained"]``: the
    marks' pixel centres.
    """
    if chance is not None and not (_finite(chance) and 0 < chance <= 1):
        raise ValueError(f"chance is a fraction in (0, 1] (1/ways), got {chance!r}")
    train, loss, val = _series(rows)
    marks = _marks(test, untrained)
    best = next(((it, v) for it, v, _ in val if it == best_iteration), None)
    chance_pct = None if chance is None else 100 * chance

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = canvas._font(13), canvas._font(12)

    # ranges and ticks
    xs = [p[0] for p in train + loss + val] + [m[1] for m in marks] or [0, 1]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:  # one iteration so far: in the middle
        x0, x1 = x0 - 1, x1 + 1
    elif 0 <= x0 <= 0.2 * x1:  # from the start of the run: the axis from 0
        x0 = 0
    acc_values = [v for _, v in train] + [v for _, v, _ in val] \
        + [min(100, v + c) for _, v, c in val if c] + [max(0, v - c) for _, v, c in val if c]
    acc_values += [chance_pct] if chance_pct is not None else []
    acc_values += [v + s * c for _, _, v, c, *_ in marks for s in (-1, 1)]
    ylim = _padded(acc_values or [0, 100], 0.06, 1.0, 0, 100)
    loss_lim = _padded([v for _, v in loss] or [0, 1], 0.08, 0.02, floor=0)
    xticks = nice_ticks(x0, x1, 6, integer=True)
    yticks = nice_ticks(*ylim, 5) if train or val or chance_pct is not None else []
    loss_ticks = nice_ticks(*loss_lim, 3) if loss else []

    # layout: title, legend strip, accuracy panel, loss panel, iteration axis
    tick_width = max([_text_width(small, f"{t:g}%") for t in yticks]
                     + [_text_width(small, f"{t:g}") for t in loss_ticks] + [_text_width(small, "100%")])
    left, right = 12 + _text_height(font) + 10 + tick_width + 8, width - 22
    entries = _legend_entries(train, loss, val, best, chance_pct) + [m[4] for m in marks]
    boxes, top = _header(draw, title, entries, left, right, font)
    caption = _wrap(note, small, width - 40) if note else []
    bottom = height - 16 - 2 * _text_height(font) - 10 - len(caption) * (_text_height(small) + 4)
    loss_height = max(60, round((bottom - top) * 0.28))
    acc = Axes((left, top, right, bottom - loss_height - 12), (x0, x1), ylim, pad=9)
    lossax = Axes((left, bottom - loss_height, right, bottom), (x0, x1), loss_lim, pad=9)
    _draw_accuracy(image, draw, acc, xticks, yticks, train, val, best, chance_pct, font, small)
    _draw_loss(image, draw, lossax, xticks, loss_ticks, loss, font, small)
    _text(draw, ((left + right) / 2, bottom + 12 + _text_height(small)), "iteration", font,
          anchor="mt")
    for i, line in enumerate(caption):
        _text(draw, (width / 2, height - 8 - (len(caption) - 1 - i) * (_text_height(small) + 4)),
              line, small, MUTED, anchor="mb")
    for name, it, v, c, _, colour in marks:
        boxes[name] = _draw_mark(draw, acc, it, v, c, colour)
    return Figure(image, {"accuracy": acc, "loss": lossax}, boxes)


def _series(rows):
    """(iteration, accuracy %), (iteration, loss) and (iteration, validation %, CI %) points."""
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
    return train, loss, val


def _marks(test, untrained):
    """(name, iteration, accuracy %, CI %, legend entry, colour) of the test and untrained marks."""
    marks = []
    if test is not None and _finite(test[0]):
        accuracy, ci, iteration = test
        marks.append(("test", iteration, 100 * accuracy, 100 * (ci or 0), (
            "errorbar", TEST, f"test {100 * accuracy:.1f} ± {100 * (ci or 0):.1f}% "
                              f"(weights of iteration {iteration})"), TEST))
    if untrained is not None and _finite(untrained[0]):
        accuracy, ci = untrained
        marks.append(("untrained", 0, 100 * accuracy, 100 * (ci or 0), (
            "errorbar", UNTRAINED, f"untrained test {100 * accuracy:.1f}%"), UNTRAINED))
    return marks


def _draw_mark(draw, axes, iteration, value, ci, colour):
    """A diamond with a capped 95% CI bar at (iteration, value %); returns its pixel centre."""
    x, y = axes.x(iteration), axes.y(value)
    low, high = axes.y(max(0, value - ci)), axes.y(min(100, value + ci))
    draw.line([(x, low), (x, high)], fill=colour, width=2)
    for end in (low, high):
        draw.line([(x - 4, end), (x + 4, end)], fill=colour, width=2)
    draw.polygon([(x, y - 6), (x + 6, y), (x, y + 6), (x - 6, y)], fill=colour, outline="white")
    return x, y


def _legend_entries(train, loss, val, best, chance_pct):
    entries = []
    if train or loss:
        entries.append(("line", TRAIN, "meta-train (query)"))
    if val:
        with_ci = any(c for *_, c in val)
        entries.append(("band" if with_ci else "line", VALIDATION,
                        "validation ± 95% CI" if with_ci else "validation"))
    if best:
        entries.append(("ring", BEST, f"best validation {best[1]:.1f}% (iteration {best[0]:g})"))
    if chance_pct is not None:
        entries.append(("dash", CHANCE, f"chance {chance_pct:.3g}%"))
    return entries


def _draw_accuracy(image, draw, acc, xticks, yticks, train, val, best, chance_pct, font, small):
    left, right = acc.box[0], acc.box[2]
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


def _draw_loss(image, draw, lossax, xticks, loss_ticks, loss, font, small):
    left, right = lossax.box[0], lossax.box[2]
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
