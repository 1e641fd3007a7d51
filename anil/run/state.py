"""Where a training run stands, in one object: ``TrainState``.

Everything the training loop counts lives here — the iteration, the best validation so far, the
untrained network's result, the training metrics since the last log row, the training time —
and ``state_dict()`` is exactly what a checkpoint stores of it, so that a resumed run continues
with the same numbers (anil/run/checkpoint.py adds weights, optimizer, sampler and random states).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


class NonFiniteLoss(RuntimeError):
    """The meta-training loss became nan or inf; the run cannot continue from here."""


def _empty_window() -> dict:
    return {"loss": 0.0, "accuracy": 0.0, "count": 0}


@dataclass
class TrainState:
    iteration: int = 0           # outer steps done
    finished: int = 0            # last iteration whose end-of-iteration work (validation, log
                                 # row, checkpoint) is done; < iteration after a stop during it
    best: dict | None = None     # {"iteration", "val_accuracy", "val_ci95", "body", "head"}
    untrained: dict | None = None  # {"accuracy", "ci95"} of the untrained network on the test tasks
    window: dict = field(default_factory=_empty_window)  # training metrics since the last log row
    seconds_before: float = 0.0  # training time spent by earlier processes of this run
    _clock: float = field(default=0.0, repr=False)
    _clock_iteration: int = field(default=0, repr=False)

    # ----------------------------------------------------------------------------- the loop

    def start_clock(self) -> None:
        self._clock, self._clock_iteration = time.perf_counter(), self.iteration

    def seconds(self) -> float:
        """Training time of the whole run so far, validation included."""
        return self.seconds_before + time.perf_counter() - self._clock

    def eta(self, total: int) -> float:
        """Seconds left at this process's average rate (inf before its first step)."""
        done = self.iteration - self._clock_iteration
        return (time.perf_counter() - self._clock) / done * (total - self.iteration) if done else math.inf

    def record(self, loss: float, accuracy: float) -> None:
        """Count one outer step with its mean query loss and accuracy."""
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the meta-training loss became {loss} at iteration "
                                f"{self.iteration + 1}")
        self.iteration += 1
        self.window = {"loss": self.window["loss"] + loss,
                       "accuracy": self.window["accuracy"] + accuracy,
                       "count": self.window["count"] + 1}

    def take_window(self) -> dict:
        """The mean training loss and accuracy since the last call (empty if no step since)."""
        w, self.window = self.window, _empty_window()
        return {"loss": w["loss"] / w["count"], "accuracy": w["accuracy"] / w["count"]} if w["count"] else {}

    def keep_if_best(self, iteration: int, accuracy: float, ci95: float, weights) -> bool:
        """Keep ``weights()`` if ``accuracy`` is the best validation so far; returns whether."""
        if self.best is not None and accuracy <= self.best["val_accuracy"]:
            return False
        self.best = {"iteration": iteration, "val_accuracy": accuracy, "val_ci95": ci95, **weights()}
        return True

    # ------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "pending": self.finished < self.iteration,
                "best": self.best, "untrained": self.untrained, "window": self.window,
                "seconds": self.seconds()}

    @classmethod
    def from_state_dict(cls, saved: dict) -> "TrainState":
        return cls(iteration=saved["iteration"], finished=saved["iteration"] - int(saved["pending"]),
                   best=saved["best"], untrained=saved["untrained"], window=saved["window"],
                   seconds_before=saved["seconds"])
