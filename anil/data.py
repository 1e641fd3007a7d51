"""The prepared on-disk format every dataset is converted to, and its loader.

A prepared dataset is a folder::

    <root>/<name>/
        meta.json              name, image shape, class names per split, format version
        <split>_images.npy     uint8 [n, H, W, C], images of one class stored contiguously
        <split>_labels.npy     int32 [n], class index within the split, non-decreasing

Plain ``.npy`` files load memory-mapped (``np.load(mmap_mode="r")``), so opening even
mini-ImageNet costs nothing and a task reads only its own 2NK images. Writers build the folder
under a temporary name and rename it into place at the end (``write_prepared``), so a folder with
a ``meta.json`` is always complete: an interrupted preparation leaves nothing that loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or malformed; the message says what to do."""


@dataclass
class ClassSplit:
    """One split (train, val or test) of a prepared dataset: images grouped by class.

    ``images[offsets[c]:offsets[c + 1]]`` are the images of class ``c``; ``class_names[c]`` is its
    name in the source dataset.
    """

    images: np.ndarray  # uint8 [n, H, W, C], possibly a read-only memory map
    offsets: np.ndarray  # int64 [num_classes + 1]
    class_names: list[str]
    name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width), the layout the network sees."""
        h, w, c = self.images.shape[1:]
        return c, h, w

    @classmethod
    def from_labels(cls, images: np.ndarray, labels: np.ndarray, class_names, name=""):
        """Build from per-image labels that are already sorted (class blocks contiguous)."""
        labels = np.asarray(labels)
        num_classes = len(class_names)
        if len(labels) != len(images):
            raise DatasetError(f"{name}: {len(images)} images but {len(labels)} labels")
        if len(labels) and (np.any(np.diff(labels) < 0) or labels[0] < 0 or labels[-1] >= num_classes):
            raise DatasetError(f"{name}: labels must be sorted class indices in [0, {num_classes})")
        offsets = np.searchsorted(labels, np.arange(num_classes + 1)).astype(np.int64)
        return cls(images, offsets, list(class_names), name)


def write_prepared(root: str | Path, name: str, splits: dict, extra_meta: dict | None = None) -> Path:
    """Write ``splits = {split: (images uint8 [n,H,W,C], labels [n], class_names)}`` atomically.

    Everything is written into a temporary sibling folder which is renamed to ``<root>/<name>``
    only when complete; an existing dataset of that name is replaced only at that moment.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a dataset is an ordinary folder
    try:
        meta = {"format_version": FORMAT_VERSION, "name": name, "splits": {}}
        for split, (images, labels, class_names) in splits.items():
            images = np.ascontiguousarray(images, dtype=np.uint8)
            if images.ndim != 4:
                raise DatasetError(f"{name}/{split}: images must be [n, H, W, C], got {images.shape}")
            order = np.argsort(labels, kind="stable")  # class blocks contiguous, order kept within
            labels = np.asarray(labels, dtype=np.int32)[order]
            if len(labels) != len(images) or (len(labels) and not 0 <= labels[0] <= labels[-1] < len(class_names)):
                raise DatasetError(f"{name}/{split}: {len(images)} images, {len(labels)} labels, "
                                   f"labels must lie in [0, {len(class_names)})")
            if np.any(np.diff(order) < 0):  # copy only when the classes need regrouping
                images = images[order]
            np.save(tmp / f"{split}_images.npy", images)
            np.save(tmp / f"{split}_labels.npy", labels)
            meta["splits"][split] = {
                "num_images": int(len(labels)),
                "image_shape": list(images.shape[1:]),
                "class_names": [str(c) for c in class_names],
            }
        meta.update(extra_meta or {})
        # meta.json last: its presence marks the folder as complete.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            os.replace(final, old / name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(f"{path} is not a prepared dataset (no meta.json); prepare it first")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{meta_file} is corrupt ({e}); delete {path} and prepare it again") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format version {meta.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; prepare it again"
        )
    return meta


def load_split(path: str | Path, split: str, mmap: bool = True) -> ClassSplit:
    """Load one split of the prepared dataset at ``path`` (memory-mapped by default)."""
    path = Path(path)
    meta = read_meta(path)
    if split not in meta["splits"]:
        raise DatasetError(f"{path} has no split {split!r}; it has {sorted(meta['splits'])}")
    info = meta["splits"][split]
    try:
        images = np.load(path / f"{split}_images.npy", mmap_mode="r" if mmap else None)
        labels = np.load(path / f"{split}_labels.npy")
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(
            f"{path}/{split}_*.npy cannot be read ({e}); delete {path} and prepare it again"
        ) from None
    if images.dtype != np.uint8 or list(images.shape) != [info["num_images"], *info["image_shape"]]:
        raise DatasetError(
            f"{path}/{split}_images.npy has shape {images.shape} {images.dtype}, meta.json says "
            f"{[info['num_images'], *info['image_shape']]} uint8; delete {path} and prepare it again"
        )
    return ClassSplit.from_labels(images, labels, info["class_names"], name=f"{meta['name']}/{split}")
