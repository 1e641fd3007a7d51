"""The prepared on-disk format every dataset is converted to, and its loader.

A prepared dataset is a folder::

    <root>/<name>/
        meta.json              name, image shape, class names per split, format version
        <split>_images.npy     uint8 [n, H, W, C], images of one class stored contiguously
        <split>_labels.npy     int32 [n], class index within the split, non-decreasing

The splits are train, val and test; a dataset whose test set is a set of fixed episodes (the
Omniglot authors' 20 one-shot runs) has no test split, and its meta.json's ``"test_instead"``
says what to test a trained run on (``what_to_test_on``).

Plain ``.npy`` files load memory-mapped (``np.load(mmap_mode="r")``), so opening even
mini-ImageNet costs nothing and a task reads only its own 2NK images. Writers build the folder
under a temporary name and rename it into place at the end (``write_prepared``), so a folder with
a ``meta.json`` is always complete: an interrupted preparation leaves nothing that loads.

Writing is safe against the usual accidents:

* one writer per dataset: ``write_prepared`` (and each preparation, from its start) holds the
  dataset's lock ``<root>/.<name>.lock`` (``lock_dataset``, ``anil.lock``), so two processes
  preparing the same dataset at once cannot both write it;
* temporaries are named ``.<name>.<kind>-<pid>@<host>-<random>`` (kind ``partial``, ``old`` or
  ``extract``); the next write into the same root removes those whose process no longer runs on
  this host (``remove_orphans``), so a killed preparation leaves nothing behind for long;
* a ``<root>/<name>`` that is not a prepared dataset (no ``meta.json``: the user's own folder
  or file) is never replaced;
* a failure to write (no permission, disk full, a file where a folder should be) is a
  ``DatasetError`` whose one line names the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anil.lock import FolderLock, LockError, pid_alive, this_host

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")  # "test" may be absent (see the module docstring)


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or malformed; the message says what to do."""


def describe_os_error(e: OSError) -> str:
    """What went wrong in one line, with the path if the error has one, and what to do."""
    where = f" ({e.filename})" if e.filename else ""
    reason = f"{e.strerror or e}{where}"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"{reason}: the disk is full; free some space or choose another folder"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}: no permission; choose a folder you can write to"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{reason}: a file is in the way of a folder; choose another folder or move the file"
    return f"{reason}; check the path, its permissions and the free space"


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


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def lock_dataset(root, name: str, wait: float = 0.0, on_wait=None):
    """Hold the write lock of ``<root>/<name>`` (``anil.lock.FolderLock``, lock file
    ``<root>/.<name>.lock``); a lock held by another process (after waiting ``wait`` seconds),
    or one that cannot be made, is a DatasetError. Re-entrant within a thread."""
    lock = FolderLock(Path(root) / name, what="dataset", wait=wait, on_wait=on_wait)
    try:
        lock.acquire()
    except LockError as e:
        raise DatasetError(str(e)) from None
    except OSError as e:
        raise DatasetError(f"cannot write the dataset {Path(root) / name}: "
                           f"{describe_os_error(e)}") from None
    try:
        yield lock
    finally:
        lock.release()


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", this_host())


# .<label>.<kind>-<pid>@<host>-<8 random characters of tempfile.mkdtemp>
TEMPORARY = re.compile(r"\.(?P<label>.+)\.(?P<kind>partial|old|extract)-(?P<pid>[0-9]+)"
                       r"@(?P<host>[A-Za-z0-9._-]+)-[a-z0-9_]{8}")


def _make_temporary(root: Path, label: str, kind: str) -> Path:
    """A fresh folder ``<root>/.<label>.<kind>-<pid>@<host>-XXXXXXXX`` (see ``TEMPORARY``)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{label}.{kind}-{os.getpid()}@{_host_tag()}-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a dataset is an ordinary folder
    return tmp


@contextlib.contextmanager
def temporary_folder(root, label: str, kind: str = "extract"):
    """A temporary folder in ``root`` named after this process (removed on leaving, whatever
    happens; if the process is killed, the next ``remove_orphans(root)`` removes it). Removes
    the orphans of dead processes in ``root`` first."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(root)
    tmp = _make_temporary(root, label, kind)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_orphans(root) -> list[Path]:
    """Remove the temporaries in ``root`` (named as ``TEMPORARY``) of processes that no longer run
    on this host; returns what was removed. Nothing else is touched: not a name that does not
    match, not a link, not a temporary of a live process or of another host.

    An ``old`` temporary holds a dataset moved aside to be replaced; if its process died
    before the replacement was moved in (``<root>/<label>`` is missing), it is moved back
    instead of being deleted."""
    root = Path(root)
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = TEMPORARY.fullmatch(entry.name)
        if (m is None or m["host"] != _host_tag() or int(m["pid"]) == os.getpid()
                or pid_alive(int(m["pid"])) or entry.is_symlink() or not entry.is_dir()):
            continue
        label = m["label"]
        if m["kind"] == "old" and not (root / label).exists() and (entry / label / "meta.json").is_file():
            try:
                with lock_dataset(root, label):
                    if not (root / label).exists():
                        os.replace(entry / label, root / label)
            except (DatasetError, OSError):
                continue  # being written by someone else, or not movable: leave it as it is
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def write_prepared(root: str | Path, name: str, splits: dict, extra_meta: dict | None = None) -> Path:
    """Write ``splits = {split: (images uint8 [n,H,W,C], labels [n], class_names)}`` atomically.

    Everything is written into a temporary sibling folder which is renamed to ``<root>/<name>``
    only when complete; an existing dataset of that name is replaced only at that moment, and
    anything at ``<root>/<name>`` that is not a prepared dataset (or an empty folder) is never
    replaced. Holds the
    dataset's lock (``lock_dataset``) throughout. Any failure to write is a DatasetError.
    """
    root = Path(root)
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        with lock_dataset(root, name), temporary_folder(root, name, "partial") as tmp:
            if final.is_dir() and not final.is_symlink() and not any(final.iterdir()):
                final.rmdir()  # an empty folder holds nothing to lose
            if final.exists() or final.is_symlink():
                if not (final / "meta.json").is_file():
                    raise DatasetError(
                        f"{final} exists but is not a prepared dataset (no meta.json), so it is left "
                        f"as it is; move it away or write the dataset to another root folder")
            _write_files(tmp, name, splits, extra_meta)
            if final.exists():
                old = _make_temporary(root, name, "old")
                os.replace(final, old / name)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    os.replace(old / name, final)  # put the previous dataset back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
    except OSError as e:
        raise DatasetError(f"cannot write {final}: {describe_os_error(e)} (nothing half-written "
                           f"was kept)") from None
    return final


