"""The metrics log of a run (JSON lines) and its learning-curve plot.

``metrics.jsonl`` holds one JSON object per logged iteration::

    {"iteration": 200, "loss": 0.41, "accuracy": 0.91, "val_accuracy": 0.88, "val_ci95": 0.03,
     "seconds": 61.2}

``loss`` and ``accuracy`` are the meta-training query loss and accuracy averaged over the
iterations since the previous row; ``val_accuracy`` ± ``val_ci95`` appear on validation rows;
``seconds`` is the wall-clock time of the training loop so far, validation included, summed over
the processes of a resumed run.

Draw (or redraw, while the run is going) its learning curve::

    python -m anil.run.metrics runs/glyphs-5w1s          # writes runs/glyphs-5w1s/curve.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .plot import learning_curve_figure


class MetricsLog:
    """Append-only JSON-lines file; each row is flushed as soon as it is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, iteration: int) -> None:
        """Drop rows past ``iteration`` (logged after the checkpoint a run resumes from), so the
        resumed run's rows follow on without duplicates. Rewritten atomically."""
        if not self.path.exists():
            return
        kept = [r for r in self.rows() if r["iteration"] <= iteration]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics log. A last line cut short by a crash is ignored; a damaged line
    anywhere else raises ValueError naming it."""
    path = Path(path)
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "iteration" not in row:
                raise ValueError("no iteration")
            rows.append(row)
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number} is not a metrics row: {line[:80]!r}") from None
    return rows


def plot_learning_curve(rows: list[dict], path: str | Path, title: str = "learning curve",
                        best_iteration: int | None = None, chance: float | None = None) -> Path:
    """The learning curve as a PNG, two panels against iteration: accuracy (%) on top (meta-train
    query accuracy, validation accuracy with its 95% CI band, the best validation point, and
    ``chance``, a fraction such as 1/ways, as a dashed line), the meta-train query loss below.
    Rows may lack any key; NaN and infinite values are skipped (``plot.learning_curve_figure``)."""
    return learning_curve_figure(rows, title=title, best_iteration=best_iteration,
                                 chance=chance).save(path)


def best_validation(rows: list[dict]):
    """The validation row with the highest accuracy (the earliest one on ties), or None."""
    val = [r for r in rows if "val_accuracy" in r]
    return max(val, key=lambda r: (r["val_accuracy"], -r["iteration"])) if val else None


def main(argv=None):
    p = argparse.ArgumentParser(description="Draw a run's learning curve from its metrics.jsonl.")
    p.add_argument("run", type=Path, help="run folder (holds metrics.jsonl)")
    p.add_argument("--output", type=Path, default=None, help="PNG to write (default RUN/curve.png)")
    args = p.parse_args(argv)
    log = args.run / "metrics.jsonl"
    try:
        rows = read_metrics(log)
    except FileNotFoundError:
        sys.exit(f"error: {log} does not exist; give the folder of a run written by train.py")
    except (ValueError, UnicodeDecodeError) as e:
        sys.exit(f"error: {e}")
    if not rows:
        sys.exit(f"error: {log} has no rows yet; wait for the first logged iteration")
    best = best_validation(rows)
    out = plot_learning_curve(rows, args.output or args.run / "curve.png", title=args.run.name,
                              best_iteration=best and best["iteration"])
    print(f"wrote {out} ({len(rows)} rows, up to iteration {rows[-1]['iteration']}"
          + (f"; best validation {100 * best['val_accuracy']:.2f}% at iteration {best['iteration']})"
             if best else ")"))


if __name__ == "__main__":
    main()
