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
import math
import os
import sys
from pathlib import Path

from .plot import learning_curve_figure


def strict_json(value):
    """``value`` with every nan or inf float replaced by None, so that ``json.dumps`` writes
    strict JSON (which Python's json module would otherwise extend with NaN and Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


class MetricsLog:
    """Append-only JSON-lines file; each row is flushed as soon as it is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(strict_json(row), allow_nan=False) + "\n")

    def rows(self) -> list[dict]:
        return read_metrics(self.path) if self.path.exists() else []

    def truncate_after(self, iteration: int) -> int:
        """Drop rows past ``iteration`` (logged after the checkpoint a run resumes from), so the
        resumed run's rows follow on without duplicates, and damaged lines (the checkpoint, not
        this log, is what a run resumes from). Rewritten atomically; returns the number of
        damaged lines dropped."""
        if not self.path.exists():
            return 0
        damaged = []
        kept = [r for r in read_metrics(self.path, damaged) if r["iteration"] <= iteration]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return len(damaged)


def _is_row(row) -> bool:
    return (isinstance(row, dict) and type(row.get("iteration")) is int and row["iteration"] >= 0
            and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                    for k, v in row.items()))


def read_metrics(path: str | Path, damaged: list | None = None) -> list[dict]:
    """The rows of a metrics log. A line that is not a metrics row (cut short by a crash,
    damaged on disk, edited by hand) is skipped; its line number is appended to ``damaged``
    if a list is given."""
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):  # damaged, or nested deep
                row = None
            if _is_row(row):
                rows.append(row)
            elif raw.strip() and damaged is not None:
                damaged.append(number)
    return rows


def plot_learning_curve(rows: list[dict], path: str | Path, title: str = "learning curve",
                        best_iteration: int | None = None, chance: float | None = None,
                        **marks) -> Path:
    """The learning curve as a PNG, two panels against iteration: accuracy (%) on top (meta-train
    query accuracy, validation accuracy with its 95% CI band, the best validation point, and
    ``chance``, a fraction such as 1/ways, as a dashed line), the meta-train query loss below.
    Rows may lack any key; NaN and infinite values are skipped (``plot.learning_curve_figure``).
    ``marks``: ``test``, ``untrained`` and ``note`` of ``learning_curve_figure`` (``curve_marks``)."""
    return learning_curve_figure(rows, title=title, best_iteration=best_iteration,
                                 chance=chance, **marks).save(path)


def curve_marks(config: dict, untrained: dict | None = None, test: tuple | None = None) -> dict:
    """The learning curve's test and untrained marks and its caption, from a run's config (its
    inner steps and validation tasks), its untrained test ``{"accuracy", "ci95"}`` and its test
    ``(accuracy, ci95, iteration)``. The caption says why validation sits above meta-train."""
    note = (f"Why validation sits above meta-train: validation adapts with "
            f"{config.get('test_inner_steps', '?')} inner steps on {config.get('val_tasks', '?')} "
            f"fixed tasks with the weights of that iteration; meta-train is the query accuracy "
            f"after {config.get('inner_steps', '?')} steps, averaged over the iterations since "
            f"the previous point while the weights change. Iteration 0: the untrained network.")
    return {"note": note, "test": test,
            "untrained": (untrained["accuracy"], untrained["ci95"]) if untrained else None}


def best_validation(rows: list[dict]):
    """The validation row with the highest accuracy (the earliest one on ties), or None. The
    untrained network's row (iteration 0) is not a candidate, as it is not for best.pt."""
    val = [r for r in rows if "val_accuracy" in r and r["iteration"] > 0]
    return max(val, key=lambda r: (r["val_accuracy"], -r["iteration"])) if val else None


def chance_of(run: Path):
    """1/N for the run's N-way tasks, from its checkpoint (None if it cannot be read)."""
    from anil.run import checkpoint  # here: the checkpoint module needs the model, plots do not
    try:
        return 1 / checkpoint.load(run / "checkpoint.pt")["config"]["ways"]
    except (checkpoint.CheckpointError, KeyError, TypeError, ZeroDivisionError):
        return None


def marks_of(run: Path) -> dict:
    """``curve_marks`` for a run folder: from summary.json once the run finished (test and
    untrained), else from checkpoint.pt (untrained only); {} if neither can be read."""
    from anil.run import checkpoint
    try:
        summary = json.loads((run / "summary.json").read_text())
        return curve_marks(summary["config"], {"accuracy": summary["untrained_test_accuracy"],
                                               "ci95": summary["untrained_test_ci95"]},
                           (summary["test_accuracy"], summary["test_ci95"],
                            summary["tested"]["iteration"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        saved = checkpoint.load(run / "checkpoint.pt")
        return curve_marks(saved["config"], saved.get("untrained"))
    except (checkpoint.CheckpointError, KeyError, TypeError):
        return {}


def main(argv=None):
    p = argparse.ArgumentParser(description="Draw a run's learning curve from its metrics.jsonl.")
    p.add_argument("run", type=Path, help="run folder (holds metrics.jsonl)")
    p.add_argument("--output", type=Path, default=None, help="PNG to write (default RUN/curve.png)")
    args = p.parse_args(argv)
    log = args.run / "metrics.jsonl"
    damaged = []
    try:
        rows = read_metrics(log, damaged)
    except FileNotFoundError:
        sys.exit(f"error: {log} does not exist; give the folder of a run written by train.py")
    except OSError as e:
        sys.exit(f"error: cannot read {log} ({e.strerror or e})")
    if damaged:
        print(f"note: skipped {len(damaged)} damaged line(s) of {log} (line {damaged[0]}"
              f"{', ...' if len(damaged) > 1 else ''})")
    if not rows:
        sys.exit(f"error: {log} has no rows yet; wait for the first logged iteration")
    best = best_validation(rows)
    output = args.output or args.run / "curve.png"
    try:
        out = plot_learning_curve(rows, output, title=args.run.name,
                                  best_iteration=best and best["iteration"],
                                  chance=chance_of(args.run), **marks_of(args.run))
    except OSError as e:
        sys.exit(f"error: cannot write {output} ({e.strerror or e}); give a writable place with "
                 f"--output")
    print(f"wrote {out} ({len(rows)} rows, up to iteration {rows[-1]['iteration']}"
          + (f"; best validation {100 * best['val_accuracy']:.2f}% at iteration {best['iteration']})"
             if best else ")"))

if __name__ == "__main__":
    main()