class _PlainWriter:
    """A file numpy can only ``write()`` to. Given a real file, ``np.save`` calls
    ``ndarray.tofile``, whose error on a full disk ("N requested and M written") has lost the
    errno; through ``write()`` (16 MB at a time) a full disk is reported as one."""

    def __init__(self, file):
        self.write = file.write


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(_PlainWriter(f), array)


def _write_files(folder: Path, name: str, splits: dict, extra_meta: dict | None) -> None:
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
        _save(folder / f"{split}_images.npy", images)
        _save(folder / f"{split}_labels.npy", labels)
        meta["splits"][split] = {
            "num_images": int(len(labels)),
            "image_shape": list(images.shape[1:]),
            "class_names": [str(c) for c in class_names],
        }
    meta.update(extra_meta or {})
    # meta.json last: its presence marks the folder as complete.
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


# ----------------------------------------------------------------------------- reading


def _meta_problem(meta) -> str | None:
    """What is wrong with the shape of a parsed meta.json (None: nothing)."""
    def show(value):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if not isinstance(meta, dict):
        return f"it holds a JSON {type(meta).__name__}, not an object"
    if meta.get("format_version") != FORMAT_VERSION:
        return None  # reported as a format version mismatch
    if not isinstance(meta.get("name"), str):
        return f"'name' is {show(meta.get('name'))}, not a string"
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits:
        return f"'splits' is {show(splits)}, not an object of splits"
    for split, info in splits.items():
        if not isinstance(info, dict):
            return f"splits.{split} is {show(info)}, not an object"
        count, shape, names = info.get("num_images"), info.get("image_shape"), info.get("class_names")
        if type(count) is not int or count < 0:
            return f"splits.{split}.num_images is {show(count)}, not a count"
        if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and d > 0 for d in shape)):
            return f"splits.{split}.image_shape is {show(shape)}, not [height, width, channels]"
        if not (isinstance(names, list) and all(isinstance(c, str) for c in names)):
            return f"splits.{split}.class_names is {show(names)}, not a list of names"
    return None


def read_meta(path: str | Path) -> dict:
    """The checked ``meta.json`` of the prepared dataset at ``path`` (DatasetError if it is
    missing, unreadable, of another format version or of the wrong shape)."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(f"{path} is not a prepared dataset (no meta.json); prepare it first")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{meta_file} is corrupt ({e}); delete {path} and prepare it again") from None
    except RecursionError:  # a crafted or damaged file: lists within lists, thousands deep
        raise DatasetError(f"{meta_file} is corrupt (nested too deeply to be a dataset's "
                           f"meta.json); delete {path} and prepare it again") from None
    except OSError as e:
        raise DatasetError(f"{meta_file} cannot be read: {describe_os_error(e)}") from None
    problem = _meta_problem(meta)
    if problem:
        raise DatasetError(f"{meta_file} is malformed ({problem}); delete {path} and prepare it again")
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
        instead = f"; test a run on {what_to_test_on(path)}" if split == "test" and "test_instead" in meta else ""
        raise DatasetError(f"{path} has no split {split!r}; it has {sorted(meta['splits'])}{instead}")
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


def has_split(path: str | Path, split: str) -> bool:
    """Whether the prepared dataset at ``path`` has the split ``split`` (``test`` may be absent)."""
    return split in read_meta(path)["splits"]


def what_to_test_on(path: str | Path, run: str = "RUN") -> str:
    """What a run trained on the dataset at ``path`` is tested on when it has no test split: its
    meta.json's ``"test_instead"`` (``{run}`` in it becomes ``run``), else fixed episodes."""
    text = read_meta(path).get("test_instead")
    if not isinstance(text, str):
        text = "fixed episodes: python evaluate.py {run} --episodes DIR (layout: docs/your-own-data.md)"
    return text.replace("{run}", str(run))
