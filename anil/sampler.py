"""Episodic sampling: N-way, 2K-shot tasks drawn from a ``ClassSplit``.

A task (docs/design.md, "Tasks: support, query and labels"): draw N distinct classes, then 2K distinct images of each; give the classes the
labels 0..N-1 by a random permutation; order the 2NK samples in consecutive class blocks (block j
holds label j); the even positions of each block are the support set (K per class), the odd
positions the query set.

Every task is a pure function of ``(seed, task_id)``, so a task can be re-drawn at any time
without storing it. ``num_tasks=None`` gives a fresh task per draw (task ids 0, 1, 2, ...); an
integer gives learn2learn's fixed pool of ``num_tasks`` tasks, each draw picking one of them
uniformly at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import ClassSplit


SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


def support_query(x, dim: int = 0):
    """(support, query) halves of a task's samples, interleaved along ``dim``: the support set is
    at the even positions, the query set at the odd ones (the one place this layout is read).
    Works for images, labels and features alike, and for a batch of tasks with ``dim=1``."""
    index = (slice(None),) * dim
    return x[index + (slice(0, None, 2),)], x[index + (slice(1, None, 2),)]


def split_seed(seed: int, split: str) -> int:
    """The sampler seed of ``split`` in a run with seed ``seed``: a different task stream per
    split, the same one in train.py and in evaluate.py."""
    return seed * 3 + SPLIT_OFFSET[split]


class SamplerError(ValueError):
    """A task cannot be drawn with these settings; the message says why and what to change, in
    the sampler's own terms (``ways=5``); ``setting`` and ``fix`` let a command line say it
    with its flags instead (anil.run.cli.user_error)."""

    def __init__(self, problem: str, setting: str | None = None, fix=None):
        self.problem, self.setting, self.fix = problem, setting, fix
        change = {"ways": f"ways={fix} or fewer", "shots": f"shots={fix} or fewer",
                  "rotate": "rotate=False"}.get(setting)
        super().__init__(problem + (f"; use {change}" if change else ""))


@dataclass
class Task:
    """One episode. ``images`` float32 [2NK, C, H, W] in [0, 1]; ``labels`` int64 [2NK]."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: np.ndarray  # class index (within the split) of label 0..N-1

    @property
    def support(self):
        """(images, labels) of the support set."""
        return support_query(self.images)[0], support_query(self.labels)[0]

    @property
    def query(self):
        """(images, labels) of the query set."""
        return support_query(self.images)[1], support_query(self.labels)[1]


class TaskSampler:
    """Draws reproducible N-way, 2K-shot tasks from one split.

    ``rotate=True`` applies the MAML Omniglot augmentation: each class of a task is rotated by
    k·90°, k drawn per class per task (the same rotation for all its 2K images).
    """

    def __init__(self, split: ClassSplit, ways: int, shots: int, seed: int = 0,
                 num_tasks: int | None = None, rotate: bool = False):
        for name, value in (("ways", ways), ("shots", shots)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise SamplerError(f"{name} must be a positive integer, got {value!r}")
        if num_tasks is not None and num_tasks < 1:
            raise SamplerError(f"num_tasks must be positive or None, got {num_tasks}")
        if ways > split.num_classes:
            raise SamplerError(
                f"{ways}-way tasks need {ways} classes but {split.name or 'the split'} has only "
                f"{split.num_classes}", "ways", split.num_classes)
        # Only classes with at least 2K images can take part in a task.
        self.eligible = np.flatnonzero(split.counts >= 2 * shots)
        if len(self.eligible) < ways:
            raise SamplerError(
                f"{shots}-shot tasks need 2x{shots}={2 * shots} images per class (support + query) "
                f"but only {len(self.eligible)} classes of {split.name or 'the split'} have that many "
                f"(smallest class: {split.counts.min()} images)", "shots",
                int(np.sort(split.counts)[-ways]) // 2)
        height, width = split.images.shape[1:3]
        if rotate and height != width:
            raise SamplerError(f"rotations by k·90° need square images; {split.name or 'the split'} "
                               f"holds {height}x{width} images", "rotate")
        self.split, self.ways, self.shots = split, int(ways), int(shots)
        self.seed, self.num_tasks, self.rotate = int(seed), num_tasks, rotate
        self.draws = 0  # how many tasks next() has returned; with the rng, the sampler's state
        self.rng = np.random.default_rng([self.seed, 1])

    def task_indices(self, task_id: int):
        """The dataset indices [2NK] (class-block order), the classes [N], and rotations [N]."""
        rng = np.random.default_rng([self.seed, 0, task_id])
        chosen = np.sort(rng.choice(self.eligible, self.ways, replace=False))
        label_of = rng.permutation(self.ways)  # chosen[i] gets label label_of[i]
        classes = np.empty_like(chosen)
        classes[label_of] = chosen  # block j holds the class labelled j
        k2 = 2 * self.shots
        picks = np.stack([rng.choice(self.split.counts[c], k2, replace=False) for c in classes])
        indices = (self.split.offsets[classes][:, None] + picks).reshape(-1)
        rotations = rng.integers(0, 4, self.ways) if self.rotate else np.zeros(self.ways, int)
        return indices, classes, rotations

    def task(self, task_id: int) -> Task:
        indices, classes, rotations = self.task_indices(task_id)
        # Sorted reads are kinder to a memory map; then restore the block order.
        order = np.argsort(indices)
        raw = np.empty((len(indices),) + self.split.images.shape[1:], np.uint8)
        raw[order] = self.split.images[indices[order]]
        images = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255.0)
        if self.rotate:
            c, h, w = images.shape[1:]
            blocks = images.view(self.ways, 2 * self.shots, c, h, w)
            images = torch.cat([torch.rot90(b, int(k), dims=(2, 3)) for b, k in zip(blocks, rotations)])
        labels = torch.arange(self.ways).repeat_interleave(2 * self.shots)
        return Task(images.contiguous(), labels, classes)

    def next_task_id(self) -> int:
        task_id = self.draws if self.num_tasks is None else int(self.rng.integers(self.num_tasks))
        self.draws += 1
        return task_id

    def next(self) -> Task:
        return self.task(self.next_task_id())

    def batch(self, size: int):
        """A meta-batch: images [B, 2NK, C, H, W], labels [B, 2NK]."""
        tasks = [self.next() for _ in range(size)]
        return torch.stack([t.images for t in tasks]), torch.stack([t.labels for t in tasks])

    def state_dict(self) -> dict:
        return {"draws": self.draws, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.draws = int(state["draws"])
        self.rng.bit_generator.state = state["rng"]
